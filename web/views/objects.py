"""Every kind the supervisor serves, generically: lists with kubectl's columns, and
the YAML of any object (without Secret data or cloud-init contents)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, render_template

from appliance import errors
from appliance.api.table import cell, columns_for
from appliance.kinds.registry import Kind, Obj
from appliance.kinds.vmop import GROUP as VMOP
from web.security import login_required
from web.views import lab, user
from web.views.namespaces import _namespace

bp = Blueprint("objects", __name__)


def _kind(group: str, plural: str) -> Kind:
    kind = lab().kind("" if group == "core" else group, plural)
    if kind is None or not kind.storable:
        abort(404, description=f"The supervisor serves no kind '{plural}' in group '{group}'.")
    return kind


def _table(kind: Kind, items: list[Obj]) -> dict[str, Any]:
    version = kind.version(lab().version(kind))
    assert version is not None
    cols = [c for c in columns_for(kind, version) if c.priority == 0 or c.name in (
        "Primary-IP4", "Class", "Image", "Internal-IP", "Accelerator")]
    rows = [{"obj": o, "cells": [cell(o, c) for c in cols]} for o in items]
    return {"columns": cols, "rows": rows}


def _error_page(err: errors.ApiError) -> Any:
    if err.code in (403, 404):
        abort(err.code, description=err.message)
    raise err


@bp.get("/ns/<ns>/objects")
@login_required
def index(ns: str) -> str:
    namespace = _namespace(ns)
    kinds = []
    allowed = lab().allowed(user(), ns, [("list", k.group, k.plural)
                                        for k in lab().namespaced_kinds()])
    for kind in sorted(lab().namespaced_kinds(), key=lambda k: (k.kind, k.group)):
        if ("list", kind.group, kind.plural) not in allowed:
            continue
        items = lab().list_or_empty(user(), kind.group, kind.plural, ns)
        kinds.append({"kind": kind, "count": len(items)})
    return render_template("objects.html", ns=ns, namespace=namespace, kinds=kinds)


@bp.get("/ns/<ns>/o/<group>/<plural>")
@login_required
def listing(ns: str, group: str, plural: str) -> str:
    namespace = _namespace(ns)
    kind = _kind(group, plural)
    if not kind.namespaced:
        abort(404)
    try:
        result = lab().list(user(), kind.group, kind.plural, ns,
                            limit=int(current_app.config["LIST_LIMIT"]))
    except errors.ApiError as err:
        return _error_page(err)  # type: ignore[no-any-return]
    return render_template("object_list.html", ns=ns, namespace=namespace, kind=kind,
                           more=bool(result.continue_token), **_table(kind, result.items))


@bp.get("/ns/<ns>/o/<group>/<plural>/<name>")
@login_required
def show(ns: str, group: str, plural: str, name: str) -> str:
    namespace = _namespace(ns)
    kind = _kind(group, plural)
    try:
        obj = lab().get(user(), kind.group, kind.plural, ns, name)
    except errors.ApiError as err:
        return _error_page(err)  # type: ignore[no-any-return]
    events = lab().events_for(user(), ns, obj, limit=20) if kind.plural != "events" else []
    hidden: set[str] = set()
    if kind.group == "" and kind.plural == "configmaps":
        for vm in lab().list_or_empty(user(), VMOP, "virtualmachines", ns):
            raw = ((((vm.get("spec") or {}).get("bootstrap") or {}).get("cloudInit") or {})
                   .get("rawCloudConfig") or {})
            if raw.get("name") == name:
                hidden.add(raw.get("key") or "user-data")
    logs = [s for s in lab().logs.subresources(kind.group, kind.plural)
            if lab().can(user(), "get", kind.group, kind.plural, ns, name, s)]
    pod_logs = lab().pod_logs(user(), obj) if (kind.group, kind.plural) == ("", "pods") \
        else None
    return render_template("object.html", ns=ns, namespace=namespace, kind=kind, obj=obj,
                           events=events, logs=logs, bootstrap_keys=frozenset(hidden),
                           pod_logs=pod_logs)


@bp.get("/cluster")
@login_required
def cluster_index() -> str:
    kinds = []
    for kind in sorted(lab().cluster_kinds(), key=lambda k: (k.kind, k.group)):
        if not lab().can(user(), "list", kind.group, kind.plural):
            continue
        kinds.append({"kind": kind, "count": len(lab().list_or_empty(user(), kind.group,
                                                                     kind.plural))})
    return render_template("objects.html", ns=None, namespace=None, kinds=kinds)


@bp.get("/cluster/<group>/<plural>")
@login_required
def cluster_listing(group: str, plural: str) -> str:
    kind = _kind(group, plural)
    if kind.namespaced:
        abort(404)
    try:
        result = lab().list(user(), kind.group, kind.plural,
                            limit=int(current_app.config["LIST_LIMIT"]))
    except errors.ApiError as err:
        return _error_page(err)  # type: ignore[no-any-return]
    return render_template("object_list.html", ns=None, namespace=None, kind=kind,
                           more=bool(result.continue_token), **_table(kind, result.items))


@bp.get("/cluster/<group>/<plural>/<name>")
@login_required
def cluster_show(group: str, plural: str, name: str) -> str:
    kind = _kind(group, plural)
    if kind.namespaced:
        abort(404)
    try:
        obj = lab().get(user(), kind.group, kind.plural, "", name)
    except errors.ApiError as err:
        return _error_page(err)  # type: ignore[no-any-return]
    return render_template("object.html", ns=None, namespace=None, kind=kind, obj=obj,
                           events=[], logs=[], bootstrap_keys=frozenset())
