"""The throwaway PostgreSQL server helper, against a real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from tests.support.postgres import (
    PostgresServer,
    find_postgres_bin_dir,
    postgres_server,  # noqa: F401 - the session fixture, used below
)

pytestmark = pytest.mark.postgres


def _scalar(url: str, sql: str) -> object:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()


def test_select_one(postgres_server: PostgresServer) -> None:  # noqa: F811
    assert postgres_server.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert _scalar(postgres_server.url, "SELECT 1") == 1
    assert _scalar(postgres_server.url, "SELECT current_database()") == "lab_test"


def test_durability_settings_kept(postgres_server: PostgresServer) -> None:  # noqa: F811
    assert _scalar(postgres_server.url, "SHOW fsync") == "on"
    assert _scalar(postgres_server.url, "SHOW synchronous_commit") == "on"
    assert _scalar(postgres_server.url, "SHOW listen_addresses") == "127.0.0.1"


def test_packaged_binaries_are_used(postgres_server: PostgresServer) -> None:  # noqa: F811
    bin_dir = postgres_server.bin_dir
    assert bin_dir == find_postgres_bin_dir()
    assert bin_dir.parent.parent == Path("/usr/lib/postgresql")
    if os.geteuid() == 0:  # the cluster belongs to the postgres system user
        assert postgres_server.data_dir.stat().st_uid != 0


def test_extra_database(postgres_server: PostgresServer) -> None:  # noqa: F811
    url = postgres_server.create_database("lab_extra")
    try:
        assert _scalar(url, "SELECT current_database()") == "lab_extra"
    finally:
        postgres_server.drop_database("lab_extra")


def test_crash_recovery_and_cleanup() -> None:
    with PostgresServer(database="crashy") as server:
        engine = sqlalchemy.create_engine(server.url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (v int)"))
            conn.execute(text("INSERT INTO t VALUES (42)"))
        engine.dispose()
        pid = server.pid
        assert pid is not None
        server.stop("immediate")  # a crash: no checkpoint
        assert not server.running
        server.start()  # WAL recovery brings the committed row back
        assert server.pid != pid
        assert _scalar(server.url, "SELECT v FROM t") == 42
        assert "automatic recovery in progress" in server.log_file.read_text()
        base = server.base_dir
        last_pid = server.pid
    assert not base.exists()
    assert last_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(last_pid, 0)


def test_find_newest_bin_dir(tmp_path: Path) -> None:
    assert find_postgres_bin_dir(tmp_path / "absent") is None
    for version, complete in [("9.6", True), ("13", True), ("15", True), ("17", False)]:
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        names = ["initdb", "pg_ctl", "postgres", "createdb", "dropdb"]
        for exe in names if complete else names[:2]:
            (bin_dir / exe).touch()
    # 17 lacks the server binaries; 15 beats 13 and 9.6 numerically
    assert find_postgres_bin_dir(tmp_path) == tmp_path / "15" / "bin"
