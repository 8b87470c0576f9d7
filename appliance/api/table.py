"""meta.k8s.io Table output, with the JSONPath subset CRD printer columns use."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from appliance.kinds.registry import Kind, Obj, PrinterColumn, Version
from appliance.util.timefmt import human_duration, parse_rfc3339

_FILTER = re.compile(r'^\?\(@\.([\w.-]+)\s*==\s*["\']?([^"\']*)["\']?\)$')


def _split_path(path: str) -> list[str]:
    """``.status.conditions[?(@.type=="Ready")].status`` -> parts; ``\\.`` escapes a dot."""
    parts: list[str] = []
    cur = ""
    i = 0
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    while i < len(path):
        c = path[i]
        if c == "\\" and i + 1 < len(path):
            cur += path[i + 1]
            i += 2
            continue
        if c == ".":
            if cur:
                parts.append(cur)
            cur = ""
        elif c == "[":
            if cur:
                parts.append(cur)
            end = path.index("]", i)
            parts.append(path[i:end + 1])
            cur = ""
            i = end
        else:
            cur += c
        i += 1
    if cur:
        parts.append(cur)
    return parts


def jsonpath(obj: Any, path: str) -> list[Any]:
    values = [obj]
    for part in _split_path(path):
        nxt: list[Any] = []
        for v in values:
            if part.startswith("["):
                inner = part[1:-1]
                if not isinstance(v, list):
                    continue
                if inner == "*":
                    nxt.extend(v)
                elif inner.lstrip("-").isdigit():
                    idx = int(inner)
                    if -len(v) <= idx < len(v):
                        nxt.append(v[idx])
                else:
                    m = _FILTER.match(inner)
                    if m:
                        field, want = m.groups()
                        nxt.extend(item for item in v
                                   if str(_get_dotted(item, field)) == want)
            elif isinstance(v, dict) and part in v:
                nxt.append(v[part])
        values = nxt
    return values


def _get_dotted(obj: Any, dotted: str) -> Any:
    for p in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj


def _format(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"))


def cell(obj: Obj, col: PrinterColumn, now: datetime | None = None) -> Any:
    if col.compute is not None:
        value: Any = col.compute(obj)
    else:
        found = jsonpath(obj, col.json_path)
        if not found:
            return None
        value = found[0] if len(found) == 1 else ",".join(_format(v) for v in found)
    if col.type == "date" and isinstance(value, str) and value:
        try:
            when = parse_rfc3339(value)
        except ValueError:
            return value
        now = now or datetime.now(UTC)
        return human_duration((now - when).total_seconds())
    if col.type == "integer" and isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, (dict, list)):
        return _format(value)
    return value


def columns_for(kind: Kind, version: Version) -> tuple[PrinterColumn, ...]:
    cols = version.printer_columns
    if not cols:
        cols = (PrinterColumn("Name", format="name", json_path=".metadata.name"),
                PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp"))
    elif cols[0].json_path != ".metadata.name":
        cols = (PrinterColumn("Name", format="name", json_path=".metadata.name"), *cols)
    return cols


def column_definitions(cols: tuple[PrinterColumn, ...]) -> list[dict[str, Any]]:
    return [{"name": c.name, "type": "string" if c.compute is not None and c.type == "date"
             else c.type, "format": c.format, "description": c.description,
             "priority": c.priority} for c in cols]


def to_table(kind: Kind, version: str, objects: list[Obj], *, list_rv: str = "",
             continue_token: str = "", include_object: str = "Metadata",
             with_headers: bool = True, table_version: str = "v1") -> dict[str, Any]:
    v = kind.version(version)
    assert v is not None
    cols = columns_for(kind, v)
    now = datetime.now(UTC)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [cell(obj, c, now) for c in cols]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata", {})}
        rows.append(row)
    table: dict[str, Any] = {"kind": "Table", "apiVersion": f"meta.k8s.io/{table_version}",
                             "metadata": {"resourceVersion": list_rv}, "rows": rows}
    if continue_token:
        table["metadata"]["continue"] = continue_token
    table["columnDefinitions"] = column_definitions(cols) if with_headers else []
    return table
