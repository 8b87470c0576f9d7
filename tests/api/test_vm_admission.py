"""VM Service admission: bad VMs get a clear Status and nothing is created.

These run against the real host service; they never create a VM that would
boot (those are the e2e tests), only ones refused at admission or dry runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.api.conftest import Api
from tests.support.kubectl import Kubectl
from tests.support.server import LabServer

pytestmark = pytest.mark.api

G = "/apis/vmoperator.vmware.com"
NS = "vm-admit"


@pytest.fixture(scope="module")
def vmns(lab: LabServer, admin_api: Api) -> str:
    r = admin_api.call("POST", "/api/v1/namespaces", json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    assert r.status_code == 201, r.text
    # An image record published by the administrator (the disk itself is not needed
    # for admission), assigned to the namespace with one class.
    r = admin_api.call("POST", f"{G}/v1alpha5/clustervirtualmachineimages", json={
        "apiVersion": "vmoperator.vmware.com/v1alpha5", "kind": "ClusterVirtualMachineImage",
        "metadata": {"name": "tiny-os"}, "spec": {"type": "qcow2"}})
    assert r.status_code == 201, r.text
    lab.lab("image", "assign", "tiny-os", NS)
    lab.lab("class", "assign", "best-effort-small", NS)
    r = admin_api.call("POST", f"/api/v1/namespaces/{NS}/resourcequotas", json={
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "vm-limits"},
        "spec": {"hard": {"requests.cpu": "3", "requests.memory": "6Gi",
                          "requests.storage": "100Gi"}}})
    assert r.status_code == 201, r.text
    return NS


def _vm(name: str, cls: str = "best-effort-small", image: str = "tiny-os",
        version: str = "v1alpha3", **spec: object) -> dict:
    return {"apiVersion": f"vmoperator.vmware.com/{version}", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"className": cls, "imageName": image, "powerState": "PoweredOn", **spec}}


def _refused(admin_api: Api, body: dict, code: int, reason: str, field: str | None = None
             ) -> dict:
    version = body["apiVersion"].split("/")[1]
    r = admin_api.call("POST", f"{G}/{version}/namespaces/{NS}/virtualmachines", json=body)
    assert r.status_code == code, r.text
    status = r.json()
    assert status["reason"] == reason
    if field:
        assert [c["field"] for c in status["details"]["causes"]] == [field]
    assert admin_api.call("GET", f"{G}/v1alpha5/namespaces/{NS}/virtualmachines/"
                                 f"{body['metadata']['name']}").status_code == 404
    return dict(status)


def test_unknown_class(admin_api: Api, vmns: str) -> None:
    st = _refused(admin_api, _vm("c1", cls="no-such-class"), 422, "Invalid", "spec.className")
    assert 'VirtualMachineClass "no-such-class" not found' in st["message"]


def test_class_not_assigned_to_namespace(admin_api: Api, vmns: str) -> None:
    st = _refused(admin_api, _vm("c2", cls="best-effort-large"), 422, "Invalid",
                  "spec.className")
    assert 'is not assigned to namespace "vm-admit"' in st["message"]


def test_unknown_image(admin_api: Api, vmns: str) -> None:
    st = _refused(admin_api, _vm("i1", image="windows-95"), 422, "Invalid", "spec.imageName")
    assert 'VirtualMachineImage "windows-95" not found' in st["message"]


def test_invalid_cloud_config(admin_api: Api, vmns: str) -> None:
    r = admin_api.call("POST", f"/api/v1/namespaces/{NS}/secrets", json={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad-ud"},
        "stringData": {"user-data": "#cloud-config\nusers: [unclosed\n"}})
    assert r.status_code == 201
    body = _vm("cc1", bootstrap={"cloudInit": {"rawCloudConfig": {"name": "bad-ud",
                                                                  "key": "user-data"}}})
    st = _refused(admin_api, body, 422, "Invalid", "spec.bootstrap.cloudInit.rawCloudConfig")
    assert "invalid cloud-config YAML" in st["message"]
    # v1alpha1's vmMetadata points at the same secret and is refused the same way.
    v1 = {"apiVersion": "vmoperator.vmware.com/v1alpha1", "kind": "VirtualMachine",
          "metadata": {"name": "cc2", "namespace": NS},
          "spec": {"className": "best-effort-small", "imageName": "tiny-os",
                   "powerState": "poweredOn",
                   "vmMetadata": {"secretName": "bad-ud", "transport": "CloudInit"}}}
    _refused(admin_api, v1, 422, "Invalid", "spec.bootstrap.cloudInit.rawCloudConfig")


def test_quota_exceeded(admin_api: Api, vmns: str) -> None:
    # best-effort-small is 2 vCPU / 4Gi; the quota allows 3 CPUs: one fits, two do not.
    r = admin_api.call("POST", f"{G}/v1alpha3/namespaces/{NS}/virtualmachines?dryRun=All",
                       json=_vm("q1"))
    assert r.status_code == 201, r.text
    st = _refused(admin_api, _vm("q2", advanced={"bootDiskCapacity": "200Gi"}), 403,
                  "Forbidden")
    assert "exceeded quota: vm-limits" in st["message"]
    assert "requests.storage=200Gi" in st["message"]


def test_dry_run_and_versions(lab: LabServer, admin_api: Api, vmns: str,
                              tmp_path: Path) -> None:
    kc = Kubectl(Path("/usr/bin/kubectl"), lab.admin_kubeconfig, tmp_path / "cache")
    manifest = tmp_path / "vm.yaml"
    manifest.write_text(yaml.safe_dump(_vm("dry", version="v1alpha2")))
    out = kc.run("apply", "--dry-run=server", "-f", str(manifest), "-o", "json").stdout
    obj = json.loads(out)
    assert obj["spec"]["powerState"] == "PoweredOn" and obj["kind"] == "VirtualMachine"
    assert kc.run("get", "vm", "-n", NS, check=False).stderr.startswith("No resources found")
    # Strategic merge patches are refused for our kinds (415), as kube-apiserver does for CRDs.
    r = admin_api.call("PATCH", f"{G}/v1alpha5/namespaces/{NS}/virtualmachines/x",
                       data=b"{}", headers={"Content-Type":
                                            "application/strategic-merge-patch+json"})
    assert r.status_code == 415


def test_v1alpha1_round_trip() -> None:
    from appliance.kinds.vmop import vm_storage_to_v1a1, vm_v1a1_to_storage

    v1 = {"apiVersion": "vmoperator.vmware.com/v1alpha1", "kind": "VirtualMachine",
          "metadata": {"name": "old", "namespace": NS},
          "spec": {"className": "c", "imageName": "i", "powerState": "poweredOff",
                   "vmMetadata": {"secretName": "ud", "transport": "CloudInit"},
                   "networkInterfaces": [{"networkName": "primary", "networkType": "nsx-t"}]},
          "status": {"vmIp": "198.18.0.10", "powerState": "poweredOff"}}
    stored = vm_v1a1_to_storage(v1)
    assert stored["spec"]["powerState"] == "PoweredOff"
    assert stored["spec"]["bootstrap"] == {"cloudInit": {"rawCloudConfig": {
        "name": "ud", "key": "user-data"}}}
    assert stored["status"]["network"]["primaryIP4"] == "198.18.0.10"
    back = vm_storage_to_v1a1(stored)
    assert back["spec"]["vmMetadata"] == {"secretName": "ud", "transport": "CloudInit"}
    assert back["spec"]["powerState"] == "poweredOff" and back["status"]["vmIp"] == "198.18.0.10"
    # Newer-only fields survive a trip through v1alpha1.
    newer = dict(stored, spec=dict(stored["spec"], advanced={"bootDiskCapacity": "30Gi"}))
    again = vm_v1a1_to_storage(vm_storage_to_v1a1(newer))
    assert again["spec"]["advanced"] == {"bootDiskCapacity": "30Gi"}


def test_a_vm_never_placed_can_be_deleted(vmns: str, admin_api: Api) -> None:
    """A VM no host has room for is never placed, so no host agent will ever tear it
    down: deleting it must not hang on its finalizer (nor its namespace on it)."""
    import time

    r = admin_api.call("POST", f"{G}/v1alpha5/namespaces/{NS}/virtualmachineclasses", json={
        "apiVersion": "vmoperator.vmware.com/v1alpha5", "kind": "VirtualMachineClass",
        "metadata": {"name": "no-host-is-this-big"},
        "spec": {"hardware": {"cpus": 512, "memory": "64Ti"}}})
    assert r.status_code == 201, r.text
    admin_api.call("DELETE", f"/api/v1/namespaces/{NS}/resourcequotas/vm-limits")
    vm = _vm("never-placed", cls="no-host-is-this-big")
    r = admin_api.call("POST", f"{G}/v1alpha3/namespaces/{NS}/virtualmachines", json=vm)
    assert r.status_code == 201, r.text
    path = f"{G}/v1alpha5/namespaces/{NS}/virtualmachines/never-placed"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the scheduler has looked at it and said no
        conds = admin_api.call("GET", path).json().get("status", {}).get("conditions", [])
        if any(c.get("reason") == "InsufficientCapacity" for c in conds):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the scheduler never reported InsufficientCapacity")
    assert admin_api.call("DELETE", path).status_code == 200
    deadline = time.monotonic() + 30
    while admin_api.call("GET", path).status_code != 404:
        assert time.monotonic() < deadline, "the unplaced VM hung on its finalizer"
        time.sleep(0.5)


def test_static_addresses_are_address_slash_prefix(admin_api: Api, vmns: str) -> None:
    status = _refused(admin_api, _vm("bad-addr", network={"interfaces": [
        {"name": "eth0", "addresses": ["10.0.0.5", "nonsense/24"]}]}), 422, "Invalid")
    fields = [c["field"] for c in status["details"]["causes"]]
    assert fields == ["spec.network.interfaces[0].addresses[0]",
                      "spec.network.interfaces[0].addresses[1]"]
    r = admin_api.call("POST", f"{G}/v1alpha3/namespaces/{NS}/virtualmachines?dryRun=All",
                       json=_vm("good-addr", network={"interfaces": [
                           {"name": "eth0", "addresses": ["10.0.0.42/24"]}]}))
    assert r.status_code == 201, r.text
