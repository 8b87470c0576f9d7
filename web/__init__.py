"""The Flask dashboard (app factory; one blueprint per area)."""

from __future__ import annotations

from typing import Any

from flask import Flask


def create_app(test_config: dict[str, Any] | None = None, supervisor: Any = None) -> Flask:
    app = Flask(__name__, instance_relative_config=False)
    app.config.from_mapping(SUPERVISOR=supervisor)
    if test_config:
        app.config.update(test_config)

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return "ok", 200

    @app.get("/")
    def index() -> str:
        return ("<!doctype html><title>Pacific Lab</title><h1>Pacific Lab</h1>"
                "<p>The supervisor is running. The dashboard arrives with its own issue; "
                "use <code>lab login</code> and kubectl meanwhile.</p>")

    return app
