"""The dashboard's blueprints, one per area."""

from __future__ import annotations

from flask import current_app, g

from appliance.auth.users import UserInfo
from web.lab import Lab


def lab() -> Lab:
    return current_app.extensions["pacific_lab"]  # type: ignore[no-any-return]


def user() -> UserInfo:
    return g.user  # type: ignore[no-any-return]
