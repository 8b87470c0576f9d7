"""Cluster API's controllers against a guest cluster's API: nodeRef, NodeHealthy,
KubeadmControlPlane 1 → 3, MachineDeployment scale and rollout, MachineHealthCheck
remediation and ``maxUnhealthy``.

STAND-IN: this build machine cannot run Kubernetes (no kubeadm, kubelet or
kube-apiserver binaries), so no guest cluster can come up. A second Pacific Lab API
server stands in for the guest cluster's API: the test points the cluster's
``<cluster>-kubeconfig`` Secret at it and creates there the Nodes a kubelet would
register (``spec.providerID`` = the machine's, Ready or not as the test needs).
Everything else is real: the supervisor's controllers, the VM Service, the
scheduler, the host agent defining and starting one libvirt domain per machine
(from a blank disk: the machines' VMs never boot an OS, their BIOS UUIDs are the
provider IDs), the namespace network and the endpoint's VIP.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import kubeconfig_for
from tests.support.kubectl import Kubectl
from tests.support.server import LabServer, network_lab
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

KUBECTL = Path("/usr/bin/kubectl")
CLUSTER = "c2"
V1B1 = "v1beta1"


@dataclass
class Lab:
    lab: LabServer
    guest: LabServer  # the stand-in for the guest cluster's API
    ns: str
    kc: Kubectl
    tmp: Path

    def get(self, *args: str) -> Any:
        out = self.kc.run("get", *args, "-n", self.ns, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def items(self, kind: str, *args: str) -> list[dict[str, Any]]:
        return (self.get(kind, *args) or {}).get("items") or []

    def machines(self, selector: str = "") -> list[dict[str, Any]]:
        args = ("-l", selector) if selector else ()
        return [m for m in self.items("machines", *args)
                if not m["metadata"].get("deletionTimestamp")]

    # -- the stand-in guest API ---------------------------------------------------------

    def _guest(self, method: str, path: str, body: Any = None,
               content_type: str = "application/json") -> requests.Response:
        return requests.request(method, self.guest.url + path, verify=self.guest.ca_file,
                                headers={"Authorization": f"Bearer {self.guest.admin_token()}",
                                         "Content-Type": content_type},
                                data=json.dumps(body) if body is not None else None,
                                timeout=30)

    def node_for(self, machine: dict[str, Any], ready: bool = True) -> None:
        """What the kubelet on the machine would do: register its Node, Ready."""
        name = machine["metadata"]["name"]
        r = self._guest("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"providerID": machine["spec"]["providerID"]}})
        assert r.status_code in (201, 409), r.text
        self.node_ready(name, ready)

    def node_ready(self, name: str, ready: bool) -> None:
        r = self._guest("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": [{
            "type": "Ready", "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": "stand-in kubelet",
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "lastHeartbeatTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}],
            "nodeInfo": {"kubeletVersion": "v1.31.4"}}}, "application/merge-patch+json")
        assert r.status_code == 200, r.text

    def register_nodes(self, selector: str = "") -> list[dict[str, Any]]:
        """A Ready Node for every machine that has a provider ID and none yet."""
        done = []
        for m in self.machines(selector):
            if m["spec"].get("providerID") and not (m.get("status") or {}).get("nodeRef"):
                self.node_for(m)
                done.append(m)
        return done


def blank_image(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


@pytest.fixture(scope="module")
def capi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("capi")
    # The machines' VMs never boot an OS (blank disks), so they may be packed densely:
    # a control plane of 3, rolling pools and a TKC on a 2-core host.
    with network_lab("mcapi", {"LAB_CPU_ALLOCATION_RATIO": "32"}, with_image=False) as net:
        lab = net.server
        guest = LabServer(lab.state_dir.parent / "guest-stand-in")
        guest.start()
        try:
            ns = f"capi-{net.tag}"
            kc = Kubectl(KUBECTL, kubeconfig_for(lab, tmp, ns), tmp / "cache")
            kc.run("create", "namespace", ns)
            proc = lab.lab("image", "import", str(blank_image(tmp / "blank.qcow2")),
                           "--name", "blank", check=False)
            assert proc.returncode == 0, proc.stderr
            lab.lab("image", "assign", "blank", ns)
            kc.apply_objects([{
                "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineClass",
                "metadata": {"name": "pacific-tiny", "namespace": "vmware-system-vmop"},
                "spec": {"hardware": {"cpus": 1, "memory": "192Mi"}}}], tmp / "tiny.yaml")
            lab.lab("class", "assign", "pacific-tiny", ns)
            # The cluster's kubeconfig, pointing at the stand-in (the supervisor keeps a
            # kubeconfig Secret it finds, as CAPI does).
            stand_in = guest.kubeconfig(tmp / "guest.kubeconfig", guest.admin_token())
            kc.apply_objects([{
                "apiVersion": "v1", "kind": "Secret", "type": "cluster.x-k8s.io/secret",
                "metadata": {"name": f"{CLUSTER}-kubeconfig",
                             "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}},
                "data": {"value": base64.b64encode(stand_in.read_bytes()).decode()}},
                *manifests()], tmp / "cluster.yaml")
            yield Lab(lab, guest, ns, kc, tmp)
        finally:
            guest.stop()


def manifests() -> list[dict[str, Any]]:
    capi, cp, boot, infra = ("cluster.x-k8s.io", "controlplane.cluster.x-k8s.io",
                             "bootstrap.cluster.x-k8s.io",
                             "vmware.infrastructure.cluster.x-k8s.io")

    def template(name: str) -> dict[str, Any]:
        return {"apiVersion": f"{infra}/{V1B1}", "kind": "VSphereMachineTemplate",
                "metadata": {"name": name},
                "spec": {"template": {"spec": {"className": "pacific-tiny",
                                               "imageName": "blank"}}}}
    return [
        {"apiVersion": f"{capi}/{V1B1}", "kind": "Cluster", "metadata": {"name": CLUSTER},
         "spec": {"clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
                  "controlPlaneRef": {"apiVersion": f"{cp}/{V1B1}",
                                      "kind": "KubeadmControlPlane", "name": CLUSTER},
                  "infrastructureRef": {"apiVersion": f"{infra}/{V1B1}",
                                        "kind": "VSphereCluster", "name": CLUSTER}}},
        {"apiVersion": f"{infra}/{V1B1}", "kind": "VSphereCluster",
         "metadata": {"name": CLUSTER}, "spec": {}},
        template(f"{CLUSTER}-cp"), template(f"{CLUSTER}-worker"),
        template(f"{CLUSTER}-worker-2"),
        {"apiVersion": f"{cp}/{V1B1}", "kind": "KubeadmControlPlane",
         "metadata": {"name": CLUSTER},
         "spec": {"replicas": 1, "version": "v1.31.4",
                  "machineTemplate": {"infrastructureRef": {
                      "apiVersion": f"{infra}/{V1B1}", "kind": "VSphereMachineTemplate",
                      "name": f"{CLUSTER}-cp"}},
                  "kubeadmConfigSpec": {"clusterConfiguration": {}, "initConfiguration": {},
                                        "joinConfiguration": {}}}},
        {"apiVersion": f"{boot}/{V1B1}", "kind": "KubeadmConfigTemplate",
         "metadata": {"name": f"{CLUSTER}-md-0"},
         "spec": {"template": {"spec": {"joinConfiguration": {}}}}},
        {"apiVersion": f"{capi}/{V1B1}", "kind": "MachineDeployment",
         "metadata": {"name": f"{CLUSTER}-md-0"},
         "spec": {"clusterName": CLUSTER, "replicas": 1, "selector": {"matchLabels": {}},
                  "template": {"spec": {
                      "clusterName": CLUSTER, "version": "v1.31.4",
                      "bootstrap": {"configRef": {"apiVersion": f"{boot}/{V1B1}",
                                                  "kind": "KubeadmConfigTemplate",
                                                  "name": f"{CLUSTER}-md-0"}},
                      "infrastructureRef": {"apiVersion": f"{infra}/{V1B1}",
                                            "kind": "VSphereMachineTemplate",
                                            "name": f"{CLUSTER}-worker"}}}}},
    ]


CP = "cluster.x-k8s.io/control-plane"
WORKERS = "cluster.x-k8s.io/deployment-name"


def test_node_ref_and_node_health_from_the_guest_api(capi: Lab) -> None:
    def with_provider_ids() -> list[dict[str, Any]] | None:
        ms = capi.machines()
        return ms if len(ms) == 2 and all(m["spec"].get("providerID") for m in ms) else None
    wait_for("2 machines with provider IDs", with_provider_ids, 300, 2.0,
             describe=lambda: json.dumps([m.get("status") for m in capi.machines()])[:2000])
    capi.register_nodes()

    def running() -> list[dict[str, Any]] | None:
        ms = capi.machines()
        return ms if ms and all((m.get("status") or {}).get("phase") == "Running" for m in ms) \
            else None
    for m in wait_for("machines Running", running, 120, 2.0):
        assert m["status"]["nodeRef"]["name"] == m["metadata"]["name"]
        healthy = next(c for c in m["status"]["conditions"] if c["type"] == "NodeHealthy")
        assert healthy["status"] == "True"
    kcp = wait_for("KCP initialized", lambda: (capi.get("kcp", CLUSTER) or {}).get(
        "status", {}).get("initialized") and capi.get("kcp", CLUSTER), 60, 1.0)
    assert kcp["status"]["readyReplicas"] == 1
    wait_for("Cluster ControlPlaneInitialized", lambda: any(
        c["type"] == "ControlPlaneInitialized" and c["status"] == "True"
        for c in capi.get("cluster", CLUSTER)["status"]["conditions"]), 60, 1.0)
    # A node that goes NotReady makes the machine's NodeHealthy False.
    worker = capi.machines(WORKERS)[0]["metadata"]["name"]
    capi.node_ready(worker, False)
    wait_for("NodeHealthy False", lambda: any(
        c["type"] == "NodeHealthy" and c["status"] == "False"
        for c in capi.get("machine", worker)["status"]["conditions"]), 60, 1.0)
    capi.node_ready(worker, True)


def test_control_plane_scales_1_to_3_one_join_at_a_time(capi: Lab) -> None:
    capi.kc.run("patch", "kcp", CLUSTER, "-n", capi.ns, "--type=merge", "-p",
                '{"spec":{"replicas":3}}')
    seen_without_node = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        cps = capi.machines(CP)
        waiting = [m for m in cps if not (m.get("status") or {}).get("nodeRef")]
        seen_without_node = max(seen_without_node, len(waiting))
        assert len(waiting) <= 1, "KCP joined a second machine before the first had a node"
        if len(cps) == 3 and not waiting:
            break
        capi.register_nodes(CP)
        time.sleep(1.0)
    cps = capi.machines(CP)
    assert len(cps) == 3 and all((m.get("status") or {}).get("nodeRef") for m in cps)
    assert seen_without_node == 1
    kcp = wait_for("KCP 3 ready", lambda: (capi.get("kcp", CLUSTER) or {}).get("status", {})
                   .get("readyReplicas") == 3 and capi.get("kcp", CLUSTER), 60, 1.0)
    assert kcp["status"]["replicas"] == 3 and kcp["status"]["updatedReplicas"] == 3
    # The joins got a control-plane JoinConfiguration, the first an InitConfiguration.
    configs = {c["metadata"]["name"]: c["spec"] for c in capi.items("kubeadmconfigs")}
    joins = [n for n, spec in configs.items()
             if (spec.get("joinConfiguration") or {}).get("controlPlane") is not None]
    inits = [n for n, spec in configs.items() if "initConfiguration" in spec]
    assert len(joins) == 2 and len(inits) == 1
    printed = capi.kc.run("get", "kcp", "-n", capi.ns).stdout
    assert "true" in printed.splitlines()[1]
    # Scaling to an even number is refused at admission.
    out = capi.kc.run("patch", "kcp", CLUSTER, "-n", capi.ns, "--type=merge", "-p",
                      '{"spec":{"replicas":2}}', check=False)
    assert out.returncode != 0 and "even" in out.stderr


def test_machine_deployment_scales_and_rolls_out(capi: Lab) -> None:
    capi.kc.run("patch", "md", f"{CLUSTER}-md-0", "-n", capi.ns, "--type=merge", "-p",
                '{"spec":{"replicas":2}}')

    def two_workers() -> list[dict[str, Any]] | None:
        capi.register_nodes(WORKERS)
        ms = capi.machines(WORKERS)
        return ms if len(ms) == 2 and all((m.get("status") or {}).get("nodeRef") for m in ms) else None
    first = {m["metadata"]["name"] for m in wait_for("2 workers", two_workers, 180, 2.0)}
    # Rollout: a new template; maxSurge 1 / maxUnavailable 0 (the defaults).
    capi.kc.run("patch", "md", f"{CLUSTER}-md-0", "-n", capi.ns, "--type=merge", "-p",
                json.dumps({"spec": {"template": {"spec": {"infrastructureRef": {
                    "name": f"{CLUSTER}-worker-2"}}}}}))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        workers = capi.machines(WORKERS)
        with_nodes = [m for m in workers if (m.get("status") or {}).get("nodeRef")]
        assert len(workers) <= 3, "more than maxSurge new machines"
        assert len(with_nodes) >= 2 or len(workers) <= 3, workers
        if len(workers) == 2 and not {m["metadata"]["name"] for m in workers} & first and \
                len(with_nodes) == 2:
            break
        capi.register_nodes(WORKERS)
        time.sleep(1.0)
    workers = capi.machines(WORKERS)
    assert len(workers) == 2 and not {m["metadata"]["name"] for m in workers} & first
    infra = {v["metadata"]["name"]: v for v in capi.items("vspheremachines")}
    for m in workers:
        assert infra[m["metadata"]["name"]]["metadata"]["annotations"][
            "cluster.x-k8s.io/cloned-from-name"] == f"{CLUSTER}-worker-2"
    wait_for("the old MachineSet removed", lambda: len(capi.items("machinesets")) == 1, 60,
             1.0, describe=lambda: str([s["metadata"]["name"]
                                        for s in capi.items("machinesets")]))
    md = wait_for("MD available", lambda: (capi.get("md", f"{CLUSTER}-md-0") or {}).get(
        "status", {}).get("availableReplicas") == 2 and capi.get("md", f"{CLUSTER}-md-0"),
        60, 1.0)
    assert md["status"]["updatedReplicas"] == 2
    # Scale down again.
    capi.kc.run("patch", "md", f"{CLUSTER}-md-0", "-n", capi.ns, "--type=merge", "-p",
                '{"spec":{"replicas":1}}')
    wait_for("1 worker", lambda: len(capi.machines(WORKERS)) == 1, 120, 1.0)


def test_health_check_remediates_within_max_unhealthy(capi: Lab) -> None:
    capi.kc.apply_objects([{
        "apiVersion": f"cluster.x-k8s.io/{V1B1}", "kind": "MachineHealthCheck",
        "metadata": {"name": f"{CLUSTER}-workers"},
        "spec": {"clusterName": CLUSTER, "maxUnhealthy": 1, "nodeStartupTimeout": "10m",
                 "selector": {"matchLabels": {WORKERS: f"{CLUSTER}-md-0"}},
                 "unhealthyConditions": [{"type": "Ready", "status": "False",
                                          "timeout": "1s"}]}}], capi.tmp / "mhc.yaml")
    capi.kc.run("patch", "md", f"{CLUSTER}-md-0", "-n", capi.ns, "--type=merge", "-p",
                '{"spec":{"replicas":2}}')
    wait_for("2 workers with nodes", lambda: capi.register_nodes(WORKERS) is not None and len(
        [m for m in capi.machines(WORKERS) if (m.get("status") or {}).get("nodeRef")]) == 2, 180, 2.0)
    a, b = sorted(m["metadata"]["name"] for m in capi.machines(WORKERS))
    # Two unhealthy with maxUnhealthy 1: nothing is remediated, and it says why.
    capi.node_ready(a, False)
    capi.node_ready(b, False)
    mhc = wait_for("remediation restricted", lambda: next((
        c for c in (capi.get("mhc", f"{CLUSTER}-workers") or {}).get("status", {}).get(
            "conditions", []) if c["type"] == "RemediationAllowed" and c["status"] == "False"),
        None), 60, 1.0)
    assert "exceeds maxUnhealthy" in mhc["message"]
    assert {m["metadata"]["name"] for m in capi.machines(WORKERS)} == {a, b}
    # One unhealthy: it is deleted and replaced.
    capi.node_ready(b, True)
    wait_for(f"{a} remediated", lambda: a not in {m["metadata"]["name"]
                                                 for m in capi.machines(WORKERS)}, 120, 1.0)
    wait_for("a replacement", lambda: len(capi.machines(WORKERS)) == 2, 120, 1.0)
    events = capi.kc.run("get", "events", "-n", capi.ns, "--field-selector",
                         "reason=MachineMarkedUnhealthy", "-o", "json").stdout
    assert a in events


def test_a_quota_refusal_shows_on_the_machine(capi: Lab) -> None:
    """Nodes are VMs: they count in the namespace's quota, and a refused VM is said on
    the Machine's conditions and as an Event, with the quota's own message."""
    capi.kc.run("delete", "mhc", f"{CLUSTER}-workers", "-n", capi.ns)

    def settled() -> int | None:
        """The VM count once every machine has its VM and none is still going (the
        health check's remediation may still be in flight)."""
        vms = capi.items("virtualmachines")
        machines = capi.machines()
        names = {v["metadata"]["name"] for v in vms}
        if any(v["metadata"].get("deletionTimestamp") for v in vms) or \
                len(vms) != len(machines) or \
                any(m["metadata"]["name"] not in names for m in machines):
            return None
        return len(vms)
    used = wait_for("every machine with its VM, none going", settled, 120, 1.0)
    capi.kc.apply_objects([{"apiVersion": "v1", "kind": "ResourceQuota",
                            "metadata": {"name": "nodes"},
                            "spec": {"hard": {"count/virtualmachines.vmoperator.vmware.com":
                                              str(used)}}}], capi.tmp / "quota.yaml")
    try:
        refused_by_quota(capi)
    finally:
        capi.kc.run("delete", "resourcequota", "nodes", "-n", capi.ns)
        capi.kc.run("patch", "md", f"{CLUSTER}-md-0", "-n", capi.ns, "--type=merge", "-p",
                    '{"spec":{"replicas":1}}')


def refused_by_quota(capi: Lab) -> None:
    before = {m["metadata"]["name"] for m in capi.machines(WORKERS)}
    capi.kc.run("patch", "md", f"{CLUSTER}-md-0", "-n", capi.ns, "--type=merge", "-p",
                json.dumps({"spec": {"replicas": len(before) + 1}}))

    def refused() -> tuple[str, dict[str, Any]] | None:
        for m in capi.machines(WORKERS):
            if m["metadata"]["name"] in before:
                continue
            cond = next((c for c in (m.get("status") or {}).get("conditions") or []
                         if c["type"] == "InfrastructureReady"), {})
            if cond.get("reason") == "VMCreationFailed":
                return m["metadata"]["name"], cond
        return None
    name, cond = wait_for("the new machine refused by the quota", refused, 120, 1.0)
    assert "exceeded quota" in cond["message"] and cond["severity"] == "Error"
    assert capi.get("virtualmachine", name) is None  # nothing half-made
    events = capi.kc.run("get", "events", "-n", capi.ns, "--field-selector",
                         "reason=VMCreationFailed", "-o", "json").stdout
    assert "exceeded quota" in events


TKC = "tkc-s"
TKC_MACHINES = f"cluster.x-k8s.io/cluster-name={TKC}"


def tkc_body(pool_class: str, pool_replicas: int) -> dict[str, Any]:
    return {"apiVersion": "run.tanzu.vmware.com/v1alpha3", "kind": "TanzuKubernetesCluster",
            "metadata": {"name": TKC},
            "spec": {"topology": {
                "controlPlane": {"replicas": 1, "vmClass": "pacific-tiny",
                                 "storageClass": "gold",
                                 "tkr": {"reference": {"name": "v1.31.4---pacific.1"}}},
                "nodePools": [{"name": "workers", "replicas": pool_replicas,
                               "vmClass": pool_class, "storageClass": "gold"}]}}}


def tkc_machines(capi: Lab, pool: bool) -> list[dict[str, Any]]:
    return [m for m in capi.machines(TKC_MACHINES)
            if (CP in (m["metadata"].get("labels") or {})) != pool]


def test_a_tkc_becomes_ready_scales_and_rolls_its_pool(capi: Lab) -> None:
    """The whole TKG stack on the stand-in guest API: TKC → Cluster on the shipped
    ClusterClass → KCP and MachineDeployment → machines whose nodes register → Ready;
    then a node pool scaled, then rolled by a new VM class."""
    capi.lab.lab("tkr", "import", "v1.31.4", "--image", "blank")
    capi.kc.apply_objects([{
        "apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineClass",
        "metadata": {"name": "pacific-tiny-2", "namespace": "vmware-system-vmop"},
        "spec": {"hardware": {"cpus": 1, "memory": "160Mi"}}}], capi.tmp / "tiny2.yaml")
    capi.lab.lab("class", "assign", "pacific-tiny-2", capi.ns)
    stand_in = capi.guest.kubeconfig(capi.tmp / "guest-tkc.kubeconfig",
                                     capi.guest.admin_token())
    capi.kc.apply_objects([{
        "apiVersion": "v1", "kind": "Secret", "type": "cluster.x-k8s.io/secret",
        "metadata": {"name": f"{TKC}-kubeconfig",
                     "labels": {"cluster.x-k8s.io/cluster-name": TKC}},
        "data": {"value": base64.b64encode(stand_in.read_bytes()).decode()}},
        tkc_body("pacific-tiny", 1)], capi.tmp / "tkc.yaml")

    def ready() -> dict[str, Any] | None:
        capi.register_nodes(TKC_MACHINES)
        tkc = capi.get("tkc", TKC) or {}
        conds = {c["type"]: c for c in (tkc.get("status") or {}).get("conditions") or []}
        return tkc if conds.get("Ready", {}).get("status") == "True" else None
    tkc = wait_for("the TKC Ready", ready, 300, 2.0,
                   describe=lambda: json.dumps((capi.get("tkc", TKC) or {}).get("status")))
    assert tkc["status"]["phase"] == "running"
    assert len(tkc_machines(capi, pool=False)) == 1 and len(tkc_machines(capi, pool=True)) == 1
    printed = capi.kc.run("get", "tkc", TKC, "-n", capi.ns).stdout.splitlines()[1].split()
    assert printed[:4] == [TKC, "1", "1", "v1.31.4---pacific.1"] and "True" in printed

    # Scale the pool to 2.
    capi.kc.apply_objects([tkc_body("pacific-tiny", 2)], capi.tmp / "tkc.yaml")
    wait_for("2 pool machines with nodes", lambda: capi.register_nodes(TKC_MACHINES) is not None
             and len([m for m in tkc_machines(capi, pool=True)
                      if (m.get("status") or {}).get("nodeRef")]) == 2, 180, 2.0)
    first = {m["metadata"]["name"] for m in tkc_machines(capi, pool=True)}

    # A new VM class for the pool rolls its machines (a new template, a new MachineSet).
    capi.kc.apply_objects([tkc_body("pacific-tiny-2", 2)], capi.tmp / "tkc.yaml")

    def rolled() -> bool:
        capi.register_nodes(TKC_MACHINES)
        pool = tkc_machines(capi, pool=True)
        return len(pool) == 2 and not {m["metadata"]["name"] for m in pool} & first and \
            all((m.get("status") or {}).get("nodeRef") for m in pool)
    wait_for("the pool rolled to the new class", rolled, 300, 2.0,
             describe=lambda: str([m["metadata"]["name"] for m in tkc_machines(capi, True)]))
    vms = {v["metadata"]["name"]: v for v in capi.items("virtualmachines")}
    for m in tkc_machines(capi, pool=True):
        assert vms[m["metadata"]["name"]]["spec"]["className"] == "pacific-tiny-2"
    wait_for("the TKC Ready again", ready, 120, 2.0)


def test_deleting_the_namespace_removes_its_clusters(capi: Lab) -> None:
    """The namespace goes with everything in it at once; the cluster's finalizers still
    take every VM and domain with them."""
    vms = capi.items("virtualmachines")
    assert vms
    capi.kc.run("delete", "namespace", capi.ns, "--wait=false")
    wait_for("the namespace gone", lambda: capi.kc.run(
        "get", "namespace", capi.ns, check=False).returncode != 0, 300, 2.0,
        describe=lambda: capi.kc.run("get", "machines,vm,cluster", "-n", capi.ns,
                                     check=False).stdout)
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert not {v["status"].get("uniqueID") for v in vms} & set(listed)
