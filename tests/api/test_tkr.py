"""`lab tkr build` against a real host service on loopback, checked with real kubectl.

What this test cannot do on this build machine: build a real node image.
There are no Kubernetes binaries here (no reachable registry or mirror has
kubeadm or kubelet, and the Kubernetes package repository pkgs.k8s.io is
not reachable), so the full image build with real binaries is not run. What
is checked is every path this machine allows: the release published with
Ready=False and the message saying what is missing and how to import it, a
refused --from directory (wrong checksum) that changes nothing, and a
refused VERSION. The offline scanner and the recipe are covered by
tests/unit/test_tkr.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from hypervisor.nodeimage import KubeVersion, missing_message, repository_reachable
from tests.support.kubectl import Kubectl
from tests.support.server import LabServer

pytestmark = pytest.mark.api

RELEASE = "v1.31.4---pacific.1"


@pytest.fixture
def kubectl(lab: LabServer, tmp_path: Path) -> Kubectl:
    return Kubectl(Path("/usr/bin/kubectl"), lab.admin_kubeconfig, tmp_path / "kube-cache")


@pytest.fixture(scope="module", autouse=True)
def no_repository() -> None:
    if repository_reachable(KubeVersion(31, 4)):
        pytest.skip("this host reaches pkgs.k8s.io: `lab tkr build` would build a real node "
                    "image here, which is the e2e tier's job")


def snapshot(kubectl: Kubectl) -> dict[str, str]:
    """name -> resourceVersion of every release, OS image and cluster VM image."""
    items = json.loads(kubectl.run("get", "tkr,osimages,clustervirtualmachineimages", "-o",
                                   "json").stdout)["items"]
    return {f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"]
            for i in items}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, stderr
    return lines[0].removeprefix("Error: ")


def test_without_binaries_the_release_exists_not_ready(lab: LabServer, kubectl: Kubectl) -> None:
    proc = lab.lab("tkr", "build", "v1.31.4", check=False)
    assert proc.returncode != 0
    message = missing_message(KubeVersion(31, 4))
    assert error_line(proc.stderr) == message

    table = kubectl.run("get", "tkr").stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "READY", "COMPATIBLE", "CREATED"]
    row = next(line.split() for line in table[1:] if line.startswith(RELEASE + " "))
    assert row[:4] == [RELEASE, "v1.31.4+pacific.1", "False", "True"]

    release = yaml.safe_load(kubectl.run("get", "tkr", RELEASE, "-o", "yaml").stdout)
    assert release["apiVersion"] == "run.tanzu.vmware.com/v1alpha3"
    assert release["spec"]["kubernetes"]["version"] == "v1.31.4"
    assert release["spec"]["osImages"] == [{"name": f"{RELEASE}-debian-12-amd64"}]
    ready = next(c for c in release["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False", "BinariesMissing", message)
    assert "lab tkr build v1.31.4 --from DIR" in ready["message"]

    osimage = json.loads(kubectl.run("get", "osimg", f"{RELEASE}-debian-12-amd64", "-o",
                                     "json").stdout)
    assert osimage["spec"]["image"] == {"type": "vmop", "ref": {
        "kind": "ClusterVirtualMachineImage", "name": "ob-v1-31-4-pacific-1",
        "version": "v1.31.4+pacific.1"}}
    # No node image was built, so there is no ClusterVirtualMachineImage.
    assert kubectl.run("get", "cvmi", "ob-v1-31-4-pacific-1", check=False).returncode != 0

    # Trying again changes nothing but keeps saying what is missing.
    before = snapshot(kubectl)
    again = lab.lab("tkr", "build", "1.31.4", check=False)
    assert again.returncode != 0 and error_line(again.stderr) == message
    listed = lab.lab("tkr", "list").stdout
    assert f"{RELEASE}\tv1.31.4+pacific.1\tFalse\t{message}" in listed
    assert snapshot(kubectl) == before


def test_a_wrong_checksum_is_refused_and_changes_nothing(lab: LabServer, kubectl: Kubectl,
                                                         tmp_path: Path) -> None:
    # Stand-ins for dl.k8s.io's bare binaries, in its directory layout; data only.
    directory = tmp_path / "v1.31.5" / "bin" / "linux" / "amd64"
    directory.mkdir(parents=True)
    for name in ("kubeadm", "kubelet", "kubectl"):
        data = f"#!/bin/sh\necho {name} v1.31.5\n".encode()
        (directory / name).write_bytes(data)
        (directory / f"{name}.sha256").write_text(hashlib.sha256(data).hexdigest())
    (directory / "kubelet").write_bytes(b"#!/bin/sh\necho tampered\n")
    before = snapshot(kubectl)
    proc = lab.lab("tkr", "build", "v1.31.5", "--from", str(tmp_path), check=False)
    assert proc.returncode != 0
    line = error_line(proc.stderr)
    assert line.startswith("v1.31.5/bin/linux/amd64/kubelet: checksum mismatch"), line
    assert snapshot(kubectl) == before
    assert kubectl.run("get", "tkr", "v1.31.5---pacific.1", check=False).returncode != 0


def test_a_bad_version_is_refused(lab: LabServer, kubectl: Kubectl) -> None:
    before = snapshot(kubectl)
    for bad in ("nonsense", "v1.31", "2.0.0"):
        proc = lab.lab("tkr", "build", bad, check=False)
        assert proc.returncode != 0
        assert error_line(proc.stderr) == (f"invalid Kubernetes version {bad!r}: expected "
                                           "v1.MINOR.PATCH, for example v1.31.4")
    assert snapshot(kubectl) == before
