"""Twenty SIGKILLs of the host service under four writers and four watchers, on SQLite and
on PostgreSQL (``benchmarks/chaos.py``; its 200-kill figures are in
``docs/reliability.md``): no acknowledged write lost, the SQLite file intact after every
kill, every watcher told exactly what was committed, the API back by itself each time."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import run
from tests.support.postgres import PostgresServer

pytestmark = [
    pytest.mark.api,
    # Twenty SIGKILLs of the server under eight clients: a client TLS socket that urllib3
    # dropped mid-request can reach the garbage collector unclosed (twice in CI, not
    # reproduced here with tracemalloc on). Every session and stream of the benchmark is
    # closed; what is left is the client library's, and says nothing of the service.
    pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning"),
]

CYCLES = 20


def check(result: dict) -> None:  # type: ignore[type-arg]
    print(result)
    assert result["cycles"] == CYCLES
    assert result["acknowledged_lost"] == 0, result["lost_examples"]
    assert result["writes_acknowledged"] >= CYCLES * 20
    assert result["watch_problems"] == []
    assert result["watch_events_checked"] >= result["writes_acknowledged"]
    assert result["integrity_checks_ok"] == result["integrity_checks"]


def test_kills_on_sqlite(tmp_path: Path) -> None:
    result = run(CYCLES, tmp_path / "state")
    assert result["integrity_checks"] == CYCLES
    check(result)


def test_kills_on_postgres(tmp_path: Path) -> None:
    with PostgresServer() as pg:
        check(run(CYCLES, tmp_path / "state", pg.url))
