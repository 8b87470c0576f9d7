"""Virtual machines: create from a form, status as it happens, power, console, delete."""

from __future__ import annotations

import logging
from typing import Any

from flask import (Blueprint, abort, current_app, flash, redirect, render_template, request,
                   url_for)
from werkzeug.wrappers import Response

from appliance import errors
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import GROUP as VMOP
from appliance.kinds.vmop import POWER_STATES
from web.filters import console_text, usage_rows
from web.forms import (Form, cloud_config_form_problem, name_problem, ssh_key_problem,
                       unix_user_problem, user_data)
from web.security import is_live_request, login_required
from web.views import lab, user
from web.views.namespaces import _namespace, _quota

LOG = logging.getLogger(__name__)

bp = Blueprint("workloads", __name__)

VMS = "virtualmachines"
CLOUD_INIT_SUFFIX = "-cloud-init"
VM_LABEL = "pacific.lab/vm"
#: Where the object service's causes for a VM land in the form.
VM_FIELDS = {"metadata.name": "name", "spec.className": "class_name",
             "spec.imageName": "image", "spec.powerState": "power",
             "spec.bootstrap": "cloud_config"}


# -- helpers ------------------------------------------------------------------------------------


def _vm(ns: str, name: str) -> Obj:
    try:
        return lab().get(user(), VMOP, VMS, ns, name)
    except errors.ApiError as err:
        if err.code in (403, 404):
            abort(404, description=f"There is no VM '{name}' in {ns}, or you may not see it.")
        raise


def _choices(ns: str) -> dict[str, Any]:
    u = user()
    classes = lab().list_or_empty(u, VMOP, "virtualmachineclasses", ns)
    images = lab().list_or_empty(u, VMOP, "virtualmachineimages", ns)
    assigned = {i["metadata"]["name"] for i in images}
    cluster = [i for i in lab().list_or_empty(u, VMOP, "clustervirtualmachineimages")
               if i["metadata"]["name"] not in assigned]
    return {"classes": classes, "images": images, "cluster_images": cluster}


def _vm_form(ns: str, form: Form, status: int = 200) -> tuple[str, int]:
    namespace = _namespace(ns)
    return render_template("vm_new.html", ns=ns, namespace=namespace, form=form,
                           usage=usage_rows(_quota(ns)), **_choices(ns)), status


def _vm_perms(ns: str) -> dict[str, bool]:
    allowed = lab().allowed(user(), ns, [("patch", VMOP, VMS), ("delete", VMOP, VMS),
                                         ("create", VMOP, VMS)])
    return {"power": ("patch", VMOP, VMS) in allowed, "delete": ("delete", VMOP, VMS) in allowed,
            "create": ("create", VMOP, VMS) in allowed,
            "console": lab().can(user(), "get", VMOP, VMS, ns, subresource="console")}


# -- create -------------------------------------------------------------------------------------


@bp.route("/ns/<ns>/vms/new", methods=["GET", "POST"])
@login_required
def create(ns: str) -> str | Response | tuple[str, int]:
    if request.method == "GET":
        login = user().name if not unix_user_problem(user().name) else "cloud-user"
        return _vm_form(ns, Form({"power": "PoweredOn", "login": login}))
    _namespace(ns)
    form = Form(request.form)
    name, cls, image = form.get("name"), form.get("class_name"), form.get("image")
    power, login = form.get("power") or "PoweredOn", form.get("login")
    key, cloud = form.get("ssh_key"), form.raw("cloud_config")
    problem = name_problem(name, "VM name")
    if problem:
        form.add("name", problem)
    if not cls:
        form.add("class_name", "Choose a VM class. An administrator assigns classes to the "
                               "namespace.")
    if not image:
        form.add("image", "Choose an image. An administrator assigns images to the namespace.")
    if power not in ("PoweredOn", "PoweredOff"):
        form.add("power", "Choose powered on or powered off.")
    if key:
        problem = ssh_key_problem(key)
        if problem:
            form.add("ssh_key", problem)
        problem = unix_user_problem(login)
        if problem:
            form.add("login", problem)
    problem = cloud_config_form_problem(cloud)
    if problem:
        form.add("cloud_config", problem)
    if form.errors:
        return _vm_form(ns, form, 400)

    u = user()
    secret_name = name + CLOUD_INIT_SUFFIX
    bootstrap = bool(key or cloud.strip())
    vm_body: Obj = {"metadata": {"name": name},
                    "spec": {"className": cls, "imageName": image, "powerState": power}}
    if bootstrap:
        vm_body["spec"]["bootstrap"] = {"cloudInit": {"rawCloudConfig": {
            "name": secret_name, "key": "user-data"}}}
    try:
        # Admission (RBAC, class, image, quota) first, with nothing stored.
        lab().create(u, VMOP, VMS, ns, vm_body, dry_run=True)
    except errors.ApiError as err:
        form.api_error(err, VM_FIELDS)
        return _vm_form(ns, form, err.code)
    secret = None
    if bootstrap:
        try:
            secret = lab().create(u, "", "secrets", ns, {
                "metadata": {"name": secret_name, "labels": {VM_LABEL: name}},
                "type": "Opaque",
                "stringData": {"user-data": user_data(cloud, login, key)}})
        except errors.ApiError as err:
            form.api_error(err)
            if err.reason == "AlreadyExists":
                form.message = (f"A Secret named {secret_name} already exists in {ns}; it "
                                "would hold this VM's cloud-init data. Choose another VM name "
                                "or delete that Secret.")
            return _vm_form(ns, form, err.code)
    try:
        vm = lab().create(u, VMOP, VMS, ns, vm_body)
    except errors.ApiError as err:
        if secret is not None:  # nothing half-made is left behind
            _delete_secret(ns, secret)
        form.api_error(err, VM_FIELDS)
        return _vm_form(ns, form, err.code)
    if secret is not None:
        _own(ns, secret, vm)
    LOG.info("dashboard: %s created VM %s/%s (%s, %s)", u.name, ns, name, cls, image)
    flash(f"VM {name} created. It is placed on a host and boots; this page follows it.", "ok")
    return redirect(url_for("workloads.vm", ns=ns, name=name))


def _own(ns: str, secret: Obj, vm: Obj) -> None:
    """The cloud-init Secret belongs to its VM (deleted with it by the dashboard)."""
    try:
        lab().patch(user(), "", "secrets", ns, secret["metadata"]["name"], {"metadata": {
            "ownerReferences": [{"apiVersion": vm["apiVersion"], "kind": "VirtualMachine",
                                 "name": vm["metadata"]["name"], "uid": vm["metadata"]["uid"]}]}})
    except errors.ApiError as err:
        LOG.warning("dashboard: could not mark %s/%s as the VM's: %s", ns,
                    secret["metadata"]["name"], err.message)


def _delete_secret(ns: str, secret: Obj) -> None:
    try:
        lab().delete(user(), "", "secrets", ns, secret["metadata"]["name"],
                     uid=secret["metadata"]["uid"])
    except errors.ApiError as err:
        LOG.warning("dashboard: could not remove secret %s/%s: %s", ns,
                    secret["metadata"]["name"], err.message)


# -- one VM -------------------------------------------------------------------------------------


def _vm_context(ns: str, vm: Obj) -> dict[str, Any]:
    spec = vm.get("spec") or {}
    cls = lab().get_or_none(user(), VMOP, "virtualmachineclasses", ns,
                            spec.get("className") or "") if spec.get("className") else None
    return {"vm": vm, "cls": cls, "events": lab().events_for(user(), ns, vm, limit=20)}


@bp.get("/ns/<ns>/vms/<name>")
@login_required
def vm(ns: str, name: str) -> str:
    namespace = _namespace(ns)
    obj = _vm(ns, name)
    return render_template("vm.html", ns=ns, namespace=namespace, perms=_vm_perms(ns),
                           power_states=POWER_STATES, **_vm_context(ns, obj))


@bp.get("/ns/<ns>/vms/<name>/live")
@login_required
def vm_live(ns: str, name: str) -> str:
    _namespace(ns)
    try:
        obj = lab().get(user(), VMOP, VMS, ns, name)
    except errors.ApiError as err:
        if err.code in (403, 404):
            return render_template("parts/vm_gone.html", ns=ns, name=name)
        raise
    return render_template("parts/vm_status.html", ns=ns, **_vm_context(ns, obj))


@bp.post("/ns/<ns>/vms/<name>/power")
@login_required
def power(ns: str, name: str) -> Response | tuple[str, int]:
    _namespace(ns)
    state = request.form.get("state", "")
    if state not in POWER_STATES:
        abort(400, description="Choose PoweredOn, PoweredOff or Suspended.")
    try:
        lab().patch(user(), VMOP, VMS, ns, name, {"spec": {"powerState": state}})
    except errors.ApiError as err:
        return _vm_error(ns, name, err)
    LOG.info("dashboard: %s set %s/%s to %s", user().name, ns, name, state)
    words = {"PoweredOn": "powered on", "PoweredOff": "powered off", "Suspended": "suspended"}
    flash(f"{name} will be {words[state]}; the status below follows it.", "ok")
    return redirect(url_for("workloads.vm", ns=ns, name=name))


def _vm_error(ns: str, name: str, err: errors.ApiError) -> tuple[str, int]:
    namespace = _namespace(ns)
    obj = _vm(ns, name)
    form = Form()
    form.api_error(err)
    return render_template("vm.html", ns=ns, namespace=namespace, perms=_vm_perms(ns),
                           power_states=POWER_STATES, form=form,
                           **_vm_context(ns, obj)), err.code


@bp.route("/ns/<ns>/vms/<name>/delete", methods=["GET", "POST"])
@login_required
def delete(ns: str, name: str) -> str | Response | tuple[str, int]:
    namespace = _namespace(ns)
    obj = _vm(ns, name)
    if request.method == "GET":
        return render_template("vm_delete.html", ns=ns, namespace=namespace, vm=obj,
                               form=Form())
    uid = request.form.get("uid") or ""
    try:
        lab().delete(user(), VMOP, VMS, ns, name, uid=uid)
    except errors.ApiError as err:
        form = Form()
        form.api_error(err)
        return render_template("vm_delete.html", ns=ns, namespace=namespace, vm=obj,
                               form=form), err.code
    # Its cloud-init Secret goes with it (only the one the dashboard made for this VM).
    secret = lab().get_or_none(user(), "", "secrets", ns, name + CLOUD_INIT_SUFFIX) \
        if lab().can(user(), "get", "", "secrets", ns) else None
    owners = [o.get("uid") for o in ((secret or {}).get("metadata") or {}).get(
        "ownerReferences") or []]
    if secret is not None and obj["metadata"]["uid"] in owners:
        _delete_secret(ns, secret)
    LOG.info("dashboard: %s deleted VM %s/%s", user().name, ns, name)
    flash(f"VM {name} is being deleted: its domain and disks are removed by the host agent.",
          "ok")
    return redirect(url_for("namespaces.show", ns=ns))


# -- logs: a VM's serial console, a pod's log -------------------------------------------------


def render_log(ns: str, group: str, plural: str, name: str, sub: str, title: str,
               back: str) -> str | Response:
    namespace = _namespace(ns)
    limit = int(current_app.config["CONSOLE_TAIL_BYTES"])
    try:
        obj, tail = lab().read_log(user(), group, plural, ns, name, sub, limit)
    except errors.ApiError as err:
        if err.code in (403, 404):
            if is_live_request():
                return Response(err.message, status=err.code, mimetype="text/plain")
            abort(err.code, description=err.message)
        raise
    text = console_text(tail.text)
    live_url = request.path
    if is_live_request():
        return render_template("parts/log.html", tail=tail, text=text)
    return render_template("log.html", ns=ns, namespace=namespace, obj=obj, tail=tail,
                           text=text, title=title, back=back, live_url=live_url,
                           download=url_for("workloads.log_download", ns=ns, group=group or "core",
                                            plural=plural, name=name, sub=sub))


@bp.get("/ns/<ns>/vms/<name>/console")
@login_required
def console(ns: str, name: str) -> str | Response:
    return render_log(ns, VMOP, VMS, name, "console", f"Console of {name}",
                      url_for("workloads.vm", ns=ns, name=name))


@bp.get("/ns/<ns>/logs/<group>/<plural>/<name>/<sub>")
@login_required
def log(ns: str, group: str, plural: str, name: str, sub: str) -> str | Response:
    group = "" if group == "core" else group
    return render_log(ns, group, plural, name, sub, f"{sub.capitalize()} of {name}",
                      url_for("objects.show", ns=ns, group=group or "core", plural=plural,
                              name=name))


@bp.get("/ns/<ns>/logs/<group>/<plural>/<name>/<sub>.txt")
@login_required
def log_download(ns: str, group: str, plural: str, name: str, sub: str) -> Response:
    _namespace(ns)
    group = "" if group == "core" else group
    limit = 64 * 1024 * 1024
    try:
        _, tail = lab().read_log(user(), group, plural, ns, name, sub, limit)
    except errors.ApiError as err:
        abort(err.code if err.code in (403, 404) else 500, description=err.message)
    return Response(tail.text, mimetype="text/plain", headers={
        "Content-Disposition": f'attachment; filename="{ns}_{name}_{sub}.log"'})
