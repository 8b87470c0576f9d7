"""A control-plane VM as a Node: what its supervisor reports about the VM it runs in.

In the ``control-plane`` role the supervisor registers its VM as a Node with the role
label ``node-role.kubernetes.io/control-plane`` and a NoSchedule taint (the host agent's
``node_object``, role ``control-plane``), and at every heartbeat annotates it with what
an administrator asks of a control-plane VM:

- ``pacific.lab/database-role``: this VM's PostgreSQL as Patroni reports it (``primary``,
  ``replica``, or ``unknown`` when Patroni does not answer);
- ``pacific.lab/etcd``: ``member`` when etcd answers on this VM, else ``down``;
- ``pacific.lab/floating-ip``: the floating IP when this VM holds it, else ``""``;
- ``pacific.lab/code``: the first 12 hex digits of the code this supervisor process
  started with (the install's stamp, ``hypervisor.applianceimage.CODE_STAMP``, read once
  at start), so a rolling upgrade shows which VMs run which code.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

from appliance.controlplane.config import ETCD_CLIENT_PORT, PATRONI_PORT
from hypervisor.applianceimage import CODE_STAMP
from hypervisor.hostfacts import memory_bytes

DATABASE_ROLE = "pacific.lab/database-role"
ETCD = "pacific.lab/etcd"
FLOATING_IP = "pacific.lab/floating-ip"
CODE = "pacific.lab/code"
PROBE_TIMEOUT = 3.0


def vm_facts(hostname: str, address: str, meminfo: Path = Path("/proc/meminfo")
             ) -> dict[str, Any]:
    """The facts a control-plane VM's Node is made of (no host facts file: host.yml does
    not run in the VM)."""
    try:
        memory = memory_bytes(meminfo)
    except (OSError, ValueError):
        memory = 0
    return {"hostname": hostname, "address": address, "cpus": os.cpu_count() or 1,
            "memory_bytes": memory, "kernel_version": os.uname().release,
            "accelerator": "none"}


def control_plane_annotations(floating_ip: str) -> dict[str, str]:
    return {DATABASE_ROLE: database_role(), ETCD: "member" if etcd_healthy() else "down",
            FLOATING_IP: floating_ip if holds(floating_ip) else "", CODE: running_code()}


@functools.cache
def running_code(stamp: Path = Path(CODE_STAMP)) -> str:
    """The code this process started with: the stamp as it was at the first heartbeat
    (a roll replaces the file and then restarts the process)."""
    try:
        return str(json.loads(stamp.read_text())["code"])[:12]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def database_role(port: int = PATRONI_PORT) -> str:
    """Patroni's view of this member (its REST API's ``/patroni``, no credentials needed)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/patroni",
                                    timeout=PROBE_TIMEOUT) as response:
            role = str(json.load(response).get("role") or "")
    except (OSError, ValueError):
        return "unknown"
    return {"master": "primary", "standby_leader": "primary"}.get(role, role or "unknown")


def etcd_healthy(port: int = ETCD_CLIENT_PORT) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                    timeout=PROBE_TIMEOUT) as response:
            return str(json.load(response).get("health")) == "true"
    except (OSError, ValueError):
        return False


def holds(address: str) -> bool:
    """Whether ``address`` is on one of this machine's interfaces (keepalived put it there).

    Binding a socket to an address works only where the address is local."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(ip), 0))
        except OSError:
            return False
    return True


CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
#: A control-plane Node heartbeats every 10 s; after this long without one, what it said
#: last (Ready, its roles, holding the floating IP) is not believed.
STALE_AFTER = 40.0


def control_plane_summary(nodes: list[dict[str, Any]], now: float | None = None
                          ) -> tuple[list[dict[str, str]], str]:
    """What ``lab status`` and the dashboard's hosts page say of the control-plane VMs:
    a row per control-plane Node (name, Ready, database role, etcd) and who holds the
    floating IP (``""`` when nobody says so). A Node whose heartbeat is older than
    ``STALE_AFTER`` (a VM that died) is ``Unknown`` and holds nothing."""
    from datetime import datetime

    now = time.time() if now is None else now
    rows, holder = [], ""
    for node in sorted(nodes, key=lambda n: str(n.get("metadata", {}).get("name", ""))):
        meta = node.get("metadata") or {}
        if CONTROL_PLANE_LABEL not in (meta.get("labels") or {}):
            continue
        notes = meta.get("annotations") or {}
        ready = next((c for c in (node.get("status") or {}).get("conditions") or []
                      if c.get("type") == "Ready"), {})
        try:
            beat = datetime.fromisoformat(str(ready.get("lastHeartbeatTime"))
                                          .replace("Z", "+00:00")).timestamp()
        except ValueError:
            beat = 0.0
        fresh = now - beat <= STALE_AFTER
        name = str(meta.get("name", ""))
        rows.append({"name": name,
                     "ready": str(ready.get("status") or "Unknown") if fresh else "Unknown",
                     "database": str(notes.get(DATABASE_ROLE) or "unknown") if fresh
                     else "unknown",
                     "etcd": str(notes.get(ETCD) or "unknown") if fresh else "unknown",
                     "floating_ip": str(notes.get(FLOATING_IP) or "") if fresh else "",
                     "code": str(notes.get(CODE) or "unknown")})
        if fresh and notes.get(FLOATING_IP):
            holder = name
    return rows, holder
