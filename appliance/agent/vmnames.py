"""Names of what the host agent makes for a VM or a pod VM: derived, never stored.

libvirt's domain names are global to the host, and more than one lab may share a
host (a test suite next to a running lab), so every name carries the lab's
instance tag, derived from its state directory: ``pl-<tag>_<ns>_<name>`` for VMs,
``pp-<tag>_<ns>_<name>`` for pod VMs. ``_`` cannot appear in a namespace or object
name, so the names are unambiguous (``a-b``/``c`` and ``a``/``b-c`` cannot collide),
and one lab never takes another's domains for orphans.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from appliance.kinds.registry import Obj


def instance_tag(state_dir: Path | str) -> str:
    """Six hex digits naming the lab whose state lives in ``state_dir``."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:6]


def vm_prefix(state_dir: Path | str) -> str:
    return f"pl-{instance_tag(state_dir)}_"


def pod_prefix(state_dir: Path | str) -> str:
    return f"pp-{instance_tag(state_dir)}_"


def domain_name(obj: Obj, prefix: str) -> str:
    return f"{prefix}{obj['metadata']['namespace']}_{obj['metadata']['name']}"


def orphans(objects: Iterable[Obj], prefix: str, domains: Iterable[str]) -> list[str]:
    """The domains named with ``prefix`` whose object is not among ``objects`` (its
    finalizer was forced off while the host agent was away)."""
    known = {domain_name(o, prefix) for o in objects}
    return [d for d in domains if d.startswith(prefix) and d not in known]


def disk_name(vm: Obj) -> str:
    return f"{vm['metadata']['namespace']}_{vm['metadata']['name']}.qcow2"


def seed_name(vm: Obj) -> str:
    return f"{vm['metadata']['namespace']}_{vm['metadata']['name']}-seed.iso"
