"""Guest clusters (TanzuKubernetesCluster): create from a form, follow it as it
converges, scale a node pool, download its kubeconfig, delete it.

Everything goes through the object service as the logged-in user: a viewer may
see a cluster but none of its Secrets, so the kubeconfig comes from Secret
``<name>-kubeconfig`` read with the user's identity (403 for a viewer).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from appliance import errors
from appliance.kinds.registry import Obj
from appliance.kinds.tanzu import GROUP as TANZU
from appliance.kinds.vmop import GROUP as VMOP
from web import tkc as guest
from web.forms import Form, name_problem
from web.security import login_required
from web.views import lab, user
from web.views.namespaces import _namespace

LOG = logging.getLogger(__name__)

bp = Blueprint("clusters", __name__)

TKCS = guest.TKCS
#: vSphere names a storage policy here; the lab has one storage pool per host, so the name
#: only matters to quotas per storage class.
DEFAULT_STORAGE_CLASS = "pacific-default"
DEFAULT_POOL = "workers"
MAX_WORKERS = 50
#: Where the object service's causes for a TKC land in the form.
TKC_FIELDS = {
    "metadata.name": "name",
    "spec.topology.controlPlane.replicas": "cp_replicas",
    "spec.topology.controlPlane.vmClass": "cp_class",
    "spec.topology.controlPlane.tkr": "tkr",
    "spec.topology.controlPlane.storageClass": "storage_class",
    "spec.topology.nodePools[0].name": "pool_name",
    "spec.topology.nodePools[0].replicas": "pool_replicas",
    "spec.topology.nodePools[0].vmClass": "pool_class",
    "spec.topology.nodePools[0].storageClass": "storage_class",
    "spec.topology.nodePools[0].tkr": "tkr",
}


@bp.app_template_global()
def cluster_state(tkc: Obj) -> Any:
    return guest.cluster_state(tkc)


@bp.app_template_global()
def condition_tone(c: Obj) -> str:
    return guest.condition_tone(c)


@bp.app_template_global()
def sorted_conditions(obj: Obj) -> list[Obj]:
    return guest.conditions(obj)


# -- helpers ------------------------------------------------------------------------------------


def _tkc(ns: str, name: str) -> Obj:
    if not guest.tkc_registered(lab()):
        abort(404, description="This supervisor serves no TanzuKubernetesCluster kind.")
    try:
        return lab().get(user(), TANZU, TKCS, ns, name)
    except errors.ApiError as err:
        if err.code in (403, 404):
            abort(404, description=f"There is no cluster '{name}' in {ns}, or you may not "
                                   "see it.")
        raise


def _perms(ns: str, name: str = "") -> dict[str, bool]:
    allowed = lab().allowed(user(), ns, [("create", TANZU, TKCS), ("patch", TANZU, TKCS),
                                         ("delete", TANZU, TKCS)])
    kubeconfig, ssh = guest.secret_names(name)
    return {"create": ("create", TANZU, TKCS) in allowed,
            "scale": ("patch", TANZU, TKCS) in allowed,
            "delete": ("delete", TANZU, TKCS) in allowed,
            "kubeconfig": bool(name) and lab().can(user(), "get", "", "secrets", ns, kubeconfig),
            "ssh": bool(name) and lab().can(user(), "get", "", "secrets", ns, ssh)}


def _page(ns: str, obj: Obj, form: Form | None = None, status: int = 200) -> tuple[str, int]:
    namespace = _namespace(ns)
    name = obj["metadata"]["name"]
    return render_template("cluster.html", ns=ns, namespace=namespace, tkc=obj,
                           perms=_perms(ns, name), form=form or Form(),
                           **_live_context(ns, obj)), status


def _live_context(ns: str, obj: Obj) -> dict[str, Any]:
    return {"summary": guest.summary(lab(), user(), ns, obj),
            "events": lab().events_for(user(), ns, obj, limit=15)}


def _choices(ns: str) -> dict[str, Any]:
    u = user()
    classes = lab().list_or_empty(u, VMOP, "virtualmachineclasses", ns)
    return {"classes": classes, "releases": guest.releases(lab(), u),
            "can_list_releases": lab().can(u, "list", TANZU, guest.TKRS)}


def _form_page(ns: str, form: Form, status: int = 200) -> tuple[str, int]:
    namespace = _namespace(ns)
    return render_template("cluster_new.html", ns=ns, namespace=namespace, form=form,
                           **_choices(ns)), status


def _count_problem(text: str, low: int, high: int) -> str | None:
    if not re.fullmatch(r"\d{1,4}", text) or not low <= int(text) <= high:
        return f"Enter a whole number from {low} to {high}."
    return None


# -- create -------------------------------------------------------------------------------------


@bp.route("/ns/<ns>/clusters/new", methods=["GET", "POST"])
@login_required
def create(ns: str) -> str | Response | tuple[str, int]:
    if not guest.tkc_registered(lab()):
        abort(404, description="This supervisor serves no TanzuKubernetesCluster kind.")
    if request.method == "GET":
        choices = _choices(ns)
        ready = [r["name"] for r in choices["releases"] if r["ready"]]
        classes = [c["metadata"]["name"] for c in choices["classes"]]
        only = classes[0] if len(classes) == 1 else ""
        return _form_page(ns, Form({"cp_replicas": "1", "pool_name": DEFAULT_POOL,
                                    "pool_replicas": "2", "tkr": ready[0] if ready else "",
                                    "cp_class": only, "pool_class": only,
                                    "storage_class": DEFAULT_STORAGE_CLASS}))
    _namespace(ns)
    form = Form(request.form)
    name, cp_replicas, cp_class = form.get("name"), form.get("cp_replicas"), form.get("cp_class")
    release, storage = form.get("tkr"), form.get("storage_class") or DEFAULT_STORAGE_CLASS
    pool, pool_replicas = form.get("pool_name"), form.get("pool_replicas")
    pool_class = form.get("pool_class") or cp_class
    problem = name_problem(name, "cluster name")
    if problem:
        form.add("name", problem)
    if cp_replicas not in ("1", "3"):
        form.add("cp_replicas", "Choose 1 or 3 control-plane nodes (etcd needs an odd count).")
    if not cp_class:
        form.add("cp_class", "Choose a VM class. An administrator assigns classes to the "
                             "namespace.")
    if not release:
        form.add("tkr", "Choose a Kubernetes release.")
    problem = name_problem(storage, "storage class", rule="subdomain")
    if problem:
        form.add("storage_class", problem)
    problem = name_problem(pool, "node pool name")
    if problem:
        form.add("pool_name", problem)
    problem = _count_problem(pool_replicas, 0, MAX_WORKERS)
    if problem:
        form.add("pool_replicas", problem)
    if form.errors:
        return _form_page(ns, form, 400)

    tkr_ref = {"reference": {"name": release}}
    body: Obj = {"metadata": {"name": name}, "spec": {"topology": {
        "controlPlane": {"replicas": int(cp_replicas), "vmClass": cp_class,
                         "storageClass": storage, "tkr": tkr_ref},
        "nodePools": [{"name": pool, "replicas": int(pool_replicas), "vmClass": pool_class,
                       "storageClass": storage, "tkr": tkr_ref}]}}}
    u = user()
    try:
        # Admission (RBAC, classes, release, ranges) first, with nothing stored.
        lab().create(u, TANZU, TKCS, ns, body, dry_run=True)
        lab().create(u, TANZU, TKCS, ns, body)
    except errors.ApiError as err:
        form.api_error(err, TKC_FIELDS)
        if err.reason == "AlreadyExists":
            form.errors.pop("name", None)
            form.message = ""
            form.add("name", f"A cluster named '{name}' already exists in {ns}.")
        return _form_page(ns, form, err.code)
    LOG.info("dashboard: %s created cluster %s/%s (%s+%s, %s, %s)", u.name, ns, name,
             cp_replicas, pool_replicas, cp_class, release)
    flash(f"Cluster {name} created. Its machines are being built; this page follows them.",
          "ok")
    return redirect(url_for("clusters.show", ns=ns, name=name))


# -- one cluster --------------------------------------------------------------------------------


@bp.get("/ns/<ns>/clusters/<name>")
@login_required
def show(ns: str, name: str) -> tuple[str, int]:
    return _page(ns, _tkc(ns, name))


@bp.get("/ns/<ns>/clusters/<name>/live/<part>")
@login_required
def live(ns: str, name: str, part: str) -> str:
    if part not in ("status", "events"):
        abort(404)
    _namespace(ns)
    try:
        obj = lab().get(user(), TANZU, TKCS, ns, name)
    except errors.ApiError as err:
        if err.code in (403, 404):
            return render_template("parts/cluster_gone.html", ns=ns, name=name) \
                if part == "status" else ""
        raise
    if part == "events":
        return render_template("parts/cluster_events.html",
                               events=lab().events_for(user(), ns, obj, limit=15))
    return render_template("parts/cluster_status.html", ns=ns, tkc=obj,
                           summary=guest.summary(lab(), user(), ns, obj))


@bp.post("/ns/<ns>/clusters/<name>/scale")
@login_required
def scale(ns: str, name: str) -> Response | tuple[str, int]:
    _namespace(ns)
    obj = _tkc(ns, name)
    pool, replicas = request.form.get("pool", ""), request.form.get("replicas", "").strip()
    pools = guest.node_pools(obj)
    if not any(p.get("name") == pool for p in pools):
        abort(400, description=f"Cluster {name} has no node pool '{pool}'.")
    problem = _count_problem(replicas, 0, MAX_WORKERS)
    if problem:
        form = Form(request.form)
        form.message = f"Node pool {pool}: {problem}"
        return _page(ns, obj, form, 400)
    changed = [dict(p, replicas=int(replicas)) if p.get("name") == pool else p for p in pools]
    try:
        # The whole list (a merge patch replaces lists), on the version read just now.
        lab().patch(user(), TANZU, TKCS, ns, name, {
            "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
            "spec": {"topology": {"nodePools": changed}}})
    except errors.ApiError as err:
        form = Form()
        form.api_error(err)
        return _page(ns, lab().get(user(), TANZU, TKCS, ns, name) if err.code == 409 else obj,
                     form, err.code)
    LOG.info("dashboard: %s scaled node pool %s of %s/%s to %s", user().name, pool, ns, name,
             replicas)
    flash(f"Node pool {pool} of {name} will have {replicas} node{'s' if replicas != '1' else ''};"
          " the nodes below follow it.", "ok")
    return redirect(url_for("clusters.show", ns=ns, name=name))


@bp.route("/ns/<ns>/clusters/<name>/delete", methods=["GET", "POST"])
@login_required
def delete(ns: str, name: str) -> str | Response | tuple[str, int]:
    namespace = _namespace(ns)
    obj = _tkc(ns, name)
    nodes = len(guest.summary(lab(), user(), ns, obj).nodes)
    if request.method == "GET":
        return render_template("cluster_delete.html", ns=ns, namespace=namespace, tkc=obj,
                               nodes=nodes, form=Form())
    try:
        lab().delete(user(), TANZU, TKCS, ns, name, uid=request.form.get("uid") or "")
    except errors.ApiError as err:
        form = Form()
        form.api_error(err)
        return render_template("cluster_delete.html", ns=ns, namespace=namespace, tkc=obj,
                               nodes=nodes, form=form), err.code
    LOG.info("dashboard: %s deleted cluster %s/%s", user().name, ns, name)
    flash(f"Cluster {name} is being deleted: its machines, VMs and Secrets are removed.", "ok")
    return redirect(url_for("namespaces.show", ns=ns))


# -- credentials --------------------------------------------------------------------------------


@bp.post("/ns/<ns>/clusters/<name>/kubeconfig")
@login_required
def kubeconfig(ns: str, name: str) -> Response:
    """The cluster's own kubeconfig, from its Secret, read as the user (editors and owners)."""
    _namespace(ns)
    _tkc(ns, name)
    secret_name, _ = guest.secret_names(name)
    try:
        secret = lab().get(user(), "", "secrets", ns, secret_name)
    except errors.ApiError as err:
        if err.code == 403:
            abort(403, description="Only editors and owners of the namespace may read a "
                                   "cluster's kubeconfig.")
        if err.code == 404:
            abort(404, description=f"Cluster {name} has no kubeconfig yet: it is written once "
                                   "its control plane has an endpoint.")
        raise
    try:
        value = base64.b64decode((secret.get("data") or {}).get("value") or "", validate=True)
    except (binascii.Error, ValueError):
        value = b""
    if not value:
        abort(404, description=f"Secret {secret_name} holds no kubeconfig (key 'value').")
    LOG.info("dashboard: %s downloaded the kubeconfig of cluster %s/%s", user().name, ns, name)
    return Response(value, mimetype="application/yaml", headers={
        "Content-Disposition": f'attachment; filename="{ns}-{name}.kubeconfig"',
        "Cache-Control": "no-store"})
