"""Guest clusters (TanzuKubernetesCluster) in the dashboard, against a real in-process
supervisor on a throwaway SQLite state directory: the namespace's list and the cluster's
page (status as the controllers would write it, by hand here), the form with its dry run
and field errors, scaling, deleting, the kubeconfig download, and what a viewer may not
see or do."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from appliance.auth import bootstrap
from appliance.errors import ApiError
from appliance.kinds.tanzu import release_names
from appliance.objects import MERGE_PATCH, SYSTEM, Target, WriteOptions
from appliance.service import Supervisor
from appliance.vmservice import tkr
from appliance.vmservice.catalog import Catalog
from tests.unit.test_web import (PASSWORDS, Browser, _supervisor, field_error, kind,
                                 make_namespace, names, plain, text)
from web import create_app
from web.lab import Lab

TANZU = "run.tanzu.vmware.com"
CAPI = "cluster.x-k8s.io"
VMOP = "vmoperator.vmware.com"
RBAC = "rbac.authorization.k8s.io"
RELEASE = release_names("v1.31.4").release  # v1.31.4---pacific.1, Ready
OLD_RELEASE = release_names("v1.30.2").release  # not Ready
KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\n# KUBECONFIG-MARKER-7c1f\n"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Supervisor, Flask]]:
    sup, _ = _supervisor(tmp_path / "state")
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    bootstrap.grant(sup.service, SYSTEM, "dev", "bob", "view")
    tkr.import_release(sup.service, tkr.parse("v1.31.4"), "debian-12")
    tkr.publish(sup.service, release_names("v1.30.2"), ready=False, reason="ImageNotBuilt",
                message="no node image was built", node_image="debian-12")
    yield sup, create_app({"TESTING": True}, supervisor=sup)


def tkcs(sup: Supervisor) -> Target:
    return Target(kind(sup, TANZU, "tanzukubernetesclusters"), "v1alpha3", "dev")


def get_tkc(sup: Supervisor, name: str) -> dict[str, Any]:
    t = tkcs(sup)
    return sup.service.get(SYSTEM, Target(t.kind, t.version, "dev", name))


def make_tkc(sup: Supervisor, name: str = "tkc-1", workers: int = 2) -> dict[str, Any]:
    ref = {"reference": {"name": RELEASE}}
    return sup.service.create(SYSTEM, tkcs(sup), {
        "apiVersion": f"{TANZU}/v1alpha3", "kind": "TanzuKubernetesCluster",
        "metadata": {"name": name, "namespace": "dev"},
        "spec": {"topology": {
            "controlPlane": {"replicas": 1, "vmClass": "best-effort-xsmall",
                             "storageClass": "pacific-default", "tkr": ref},
            "nodePools": [{"name": "workers", "replicas": workers,
                           "vmClass": "best-effort-xsmall", "storageClass": "pacific-default",
                           "tkr": ref}]}}}).obj


def cond(type_: str, status: str, reason: str = "", message: str = "",
         severity: str = "") -> dict[str, str]:
    out = {"type": type_, "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    if severity:
        out["severity"] = severity
    return out


def set_status(sup: Supervisor, group: str, plural: str, version: str, name: str,
               status: dict[str, Any]) -> None:
    """What a controller would write (the controllers do not run in unit tests)."""
    sup.service.patch(SYSTEM, Target(kind(sup, group, plural), version, "dev", name, "status"),
                      MERGE_PATCH, {"status": status}, WriteOptions())


BOOTSTRAP_FAILED = ("machine tkc-1-workers-abcde: kubeadm is not installed on the node image "
                    "(/usr/bin/kubeadm missing)")
CREATING = {"phase": "creating", "version": "v1.31.4+pacific.1", "totalWorkerReplicas": 2,
            "conditions": [
                cond("Ready", "False", "KubeadmNotFound", BOOTSTRAP_FAILED, "Error"),
                cond("ControlPlaneReady", "True", "ControlPlaneReady"),
                cond("NodePoolsReady", "False", "NodePoolsNotReady",
                     "node pools not ready: tkc-1-workers-x7k2p"),
                cond("TanzuKubernetesReleaseCompatible", "True"),
                cond("UpdatesAvailable", "False", "AlreadyUpToDate")]}


def make_node(sup: Supervisor, cluster: str, machine: str, control_plane: bool,
              status: dict[str, Any], ip: str = "") -> None:
    """A Machine of the cluster and the VirtualMachine behind it, as CAPI and CAPV make them."""
    labels = {"cluster.x-k8s.io/cluster-name": cluster}
    if control_plane:
        labels["cluster.x-k8s.io/control-plane"] = ""
    else:
        labels["topology.cluster.x-k8s.io/deployment-name"] = "workers"
    sup.service.create(SYSTEM, Target(kind(sup, CAPI, "machines"), "v1beta1", "dev"), {
        "apiVersion": f"{CAPI}/v1beta1", "kind": "Machine",
        "metadata": {"name": machine, "namespace": "dev", "labels": labels},
        "spec": {"clusterName": cluster, "version": "v1.31.4",
                 "bootstrap": {"dataSecretName": machine},
                 "infrastructureRef": {
                     "apiVersion": "vmware.infrastructure.cluster.x-k8s.io/v1beta1",
                     "kind": "VSphereMachine", "name": machine}}})
    set_status(sup, CAPI, "machines", "v1beta1", machine, status)
    sup.service.create(SYSTEM, Target(kind(sup, VMOP, "virtualmachines"), "v1alpha5", "dev"), {
        "apiVersion": f"{VMOP}/v1alpha5", "kind": "VirtualMachine",
        "metadata": {"name": machine, "namespace": "dev", "labels": {
            "capv.vmware.com/cluster.name": cluster,
            "capv.vmware.com/cluster.role": "controlplane" if control_plane else "node"}},
        "spec": {"className": "best-effort-xsmall", "imageName": "debian-12"}})
    if ip:
        set_status(sup, VMOP, "virtualmachines", "v1alpha5", machine,
                   {"host": "lab-host", "powerState": "PoweredOn",
                    "network": {"primaryIP4": ip}})


def make_cluster_with_nodes(sup: Supervisor) -> None:
    make_tkc(sup)
    set_status(sup, TANZU, "tanzukubernetesclusters", "v1alpha3", "tkc-1", {
        **CREATING, "apiEndpoints": [{"host": "198.18.1.20", "port": 6443}]})
    make_node(sup, "tkc-1", "tkc-1-cp-4kx9z", True, {
        "phase": "Running", "nodeRef": {"kind": "Node", "name": "tkc-1-cp-4kx9z"},
        "conditions": [cond("Ready", "True"), cond("NodeHealthy", "True")]}, ip="198.18.1.11")
    make_node(sup, "tkc-1", "tkc-1-workers-abcde", False, {
        "phase": "Provisioned", "conditions": [
            cond("Ready", "False", "KubeadmNotFound", BOOTSTRAP_FAILED, "Error"),
            cond("BootstrapExecSucceeded", "False", "KubeadmNotFound", BOOTSTRAP_FAILED,
                 "Error"),
            cond("InfrastructureReady", "True")]}, ip="198.18.1.12")
    sup.service.create(SYSTEM, Target(kind(sup, "", "secrets"), "v1", "dev"), {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tkc-1-kubeconfig",
                                                           "namespace": "dev"},
        "type": "cluster.x-k8s.io/secret",
        "data": {"value": base64.b64encode(KUBECONFIG.encode()).decode()}})


def login(app: Flask, who: str) -> Browser:
    b = Browser(app)
    b.login(who, PASSWORDS[who])
    return b


def tkc_form(name: str = "tkc-1", **extra: str) -> dict[str, str]:
    return {"name": name, "tkr": RELEASE, "cp_replicas": "1", "cp_class": "best-effort-xsmall",
            "storage_class": "pacific-default", "pool_name": "workers", "pool_replicas": "2",
            "pool_class": "best-effort-xsmall", **extra}


# -- the namespace's list -----------------------------------------------------------------------


def test_namespace_page_lists_clusters_and_follows_them(lab: Any) -> None:
    sup, app = lab
    make_cluster_with_nodes(sup)
    make_tkc(sup, "tkc-2", workers=1)  # no status yet: the controller has not seen it
    alice = login(app, "alice")
    page = text(alice.get("/ns/dev"))
    assert 'data-live="/ns/dev/live/clusters"' in page and "New cluster" in page
    row = re.search(r'<tr data-name="tkc-1">(.*?)</tr>', page, re.S)
    assert row, page
    cells = plain_text(row.group(1))
    for expected in ("tkc-1", "Creating", "v1.31.4+pacific.1", "1/1", "0/2",
                     "Kubeadm not found", BOOTSTRAP_FAILED):
        assert expected in cells, (expected, cells)
    other = plain_text(re.search(r'<tr data-name="tkc-2">(.*?)</tr>', page, re.S).group(1))
    assert "Pending" in other and RELEASE in other and "0/1" in other

    # The live part follows the status the controller writes, without a reload.
    set_status(sup, TANZU, "tanzukubernetesclusters", "v1alpha3", "tkc-1", {
        "phase": "running", "conditions": [cond("Ready", "True", "Ready")]})
    part = alice.get("/ns/dev/live/clusters", headers={"X-Live": "1"})
    fragment = text(part)
    assert part.status_code == 200 and "<html" not in fragment
    row = plain_text(re.search(r'<tr data-name="tkc-1">(.*?)</tr>', fragment, re.S).group(1))
    assert "Running" in row and BOOTSTRAP_FAILED not in row
    assert Browser(app).get("/ns/dev/live/clusters", headers={"X-Live": "1"}).status_code == 401


def plain_text(html: str) -> str:
    import html as html_lib

    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


# -- one cluster --------------------------------------------------------------------------------


def test_cluster_page_shows_status_nodes_yaml_and_commands(lab: Any) -> None:
    sup, app = lab
    make_cluster_with_nodes(sup)
    alice = login(app, "alice")
    resp = alice.get("/ns/dev/clusters/tkc-1")
    assert resp.status_code == 200
    page = plain(resp)
    assert 'data-live="/ns/dev/clusters/tkc-1/live/status"' in page
    assert 'data-live="/ns/dev/clusters/tkc-1/live/events"' in page
    assert 'id="cluster-phase"' in page and "Creating" in page
    assert BOOTSTRAP_FAILED in page  # the exact failure, from the Ready condition
    assert "https://198.18.1.20:6443" in page
    assert "1 of 1 ready" in page and "0 of 2 ready" in page
    nodes = plain_text(re.search(r'<table class="table" id="node-table">(.*?)</table>',
                                 text(resp), re.S).group(1))
    for expected in ("tkc-1-cp-4kx9z", "control plane", "198.18.1.11", "Running",
                     "tkc-1-workers-abcde", "workers", "198.18.1.12", "Provisioned",
                     "Bootstrap exec succeeded", "not joined"):
        assert expected in nodes, (expected, nodes)
    assert 'href="/ns/dev/vms/tkc-1-workers-abcde"' in page
    # CAPI's severities: an Error is bad, Info is waiting, no update available is fine.
    tones = {t: re.search(rf'<tr data-type="{t}">(.*?)</tr>', text(resp), re.S).group(1)
             for t in ("Ready", "NodePoolsReady", "ControlPlaneReady", "UpdatesAvailable")}
    assert "state-bad" in tones["Ready"] and "state-info" in tones["NodePoolsReady"]
    assert "state-ok" in tones["ControlPlaneReady"] and "state-muted" in tones["UpdatesAvailable"]
    # The TKC's YAML, and the way to the generic object view.
    assert "kind: TanzuKubernetesCluster" in page and "vmClass: best-effort-xsmall" in page
    assert "/ns/dev/o/run.tanzu.vmware.com/tanzukubernetesclusters/tkc-1" in page
    assert "lab ssh cluster dev/tkc-1" in page and "lab kubeconfig dev/tkc-1" in page
    assert "Download kubeconfig" in page and "Scale" in page and "Delete" in page
    # Secret data is never rendered into a page.
    assert "KUBECONFIG-MARKER" not in page
    assert base64.b64encode(KUBECONFIG.encode()).decode() not in page

    # The live part: a condition message that arrives later shows without a reload.
    later = "waiting for the control plane endpoint: VirtualMachineService has no VIP yet"
    set_status(sup, TANZU, "tanzukubernetesclusters", "v1alpha3", "tkc-1", {
        "conditions": [cond("Ready", "False", "WaitingForControlPlane", later)]})
    part = alice.get("/ns/dev/clusters/tkc-1/live/status", headers={"X-Live": "1"})
    fragment = plain(part)
    assert part.status_code == 200 and "<html" not in fragment
    assert later in fragment and 'id="node-table"' in fragment
    set_status(sup, TANZU, "tanzukubernetesclusters", "v1alpha3", "tkc-1", {
        "conditions": [cond("Ready", "False", "WaitingForControlPlane")]})
    fragment = plain(alice.get("/ns/dev/clusters/tkc-1/live/status", headers={"X-Live": "1"}))
    state_line = re.search(r'<div class="vm-state-line".*?</div>', fragment, re.S).group(0)
    assert "Waiting for control plane" in state_line  # the reason, when there is no message
    events = alice.get("/ns/dev/clusters/tkc-1/live/events", headers={"X-Live": "1"})
    assert events.status_code == 200 and "<html" not in text(events)

    assert alice.get("/ns/dev/clusters/nope").status_code == 404
    assert "no longer exists" in text(alice.get("/ns/dev/clusters/nope/live/status",
                                                headers={"X-Live": "1"}))
    assert alice.get("/ns/dev/clusters/tkc-1/live/secrets").status_code == 404


def test_editor_downloads_the_kubeconfig_and_a_viewer_may_not(lab: Any) -> None:
    sup, app = lab
    make_cluster_with_nodes(sup)
    alice = login(app, "alice")
    resp = alice.post("/ns/dev/clusters/tkc-1/kubeconfig")
    assert resp.status_code == 200
    assert resp.data.decode() == KUBECONFIG
    assert resp.headers["Content-Disposition"] == 'attachment; filename="dev-tkc-1.kubeconfig"'
    assert resp.headers["Cache-Control"] == "no-store"
    assert alice.get("/ns/dev/clusters/tkc-1/kubeconfig").status_code == 405  # never a GET
    make_tkc(sup, "tkc-2")
    missing = alice.post("/ns/dev/clusters/tkc-2/kubeconfig")
    assert missing.status_code == 404 and "no kubeconfig yet" in text(missing)

    bob = login(app, "bob")
    page = plain(bob.get("/ns/dev/clusters/tkc-1"))
    assert "Download kubeconfig" not in page and "/kubeconfig" not in page
    assert "lab ssh cluster" not in page and "viewers cannot read" in page
    refused = bob.post("/ns/dev/clusters/tkc-1/kubeconfig")
    assert refused.status_code == 403 and "KUBECONFIG-MARKER" not in text(refused)


# -- create -------------------------------------------------------------------------------------


def test_editor_creates_a_cluster_after_a_dry_run(lab: Any, monkeypatch: Any) -> None:
    sup, app = lab
    alice = login(app, "alice")
    form = plain(alice.get("/ns/dev/clusters/new"))
    assert "best-effort-xsmall (2 vCPU, 2 GiB)" in form
    assert f"{RELEASE} (Ready)" in form and f"{OLD_RELEASE} (not Ready: no node image" in form
    assert re.search(rf'<option value="{re.escape(OLD_RELEASE)}"[^>]*disabled', form)
    assert re.search(rf'<option value="{re.escape(RELEASE)}" selected', form)

    calls: list[tuple[str, bool]] = []
    real = sup.service.create

    def recording(user: Any, t: Target, body: Any, opts: WriteOptions | None = None) -> Any:
        if t.plural == "tanzukubernetesclusters":
            calls.append((user.name, bool((opts or WriteOptions()).dry_run)))
        return real(user, t, body, opts or WriteOptions())

    monkeypatch.setattr(sup.service, "create", recording)
    resp = alice.post("/ns/dev/clusters/new", tkc_form(cp_replicas="3", pool_replicas="4"))
    assert resp.status_code == 302, text(resp)
    assert resp.headers["Location"].endswith("/ns/dev/clusters/tkc-1")
    assert calls == [("alice", True), ("alice", False)]
    obj = get_tkc(sup, "tkc-1")
    top = obj["spec"]["topology"]
    assert top["controlPlane"] == {"replicas": 3, "vmClass": "best-effort-xsmall",
                                   "storageClass": "pacific-default",
                                   "tkr": {"reference": {"name": RELEASE}}}
    assert top["nodePools"] == [{"name": "workers", "replicas": 4,
                                 "vmClass": "best-effort-xsmall",
                                 "storageClass": "pacific-default",
                                 "tkr": {"reference": {"name": RELEASE}}}]
    page = plain(alice.get("/ns/dev/clusters/tkc-1"))
    assert "Cluster tkc-1 created" in page

    # The same name again: the message sits next to the name.
    again = alice.post("/ns/dev/clusters/new", tkc_form())
    assert again.status_code == 409
    assert "already exists" in field_error(text(again), "name")
    assert names(sup, TANZU, "tanzukubernetesclusters", "dev") == ["tkc-1"]


@pytest.mark.parametrize(("extra", "field", "message"), [
    ({"name": "Tkc_1"}, "name", "Use only lower-case letters"),
    ({"name": ""}, "name", "Enter a cluster name"),
    ({"cp_replicas": "2"}, "cp_replicas", "Choose 1 or 3"),
    ({"cp_class": ""}, "cp_class", "Choose a VM class"),
    ({"tkr": ""}, "tkr", "Choose a Kubernetes release"),
    ({"pool_name": "Pool 1"}, "pool_name", "Use only lower-case letters"),
    ({"pool_replicas": "-1"}, "pool_replicas", "whole number from 0 to 50"),
    ({"pool_replicas": "many"}, "pool_replicas", "whole number from 0 to 50"),
    ({"storage_class": "Fast_SSD"}, "storage_class", "Use only lower-case letters"),
])
def test_cluster_form_refuses_bad_input(lab: Any, extra: dict[str, str], field: str,
                                        message: str) -> None:
    sup, app = lab
    alice = login(app, "alice")
    resp = alice.post("/ns/dev/clusters/new", tkc_form(**extra))
    assert resp.status_code == 400
    html = text(resp)
    assert message in field_error(html, field)
    assert 'aria-invalid="true"' in html
    assert names(sup, TANZU, "tanzukubernetesclusters", "dev") == []


@pytest.mark.parametrize(("extra", "field", "message"), [
    ({"cp_class": "best-effort-large"}, "cp_class",
     'VirtualMachineClass "best-effort-large" is not assigned to namespace "dev"'),
    ({"pool_class": "no-such-class"}, "pool_class", 'VirtualMachineClass "no-such-class" not '
                                                    "found"),
    ({"tkr": "v9.9.9---pacific.1"}, "tkr", 'TanzuKubernetesRelease "v9.9.9---pacific.1" not '
                                           "found"),
])
def test_the_dry_run_refusal_shows_next_to_the_field_and_nothing_is_stored(
        lab: Any, monkeypatch: Any, extra: dict[str, str], field: str, message: str) -> None:
    sup, app = lab
    alice = login(app, "alice")
    stored: list[str] = []
    real = sup.service.create

    def recording(user: Any, t: Target, body: Any, opts: WriteOptions | None = None) -> Any:
        if t.plural == "tanzukubernetesclusters" and not (opts and opts.dry_run):
            stored.append(body["metadata"]["name"])
        return real(user, t, body, opts or WriteOptions())

    monkeypatch.setattr(sup.service, "create", recording)
    resp = alice.post("/ns/dev/clusters/new", tkc_form(**extra))
    assert resp.status_code == 422
    assert message in field_error(plain(resp), field)
    assert stored == []  # the real create never ran
    assert names(sup, TANZU, "tanzukubernetesclusters", "dev") == []


def test_without_leave_to_list_releases_the_form_asks_for_a_name(lab: Any,
                                                                 monkeypatch: Any) -> None:
    sup, app = lab
    real = Lab.can

    def no_releases(self: Lab, user: Any, verb: str, group: str, plural: str, *a: Any,
                    **kw: Any) -> bool:
        if plural == "tanzukubernetesreleases":
            return False
        return real(self, user, verb, group, plural, *a, **kw)

    monkeypatch.setattr(Lab, "can", no_releases)
    alice = login(app, "alice")
    form = text(alice.get("/ns/dev/clusters/new"))
    assert '<input id="tkr" name="tkr" type="text"' in form and "kubectl get tkr" in form
    assert alice.post("/ns/dev/clusters/new", tkc_form()).status_code == 302
    assert names(sup, TANZU, "tanzukubernetesclusters", "dev") == ["tkc-1"]


# -- scale and delete ---------------------------------------------------------------------------


def test_editor_scales_a_node_pool(lab: Any) -> None:
    sup, app = lab
    make_cluster_with_nodes(sup)
    alice = login(app, "alice")
    page = text(alice.get("/ns/dev/clusters/tkc-1"))
    assert 'aria-label="Scale node pool workers"' in page
    resp = alice.post("/ns/dev/clusters/tkc-1/scale", {"pool": "workers", "replicas": "5"})
    assert resp.status_code == 302, text(resp)
    obj = get_tkc(sup, "tkc-1")
    assert obj["spec"]["topology"]["nodePools"][0]["replicas"] == 5
    assert obj["spec"]["topology"]["nodePools"][0]["vmClass"] == "best-effort-xsmall"
    assert "Node pool workers of tkc-1 will have 5 nodes" in plain(
        alice.get("/ns/dev/clusters/tkc-1"))

    bad = alice.post("/ns/dev/clusters/tkc-1/scale", {"pool": "workers", "replicas": "lots"})
    assert bad.status_code == 400 and "whole number from 0 to 50" in text(bad)
    unknown = alice.post("/ns/dev/clusters/tkc-1/scale", {"pool": "gpu", "replicas": "1"})
    assert unknown.status_code == 400 and "no node pool" in text(unknown)
    assert get_tkc(sup, "tkc-1")["spec"]["topology"]["nodePools"][0]["replicas"] == 5

    # Admission still has its say: the class is no longer assigned to the namespace.
    Catalog(sup.service).unassign_class(SYSTEM, "best-effort-xsmall", "dev")
    refused = alice.post("/ns/dev/clusters/tkc-1/scale", {"pool": "workers", "replicas": "1"})
    assert refused.status_code == 422
    html = plain(refused)
    assert 'role="alert"' in html and "Not valid." in html
    assert 'VirtualMachineClass "best-effort-xsmall" not found' in html or \
        'is not assigned to namespace "dev"' in html
    assert get_tkc(sup, "tkc-1")["spec"]["topology"]["nodePools"][0]["replicas"] == 5


def test_editor_deletes_a_cluster_after_confirming(lab: Any) -> None:
    sup, app = lab
    make_cluster_with_nodes(sup)
    alice = login(app, "alice")
    confirm = plain(alice.get("/ns/dev/clusters/tkc-1/delete"))
    assert "Delete cluster tkc-1?" in confirm and "Its 2 nodes" in confirm
    assert names(sup, TANZU, "tanzukubernetesclusters", "dev") == ["tkc-1"]  # GET changes nothing
    uid = get_tkc(sup, "tkc-1")["metadata"]["uid"]
    stale = alice.post("/ns/dev/clusters/tkc-1/delete", {"uid": "not-" + uid})
    assert stale.status_code == 409 and "Changed meanwhile" in text(stale)
    resp = alice.post("/ns/dev/clusters/tkc-1/delete", {"uid": uid})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/ns/dev")
    assert "Cluster tkc-1 is being deleted" in plain(alice.get("/ns/dev"))
    # No controller runs here, so no finalizer holds it: it is gone at once.
    assert names(sup, TANZU, "tanzukubernetesclusters", "dev") == []
    assert 'data-name="tkc-1"' not in text(alice.get("/ns/dev/live/clusters",
                                                     headers={"X-Live": "1"}))


# -- viewers and forged requests ------------------------------------------------------------------


def test_viewer_sees_clusters_but_no_controls_and_crafted_posts_are_refused(lab: Any) -> None:
    sup, app = lab
    make_cluster_with_nodes(sup)
    bob = login(app, "bob")
    overview = text(bob.get("/ns/dev"))
    assert 'data-name="tkc-1"' in overview and "New cluster" not in overview
    assert "/clusters/new" not in overview
    page = plain(bob.get("/ns/dev/clusters/tkc-1"))
    assert BOOTSTRAP_FAILED in page and "198.18.1.11" in page
    for control in ("Download kubeconfig", "/scale", "Scale node pool", "/delete", ">Delete<",
                    "lab kubeconfig", "lab ssh"):
        assert control not in page, control
    assert "KUBECONFIG-MARKER" not in page

    before = get_tkc(sup, "tkc-1")
    crafted = bob.post("/ns/dev/clusters/new", tkc_form("sneaky"))
    assert crafted.status_code == 403
    assert "Not allowed" in text(crafted) and "cannot create resource" in text(crafted)
    assert bob.post("/ns/dev/clusters/tkc-1/scale",
                    {"pool": "workers", "replicas": "9"}).status_code == 403
    assert bob.post("/ns/dev/clusters/tkc-1/delete",
                    {"uid": before["metadata"]["uid"]}).status_code == 403
    assert bob.post("/ns/dev/clusters/tkc-1/kubeconfig").status_code == 403
    assert bob.get("/ns/dev/o/core/secrets/tkc-1-kubeconfig").status_code == 403

    after = get_tkc(sup, "tkc-1")
    assert names(sup, TANZU, "tanzukubernetesclusters", "dev") == ["tkc-1"]
    assert after["spec"] == before["spec"] and not after["metadata"].get("deletionTimestamp")

    # Someone with no role in the namespace does not even learn the cluster exists.
    carol = login(app, "carol")
    assert carol.get("/ns/dev/clusters/tkc-1").status_code == 404
    assert carol.post("/ns/dev/clusters/tkc-1/kubeconfig").status_code == 404


def test_cluster_posts_need_the_pages_csrf_token(lab: Any) -> None:
    sup, app = lab
    make_cluster_with_nodes(sup)
    alice = login(app, "alice")
    uid = get_tkc(sup, "tkc-1")["metadata"]["uid"]
    posts = [("/ns/dev/clusters/new", tkc_form("tkc-2")),
             ("/ns/dev/clusters/tkc-1/scale", {"pool": "workers", "replicas": "7"}),
             ("/ns/dev/clusters/tkc-1/delete", {"uid": uid}),
             ("/ns/dev/clusters/tkc-1/kubeconfig", {})]
    for path, data in posts:
        missing = alice.post(path, data, csrf=False)
        assert missing.status_code == 400 and "expired" in text(missing), path
        forged = alice.post(path, {**data, "csrf_token": "forged"}, csrf=False)
        assert forged.status_code == 400, path
        cross = alice.post(path, data, headers={"Origin": "https://evil.example"})
        assert cross.status_code == 400, path
        assert "KUBECONFIG-MARKER" not in text(missing) + text(cross)
    assert names(sup, TANZU, "tanzukubernetesclusters", "dev") == ["tkc-1"]
    obj = get_tkc(sup, "tkc-1")
    assert obj["spec"]["topology"]["nodePools"][0]["replicas"] == 2
    assert not obj["metadata"].get("deletionTimestamp")


def test_a_build_without_the_kind_shows_no_clusters(tmp_path: Path) -> None:
    from appliance.kinds import default_registry
    from appliance.kinds.registry import Registry

    without = Registry()
    without.extend(k for k in default_registry().kinds if k.plural != "tanzukubernetesclusters")
    sup, password = _supervisor(tmp_path / "state", without)
    make_namespace(sup, "dev")
    admin = Browser(create_app(supervisor=sup))
    admin.login("admin", password)
    overview = text(admin.get("/ns/dev"))
    assert "clusters-title" not in overview and "New cluster" not in overview
    assert admin.get("/ns/dev/clusters/new").status_code == 404
    assert admin.get("/ns/dev/clusters/x").status_code == 404


def test_errors_from_the_service_do_not_leak_secret_data(lab: Any, monkeypatch: Any) -> None:
    """A failure while reading the Secret answers with the service's message only."""
    sup, app = lab
    make_cluster_with_nodes(sup)
    alice = login(app, "alice")
    real = sup.service.get

    def failing(user: Any, t: Target) -> Any:
        if t.plural == "secrets":
            raise ApiError(500, "InternalError", "the store is unavailable")
        return real(user, t)

    monkeypatch.setattr(sup.service, "get", failing)
    resp = alice.post("/ns/dev/clusters/tkc-1/kubeconfig")
    assert resp.status_code == 500 and "the store is unavailable" in text(resp)
    assert "KUBECONFIG-MARKER" not in text(resp)
