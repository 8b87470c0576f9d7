"""Engines, sessions and migrations.

SQLite (the default) runs in WAL mode with ``synchronous=FULL``: a write the
API has acknowledged is on disk, and survives ``kill -9`` and power loss.
PostgreSQL is used as is (its defaults are already durable).
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

LOG = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: (pool_size, max_overflow) against PostgreSQL: 50 connections per process at most.
POSTGRES_POOL = (10, 40)
POSTGRES_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                       "keepalives_count": 3}


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                               pool_size=32, max_overflow=64)
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    # A PostgreSQL server is shared (three control-plane supervisors, the host): each
    # process keeps at most POSTGRES_POOL connections, and TCP keepalives make a
    # connection to a server that vanished (a VM destroyed) fail in about 25 s instead of
    # hanging until TCP's own timeout.
    return create_engine(url, pool_size=POSTGRES_POOL[0], max_overflow=POSTGRES_POOL[1],
                         pool_pre_ping=True, connect_args=POSTGRES_KEEPALIVES)


def _configure_sqlite(engine: Engine) -> None:
    # Take transaction control away from the sqlite3 module so that SQLAlchemy's
    # BEGIN really starts a transaction: a read session then sees one snapshot.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    if is_sqlite(engine):
        path = engine.url.database
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def holds_objects(engine: Engine) -> bool:
    """Whether the store has been made and holds objects (a lab's, bootstrapped or moved
    in); False for an empty database or one with only the schema."""
    from sqlalchemy import inspect, text

    with engine.connect() as conn:
        if not inspect(conn).has_table("resources"):
            return False
        return conn.execute(text("SELECT 1 FROM resources LIMIT 1")).first() is not None
