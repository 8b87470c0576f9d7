"""The API's cap on open watches (``max_watches``) counts a watch from the moment it is
accepted, not from its first byte: watches that arrive together must not all pass a check
made before any of them counted (CI saw 14 open under a cap of 12), and a watch whose
client went away before its body was read gives its slot back."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

from appliance.api.app import ApiApp
from appliance.auth import users
from appliance.kinds import default_registry
from appliance.objects import ObjectService
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store

URL = "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=30"


@pytest.fixture
def app_and_token(tmp_path: Path) -> Iterator[tuple[ApiApp, str]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    registry = default_registry()
    service = ObjectService(Store(engine), registry)
    with service.store.write() as txn:
        users.create_user(txn.session, "admin", "admin-password", [users.MASTERS])
        token, _ = users.issue_token(txn.session, "admin", 3600)
    yield ApiApp(service, registry, token_ttl=3600, max_body=1 << 20, max_watches=2), token
    engine.dispose()


@dataclass
class Answer:
    """What a WSGI server holds after calling the app, before it reads the body."""

    body: Iterable[bytes]
    status_code: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        self.body.close()  # type: ignore[attr-defined]


def _get(app: ApiApp, url: str, token: str) -> Answer:
    environ = EnvironBuilder(path=url.split("?")[0], query_string=url.split("?")[1],
                             headers={"Authorization": f"Bearer {token}"}).get_environ()
    answer = Answer(())

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        answer.status_code = int(status.split()[0])
        answer.headers = dict(headers)
        return lambda data: None

    answer.body = app(environ, start_response)
    return answer


def test_accepted_watches_count_before_their_first_byte(
        app_and_token: tuple[ApiApp, str]) -> None:
    app, token = app_and_token
    # Accepted, their bodies not read yet: the stream generators have not started.
    first = _get(app, URL, token)
    second = _get(app, URL, token)
    assert (first.status_code, second.status_code) == (200, 200)
    assert app.open_watches == 2

    third = _get(app, URL, token)
    assert third.status_code == 429
    assert third.headers["Retry-After"] == "1"
    assert app.open_watches == 2

    first.close()  # the client went away without reading a byte
    assert app.open_watches == 1
    fourth = _get(app, URL, token)
    assert fourth.status_code == 200
    for resp in (second, fourth):
        resp.close()
    assert app.open_watches == 0


def test_a_refused_watch_takes_no_slot(app_and_token: tuple[ApiApp, str]) -> None:
    app, token = app_and_token
    bad = _get(app, URL.replace("timeoutSeconds=30", "timeoutSeconds=soon"), token)
    assert bad.status_code == 400
    assert app.open_watches == 0
