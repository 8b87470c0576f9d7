"""Users: the administrator adds people, resets passwords, makes administrators."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from appliance import errors
from appliance.auth import users
from appliance.auth.rbac import RBAC
from appliance.store.models import User
from web.forms import Form
from web.security import admin_required
from web.views import lab, user

LOG = logging.getLogger(__name__)

bp = Blueprint("users", __name__, url_prefix="/users")


def _rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with lab().store.read() as txn:
        rows = [{"name": u.name, "groups": list(u.groups or []), "created": u.created_at,
                 "disabled": u.disabled,
                 "admin": users.ADMINS in (u.groups or []) or users.MASTERS in (u.groups or [])}
                for u in users.list_users(txn.session)]
    bindings = lab().list_or_empty(user(), RBAC, "rolebindings", "", "pacific.lab/user")
    roles: dict[str, list[tuple[str, str]]] = {}
    for b in bindings:
        labels = b["metadata"].get("labels") or {}
        roles.setdefault(labels.get("pacific.lab/user", ""), []).append(
            (b["metadata"]["namespace"], labels.get("pacific.lab/role", "")))
    for row in rows:
        row["roles"] = sorted(roles.get(row["name"], []))
    people = [r for r in rows if not r["name"].startswith("system:")]
    services = [r for r in rows if r["name"].startswith("system:")]
    return people, services


def _page(forms: dict[str, Form] | None = None, status: int = 200) -> tuple[str, int]:
    forms = forms or {}
    forms.setdefault("create", Form())
    people, services = _rows()
    return render_template("users.html", people=people, services=services, forms=forms,
                           min_password=users.MIN_PASSWORD_LENGTH), status


@bp.get("")
@admin_required
def index() -> tuple[str, int]:
    return _page()


@bp.post("")
@admin_required
def create() -> Response | tuple[str, int]:
    form = Form(request.form)
    name, password = form.get("name"), form.raw("password")
    try:
        users.validate_username(name)
        if name.startswith("system:"):
            raise users.UserError("names starting with 'system:' are for the appliance")
    except users.UserError as exc:
        form.add("name", _sentence(str(exc)) if name else "Enter a user name.")
    if len(password) < users.MIN_PASSWORD_LENGTH:
        form.add("password", f"Use at least {users.MIN_PASSWORD_LENGTH} characters.")
    elif password != form.raw("password2"):
        form.add("password2", "The two passwords differ.")
    if form.errors:
        return _page({"create": form}, 400)
    groups = [users.ADMINS] if form.get("admin") else []
    try:
        with lab().store.write() as txn:
            users.create_user(txn.session, name, password, groups)
    except users.UserError as exc:
        form.add("name", _sentence(str(exc)))
        return _page({"create": form}, 409)
    LOG.info("dashboard: %s added user %s%s", user().name, name, " (administrator)"
             if groups else "")
    flash(f"User {name} added. Grant them roles on a namespace's settings page.", "ok")
    return redirect(url_for("users.index"))


def _target(name: str) -> None:
    with lab().store.read() as txn:
        if txn.session.get(User, name) is None:
            abort(404, description=f"There is no user '{name}'.")
    if name.startswith("system:"):
        abort(403, description="The appliance's own identities are not changed here.")


@bp.post("/<name>/password")
@admin_required
def password(name: str) -> Response | tuple[str, int]:
    _target(name)
    form = Form(request.form)
    if len(form.raw("password")) < users.MIN_PASSWORD_LENGTH:
        form.add("password", f"Use at least {users.MIN_PASSWORD_LENGTH} characters.")
        return _page({f"password:{name}": form}, 400)
    with lab().store.write() as txn:
        users.set_password(txn.session, name, form.raw("password"))
    LOG.info("dashboard: %s set the password of %s", user().name, name)
    flash(f"Password of {name} changed; their sessions and tokens have ended.", "ok")
    return redirect(url_for("users.index"))


@bp.post("/<name>/admin")
@admin_required
def admin(name: str) -> Response | tuple[str, int]:
    _target(name)
    make = request.form.get("admin") == "1"
    if name == user().name and not make:
        form = Form()
        form.message = "You cannot take away your own administrator rights."
        return _page({"top": form}, 400)
    with lab().store.write() as txn:
        row = txn.session.get(User, name)
        assert row is not None
        groups = [g for g in (row.groups or []) if g != users.ADMINS]
        if make:
            groups.append(users.ADMINS)
        elif users.MASTERS in groups:
            groups.remove(users.MASTERS)
        users.set_groups(txn.session, name, groups)
    LOG.info("dashboard: %s %s administrator rights of %s", user().name,
             "granted" if make else "removed", name)
    flash(f"{name} is {'now' if make else 'no longer'} an administrator.", "ok")
    return redirect(url_for("users.index"))


@bp.route("/<name>/delete", methods=["GET", "POST"])
@admin_required
def delete(name: str) -> str | Response | tuple[str, int]:
    _target(name)
    if name == user().name:
        abort(400, description="You cannot delete yourself.")
    if request.method == "GET":
        return render_template("user_delete.html", name=name)
    with lab().store.write() as txn:
        users.delete_user(txn.session, name)
    # Their roles in namespaces go too, so a later user of that name inherits nothing.
    for b in lab().list_or_empty(user(), RBAC, "rolebindings", "", f"pacific.lab/user={name}"):
        try:
            lab().delete(user(), RBAC, "rolebindings", b["metadata"]["namespace"],
                         b["metadata"]["name"])
        except errors.ApiError as err:
            flash(f"Could not remove {b['metadata']['name']} in {b['metadata']['namespace']}: "
                  f"{err.message}", "error")
    LOG.info("dashboard: %s deleted user %s", user().name, name)
    flash(f"User {name} deleted, with their roles.", "ok")
    return redirect(url_for("users.index"))


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "."
