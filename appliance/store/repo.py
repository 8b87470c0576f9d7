"""The resource store: objects, the global revision, and the watch log.

Every write happens in a :meth:`Store.write` transaction. Its first statement
bumps the global revision counter, which takes the database's write lock
(SQLite) or the counter row's lock (PostgreSQL) for the rest of the
transaction. Writers are therefore serialised, commits happen in revision
order, and a reader that has seen revision N and asks for ``rv > N`` will
never miss an event. Admission checks that read (quota usage, uniqueness)
run inside the same transaction, so they cannot race either.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance.store.db import session_factory
from appliance.store.models import Counter, ResourceRow, WatchEvent

LOG = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True, order=True)
class Key:
    group: str
    resource: str
    namespace: str  # "" for cluster-scoped objects
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.resource}.{self.group or 'core'} {where}{self.name}"


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    key: Key
    body: Obj


class StoreConflict(Exception):
    """The object exists (create) or changed since it was read (update)."""


class StoreMissing(Exception):
    """The object does not exist."""


class ReadTxn:
    def __init__(self, session: Session) -> None:
        self.session = session

    def revision(self) -> int:
        return int(self.session.execute(
            select(Counter.value).where(Counter.name == "revision")).scalar_one())

    def compacted(self) -> int:
        return int(self.session.execute(
            select(Counter.value).where(Counter.name == "compacted")).scalar_one())

    def get(self, key: Key) -> Obj | None:
        row = self.session.execute(select(ResourceRow.body).where(*_key_filter(key))).first()
        return copy.deepcopy(row[0]) if row else None

    def iterate(self, group: str, resource: str, namespace: str | None = None,
                after: tuple[str, str] | None = None, batch: int = 500) -> Iterator[Obj]:
        """Objects of one kind ordered by (namespace, name), fetched in batches."""
        cursor = after
        while True:
            q = select(ResourceRow.namespace, ResourceRow.name, ResourceRow.body).where(
                ResourceRow.api_group == group, ResourceRow.resource == resource)
            if namespace is not None:
                q = q.where(ResourceRow.namespace == namespace)
            if cursor is not None:
                q = q.where(tuple_(ResourceRow.namespace, ResourceRow.name) > tuple_(*cursor))
            rows = self.session.execute(
                q.order_by(ResourceRow.namespace, ResourceRow.name).limit(batch)).all()
            for ns, name, body in rows:
                yield copy.deepcopy(body)
                cursor = (ns, name)
            if len(rows) < batch:
                return

    def namespaced_kinds_present(self, namespace: str) -> list[tuple[str, str]]:
        rows = self.session.execute(
            select(ResourceRow.api_group, ResourceRow.resource).where(
                ResourceRow.namespace == namespace).distinct()).all()
        return [(g, r) for g, r in rows]

    def count(self, group: str, resource: str, namespace: str | None = None) -> int:
        q = select(func.count()).select_from(ResourceRow).where(
            ResourceRow.api_group == group, ResourceRow.resource == resource)
        if namespace is not None:
            q = q.where(ResourceRow.namespace == namespace)
        return int(self.session.execute(q).scalar_one())

    def events_after(self, rv: int, group: str | None = None, resource: str | None = None,
                     limit: int = 1000) -> list[Event]:
        q = select(WatchEvent).where(WatchEvent.rv > rv)
        if group is not None and resource is not None:
            q = q.where(WatchEvent.api_group == group, WatchEvent.resource == resource)
        rows = self.session.execute(q.order_by(WatchEvent.rv).limit(limit)).scalars().all()
        return [Event(r.rv, r.type, Key(r.api_group, r.resource, r.namespace, r.name),
                      copy.deepcopy(r.body)) for r in rows]


class WriteTxn(ReadTxn):
    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.events: list[Event] = []
        self._reserved: int | None = None

    def lock(self) -> None:
        """Take the writers' lock by bumping the revision; the first write uses it."""
        self._reserved = self._bump()

    def next_rv(self) -> int:
        if self._reserved is not None:
            rv, self._reserved = self._reserved, None
            return rv
        return self._bump()

    def _bump(self) -> int:
        return int(self.session.execute(
            update(Counter).where(Counter.name == "revision").values(value=Counter.value + 1)
            .returning(Counter.value)).scalar_one())

    def create(self, key: Key, body: Obj) -> Obj:
        if self.session.execute(select(ResourceRow.id).where(*_key_filter(key))).first():
            raise StoreConflict(str(key))
        rv = self.next_rv()
        body = _with_rv(body, rv)
        self.session.add(ResourceRow(api_group=key.group, resource=key.resource,
                                     namespace=key.namespace, name=key.name,
                                     uid=body["metadata"]["uid"], resource_version=rv, body=body))
        try:
            self.session.flush()
        except IntegrityError as exc:  # pragma: no cover - guarded by the select above
            raise StoreConflict(str(key)) from exc
        self._log(rv, "ADDED", key, body)
        return copy.deepcopy(body)

    def update(self, key: Key, body: Obj, expect_rv: int | None = None) -> Obj:
        row = self.session.execute(select(ResourceRow).where(*_key_filter(key))).scalar_one_or_none()
        if row is None:
            raise StoreMissing(str(key))
        if expect_rv is not None and row.resource_version != expect_rv:
            raise StoreConflict(str(key))
        rv = self.next_rv()
        body = _with_rv(body, rv)
        row.body = body
        row.resource_version = rv
        self.session.flush()
        self._log(rv, "MODIFIED", key, body)
        return copy.deepcopy(body)

    def delete(self, key: Key, expect_rv: int | None = None) -> Obj:
        row = self.session.execute(select(ResourceRow).where(*_key_filter(key))).scalar_one_or_none()
        if row is None:
            raise StoreMissing(str(key))
        if expect_rv is not None and row.resource_version != expect_rv:
            raise StoreConflict(str(key))
        rv = self.next_rv()
        body = _with_rv(row.body, rv)
        self.session.delete(row)
        self.session.flush()
        self._log(rv, "DELETED", key, body)
        return copy.deepcopy(body)

    def _log(self, rv: int, type_: str, key: Key, body: Obj) -> None:
        self.session.add(WatchEvent(rv=rv, type=type_, api_group=key.group, resource=key.resource,
                                    namespace=key.namespace, name=key.name, body=body))
        self.events.append(Event(rv, type_, key, body))


def _with_rv(body: Obj, rv: int) -> Obj:
    body = copy.deepcopy(body)
    body.setdefault("metadata", {})["resourceVersion"] = str(rv)
    return body


def _key_filter(key: Key) -> tuple[Any, ...]:
    return (ResourceRow.api_group == key.group, ResourceRow.resource == key.resource,
            ResourceRow.namespace == key.namespace, ResourceRow.name == key.name)


class Store:
    """Transactions over the resource tables, and wake-ups for watchers."""

    def __init__(self, engine: Engine, history: int = 20000) -> None:
        self.engine = engine
        self.history = history
        self._sessions = session_factory(engine)
        # Reads see one snapshot: a list's resourceVersion and its items, a watch
        # poll's revision and its events, agree. (SQLite's read transactions do
        # that already; PostgreSQL needs REPEATABLE READ. Writes stay READ
        # COMMITTED: they serialise on the revision counter instead.)
        self._read_sessions = session_factory(
            engine.execution_options(isolation_level="REPEATABLE READ")
            if engine.dialect.name == "postgresql" else engine)
        self._changed = threading.Condition()
        self._last_seen = 0

    @contextmanager
    def read(self) -> Iterator[ReadTxn]:
        with self._read_sessions() as session, session.begin():
            yield ReadTxn(session)

    @contextmanager
    def write(self, dry_run: bool = False) -> Iterator[WriteTxn]:
        """A write transaction; with ``dry_run`` everything is rolled back."""
        with self._sessions() as session:
            session.begin()
            txn = WriteTxn(session)
            try:
                txn.lock()  # first statement: take the writers' lock
                yield txn
            except BaseException:
                session.rollback()
                raise
            if dry_run:
                session.rollback()
                return
            session.commit()
        if txn.events:
            with self._changed:
                self._last_seen = max(self._last_seen, txn.events[-1].rv)
                self._changed.notify_all()

    def wait_for_change(self, after_rv: int, timeout: float) -> None:
        """Block until this process commits something newer than ``after_rv``,
        or ``timeout`` passes (writes by other processes are found by polling)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._last_seen <= after_rv:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)

    def compact(self) -> int:
        """Drop watch-log events beyond the configured history; returns the new floor."""
        with self.write() as txn:
            floor = txn.revision() - self.history
            if floor <= txn.compacted():
                return txn.compacted()
            txn.session.execute(delete(WatchEvent).where(WatchEvent.rv <= floor))
            txn.session.execute(update(Counter).where(Counter.name == "compacted")
                                .values(value=floor))
            LOG.info("watch log compacted up to revision %d", floor)
            return floor
