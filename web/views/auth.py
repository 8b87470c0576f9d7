"""Logging in and out with the supervisor's users."""

from __future__ import annotations

import logging

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from appliance.auth import users
from appliance.store.models import User
from web.forms import Form
from web.security import end_session, safe_next, start_session
from web.views import lab

LOG = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | Response | tuple[str, int]:
    form = Form(request.form if request.method == "POST" else {"next": request.args.get("next",
                                                                                        "")})
    if request.method == "GET":
        if g.user is not None:
            return redirect(safe_next(request.args.get("next")))
        return render_template("login.html", form=form)
    name, password = form.get("username"), form.raw("password")
    if not name:
        form.add("username", "Enter your user name.")
    if not password:
        form.add("password", "Enter your password.")
    if form.errors:
        return render_template("login.html", form=form), 400
    logins, source = lab().supervisor.logins, request.remote_addr or ""
    wait = logins.retry_after(name, source)
    if wait is not None:
        form.message = (f"Too many failed logins for this user from your address. "
                        f"Try again in {wait} seconds.")
        return Response(render_template("login.html", form=form), 429,
                        {"Retry-After": str(wait)})
    with lab().store.read() as txn:
        info = users.authenticate(txn.session, name, password)
        row = txn.session.get(User, name) if info is not None else None
        password_hash = row.password_hash if row is not None else ""
    if info is None:
        LOG.info("dashboard: failed login for %r from %s", name[:63], source)
        logins.failed(name, source)
        form.message = "The user name or password is not right."
        return render_template("login.html", form=form), 401
    logins.succeeded(name, source)
    start_session(info, password_hash)
    LOG.info("dashboard: %s logged in from %s", info.name, request.remote_addr)
    return redirect(safe_next(form.get("next")))


@bp.post("/logout")
def logout() -> Response:
    if g.user is not None:
        LOG.info("dashboard: %s logged out", g.user.name)
    end_session()
    flash("You are logged out.", "ok")
    return redirect(url_for("auth.login"))
