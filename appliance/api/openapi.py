"""OpenAPI documents: enough for kubectl's validation and `kubectl explain`.

- ``/openapi/v2`` answers with a small protobuf document (see openapi_v2.py): kubectl <= 1.28
  then finds no schema and leaves validation to the server.
- ``/openapi/v3`` lists one document per group-version; each carries the
  kinds' real schemas and a PATCH operation with the
  ``x-kubernetes-group-version-kind`` extension and a ``fieldValidation``
  parameter, which tells kubectl >= 1.29 that the server validates.
  Strategic merge patch is never advertised for our own kinds.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from appliance.kinds.registry import Kind, Registry

PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"

_PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json",
                "application/apply-patch+yaml"]


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(kind: Kind, version: str) -> str:
    parts = (kind.group or "core").split(".")
    return ".".join(reversed(parts)) + f".{version}.{kind.kind}"


def _params(namespaced: bool, named: bool) -> list[dict[str, Any]]:
    params = []
    if namespaced:
        params.append({"name": "namespace", "in": "path", "required": True,
                       "schema": {"type": "string"}})
    if named:
        params.append({"name": "name", "in": "path", "required": True,
                       "schema": {"type": "string"}})
    return params


_QUERY = [{"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
          for n in ("dryRun", "fieldManager", "fieldValidation")]


def gv_document(registry: Registry, group: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for kind in registry.kinds_in(group, version):
        v = kind.version(version)
        assert v is not None
        name = _schema_name(kind, version)
        gvk = {"group": kind.group, "version": version, "kind": kind.kind}
        schemas[name] = {**v.schema, "x-kubernetes-group-version-kind": [gvk]}
        ref = {"$ref": f"#/components/schemas/{name}"}
        body = {"content": {"application/json": {"schema": ref}}}
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
        base = "/" + gv_path(group, version)
        coll = f"{base}/namespaces/{{namespace}}/{kind.plural}" if kind.namespaced \
            else f"{base}/{kind.plural}"
        op_id = kind.kind
        if "create" in kind.verbs:
            paths[coll] = {"parameters": _params(kind.namespaced, False), "post": {
                "operationId": f"create{op_id}", "requestBody": body, "responses": ok,
                "parameters": _QUERY, "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": gvk}}
        if kind.storable:
            paths[f"{coll}/{{name}}"] = {"parameters": _params(kind.namespaced, True), **{
                verb: {"operationId": f"{verb}{op_id}", "responses": ok, "parameters": _QUERY,
                       "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
                       **({"requestBody": body} if verb == "put" else {})}
                for verb, action in (("get", "get"), ("put", "put"), ("delete", "delete"))},
                "patch": {
                    "operationId": f"patch{op_id}", "parameters": _QUERY, "responses": ok,
                    "requestBody": {"content": {t: {"schema": {"type": "object"}}
                                                for t in _PATCH_TYPES}},
                    "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk}}
    return {"openapi": "3.0.0", "info": {"title": "Pacific Lab", "version": version},
            "paths": paths, "components": {"schemas": schemas}}


def index(registry: Registry) -> dict[str, Any]:
    paths = {}
    for group in registry.groups():
        for version in registry.group_versions(group):
            doc = json.dumps(gv_document(registry, group, version), sort_keys=True, default=str)
            digest = hashlib.sha512(doc.encode()).hexdigest()[:32].upper()
            paths[gv_path(group, version)] = {
                "serverRelativeURL": f"/openapi/v3/{gv_path(group, version)}?hash={digest}"}
    return {"paths": paths}
