"""Bad guest-cluster input through real kubectl against a real host service: clear
errors at admission, and nothing stored when refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.kubectl import Kubectl
from tests.support.server import LabServer

pytestmark = pytest.mark.api

NS = "clusters-bad"
INFRA = "vmware.infrastructure.cluster.x-k8s.io/v1beta1"


@pytest.fixture(scope="module")
def kc(lab: LabServer, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    tmp = tmp_path_factory.mktemp("clusters-bad")
    kubectl = Kubectl(Path("/usr/bin/kubectl"), lab.admin_kubeconfig, tmp / "cache")
    kubectl.run("create", "namespace", NS)
    return kubectl


def cluster(name: str, pods: str = "192.168.0.0/16", services: str = "10.96.0.0/12"
            ) -> dict[str, Any]:
    return {"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"clusterNetwork": {"pods": {"cidrBlocks": [pods]},
                                        "services": {"cidrBlocks": [services]}},
                     "infrastructureRef": {"apiVersion": INFRA, "kind": "VSphereCluster",
                                           "name": name}}}


def kcp(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1",
            "kind": "KubeadmControlPlane", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "version": "v1.31.4",
                     "machineTemplate": {"infrastructureRef": {
                         "apiVersion": INFRA, "kind": "VSphereMachineTemplate", "name": name}},
                     "kubeadmConfigSpec": {}}}


def refused(kc: Kubectl, obj: dict[str, Any], tmp: Path) -> str:
    path = tmp / "obj.json"
    path.write_text(json.dumps(obj))
    out = kc.run("apply", "-f", str(path), check=False)
    assert out.returncode != 0, out.stdout
    kind = obj["kind"].lower()
    assert kc.run("get", kind, obj["metadata"]["name"], "-n", NS, check=False).returncode != 0
    return out.stderr


def test_cluster_ranges_may_not_overlap_the_lab_or_each_other(kc: Kubectl, tmp_path: Path
                                                              ) -> None:
    err = refused(kc, cluster("overlap-lab", pods="198.18.0.0/16"), tmp_path)
    assert "spec.clusterNetwork.pods.cidrBlocks[0]" in err and "198.18.0.0/24" in err
    assert "appliance network" in err
    err = refused(kc, cluster("overlap-each", pods="10.0.0.0/8", services="10.96.0.0/12"),
                  tmp_path)
    assert "overlap" in err
    err = refused(kc, cluster("not-a-cidr", pods="10.0.0.0/33"), tmp_path)
    assert "cidrBlocks[0]" in err


def test_control_plane_replicas_must_be_odd(kc: Kubectl, tmp_path: Path) -> None:
    err = refused(kc, kcp("even", 2), tmp_path)
    assert "spec.replicas" in err and "even" in err
    path = tmp_path / "kcp.json"
    path.write_text(json.dumps(kcp("odd", 1)))
    kc.run("apply", "-f", str(path))
    out = kc.run("patch", "kcp", "odd", "-n", NS, "--type=merge", "-p",
                 '{"spec":{"version":"v1.33.0"}}', check=False)
    assert out.returncode != 0 and "cannot update Kubernetes version" in out.stderr
    kc.run("delete", "kcp", "odd", "-n", NS)


def test_unknown_fields_are_refused_with_strict_validation(kc: Kubectl, tmp_path: Path
                                                           ) -> None:
    obj = cluster("strict")
    obj["spec"]["controlPlaneEndpiont"] = {"host": "x"}  # a typo
    path = tmp_path / "strict.json"
    path.write_text(json.dumps(obj))
    out = kc.run("apply", "--validate=strict", "-f", str(path), check=False)
    assert out.returncode != 0 and "controlPlaneEndpiont" in out.stderr


def tkc(name: str, replicas: int = 1, tkr: str = "v1.31.4---pacific.1",
        vm_class: str = "best-effort-xsmall", pods: str = "192.168.0.0/16") -> dict[str, Any]:
    return {"apiVersion": "run.tanzu.vmware.com/v1alpha3", "kind": "TanzuKubernetesCluster",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"topology": {
                "controlPlane": {"replicas": replicas, "vmClass": vm_class,
                                 "storageClass": "gold", "tkr": {"reference": {"name": tkr}}},
                "nodePools": [{"name": "workers", "replicas": 1, "vmClass": vm_class,
                               "storageClass": "gold"}]},
                "settings": {"network": {"pods": {"cidrBlocks": [pods]}}}}}


def test_bad_tanzu_kubernetes_clusters(lab: LabServer, kc: Kubectl, tmp_path: Path) -> None:
    """Unknown release or class, overlapping ranges, a control plane of 2, and scaling
    the control plane down: refused by name, nothing stored. A release that exists but
    is not Ready is accepted with a warning."""
    lab.lab("class", "assign", "best-effort-xsmall", NS)
    err = refused(kc, tkc("no-release", tkr="v1.99.0---pacific.1"), tmp_path)
    assert 'TanzuKubernetesRelease "v1.99.0---pacific.1" not found' in err
    err = refused(kc, tkc("no-class", vm_class="best-effort-8xlarge"), tmp_path)
    assert 'VirtualMachineClass "best-effort-8xlarge" is not assigned to namespace' in err
    # this build machine has no Kubernetes binaries: the release exists, not Ready
    lab.lab("tkr", "build", "v1.31.4", check=False)
    err = refused(kc, tkc("overlap", pods="198.18.0.0/16"), tmp_path)
    assert "overlaps the lab's network" in err
    err = refused(kc, tkc("two", replicas=2), tmp_path)
    assert "spec.topology.controlPlane.replicas" in err
    path = tmp_path / "three.json"
    path.write_text(json.dumps(tkc("three", replicas=3)))
    out = kc.run("apply", "-f", str(path))
    assert "is not Ready" in out.stderr  # kubectl prints the warning
    out = kc.run("patch", "tkc", "three", "-n", NS, "--type=merge", "-p",
                 '{"spec":{"topology":{"controlPlane":{"replicas":1}}}}', check=False)
    assert out.returncode != 0 and "cannot be scaled down" in out.stderr
    kc.run("delete", "tkc", "three", "-n", NS, "--wait=false")
