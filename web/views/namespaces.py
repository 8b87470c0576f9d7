"""Namespaces: the list, one namespace's overview, and the administrator's levers
(limits, permissions, VM classes and images, create and delete)."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import yaml
from flask import (Blueprint, abort, flash, redirect, render_template, request, url_for)
from werkzeug.wrappers import Response

from appliance import errors, kubeconfig
from appliance.auth import bootstrap, users
from appliance.auth.rbac import RBAC
from appliance.kinds import repositories
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import CATALOG_NAMESPACE
from appliance.kinds.vmop import GROUP as VMOP
from appliance.registry import registry_host
from appliance.store.models import User
from appliance.util.quantity import QuantityError, parse_quantity
from web.filters import usage_rows
from web import tkc as guest
from web.forms import LIMIT_FIELDS, Form, limit_display, name_problem, parse_limits
from web.lab import QUOTA_NAME
from web.security import is_live_request, login_required
from web.views import lab, user

LOG = logging.getLogger(__name__)

bp = Blueprint("namespaces", __name__)

ROLES = (("view", "View", "read everything in the namespace except Secrets"),
         ("edit", "Edit", "create, change and delete VMs, pods and services"),
         ("owner", "Owner", "everything in the namespace, including granting roles"))
SYSTEM_LABEL = "pacific.lab/system"
#: Digits of a manifest digest shown in the repository table (the full one is its tooltip).
SHORT_DIGEST = 12
LIMIT_API_FIELDS = {f"spec.hard[{f.key}]": f.field for f in LIMIT_FIELDS}


# -- helpers --------------------------------------------------------------------------------------


def _namespace(name: str) -> Obj:
    """The namespace, if the user may get it (else 404, as for one that does not exist)."""
    try:
        return lab().get(user(), "", "namespaces", "", name)
    except errors.ApiError as err:
        if err.code in (403, 404):
            abort(404, description=f"There is no namespace '{name}', or you have no role in it.")
        raise


def _quota(ns: str) -> Obj | None:
    items = lab().list_or_empty(user(), "", "resourcequotas", ns)
    return next((q for q in items if q["metadata"]["name"] == QUOTA_NAME), None) or \
        (items[0] if items else None)


def _my_roles(ns: str) -> list[str]:
    if user().is_admin:
        return ["administrator"]
    bindings = lab().list_or_empty(user(), RBAC, "rolebindings", ns,
                                   f"pacific.lab/user={user().name}")
    return sorted({b["metadata"]["labels"].get("pacific.lab/role", "") for b in bindings} - {""})


def _api_server() -> str:
    s = lab().settings
    if s.public_host:
        return str(s.api_url)
    host = urlsplit("//" + request.host).hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{s.api_port}"


def _perms(ns: str) -> dict[str, bool]:
    checks = {
        "create_vm": ("create", VMOP, "virtualmachines"),
        "create_cluster": ("create", guest.TANZU, guest.TKCS),
        "limits": ("update", "", "resourcequotas"),
        "limits_create": ("create", "", "resourcequotas"),
        "grant": ("create", RBAC, "rolebindings"),
        "revoke": ("delete", RBAC, "rolebindings"),
        "classes": ("create", VMOP, "virtualmachineclasses"),
        "images": ("create", VMOP, "virtualmachineimages"),
        "unassign_class": ("delete", VMOP, "virtualmachineclasses"),
        "unassign_image": ("delete", VMOP, "virtualmachineimages"),
    }
    allowed = lab().allowed(user(), ns, checks.values())
    out = {k: v in allowed for k, v in checks.items()}
    out["delete"] = lab().can(user(), "delete", "", "namespaces", "", ns)
    out["settings"] = any(out[k] for k in ("limits", "grant", "classes", "images"))
    out["create_cluster"] = out["create_cluster"] and guest.tkc_registered(lab())
    return out


def clusters_context(ns: str) -> dict[str, Any]:
    """The namespace page's guest clusters (its live part ``clusters``)."""
    return {"clusters": guest.summaries(lab(), user(), ns),
            "clusters_registered": guest.tkc_registered(lab())}


def _registry_address() -> str | None:
    """The lab registry's ``HOST:PORT``, or None when this lab runs none."""
    s = lab().settings
    if not s.registry_enabled or lab().kind(repositories.GROUP, "repositories") is None:
        return None
    return registry_host(s)


def _short_digest(digest: str) -> str:
    algorithm, sep, hexdigits = digest.partition(":")
    return f"{algorithm}:{hexdigits[:SHORT_DIGEST]}" if sep else digest[:SHORT_DIGEST]


def _repository_row(ns: str, repo: Obj) -> dict[str, Any]:
    meta, status = repo["metadata"], repo.get("status") or {}
    size = int(status.get("sizeBytes") or 0)
    return {"name": (repo.get("spec") or {}).get("name") or f"{ns}/{meta['name']}",
            "object": meta["name"], "deleting": bool(meta.get("deletionTimestamp")),
            "tags": [{"name": t.get("name") or "", "digest": t.get("digest") or "",
                      "short": _short_digest(t.get("digest") or "")}
                     for t in status.get("tags") or []],
            "manifests": int(status.get("manifests") or 0),
            "size": repositories.human_size(size), "last_pushed": status.get("lastPushed")}


def registry_context(ns: str) -> dict[str, Any]:
    """The namespace's registry project (its live part ``registry``): ``registry`` is None
    when the lab runs no registry; ``repositories`` is None when the user may not list them."""
    address = _registry_address()
    if address is None:
        return {"registry": None, "repositories": None}
    try:
        items = lab().list(user(), repositories.GROUP, "repositories", ns).items
    except errors.ApiError as err:
        if err.code not in (403, 404):
            raise
        rows = None
    else:
        rows = sorted((_repository_row(ns, r) for r in items), key=lambda r: r["name"])
    return {"registry": {"address": address, "project": ns, "prefix": f"{address}/{ns}"},
            "repositories": rows}


def overview_context(ns: str) -> dict[str, Any]:
    """What the namespace page (and its live parts) shows."""
    u = user()
    vms = lab().list_or_empty(u, VMOP, "virtualmachines", ns)
    services = lab().list_or_empty(u, VMOP, "virtualmachineservices", ns)
    pods_kind = lab().kind("", "pods")
    pods = lab().list_or_empty(u, "", "pods", ns) if pods_kind is not None else None
    return {"vms": vms, "services": services, "pods": pods, "usage": usage_rows(_quota(ns)),
            "events": lab().events_for(u, ns, limit=15)}


# -- pages ----------------------------------------------------------------------------------------


@bp.get("/")
@login_required
def index() -> str:
    u = user()
    rows = []
    for ns in lab().visible_namespaces(u):
        name = ns["metadata"]["name"]
        rows.append({"ns": ns, "name": name,
                     "system": (ns["metadata"].get("labels") or {}).get(SYSTEM_LABEL) == "true",
                     "vms": lab().list_or_empty(u, VMOP, "virtualmachines", name),
                     "usage": usage_rows(_quota(name))})
    can_create = lab().can(u, "create", "", "namespaces")
    if is_live_request():
        return render_template("parts/namespace_cards.html", rows=rows)
    return render_template("index.html", rows=rows, can_create=can_create,
                           registry_address=_registry_address())


@bp.route("/namespaces/new", methods=["GET", "POST"])
@login_required
def create() -> str | Response | tuple[str, int]:
    if not lab().can(user(), "create", "", "namespaces"):
        abort(403, description="Only administrators create namespaces.")
    form = Form(request.form if request.method == "POST" else {})
    if request.method == "GET":
        return render_template("namespace_new.html", form=form, limits=LIMIT_FIELDS)
    name = form.get("name")
    problem = name_problem(name, "namespace name")
    if problem:
        form.add("name", problem)
    hard = parse_limits(form)
    if form.errors:
        return render_template("namespace_new.html", form=form, limits=LIMIT_FIELDS), 400
    try:
        lab().create(user(), "", "namespaces", "", {"metadata": {"name": name}})
    except errors.ApiError as err:
        form.api_error(err, {"metadata.name": "name"})
        if err.reason == "AlreadyExists":
            form.errors.pop("name", None)
            form.message = ""
            form.add("name", f"A namespace named '{name}' already exists.")
        return render_template("namespace_new.html", form=form, limits=LIMIT_FIELDS), err.code
    if hard:
        try:
            lab().create(user(), "", "resourcequotas", name, _quota_body(hard))
        except errors.ApiError as err:
            # Nothing half-made: the namespace goes again.
            _delete_quietly("", "namespaces", "", name)
            form.api_error(err, LIMIT_API_FIELDS)
            return render_template("namespace_new.html", form=form, limits=LIMIT_FIELDS), \
                err.code
    LOG.info("dashboard: %s created namespace %s with limits %s", user().name, name, hard)
    flash(f"Namespace {name} created. Grant roles and assign VM classes and images below.", "ok")
    return redirect(url_for("namespaces.settings", ns=name))


def _quota_body(hard: dict[str, str]) -> Obj:
    return {"metadata": {"name": QUOTA_NAME, "labels": {"pacific.lab/managed-by": "dashboard"}},
            "spec": {"hard": hard}}


def _delete_quietly(group: str, plural: str, ns: str, name: str) -> None:
    try:
        lab().delete(user(), group, plural, ns, name)
    except errors.ApiError as err:
        LOG.warning("dashboard: could not remove %s %s/%s again: %s", plural, ns, name,
                    err.message)


@bp.get("/ns/<ns>")
@login_required
def show(ns: str) -> str:
    namespace = _namespace(ns)
    ctx = overview_context(ns)
    return render_template("namespace.html", namespace=namespace, ns=ns, perms=_perms(ns),
                           roles=_my_roles(ns), api_server=_api_server(),
                           token_hours=round(lab().settings.token_ttl_seconds / 3600),
                           pods_registered=lab().kind("", "pods") is not None,
                           **clusters_context(ns), **registry_context(ns), **ctx)


@bp.get("/ns/<ns>/live/<part>")
@login_required
def live(ns: str, part: str) -> str:
    if part not in ("workloads", "usage", "events", "clusters", "registry"):
        abort(404)
    _namespace(ns)
    if part == "clusters":
        return render_template("parts/ns_clusters.html", ns=ns, **clusters_context(ns))
    if part == "registry":
        ctx = registry_context(ns)
        if ctx["registry"] is None:
            abort(404)
        return render_template("parts/ns_registry.html", ns=ns, **ctx)
    ctx = overview_context(ns)
    return render_template(f"parts/ns_{part}.html", ns=ns,
                           pods_registered=lab().kind("", "pods") is not None, **ctx)


# -- settings: limits, permissions, classes, images -----------------------------------------------


def _class_order(cls: Obj, assigned: bool) -> tuple[Any, ...]:
    """Assigned first, then best-effort before guaranteed, small to large."""
    name = cls["metadata"]["name"]
    hw = (cls.get("spec") or {}).get("hardware") or {}
    try:
        memory = parse_quantity(hw.get("memory") or "0")
    except QuantityError:
        memory = Decimal(0)
    return (not assigned, not name.startswith("best-effort"), int(hw.get("cpus") or 0), memory,
            name)


def _settings_context(ns: str) -> dict[str, Any]:
    u = user()
    quota = _quota(ns)
    hard = dict(((quota or {}).get("spec") or {}).get("hard") or {})
    bindings = lab().list_or_empty(u, RBAC, "rolebindings", ns)
    grants = [b for b in bindings if (b["metadata"].get("labels") or {}).get("pacific.lab/role")]
    others = [b for b in bindings if b not in grants]
    classes = {c["metadata"]["name"]: c for c in lab().list_or_empty(
        u, VMOP, "virtualmachineclasses", ns)}
    # Administrators choose from the whole catalog; others see what is assigned here.
    catalog = lab().list_or_empty(u, VMOP, "virtualmachineclasses", CATALOG_NAMESPACE) or \
        list(classes.values())
    catalog.sort(key=lambda c: _class_order(c, c["metadata"]["name"] in classes))
    images = {i["metadata"]["name"]: i for i in lab().list_or_empty(
        u, VMOP, "virtualmachineimages", ns)}
    library = lab().list_or_empty(u, VMOP, "clustervirtualmachineimages")
    vms = lab().list_or_empty(u, VMOP, "virtualmachines", ns)
    in_use = {}
    for vm in vms:
        spec = vm.get("spec") or {}
        for key in (spec.get("className"), spec.get("imageName")):
            if key:
                in_use[key] = in_use.get(key, 0) + 1
    known_users: list[str] = []
    if u.is_admin:
        with lab().store.read() as txn:
            known_users = [x.name for x in users.list_users(txn.session)
                           if not x.name.startswith("system:")]
    return {"quota": quota, "hard": hard, "grants": grants, "other_bindings": others,
            "classes": classes, "catalog": catalog, "images": images, "library": library,
            "in_use": in_use, "known_users": known_users, "limits": LIMIT_FIELDS,
            "limit_value": lambda f: limit_display(f, hard.get(f.key)), "roles": ROLES,
            "usage": usage_rows(quota)}


def _render_settings(ns: str, forms: dict[str, Form] | None = None, status: int = 200
                     ) -> tuple[str, int]:
    namespace = _namespace(ns)
    forms = forms or {}
    for key in ("limits", "grant", "classes", "images"):
        forms.setdefault(key, Form())
    return render_template("namespace_settings.html", namespace=namespace, ns=ns,
                           perms=_perms(ns), forms=forms, **_settings_context(ns)), status


@bp.get("/ns/<ns>/settings")
@login_required
def settings(ns: str) -> tuple[str, int]:
    return _render_settings(ns)


@bp.post("/ns/<ns>/limits")
@login_required
def set_limits(ns: str) -> Response | tuple[str, int]:
    _namespace(ns)
    form = Form(request.form)
    hard = parse_limits(form)
    if form.errors:
        return _render_settings(ns, {"limits": form}, 400)
    u = user()
    managed = {f.key for f in LIMIT_FIELDS}
    try:
        current = lab().get_or_none(u, "", "resourcequotas", ns, QUOTA_NAME)
        if current is None:
            if hard:
                lab().create(u, "", "resourcequotas", ns, _quota_body(hard))
        else:
            old = (current.get("spec") or {}).get("hard") or {}
            kept = {k: v for k, v in old.items() if k not in managed}
            if not hard and not kept:
                lab().delete(u, "", "resourcequotas", ns, QUOTA_NAME)
            else:
                patch: dict[str, Any] = {k: None for k in old if k in managed and k not in hard}
                patch.update(hard)
                lab().patch(u, "", "resourcequotas", ns, QUOTA_NAME, {
                    "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                    "spec": {"hard": patch}})
    except errors.ApiError as err:
        form.api_error(err, LIMIT_API_FIELDS)
        return _render_settings(ns, {"limits": form}, err.code)
    LOG.info("dashboard: %s set limits of %s to %s", u.name, ns, hard)
    flash("Limits saved." if hard else "Limits removed: the namespace is unlimited.", "ok")
    return redirect(url_for("namespaces.settings", ns=ns) + "#limits")


@bp.post("/ns/<ns>/grants")
@login_required
def grant(ns: str) -> Response | tuple[str, int]:
    _namespace(ns)
    form = Form(request.form)
    who, role = form.get("user"), form.get("role")
    if not who:
        form.add("user", "Enter the user to grant a role to.")
    else:
        try:
            users.validate_username(who)
        except users.UserError as exc:
            form.add("user", str(exc)[:1].upper() + str(exc)[1:] + ".")
        else:
            with lab().store.read() as txn:
                exists = txn.session.get(User, who) is not None
            if not exists:
                form.add("user", f"There is no user '{who}'. An administrator adds users on "
                                 "the Users page.")
    if role not in bootstrap.ROLE_FOR:
        form.add("role", "Choose view, edit or owner.")
    if form.errors:
        return _render_settings(ns, {"grant": form}, 400)
    u = user()
    existing = lab().list_or_empty(u, RBAC, "rolebindings", ns, f"pacific.lab/user={who}")
    if any(b["metadata"]["labels"].get("pacific.lab/role") == role for b in existing):
        form.add("user", f"{who} already has {role} in {ns}.")
        return _render_settings(ns, {"grant": form}, 409)
    try:
        bootstrap.grant(lab().service, u, ns, who, role)
    except errors.ApiError as err:
        form.api_error(err, {"subjects": "user", "metadata.name": "user"})
        return _render_settings(ns, {"grant": form}, err.code)
    # One role per user and namespace, as in vSphere: the new one replaces the old.
    for old in existing:
        try:
            lab().delete(u, RBAC, "rolebindings", ns, old["metadata"]["name"])
        except errors.ApiError as err:
            flash(f"{who} now has {role}, but the old role could not be removed: "
                  f"{err.message}", "error")
    LOG.info("dashboard: %s granted %s to %s in %s", u.name, role, who, ns)
    flash(f"{who} can now {role} in {ns}.", "ok")
    return redirect(url_for("namespaces.settings", ns=ns) + "#permissions")


@bp.post("/ns/<ns>/grants/<binding>/revoke")
@login_required
def revoke(ns: str, binding: str) -> Response | tuple[str, int]:
    _namespace(ns)
    form = Form()
    try:
        lab().delete(user(), RBAC, "rolebindings", ns, binding)
    except errors.ApiError as err:
        form.api_error(err)
        return _render_settings(ns, {"grant": form}, err.code)
    LOG.info("dashboard: %s revoked %s in %s", user().name, binding, ns)
    flash(f"Role binding {binding} removed.", "ok")
    return redirect(url_for("namespaces.settings", ns=ns) + "#permissions")


@bp.post("/ns/<ns>/classes")
@login_required
def classes(ns: str) -> Response | tuple[str, int]:
    return _assignment(ns, "classes", "VM class")


@bp.post("/ns/<ns>/images")
@login_required
def images(ns: str) -> Response | tuple[str, int]:
    return _assignment(ns, "images", "image")


def _assignment(ns: str, what: str, label: str) -> Response | tuple[str, int]:
    _namespace(ns)
    form = Form(request.form)
    name, action = form.get("name"), form.get("action")
    if not name or name_problem(name, rule="subdomain"):
        form.add("name", f"Choose a {label}.")
    if action not in ("assign", "unassign"):
        form.add("name", "Choose to assign or remove.")
    if form.errors:
        return _render_settings(ns, {what: form}, 400)
    catalog, u = lab().catalog, user()
    try:
        if what == "classes":
            (catalog.assign_class if action == "assign" else catalog.unassign_class)(u, name, ns)
        else:
            (catalog.assign_image if action == "assign" else catalog.unassign_image)(u, name, ns)
    except errors.ApiError as err:
        form.api_error(err)
        return _render_settings(ns, {what: form}, err.code)
    LOG.info("dashboard: %s %sed %s %s in %s", u.name, action, label, name, ns)
    flash(f"{label.capitalize()} {name} {'assigned to' if action == 'assign' else 'removed from'}"
          f" {ns}.", "ok")
    return redirect(url_for("namespaces.settings", ns=ns) + f"#{what}")


# -- delete ---------------------------------------------------------------------------------------


@bp.route("/ns/<ns>/delete", methods=["GET", "POST"])
@login_required
def delete(ns: str) -> str | Response | tuple[str, int]:
    namespace = _namespace(ns)
    form = Form(request.form if request.method == "POST" else {})
    counts = {"vms": len(lab().list_or_empty(user(), VMOP, "virtualmachines", ns))}
    if request.method == "GET":
        return render_template("namespace_delete.html", namespace=namespace, ns=ns, form=form,
                               counts=counts)
    if form.get("confirm") != ns:
        form.add("confirm", f"Type {ns} to confirm.")
        return render_template("namespace_delete.html", namespace=namespace, ns=ns, form=form,
                               counts=counts), 400
    try:
        lab().delete(user(), "", "namespaces", "", ns)
    except errors.ApiError as err:
        form.api_error(err)
        return render_template("namespace_delete.html", namespace=namespace, ns=ns, form=form,
                               counts=counts), err.code
    LOG.info("dashboard: %s deleted namespace %s", user().name, ns)
    flash(f"Namespace {ns} is being deleted with everything in it.", "ok")
    return redirect(url_for("namespaces.index"))


# -- connecting: kubeconfig -----------------------------------------------------------------------


@bp.post("/ns/<ns>/kubeconfig")
@login_required
def download_kubeconfig(ns: str) -> Response:
    _namespace(ns)
    u = user()
    names = [n["metadata"]["name"] for n in lab().visible_namespaces(u)]
    s = lab().settings
    with lab().store.write() as txn:
        token, expires = users.issue_token(txn.session, u.name, s.token_ttl_seconds)
    ca = s.state_dir / "pki" / "ca.crt"
    ca_pem = ca.read_bytes() if ca.exists() else None
    config = kubeconfig.build(_api_server(), u.name, token, names, ca_pem, current=ns)
    LOG.info("dashboard: issued a kubeconfig for %s (namespace %s, expires %s)", u.name, ns,
             expires.isoformat())
    body = yaml.safe_dump(config, default_flow_style=False, sort_keys=False)
    return Response(body, mimetype="application/yaml", headers={
        "Content-Disposition": f'attachment; filename="{ns}.kubeconfig"',
        "Cache-Control": "no-store"})
