"""Strategic merge patch, for the built-in kinds that kubectl patches that way.

kubectl sends ``application/strategic-merge-patch+json`` for kinds compiled
into it (ConfigMap, Namespace, Pod, Role, ...). Lists whose schema carries
``x-kubernetes-patch-strategy: merge`` merge element by element on
``x-kubernetes-patch-merge-key``; other lists are replaced. The directives
``$patch`` (replace, delete, merge), ``$retainKeys``,
``$deleteFromPrimitiveList/<field>`` and ``$setElementOrder/<field>`` are
honoured as in apimachinery's ``strategicpatch`` package.
"""

from __future__ import annotations

import copy
from typing import Any

from appliance.kinds.schema import Schema, child

DELETE_FROM = "$deleteFromPrimitiveList/"
SET_ORDER = "$setElementOrder/"


class StrategicPatchError(ValueError):
    pass


def strategic_merge(original: Any, patch: Any, schema: Schema | None) -> Any:
    if not isinstance(patch, dict):
        raise StrategicPatchError("a strategic merge patch must be a JSON object")
    if not isinstance(original, dict):
        original = {}
    return _merge_map(copy.deepcopy(original), patch, schema)


def _merge_map(original: dict[str, Any], patch: dict[str, Any], schema: Schema | None) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise StrategicPatchError(f"unknown patch directive {directive!r}")
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise StrategicPatchError("$retainKeys must be a list")
        for key in list(original):
            if key not in retain and key not in patch:
                del original[key]
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith(SET_ORDER):
            continue
        if key.startswith(DELETE_FROM):
            field = key[len(DELETE_FROM):]
            if isinstance(original.get(field), list) and isinstance(value, list):
                original[field] = [v for v in original[field] if v not in value]
            continue
        sub = child(schema, key)
        if value is None:
            original.pop(key, None)
        elif isinstance(value, dict):
            merged = _merge_map(original[key] if isinstance(original.get(key), dict) else {},
                                value, sub)
            if merged is None:
                original.pop(key, None)
            else:
                original[key] = merged
        elif isinstance(value, list):
            original[key] = _merge_list(original.get(key), value, sub)
        else:
            original[key] = value
    return original


def _merge_list(original: Any, patch: list[Any], schema: Schema | None) -> list[Any]:
    strategy = (schema or {}).get("x-kubernetes-patch-strategy", "")
    if "merge" not in strategy.split(","):
        return [copy.deepcopy(v) for v in patch if not _is_directive(v)]
    base = list(original) if isinstance(original, list) else []
    key = (schema or {}).get("x-kubernetes-patch-merge-key")
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [copy.deepcopy(v) for v in patch
                if not (isinstance(v, dict) and "$patch" in v)]
    if not key:  # a list of scalars merged as a set
        out = list(base)
        for v in patch:
            if v not in out:
                out.append(v)
        return out
    items = child(schema, 0)
    for element in patch:
        if not isinstance(element, dict):
            raise StrategicPatchError(f"list elements must be objects with the key {key!r}")
        if key not in element:
            raise StrategicPatchError(f"list element is missing its merge key {key!r}")
        if element.get("$patch") == "delete":
            base = [cur for cur in base
                    if not (isinstance(cur, dict) and cur.get(key) == element[key])]
            continue
        index = next((i for i, cur in enumerate(base)
                      if isinstance(cur, dict) and cur.get(key) == element[key]), None)
        if index is None:
            base.append(_merge_map({}, element, items))
        else:
            base[index] = _merge_map(base[index], element, items)
    return base


def _is_directive(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$patch"}
