"""Sessions, the logged-in user, CSRF protection and response headers.

The session is Flask's signed cookie (Secure, HttpOnly, SameSite=Lax) and
holds only the user's name, a stamp of the password hash (changing the
password or deleting the user ends every session) and the CSRF token. The
user and their groups are read from the store on every request.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, g, redirect, request, session, url_for
from werkzeug.wrappers import Response

from appliance.auth.users import AUTHENTICATED, UserInfo
from appliance.store.models import User

LOG = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def install_secret(path: Path) -> bytes:
    """The install's session key: read it, or make it (0600) on the first start."""
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    try:  # two processes starting at once must end with one key
        os.link(tmp, path)
    except FileExistsError:
        os.unlink(tmp)
        return path.read_bytes()
    os.unlink(tmp)
    return key


def password_stamp(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:32]


def csrf_token() -> str:
    token = session.get(CSRF_FIELD)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return str(token)


def start_session(user: UserInfo, password_hash: str) -> None:
    """A fresh session for ``user`` (never reuse the one from before login)."""
    session.clear()
    session.permanent = True
    session["user"] = user.name
    session["stamp"] = password_stamp(password_hash)
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def end_session() -> None:
    session.clear()


def _load_user() -> None:
    g.user = None
    if request.endpoint == "static":
        return
    name = session.get("user")
    if not name:
        return
    lab = current_app.extensions["pacific_lab"]
    with lab.store.read() as txn:
        row = txn.session.get(User, name)
        if row is None or row.disabled or session.get("stamp") != password_stamp(
                row.password_hash):
            session.clear()
            return
        g.user = UserInfo(row.name, (*row.groups, AUTHENTICATED))


def _same_origin() -> bool:
    """Browsers send Origin on POSTs; when they do, it must be this site."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host


def _check_csrf() -> None:
    if request.method not in UNSAFE_METHODS:
        return
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    expected = session.get(CSRF_FIELD) or ""
    if not expected or not hmac.compare_digest(str(sent), str(expected)) or not _same_origin():
        LOG.warning("refused a %s to %s without a valid CSRF token (user %s)",
                    request.method, request.path, session.get("user") or "-")
        abort(400, description="This form has expired or did not come from the dashboard. "
                               "Reload the page and try again.")


def _headers(resp: Response) -> Response:
    h = resp.headers
    h.setdefault("Content-Security-Policy",
                 "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                 "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                 "frame-ancestors 'none'")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        h.setdefault("Cache-Control", "no-store")
    if current_app.config.get("SESSION_COOKIE_SECURE"):
        h.setdefault("Strict-Transport-Security", "max-age=31536000")
    return resp


def init_app(app: Flask) -> None:
    app.before_request(_load_user)
    app.before_request(_check_csrf)
    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["CSRF_FIELD"] = CSRF_FIELD


def is_live_request() -> bool:
    """A fragment fetched by the page's script (not a navigation)."""
    return request.headers.get("X-Live") == "1"


def login_required(view: F) -> F:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if g.get("user") is None:
            if is_live_request():
                return Response("login required", status=401, mimetype="text/plain")
            target = request.full_path if request.method == "GET" else None
            return redirect(url_for("auth.login", next=target.rstrip("?") if target else None))
        return view(*args, **kwargs)
    return wrapped  # type: ignore[return-value]


def admin_required(view: F) -> F:
    @functools.wraps(view)
    @login_required
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not g.user.is_admin:
            abort(403, description="Only administrators may open this page.")
        return view(*args, **kwargs)
    return wrapped  # type: ignore[return-value]


def safe_next(target: str | None) -> str:
    """Where to go after login: only a path on this site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("namespaces.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("namespaces.index")
    return target
