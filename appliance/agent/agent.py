"""The host agent (the spherelet of Pacific Lab): one per libvirt host.

It talks to the supervisor only through the API, with its own node
credentials, so a second host runs the same agent pointed at the
supervisor's URL. Today it registers its host as a core/v1 Node with the
host's capacity and keeps the Node's Ready condition fresh; the VM Service
and vSphere Pods add their reconcilers here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from appliance import errors
from appliance.client import ApiClient
from appliance.util.timefmt import now_rfc3339

LOG = logging.getLogger(__name__)

NODE_VERSION = "v1.31.0-pacific"


#: What a Node is: a host that runs VMs and pods, or a supervisor control-plane VM
#: (tainted NoSchedule, as on vSphere: workloads stay on the hosts).
ROLES = ("host", "control-plane")
CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


def node_object(facts: dict[str, Any], role: str = "host") -> dict[str, Any]:
    """The Node that describes this host, from the facts host.yml recorded."""
    if role not in ROLES:
        raise ValueError(f"node role must be one of {ROLES}, not {role!r}")
    hostname = str(facts["hostname"])
    cpus = int(facts.get("cpus") or 1)
    memory = int(facts.get("memory_bytes") or 0)
    disk = int(facts.get("disk_total_bytes") or 0)
    accel = str(facts.get("accelerator") or "tcg")
    capacity = {"cpu": str(cpus), "memory": f"{memory // 1024}Ki",
                "ephemeral-storage": f"{disk // 1024}Ki", "pods": "110"}
    labels = {"kubernetes.io/hostname": hostname, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "pacific.lab/accelerator": accel,
              "pacific.lab/ovs-datapath": str(facts.get("ovs_datapath") or "unknown"),
              f"node-role.kubernetes.io/{role}": ""}
    addresses = [{"type": "Hostname", "address": hostname}]
    if facts.get("address"):
        addresses.insert(0, {"type": "InternalIP", "address": str(facts["address"])})
    # A host whose supervisor runs in control-plane VMs serves them its logs on its
    # address in the appliance network (appliance.nodeapi), as a kubelet serves its own.
    node_api = facts.get("node_api") or {}
    if node_api.get("address") and node_api["address"] != facts.get("address"):
        addresses.insert(1, {"type": "InternalIP", "address": str(node_api["address"])})
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": hostname, "labels": labels},
        "spec": {"providerID": f"libvirt://{hostname}",
                 **({"taints": [dict(CONTROL_PLANE_TAINT)]} if role == "control-plane" else {})},
        "status": {
            "capacity": capacity, "allocatable": dict(capacity), "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": int(node_api.get("port") or 0)}},
            "nodeInfo": {
                "kubeletVersion": NODE_VERSION, "kernelVersion": str(facts.get("kernel_version") or ""),
                "osImage": str(facts.get("os") or "Debian GNU/Linux 12 (bookworm)"),
                "containerRuntimeVersion": f"libvirt://{facts.get('libvirt_version') or ''}"
                                           f" qemu/{facts.get('qemu_version') or ''}",
                "architecture": "amd64", "operatingSystem": "linux",
                "machineID": str(facts.get("machine_id") or ""),
            },
            "conditions": [],
        },
    }


class HostAgent:
    """Registers this machine as a Node and keeps it Ready.

    ``role`` is ``host`` (a libvirt host) or ``control-plane`` (a supervisor VM);
    ``annotations``, when given, is asked at every heartbeat for the Node's live
    annotations (a control-plane VM's database role, whether it holds the floating IP)."""

    def __init__(self, client: ApiClient, facts: dict[str, Any], heartbeat: float = 30.0, *,
                 role: str = "host",
                 annotations: Callable[[], dict[str, str]] | None = None) -> None:
        self.client = client
        self.facts = facts
        self.heartbeat = heartbeat
        self.node_name = str(facts["hostname"])
        self.role = role
        self.annotations = annotations

    def register(self) -> None:
        node = node_object(self.facts, self.role)
        path = ApiClient.path("", "v1", "nodes")
        try:
            self.client.get(f"{path}/{self.node_name}")
        except errors.ApiError as err:
            if err.code != 404:
                raise
            status = node.pop("status")
            self.client.create(path, node)
            LOG.info("[node/%s] registered", self.node_name)
            node["status"] = status
        else:
            self.client.merge_patch(f"{path}/{self.node_name}",
                                    {"metadata": {"labels": node["metadata"]["labels"]},
                                     "spec": node["spec"]})
        self.report(node["status"])

    def report(self, status: dict[str, Any] | None = None) -> None:
        status = dict(status or node_object(self.facts, self.role)["status"])
        now = now_rfc3339()
        status["conditions"] = [{
            "type": "Ready", "status": "True", "reason": "HostAgentReady",
            "message": f"host agent is posting ready status ({self.facts.get('accelerator')})",
            "lastHeartbeatTime": now, "lastTransitionTime": now}]
        path = ApiClient.path("", "v1", "nodes", name=self.node_name, sub="status")
        self.client.merge_patch(path, {"status": status})
        if self.annotations is not None:
            self.client.merge_patch(ApiClient.path("", "v1", "nodes", name=self.node_name),
                                    {"metadata": {"annotations": self.annotations()}})

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.register()
                break
            except (errors.ApiError, OSError) as exc:
                LOG.warning("[node/%s] registration failed: %s", self.node_name, exc)
                stop.wait(2.0)
        while not stop.wait(self.heartbeat):
            try:
                self.report()
            except (errors.ApiError, OSError) as exc:
                LOG.warning("[node/%s] heartbeat failed: %s", self.node_name, exc)
