"""A minimal ``/openapi/v2`` document in gnostic's protobuf encoding.

kubectl up to 1.28 downloads OpenAPI v2 as protobuf (``openapi_v2.Document``
from google/gnostic) and reads two things from it that matter here:

- for each path, the PATCH operation's ``x-kubernetes-group-version-kind``
  vendor extension and whether it takes a ``dryRun`` query parameter:
  without that, kubectl 1.20 refuses ``apply --dry-run=server`` and
  ``diff`` ("doesn't support dry-run");
- schema definitions, for client-side validation. We publish none, so
  kubectl leaves validation to the server, which does it from the kinds'
  OpenAPI v3 schemas.

The encoder below writes only the fields used, with the field numbers of
gnostic's ``openapiv2/OpenAPIv2.proto``.
"""

from __future__ import annotations

from appliance.kinds.registry import Registry


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (strings and nested messages)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


# Field numbers (openapi.v2 package)
DOC_SWAGGER, DOC_INFO, DOC_PATHS = 1, 2, 8
INFO_TITLE, INFO_VERSION = 1, 2
PATHS_PATH = 2
NAMED_NAME, NAMED_VALUE = 1, 2
PATHITEM_PATCH = 8
OP_OPERATION_ID, OP_PARAMETERS, OP_VENDOR_EXTENSION = 5, 8, 13
PARAMITEM_PARAMETER = 1
PARAM_NON_BODY = 2
NONBODY_QUERY = 3
QUERY_IN, QUERY_NAME, QUERY_TYPE = 2, 4, 6
ANY_YAML = 2


def _query_param(name: str) -> bytes:
    query = _field(QUERY_IN, "query") + _field(QUERY_NAME, name) + _field(QUERY_TYPE, "string")
    return _field(OP_PARAMETERS, _field(PARAMITEM_PARAMETER, _field(
        PARAM_NON_BODY, _field(NONBODY_QUERY, query))))


def _gvk_extension(group: str, version: str, kind: str) -> bytes:
    yaml_text = f'group: "{group}"\nkind: {kind}\nversion: {version}\n'
    return _field(OP_VENDOR_EXTENSION, _field(NAMED_NAME, "x-kubernetes-group-version-kind")
                  + _field(NAMED_VALUE, _field(ANY_YAML, yaml_text)))


def document(registry: Registry) -> bytes:
    paths = b""
    for kind in registry.kinds:
        if not kind.storable:
            continue
        for version in kind.versions:
            if not version.served:
                continue
            base = f"/apis/{kind.group}/{version.name}" if kind.group else f"/api/{version.name}"
            scope = f"{base}/namespaces/{{namespace}}" if kind.namespaced else base
            path = f"{scope}/{kind.plural}/{{name}}"
            op = (_field(OP_OPERATION_ID, f"patch{kind.kind}{version.name}")
                  + _query_param("dryRun") + _query_param("fieldManager")
                  + _query_param("fieldValidation")
                  + _gvk_extension(kind.group, version.name, kind.kind))
            item = _field(PATHITEM_PATCH, op)
            paths += _field(PATHS_PATH, _field(NAMED_NAME, path) + _field(NAMED_VALUE, item))
    info = _field(INFO_TITLE, "Pacific Lab") + _field(INFO_VERSION, "v1.31.0")
    return _field(DOC_SWAGGER, "2.0") + _field(DOC_INFO, info) + _field(DOC_PATHS, paths)
