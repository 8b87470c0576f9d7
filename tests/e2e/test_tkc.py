"""A TanzuKubernetesCluster through kubectl, as a vSphere developer writes it, on a real
host service with namespace networks and real libvirt (TCG). One TKC (1 control-plane
node, a node pool of 1) is shared by the tests here.

The node image: this build machine has no Kubernetes binaries (docs/clusters.md), so
the release v1.31.4 is published for the plain debian-12 library image with
``lab tkr import`` (as an administrator publishes a node image they brought). The
nodes boot, run the bootstrap, and report that kubeadm is missing.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import kubeconfig_for
from tests.support.kubectl import Kubectl
from tests.support.server import LabServer, network_lab
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

KUBECTL = Path("/usr/bin/kubectl")
BOOT_TIMEOUT = 900
NAME = "tkc-1"
RELEASE = "v1.31.4---pacific.1"
LAB = str(Path(__file__).parents[2] / ".venv/bin/lab")


@dataclass
class Tkc:
    lab: LabServer
    ns: str
    kc: Kubectl
    tmp: Path

    def get(self, *args: str) -> Any:
        out = self.kc.run("get", *args, "-n", self.ns, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def items(self, kind: str, *args: str) -> list[dict[str, Any]]:
        return (self.get(kind, *args) or {}).get("items") or []

    def user_lab(self, *args: str, kubeconfig: Path | None = None
                 ) -> subprocess.CompletedProcess[str]:
        env = dict(self.lab.env, KUBECONFIG=str(kubeconfig or self.kc.kubeconfig))
        return subprocess.run([LAB, *args], env=env, capture_output=True, text=True,
                              timeout=300, cwd=self.tmp, check=False)


def manifest() -> dict[str, Any]:
    """As vSphere 8's documentation writes a v1alpha3 TKC."""
    return {"apiVersion": "run.tanzu.vmware.com/v1alpha3", "kind": "TanzuKubernetesCluster",
            "metadata": {"name": NAME},
            "spec": {"topology": {
                "controlPlane": {"replicas": 1, "vmClass": "best-effort-xsmall",
                                 "storageClass": "pacific-default",
                                 "tkr": {"reference": {"name": RELEASE}}},
                "nodePools": [{"name": "workers", "replicas": 1,
                               "vmClass": "best-effort-xsmall",
                               "storageClass": "pacific-default"}]},
                "settings": {"network": {"cni": {"name": "antrea"},
                                         "pods": {"cidrBlocks": ["192.168.0.0/16"]},
                                         "services": {"cidrBlocks": ["10.96.0.0/12"]},
                                         "serviceDomain": "cluster.local"}}}}


@pytest.fixture(scope="module")
def tkc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tkc]:
    tmp = tmp_path_factory.mktemp("tkc")
    with network_lab("tkc") as net:
        net.server.lab("tkr", "import", "v1.31.4", "--image", "debian-12")
        ns = f"tkg-{net.tag}"
        kc = Kubectl(KUBECTL, kubeconfig_for(net.server, tmp, ns), tmp / "cache")
        kc.run("create", "namespace", ns)
        net.server.lab("class", "assign", "best-effort-xsmall", ns)
        wait_for("the tanzukubernetescluster ClusterClass shipped", lambda: kc.run(
            "get", "clusterclass", "tanzukubernetescluster", "-n", ns, check=False
        ).returncode == 0, 60, 1.0)
        kc.apply_objects([manifest()], tmp / "tkc.yaml")
        yield Tkc(net.server, ns, kc, tmp)


def test_a_tkc_expands_into_cluster_api_objects_and_vms(tkc: Tkc) -> None:
    def expanded() -> dict[str, int] | None:
        counts = {k: len(tkc.items(k)) for k in (
            "clusters", "kubeadmcontrolplanes", "machinedeployments", "machines",
            "vspheremachines", "virtualmachines")}
        return counts if all(v >= (2 if k in ("machines", "vspheremachines",
                                              "virtualmachines") else 1)
                             for k, v in counts.items()) else None
    counts = wait_for("the TKC's objects", expanded, 300, 2.0,
                      describe=lambda: json.dumps((tkc.get("tkc", NAME) or {}).get("status"))
                      + json.dumps((tkc.get("cluster", NAME) or {}).get("status"))[:1500])
    assert counts == {"clusters": 1, "kubeadmcontrolplanes": 1, "machinedeployments": 1,
                      "machines": 2, "vspheremachines": 2, "virtualmachines": 2}
    cluster = tkc.get("cluster", NAME)
    assert cluster["spec"]["topology"]["class"] == "tanzukubernetescluster"
    assert cluster["spec"]["topology"]["version"] == "v1.31.4"
    owner = cluster["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "TanzuKubernetesCluster" and owner["name"] == NAME
    for vm in tkc.items("virtualmachines"):
        assert vm["spec"]["className"] == "best-effort-xsmall"
        assert vm["spec"]["imageName"] == "debian-12"

    def endpoint() -> str | None:
        eps = (tkc.get("tkc", NAME) or {}).get("status", {}).get("apiEndpoints") or []
        return eps[0]["host"] if eps else None
    wait_for("the endpoint VIP on the TKC", endpoint, 180, 2.0)
    for name in ("ssh", "kubeconfig", "ca"):
        assert tkc.get("secret", f"{NAME}-{name}") is not None, name


def test_kubectl_get_tkc_shows_vsphere_columns(tkc: Tkc) -> None:
    out = tkc.kc.run("get", "tkc", "-n", tkc.ns).stdout
    header = out.splitlines()[0].split()
    assert header[:3] == ["NAME", "CONTROL", "PLANE"] and "TKR" in header
    assert "COMPATIBLE" in header and "UPDATES" in header
    row = out.splitlines()[1].split()
    assert row[0] == NAME and row[1] == "1" and row[2] == "1" and row[3] == RELEASE
    v2 = tkc.kc.run("get", "tanzukubernetesclusters.v1alpha2.run.tanzu.vmware.com", NAME,
                    "-n", tkc.ns, "-o", "json")
    assert json.loads(v2.stdout)["apiVersion"] == "run.tanzu.vmware.com/v1alpha2"


def test_ssh_and_kubeconfig_for_the_developer(tkc: Tkc) -> None:
    wait_for("both nodes answering SSH", lambda: len([
        v for v in tkc.items("virtualmachines")
        if (v.get("status") or {}).get("network", {}).get("primaryIP4")]) == 2,
        BOOT_TIMEOUT, 5.0)
    out = wait_for("lab ssh cluster", lambda: (lambda p: p if p.returncode == 0 else None)(
        tkc.user_lab("ssh", "cluster", f"{tkc.ns}/{NAME}", "--", "whoami")), 300, 5.0)
    assert out.stdout.strip() == "vmware-system-user"
    out = tkc.user_lab("kubeconfig", f"{tkc.ns}/{NAME}")
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    ca = base64.b64decode(tkc.get("secret", f"{NAME}-ca")["data"]["tls.crt"])
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]) \
        == ca
    vip = tkc.get("tkc", NAME)["status"]["apiEndpoints"][0]["host"]
    assert config["clusters"][0]["cluster"]["server"] == f"https://{vip}:6443"


def test_the_tkc_says_why_it_cannot_be_ready(tkc: Tkc) -> None:
    def failed() -> dict[str, Any] | None:
        status = (tkc.get("tkc", NAME) or {}).get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "KubeadmNotFound" else None
    ready = wait_for("Ready False with the bootstrap failure", failed, BOOT_TIMEOUT, 5.0)
    assert "kubeadm is not installed" in ready["message"]
    described = tkc.kc.run("describe", "tkc", NAME, "-n", tkc.ns).stdout
    assert "ClusterCreated" in described


def test_viewers_get_no_kubeconfig_and_no_ssh(tkc: Tkc, tmp_path: Path) -> None:
    tkc.lab.add_user("vic", "viewer-password-1")
    tkc.lab.lab("grant", tkc.ns, "vic", "view")
    token = tkc.lab.login("vic", "viewer-password-1")["token"]
    kubeconfig = tkc.lab.kubeconfig(tmp_path / "vic.kubeconfig", token, tkc.ns)
    out = tkc.user_lab("kubeconfig", f"{tkc.ns}/{NAME}", kubeconfig=kubeconfig)
    assert out.returncode != 0 and "forbidden" in out.stderr
    out = tkc.user_lab("ssh", "cluster", f"{tkc.ns}/{NAME}", "--", "true",
                       kubeconfig=kubeconfig)
    assert out.returncode != 0 and "forbidden" in out.stderr
    assert tkc.kc.as_user(kubeconfig).run("get", "tkc", NAME, "-n", tkc.ns).returncode == 0
    # every signed-in user reads the releases, as on vSphere
    assert RELEASE in tkc.kc.as_user(kubeconfig).run("get", "tkr").stdout


def test_deleting_the_tkc_leaves_nothing(tkc: Tkc) -> None:
    vms = tkc.items("virtualmachines")
    tkc.kc.run("delete", "tkc", NAME, "-n", tkc.ns, "--wait=false")
    wait_for("the TKC gone", lambda: tkc.get("tkc", NAME) is None, 600, 3.0,
             describe=lambda: json.dumps(tkc.get("tkc", NAME))[:1500])
    for kind in ("clusters", "machines", "machinedeployments", "kubeadmcontrolplanes",
                 "vspheremachines", "virtualmachines", "virtualmachineservices"):
        assert tkc.items(kind) == [], kind
    names = [s["metadata"]["name"] for s in tkc.items("secrets")]
    assert [n for n in names if n.startswith(NAME + "-")] == []
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert not {v["status"].get("uniqueID") for v in vms} & set(listed)
