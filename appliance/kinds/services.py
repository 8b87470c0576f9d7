"""Validation shared by core/v1 Service and vm-operator's VirtualMachineService."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.errors import Cause
from appliance.kinds.registry import Obj


def service_causes(spec: Obj, types: Sequence[str], protocols: Sequence[str],
                   default_type: str) -> list[Cause]:
    causes = []
    kind = spec.get("type", default_type)
    if kind not in types:
        causes.append(Cause("spec.type", f"Unsupported value: {kind!r}: supported values: "
                                         + ", ".join(f'"{t}"' for t in types),
                            "FieldValueNotSupported"))
    ports = spec.get("ports") or []
    if kind != "ExternalName" and not ports:
        causes.append(Cause("spec.ports", "Required value", "FieldValueRequired"))
    seen = set()
    for i, port in enumerate(ports):
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(Cause(f"spec.ports[{i}].port", f"Invalid value: {number!r}: must be "
                                                         "between 1 and 65535, inclusive"))
        key = (port.get("protocol", "TCP"), number)
        if key in seen:
            causes.append(Cause(f"spec.ports[{i}]", f"Duplicate value: {key!r}",
                                "FieldValueDuplicate"))
        seen.add(key)
        if port.get("protocol", "TCP") not in protocols:
            causes.append(Cause(f"spec.ports[{i}].protocol", "Unsupported value: "
                                f"{port.get('protocol')!r}: supported values: "
                                + ", ".join(f'"{p}"' for p in protocols),
                                "FieldValueNotSupported"))
        if len(ports) > 1 and not port.get("name"):
            causes.append(Cause(f"spec.ports[{i}].name", "Required value: a name is required "
                                                         "when there is more than one port",
                                "FieldValueRequired"))
    return causes
