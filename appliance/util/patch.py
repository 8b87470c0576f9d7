"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

Both functions leave their inputs untouched and return new documents.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch
import jsonpointer

__all__ = ["PatchError", "json_patch", "merge_patch"]


class PatchError(ValueError):
    """A patch is malformed or cannot be applied to the document."""


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386, section 2) and return the result.

    A ``null`` (``None``) member in the patch removes that member; an object
    patch merges into an object target (a non-object target is replaced by
    ``{}`` first); any other patch value replaces the target outright.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = (
        {k: copy.deepcopy(v) for k, v in target.items()} if isinstance(target, Mapping) else {})
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def _json_equal(a: Any, b: Any) -> bool:
    """RFC 6902 section 4.6 equality: same JSON type and value (``true`` is not ``1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    return bool(a == b)


def _describe(index: int, op: Mapping[str, Any]) -> str:
    name = op.get("op", "?")
    path = op.get("path", "?")
    return f"json patch operation {index} ({name} {path})"


def json_patch(doc: Any, ops: Sequence[Mapping[str, Any]] | str | bytes) -> Any:
    """Apply a JSON patch (RFC 6902) with the ``jsonpatch`` library; return the result.

    ``ops`` is a list of operation objects, or its JSON text. Every failure,
    a malformed patch, a path that does not resolve or a failed ``test``,
    raises :class:`PatchError` naming the operation (counted from 0); the
    patch is atomic: on error nothing is returned and ``doc`` is unchanged.
    """
    if isinstance(ops, (str, bytes)):
        try:
            ops = json.loads(ops)
        except ValueError as exc:
            raise PatchError(f"json patch is not valid JSON: {exc}") from None
    if not isinstance(ops, list) or not all(isinstance(op, Mapping) for op in ops):
        raise PatchError("a json patch must be a list of operation objects")
    result = copy.deepcopy(doc)
    for index, op in enumerate(ops):
        where = _describe(index, op)
        try:
            if op.get("op") == "test" and "path" in op and "value" in op:
                # jsonpatch compares with ==, so true would equal 1; RFC 6902 says no
                pointer = jsonpointer.JsonPointer(op["path"])
                actual = pointer.resolve(result)
                if not _json_equal(actual, op["value"]):
                    raise PatchError(f"{where}: test failed: {actual!r} is not {op['value']!r}")
                continue
            result = jsonpatch.JsonPatch([dict(op)]).apply(result, in_place=True)
        except PatchError:
            raise
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise PatchError(f"{where}: {exc}") from None
        except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
            # the library lets a few of these through for odd operands
            raise PatchError(f"{where}: {type(exc).__name__}: {exc}") from None
    return result
