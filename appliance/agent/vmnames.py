"""Names of what the host agent makes for a VM: derived, never stored.

``_`` cannot appear in a namespace or object name, so ``pl_<ns>_<name>`` is
unambiguous (``a-b``/``c`` and ``a``/``b-c`` cannot collide).
"""

from __future__ import annotations

from appliance.kinds.registry import Obj

DOMAIN_PREFIX = "pl_"


def domain_name(vm: Obj) -> str:
    return f"{DOMAIN_PREFIX}{vm['metadata']['namespace']}_{vm['metadata']['name']}"


def disk_name(vm: Obj) -> str:
    return f"{vm['metadata']['namespace']}_{vm['metadata']['name']}.qcow2"


def seed_name(vm: Obj) -> str:
    return f"{vm['metadata']['namespace']}_{vm['metadata']['name']}-seed.iso"
