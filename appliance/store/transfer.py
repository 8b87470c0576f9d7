"""Moving a lab's store to another database, exactly: the same objects, uids and
resourceVersions, the watch log, the revision counter, users and tokens.

This is how a lab moves between the embedded SQLite store and the PostgreSQL
cluster of control-plane VMs (issue 13), and back. A client that was watching
from resourceVersion N before the move can go on watching from N after it.

The source must be quiet (its supervisor stopped); the destination must be empty
(only the schema), or the copy is refused: nothing is merged or overwritten.
Everything is written in one transaction, so a failed copy leaves the
destination as empty as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from appliance.store.db import make_engine, migrate
from appliance.store.models import Base, Counter, ResourceRow, Token, User, WatchEvent

BATCH = 1000
#: Copied in this order; each with the column it is read in order of.
TABLES: tuple[tuple[type[Base], str], ...] = (
    (ResourceRow, "id"), (WatchEvent, "rv"), (User, "name"), (Token, "token_hash"))


class TransferError(RuntimeError):
    """The copy was refused or did not add up; the destination is unchanged."""


@dataclass(frozen=True)
class Copied:
    objects: int
    watch_events: int
    users: int
    tokens: int
    revision: int


def copy_store(source_url: str, dest_url: str) -> Copied:
    src, dst = make_engine(source_url), make_engine(dest_url)
    try:
        migrate(dst)
        with Session(src) as s_read, Session(dst) as s_write, s_write.begin():
            _refuse_unless_empty(s_write, dest_url)
            counts = {}
            for model, order in TABLES:
                counts[model.__tablename__] = _copy_table(s_read, s_write, model, order)
            counters = {c.name: c.value for c in s_read.execute(select(Counter)).scalars()}
            for name, value in counters.items():
                s_write.execute(update(Counter).where(Counter.name == name).values(value=value))
            if dst.dialect.name == "postgresql" and counts["resources"]:
                s_write.execute(text("SELECT setval(pg_get_serial_sequence('resources', 'id'), "
                                     "(SELECT max(id) FROM resources))"))
            _verify(s_read, s_write)
        return Copied(counts["resources"], counts["watch_events"], counts["users"],
                      counts["tokens"], int(counters.get("revision", 0)))
    finally:
        src.dispose()
        dst.dispose()


def _refuse_unless_empty(session: Session, url: str) -> None:
    for model, _ in TABLES:
        if session.execute(select(func.count()).select_from(model)).scalar_one():
            raise TransferError(f"the destination store is not empty "
                                f"({model.__tablename__} has rows): {_safe(url)}")


def _copy_table(src: Session, dst: Session, model: type[Base], order: str) -> int:
    columns = [c.name for c in model.__table__.columns]
    key = getattr(model, order)
    last = None
    copied = 0
    while True:
        q = select(model).order_by(key).limit(BATCH)
        if last is not None:
            q = q.where(key > last)
        rows = list(src.execute(q).scalars())
        if not rows:
            return copied
        dst.execute(model.__table__.insert(),
                    [{c: getattr(r, c) for c in columns} for r in rows])
        copied += len(rows)
        last = getattr(rows[-1], order)


def _verify(src: Session, dst: Session) -> None:
    for model, _ in TABLES:
        a = src.execute(select(func.count()).select_from(model)).scalar_one()
        b = dst.execute(select(func.count()).select_from(model)).scalar_one()
        if a != b:
            raise TransferError(f"{model.__tablename__}: {a} rows in the source, {b} copied")
    a = src.execute(select(func.max(ResourceRow.resource_version))).scalar_one()
    b = dst.execute(select(func.max(ResourceRow.resource_version))).scalar_one()
    if a != b:
        raise TransferError(f"newest resourceVersion differs after the copy: {a} != {b}")


def _safe(url: str) -> str:
    """A database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a message must not fail
        return "<database>"

