"""The Flask dashboard: namespaces for administrators, workloads for everyone.

``create_app`` is the factory (as in the Flask tutorial). Configuration comes
from built-in defaults, then ``<state_dir>/dashboard.toml`` (the instance
file), then ``LAB_DASHBOARD_*`` environment variables, then ``test_config``.
The session key is made once per install and kept in
``<state_dir>/dashboard-secret`` (mode 0600); there is no default key.

Every read and write goes through the supervisor's object service with the
logged-in user, so RBAC, quota and validation are those of the API. Views
read status and write spec; nothing slow happens in a request.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, g, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from appliance import audit
from appliance.errors import ApiError, disk_full, insufficient_storage

from web import filters, security
from web.lab import Lab, LogPaths

DEFAULTS: dict[str, Any] = {
    "SESSION_COOKIE_NAME": "pacific_dashboard",
    "SESSION_COOKIE_SECURE": True,  # the host service serves the dashboard over HTTPS only
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "PERMANENT_SESSION_LIFETIME": timedelta(hours=10),
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    "LIVE_INTERVAL_MS": 2000,  # how often pages refresh their live parts
    "CONSOLE_TAIL_BYTES": 128 * 1024,  # how much of a console log a page shows
    "LIST_LIMIT": 500,  # objects shown per list
}
INSTANCE_FILE = "dashboard.toml"
ENV_PREFIX = "LAB_DASHBOARD"


def create_app(test_config: Mapping[str, Any] | None = None, supervisor: Any = None,
               logs: Mapping[tuple[str, str, str], Callable[[dict[str, Any]], Path | None]]
               | None = None,
               readers: Mapping[tuple[str, str, str], Callable[..., Any]] | None = None
               ) -> Flask:
    """The dashboard's WSGI app over an in-process ``appliance.service.Supervisor``.

    ``logs`` maps (group, plural, subresource) to the log file of an object,
    as the API's log subresources do; a VM's serial console is known by default.
    ``readers``, in a control-plane VM, read those logs from the host instead
    (``appliance.nodeapi.RemoteLogs``): ``reader(object, args, timeout)`` gives bytes.
    """
    if supervisor is None:
        raise ValueError("the dashboard needs the supervisor it shows")
    state_dir = Path(supervisor.settings.state_dir).resolve()
    app = Flask(__name__, instance_path=str(state_dir), instance_relative_config=True)
    app.config.from_mapping(DEFAULTS)
    app.config.from_file(INSTANCE_FILE, load=tomllib.load, text=False, silent=True)
    app.config.from_prefixed_env(ENV_PREFIX)
    if test_config:
        app.config.update(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = security.install_secret(state_dir / "dashboard-secret")
    if isinstance(app.config["PERMANENT_SESSION_LIFETIME"], int | float):
        app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(
            seconds=app.config["PERMANENT_SESSION_LIFETIME"])

    app.extensions["pacific_lab"] = Lab(supervisor, LogPaths(supervisor.settings, logs),
                                        readers)

    security.init_app(app)
    filters.init_app(app)

    from web.views import auth, clusters, hosts, namespaces, objects, users, workloads

    app.register_blueprint(auth.bp)
    app.register_blueprint(namespaces.bp)
    app.register_blueprint(workloads.bp)
    app.register_blueprint(clusters.bp)
    app.register_blueprint(objects.bp)
    app.register_blueprint(hosts.bp)
    app.register_blueprint(users.bp)

    _error_pages(app)
    _audit(app)

    @app.get("/healthz")
    def healthz() -> tuple[str, int, dict[str, str]]:
        return "ok", 200, {"Content-Type": "text/plain"}

    return app


TITLES = {400: "That did not work", 401: "Please log in", 403: "Not allowed", 404: "Not found",
          405: "Not allowed", 409: "Changed meanwhile", 413: "Too large",
          422: "Not valid", 500: "Something went wrong", 507: "The disk is full"}


#: The dashboard's path words for the kinds they show, as the audit log names them.
AUDITED_KINDS = {"vms": ("virtualmachines", "vmoperator.vmware.com"),
                 "clusters": ("tanzukubernetesclusters", "run.tanzu.vmware.com"),
                 "grants": ("rolebindings", "rbac.authorization.k8s.io"),
                 "limits": ("resourcequotas", ""), "images": ("virtualmachineimages",
                                                             "vmoperator.vmware.com"),
                 "classes": ("virtualmachineclassbindings", "vmoperator.vmware.com"),
                 "users": ("users", "pacific.lab"), "namespaces": ("namespaces", ""),
                 "ns": ("namespaces", "")}


def _audit(app: Flask) -> None:
    """One audit Event per page and form (``appliance.audit``): the user, the address,
    what was asked (a form's fields and passwords never), the answer's code."""

    @app.after_request
    def audit_request(resp: Response) -> Response:
        log = getattr(app.extensions["pacific_lab"].supervisor, "audit_log", None)
        if log is None or request.path.startswith("/static/") or request.path == "/healthz":
            return resp
        args = request.view_args or {}
        record = audit.Request(request.full_path.rstrip("?"), request.method,
                               request.remote_addr or "", request.user_agent.string,
                               client="dashboard")
        who = g.get("user")
        if who is not None:
            record.user, record.groups = who.name, tuple(who.groups)
        elif request.endpoint == "auth.login" and request.method == "POST":
            record.user = (request.form.get("username") or "")[:64]
        words = [w for w in request.path.split("/") if w] or [""]
        record.namespace = args.get("ns", "")
        record.name = args.get("name") or args.get("binding") or ""
        if "plural" in args:
            record.resource, record.api_group = args["plural"], args.get("group", "")
        else:
            known = [w for w in words if w in AUDITED_KINDS]
            if known:
                record.resource, record.api_group = AUDITED_KINDS[known[-1]]
                if known[-1] == "ns" and not record.name:
                    record.name, record.namespace = record.namespace, ""
        record.verb = ("get" if request.method in ("GET", "HEAD") else
                       "delete" if words[-1] in ("delete", "revoke") else
                       "create" if words[-1] == "new" or (not record.name and
                                                          request.endpoint != "auth.login")
                       else "update")
        if record.verb == "create" and not record.name:
            record.name = (request.form.get("name") or "")[:253]
        log.write(record.event(resp.status_code))
        return resp


def _error_pages(app: Flask) -> None:
    def page(code: int, description: str) -> Response | tuple[str, int]:
        if security.is_live_request():
            return Response(description, status=code, mimetype="text/plain")
        return render_template("error.html", code=code, name=TITLES.get(code, "Error"),
                               description=description), code

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response | tuple[str, int]:
        return page(exc.code or 500, exc.description or "")

    @app.errorhandler(ApiError)
    def api_error(err: ApiError) -> Response | tuple[str, int]:
        return page(err.code if 400 <= err.code < 600 else 500, err.message)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response | tuple[str, int]:
        if disk_full(exc):  # the store rolled the write back: say why, as the API does
            app.logger.error("refused %s %s: the state disk is full (%s)", request.method,
                             request.path, exc)
            return page(507, insufficient_storage().message)
        app.logger.exception("internal error on %s %s", request.method, request.path)
        return page(500, "The dashboard could not do that; the host service's log says why.")
