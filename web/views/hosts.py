"""Hosts: each libvirt host's capacity, what is placed on it, KVM or TCG, and its network."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from flask import Blueprint, abort, render_template

from appliance import errors
from appliance.controlplane.node import control_plane_summary
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import GROUP as VMOP
from appliance.util.quantity import QuantityError, parse_quantity
from web.filters import fmt_bytes, fmt_number
from web.security import login_required
from web.views import lab, user

bp = Blueprint("hosts", __name__)


def _facts() -> dict[str, Any]:
    """What host preparation measured on this host (a small file; never probed here)."""
    try:
        data = json.loads(lab().settings.host_facts_path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _q(value: Any) -> Decimal:
    try:
        return parse_quantity(str(value or "0"))
    except QuantityError:
        return Decimal(0)


def _placed(vms: list[Obj], classes: dict[tuple[str, str], Obj]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for vm in vms:
        host = (vm.get("status") or {}).get("host")
        if not host:
            continue
        ns = vm["metadata"]["namespace"]
        cls = classes.get((ns, (vm.get("spec") or {}).get("className") or ""))
        hw = ((cls or {}).get("spec") or {}).get("hardware") or {}
        row = out.setdefault(host, {"vms": 0, "cpu": Decimal(0), "memory": Decimal(0)})
        row["vms"] += 1
        row["cpu"] += Decimal(int(hw.get("cpus") or 0))
        row["memory"] += _q(hw.get("memory"))
    return out


@bp.get("/hosts")
@login_required
def index() -> str:
    u = user()
    try:
        nodes = lab().list(u, "", "nodes").items
    except errors.ApiError as err:
        if err.code == 403:
            abort(403, description="Only administrators see the hosts.")
        raise
    vms = lab().list_or_empty(u, VMOP, "virtualmachines")
    classes = {(c["metadata"]["namespace"], c["metadata"]["name"]): c
               for c in lab().list_or_empty(u, VMOP, "virtualmachineclasses")}
    placed = _placed(vms, classes)
    facts = _facts()
    s = lab().settings
    hosts = []
    for node in nodes:
        name = node["metadata"]["name"]
        status = node.get("status") or {}
        cap = status.get("capacity") or {}
        labels = node["metadata"].get("labels") or {}
        use = placed.get(name, {"vms": 0, "cpu": Decimal(0), "memory": Decimal(0)})
        cpus, memory = _q(cap.get("cpu")), _q(cap.get("memory"))
        vcpus = cpus * Decimal(str(s.cpu_allocation_ratio))
        mine = facts if facts.get("hostname") == name else {}
        hosts.append({
            "node": node, "name": name, "labels": labels,
            "accelerator": labels.get("pacific.lab/accelerator") or mine.get("accelerator")
            or "unknown",
            "kvm_error": mine.get("kvm_error") or "",
            "ovs": labels.get("pacific.lab/ovs-datapath") or mine.get("ovs_datapath")
            or "unknown",
            "addresses": status.get("addresses") or [],
            "info": status.get("nodeInfo") or {},
            "cpus": fmt_number(cpus), "memory": fmt_bytes(memory),
            "disk": fmt_bytes(_q(cap.get("ephemeral-storage"))),
            "disk_free": fmt_bytes(Decimal(mine["disk_free_bytes"]))
            if mine.get("disk_free_bytes") else "",
            "qemu": mine.get("qemu_version") or "", "kernel": mine.get("kernel_version") or "",
            "libvirt": mine.get("libvirt_version") or "",
            "vms": use["vms"],
            "cpu_used": float(use["cpu"]), "cpu_total": float(vcpus),
            "cpu_text": f"{fmt_number(use['cpu'])} of {fmt_number(vcpus)} vCPUs",
            "mem_used": float(use["memory"]), "mem_total": float(memory),
            "mem_text": f"{fmt_bytes(use['memory'])} of {fmt_bytes(memory)}",
        })
    network = {"cidr": s.appliance_cidr, "bridge": s.appliance_bridge,
               "ratio": s.cpu_allocation_ratio}
    control_plane, holder = control_plane_summary(nodes)
    floating_ip = next((r["floating_ip"] for r in control_plane if r["floating_ip"]),
                       s.public_host if s.role == "control-plane" else "")
    return render_template("hosts.html", hosts=hosts, network=network,
                           control_plane=control_plane, holder=holder, floating_ip=floating_ip)
