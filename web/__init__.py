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

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from appliance.errors import ApiError

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
               | None = None) -> Flask:
    """The dashboard's WSGI app over an in-process ``appliance.service.Supervisor``.

    ``logs`` maps (group, plural, subresource) to the log file of an object,
    as the API's log subresources do; a VM's serial console is known by default.
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

    app.extensions["pacific_lab"] = Lab(supervisor, LogPaths(supervisor.settings, logs))

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

    @app.get("/healthz")
    def healthz() -> tuple[str, int, dict[str, str]]:
        return "ok", 200, {"Content-Type": "text/plain"}

    return app


TITLES = {400: "That did not work", 401: "Please log in", 403: "Not allowed", 404: "Not found",
          405: "Not allowed", 409: "Changed meanwhile", 413: "Too large",
          422: "Not valid", 500: "Something went wrong"}


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
