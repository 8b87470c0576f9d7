"""A guest cluster the Cluster API way, for real up to kubeadm, through kubectl.

One Cluster (1 control-plane machine, 1 worker machine; CAPV's supervisor flavour,
with clusterctl's variables already substituted) is applied with kubectl to a real
host service with namespace networks on real libvirt, and shared by the tests here:

- its machines become two VirtualMachines on the namespace's segment, its endpoint a
  VirtualMachineService VIP;
- the bootstrap cloud-config runs on both nodes (kubeadm configuration and the
  cluster's CA under /etc/kubernetes/pki), reached over SSH as vmware-system-user
  with the cluster's key through ``lab ssh cluster``;
- this build machine has no Kubernetes binaries (see docs/clusters.md), so the node
  image has no kubeadm: the Machine's condition must name exactly that;
- deleting the Cluster leaves no VM, domain, disk, address, load balancer or Secret.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.network.config import NetworkConfig
from tests.e2e.conftest import kubeconfig_for
from tests.support.kubectl import Kubectl
from tests.support.server import LabServer, network_lab
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

KUBECTL = Path("/usr/bin/kubectl")
BOOT_TIMEOUT = 900
CLUSTER = "c1"
VERSION = "v1.31.4"
DATA = Path(__file__).parent / "data"


@dataclass
class GuestCluster:
    lab: LabServer
    config: NetworkConfig
    ns: str
    kc: Kubectl
    tmp: Path

    def get(self, *args: str) -> Any:
        out = self.kc.run("get", *args, "-n", self.ns, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def ssh(self, *args: str, kubeconfig: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
        env = dict(self.lab.env, KUBECONFIG=str(kubeconfig or self.kc.kubeconfig))
        return subprocess.run([str(Path(__file__).parents[2] / ".venv/bin/lab"), "ssh",
                               "cluster", f"{self.ns}/{CLUSTER}", *args], env=env,
                              capture_output=True, text=True, timeout=300,
                              cwd=self.tmp, check=False)


def manifests() -> list[dict[str, Any]]:
    """CAPV's supervisor-flavour template (cluster-template-supervisor.yaml), variables set."""
    return list(yaml.safe_load_all((DATA / "capv-supervisor-cluster.yaml").read_text()))


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestCluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    with network_lab("cluster") as net:
        ns = f"tkg-{net.tag}"
        kc = Kubectl(KUBECTL, kubeconfig_for(net.server, tmp, ns), tmp / "cache")
        kc.run("create", "namespace", ns)
        net.server.lab("image", "assign", "debian-12", ns)
        net.server.lab("class", "assign", "best-effort-xsmall", ns)
        kc.apply_objects(manifests(), tmp / "cluster.yaml")
        yield GuestCluster(net.server, net.config, ns, kc, tmp)


def machines_vms(g: GuestCluster) -> list[dict[str, Any]]:
    vms = g.get("virtualmachines", "-l", f"capv.vmware.com/cluster.name={CLUSTER}") or {}
    return vms.get("items") or []


def test_machines_become_vms_on_the_segment_behind_the_endpoint_vip(guest: GuestCluster
                                                                    ) -> None:
    g = guest

    def endpoint() -> str | None:
        cluster = g.get("cluster", CLUSTER) or {}
        host = ((cluster.get("spec") or {}).get("controlPlaneEndpoint") or {}).get("host")
        return host if (cluster.get("status") or {}).get("phase") == "Provisioned" else None
    vip = wait_for("the Cluster Provisioned with its endpoint", endpoint, 180, 2.0,
                   describe=lambda: json.dumps((g.get("cluster", CLUSTER) or {}).get("status")))
    assert ipaddress.ip_address(vip) in ipaddress.ip_network(g.config.ingress_cidr)
    vsc = g.get("vspherecluster", CLUSTER)
    assert vsc["spec"]["controlPlaneEndpoint"] == {"host": vip, "port": 6443}
    assert vsc["status"]["ready"] is True
    svc = g.get("virtualmachineservice", f"{CLUSTER}-control-plane-service")
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["ports"][0]["port"] == 6443
    assert svc["spec"]["selector"] == {"capv.vmware.com/cluster.name": CLUSTER,
                                       "capv.vmware.com/cluster.role": "controlplane"}

    def both_answer() -> list[dict[str, Any]] | None:
        vms = machines_vms(g)
        ready = [v for v in vms if (v.get("status") or {}).get("network", {}).get("primaryIP4")]
        return vms if len(vms) == 2 and len(ready) == 2 else None
    vms = wait_for("both nodes answering SSH", both_answer, BOOT_TIMEOUT, 5.0,
                   describe=lambda: json.dumps([v.get("status") for v in machines_vms(g)])[:3000])
    roles = sorted(v["metadata"]["labels"]["capv.vmware.com/cluster.role"] for v in vms)
    assert roles == ["controlplane", "node"]
    for vm in vms:
        ip = vm["status"]["network"]["primaryIP4"]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(g.config.pool_cidr)
        assert vm["spec"]["bootstrap"]["cloudInit"]["rawCloudConfig"]["key"] == "value"
    machines = g.get("machines")["items"]
    assert len(machines) == 2
    for m in machines:
        assert m["spec"]["providerID"].startswith("vsphere://")
        vm = next(v for v in vms if v["metadata"]["name"] == m["spec"]["infrastructureRef"]
                  ["name"])
        assert m["spec"]["providerID"] == f"vsphere://{vm['status']['biosUUID']}"
        assert {"type": "InternalIP", "address": vm["status"]["network"]["primaryIP4"]} in \
            m["status"]["addresses"]
    printed = g.kc.run("get", "machines", "-n", g.ns).stdout
    assert "PROVIDERID" in printed and "vsphere://" in printed
    for name in ("ca", "etcd", "proxy", "sa", "kubeconfig", "ssh"):
        assert g.get("secret", f"{CLUSTER}-{name}") is not None, name
    kubeconfig = yaml.safe_load(base64.b64decode(
        g.get("secret", f"{CLUSTER}-kubeconfig")["data"]["value"]))
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://{vip}:6443"


def test_bootstrap_ran_on_both_nodes_and_ssh_as_vmware_system_user(guest: GuestCluster
                                                                   ) -> None:
    g = guest
    wait_for("both nodes", lambda: len(machines_vms(g)) == 2 and all(
        (v.get("status") or {}).get("network", {}).get("primaryIP4") for v in machines_vms(g)),
             BOOT_TIMEOUT, 5.0)
    ca = base64.b64decode(g.get("secret", f"{CLUSTER}-ca")["data"]["tls.crt"]).decode()
    vip = g.get("cluster", CLUSTER)["spec"]["controlPlaneEndpoint"]["host"]
    for vm in machines_vms(g):
        node = vm["metadata"]["name"]
        control_plane = vm["metadata"]["labels"]["capv.vmware.com/cluster.role"] == \
            "controlplane"

        def finished(node: str = node) -> subprocess.CompletedProcess[str] | None:
            out = g.ssh(node, "--", "cloud-init status --wait >/dev/null; whoami; sudo -n true "
                        "&& echo sudo-ok; sudo cat /run/kubeadm/kubeadm*.yaml; "
                        "sudo cat /etc/kubernetes/pki/ca.crt 2>/dev/null || true")
            return out if out.returncode == 0 else None
        out = wait_for(f"cloud-init on {node}", finished, 300, 5.0)
        assert out.stdout.splitlines()[:2] == ["vmware-system-user", "sudo-ok"]
        if control_plane:
            assert "kind: InitConfiguration" in out.stdout
            assert f"controlPlaneEndpoint: {vip}:6443" in out.stdout
            assert ca.strip() in out.stdout  # the cluster's CA, from <cluster>-ca
        else:
            assert "kind: JoinConfiguration" in out.stdout
            assert f"apiServerEndpoint: {vip}:6443" in out.stdout
    # The default node is the control plane; a node that does not exist is named.
    out = g.ssh("--", "hostname")
    assert out.returncode == 0 and "control-plane" in out.stdout or out.stdout.strip() in [
        v["metadata"]["name"] for v in machines_vms(g)
        if v["metadata"]["labels"]["capv.vmware.com/cluster.role"] == "controlplane"]
    out = g.ssh("no-such-node", "--", "hostname")
    assert out.returncode != 0 and "has no node 'no-such-node'" in out.stderr


def test_the_machine_condition_names_the_bootstrap_failure(guest: GuestCluster) -> None:
    g = guest

    def failed() -> list[dict[str, Any]] | None:
        machines = (g.get("machines") or {}).get("items") or []
        conds = [next((c for c in (m.get("status") or {}).get("conditions") or []
                       if c["type"] == "BootstrapExecSucceeded"), None) for m in machines]
        return conds if len(conds) == 2 and all(c and c["status"] == "False" for c in conds) \
            else None
    conds = wait_for("both machines reporting the bootstrap failure", failed, BOOT_TIMEOUT,
                     5.0, describe=lambda: json.dumps([
                         (m.get("status") or {}).get("conditions")
                         for m in (g.get("machines") or {}).get("items") or []])[:3000])
    for c in conds:
        assert c["reason"] == "KubeadmNotFound", c
        assert "kubeadm is not installed" in c["message"], c
        assert c["severity"] == "Error"
    events = g.kc.run("get", "events", "-n", g.ns, "--field-selector",
                      "reason=KubeadmNotFound", "-o", "json").stdout
    assert json.loads(events)["items"], "no KubeadmNotFound event"
    described = g.kc.run("describe", "machines", "-n", g.ns).stdout
    assert "KubeadmNotFound" in described


def test_viewers_cannot_ssh(guest: GuestCluster, tmp_path: Path) -> None:
    g = guest
    g.lab.add_user("vera", "viewer-password-1")
    g.lab.lab("grant", g.ns, "vera", "view")
    token = g.lab.login("vera", "viewer-password-1")["token"]
    kubeconfig = g.lab.kubeconfig(tmp_path / "vera.kubeconfig", token, g.ns)
    out = g.ssh("--", "hostname", kubeconfig=kubeconfig)
    assert out.returncode != 0
    assert "forbidden" in out.stderr and f"{CLUSTER}-ssh" in out.stderr


def test_deleting_the_cluster_leaves_nothing(guest: GuestCluster) -> None:
    g = guest
    vms = machines_vms(g)
    assert vms, "the cluster has no VMs to delete"
    vip = g.get("cluster", CLUSTER)["spec"]["controlPlaneEndpoint"]["host"]
    domains = [v["status"].get("uniqueID") for v in vms if v.get("status")]
    g.kc.run("delete", "cluster", CLUSTER, "-n", g.ns, "--wait=false")
    wait_for("the Cluster gone", lambda: g.get("cluster", CLUSTER) is None, 600, 3.0,
             describe=lambda: json.dumps(g.get("cluster", CLUSTER))[:2000])
    for kind in ("machines", "machinesets", "machinedeployments", "kubeadmcontrolplanes",
                 "kubeadmconfigs", "vspheremachines", "vsphereclusters", "virtualmachines",
                 "virtualmachineservices"):
        assert (g.get(kind) or {}).get("items") == [], kind
    secrets = (g.get("secrets") or {}).get("items") or []
    assert [s["metadata"]["name"] for s in secrets if s["metadata"]["name"].startswith(
        CLUSTER + "-")] == []
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert not set(domains) & set(listed)
    pool = list((g.lab.state_dir).glob("**/*.qcow2"))
    assert not [p for p in pool if any(v["metadata"]["name"] in p.name for v in vms)]
    addresses = g.kc.run("get", "ipaddresses.ipam.pacific.lab", "-o", "json").stdout
    for vm in vms:
        assert vm["status"]["network"]["primaryIP4"] not in addresses
    assert vip not in addresses
    # The namespace's load balancer is re-rendered by the network controller's next pass.
    wait_for("the VIP gone from the load balancer", lambda: not any(
        vip in p.read_text() for p in g.config.namespace_dir(0).parent.glob("*/haproxy.cfg")),
        120, 2.0)
