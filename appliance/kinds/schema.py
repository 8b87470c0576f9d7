"""Structural OpenAPI v3 schemas: building, defaulting, pruning, validating.

The kinds' schemas are the one source for validation, defaults, discovery
and ``/openapi/v3``. A schema here is a plain dict in the OpenAPI v3 subset
that Kubernetes CRDs use (``type``, ``properties``, ``items``,
``additionalProperties``, ``required``, ``enum``, ``pattern``, ``minimum``,
``maximum``, ``default``, ``nullable``, ``x-kubernetes-*``).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import jsonschema

from appliance.errors import Cause

Schema = dict[str, Any]

# -- builders -----------------------------------------------------------------


def string(description: str = "", **extra: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def integer(description: str = "", **extra: Any) -> Schema:
    return {"type": "integer", **({"description": description} if description else {}), **extra}


def boolean(description: str = "", **extra: Any) -> Schema:
    return {"type": "boolean", **({"description": description} if description else {}), **extra}


def number(**extra: Any) -> Schema:
    return {"type": "number", **extra}


def int_or_string(**extra: Any) -> Schema:
    return {"x-kubernetes-int-or-string": True, **extra}


def quantity(**extra: Any) -> Schema:
    """A resource.Quantity: a number or a string such as ``2Gi`` or ``500m``."""
    return {"x-kubernetes-int-or-string": True, "x-pacific-quantity": True,
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                       r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$", **extra}


def array(items: Schema, *, merge_key: str | None = None, **extra: Any) -> Schema:
    s: Schema = {"type": "array", "items": items, **extra}
    if merge_key:
        s["x-kubernetes-patch-merge-key"] = merge_key
        s["x-kubernetes-patch-strategy"] = "merge"
        s["x-kubernetes-list-type"] = "map"
        s["x-kubernetes-list-map-keys"] = [merge_key]
    return s


def string_map(**extra: Any) -> Schema:
    return {"type": "object", "additionalProperties": {"type": "string"}, **extra}


def map_of(values: Schema, **extra: Any) -> Schema:
    return {"type": "object", "additionalProperties": values, **extra}


def obj(properties: dict[str, Schema] | None = None, *, required: list[str] | None = None,
        **extra: Any) -> Schema:
    s: Schema = {"type": "object", "properties": properties or {}, **extra}
    if required:
        s["required"] = required
    return s


def preserve(**extra: Any) -> Schema:
    """Any JSON value, kept as given (free-form objects such as cloud-config)."""
    return {"x-kubernetes-preserve-unknown-fields": True, **extra}


OWNER_REFERENCE = obj({
    "apiVersion": string(), "kind": string(), "name": string(), "uid": string(),
    "controller": boolean(), "blockOwnerDeletion": boolean(),
}, required=["apiVersion", "kind", "name", "uid"])

OBJECT_META = obj({
    "name": string(), "generateName": string(), "namespace": string(),
    "uid": string(), "resourceVersion": string(), "generation": integer(),
    "creationTimestamp": string(nullable=True), "deletionTimestamp": string(nullable=True),
    "deletionGracePeriodSeconds": integer(nullable=True),
    "labels": string_map(), "annotations": string_map(),
    "finalizers": array(string()), "ownerReferences": array(OWNER_REFERENCE, merge_key="uid"),
    "managedFields": array(preserve(type="object")), "selfLink": string(),
})

CONDITION = obj({
    "type": string(), "status": string(enum=["True", "False", "Unknown"]),
    "reason": string(), "message": string(), "severity": string(),
    "lastTransitionTime": string(), "lastHeartbeatTime": string(),
    "observedGeneration": integer(),
}, required=["type", "status"])


def top_level(spec: Schema | None = None, status: Schema | None = None,
              **fields: Schema) -> Schema:
    """The schema of a whole object: apiVersion, kind, metadata, then its fields."""
    props: dict[str, Schema] = {"apiVersion": string(), "kind": string(), "metadata": OBJECT_META}
    if spec is not None:
        props["spec"] = spec
    if status is not None:
        props["status"] = status
    props.update(fields)
    return obj(props)


# -- defaults -----------------------------------------------------------------


def apply_defaults(value: Any, schema: Schema) -> Any:
    """Fill in ``default`` values, in place, the way the API server does."""
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in list(value):
                if key not in schema.get("properties", {}):
                    apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])
    return value


# -- pruning ------------------------------------------------------------------


def prune_unknown(value: Any, schema: Schema, path: str = "") -> list[str]:
    """Remove fields the schema does not know, in place; return their paths."""
    found: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        if isinstance(value, dict):
            for key, sub in schema.get("properties", {}).items():
                if key in value:
                    found += prune_unknown(value[key], sub, _join(path, key))
        return found
    if isinstance(value, dict) and (schema.get("type") == "object" or "properties" in schema):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in list(value):
            if key in props:
                found += prune_unknown(value[key], props[key], _join(path, key))
            elif isinstance(extra, dict):
                found += prune_unknown(value[key], extra, _join(path, key))
            elif extra is True:
                continue
            else:
                found.append(_join(path, key))
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += prune_unknown(item, schema["items"], f"{path}[{i}]")
    return found


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# -- validation -----------------------------------------------------------------


def _to_jsonschema(schema: Any) -> Any:
    """Translate OpenAPI v3 / Kubernetes extensions into plain JSON Schema."""
    if isinstance(schema, list):
        return [_to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _to_jsonschema(v) for k, v in schema.items()
           if not k.startswith("x-") and k not in ("nullable", "default", "format",
                                                   "properties")}
    if isinstance(schema.get("properties"), dict):  # names here are fields, not keywords
        out["properties"] = {k: _to_jsonschema(v) for k, v in schema["properties"].items()}
    if schema.get("x-kubernetes-int-or-string"):
        pattern = out.pop("pattern", None)
        # A Quantity also takes any JSON number (YAML `cpu: 0.5`).
        number = "number" if schema.get("x-pacific-quantity") else "integer"
        out["anyOf"] = [{"type": number},
                        {"type": "string", **({"pattern": pattern} if pattern else {})}]
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else \
                [*out["type"], "null"]
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


@lru_cache(maxsize=256)
def _validator(key: int) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_to_jsonschema(_SCHEMAS[key]))


_SCHEMAS: dict[int, Schema] = {}


def validate(value: Any, schema: Schema) -> list[Cause]:
    """Check ``value`` against ``schema``; one Cause per problem, with its field path."""
    key = id(schema)
    _SCHEMAS[key] = schema
    causes = []
    for err in sorted(_validator(key).iter_errors(value), key=lambda e: list(e.absolute_path)):
        field = _path_string(err.absolute_path)
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else ""
            causes.append(Cause(_join(field, missing), "Required value", "FieldValueRequired"))
        elif err.validator == "enum":
            allowed = ", ".join(f'"{v}"' for v in err.validator_value)
            causes.append(Cause(field, f"Unsupported value: {err.instance!r}: supported values: "
                                       f"{allowed}", "FieldValueNotSupported"))
        elif err.validator in ("type", "anyOf"):
            causes.append(Cause(field, f"Invalid value: {_short(err.instance)}: {err.message}",
                                "FieldValueTypeInvalid"))
        else:
            causes.append(Cause(field, f"Invalid value: {_short(err.instance)}: {err.message}"))
    return causes


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _path_string(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- schema navigation (for strategic merge patch) ------------------------------


def child(schema: Schema | None, key: str | int) -> Schema | None:
    if not schema:
        return None
    if isinstance(key, int):
        items = schema.get("items")
        return items if isinstance(items, dict) else None
    props = schema.get("properties", {})
    if key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None
