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

    def revisions(self) -> list[int]:
        """The revisions this transaction took: its events', or the lock's alone."""
        return [ev.rv for ev in self.events] + (
            [self._reserved] if self._reserved is not None else [])

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


LOCAL_RVS_KEPT = 100_000  # local commits remembered between polls (none run without waiters)


class Store:
    """Transactions over the resource tables, and wake-ups for watchers."""

    poll_interval = 1.0  # seconds between reads of the revision while watchers wait

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
        # Wake-ups, all under _lock. A kind's watchers wait on that kind's condition
        # and wake for commits to it, not for every Lease renewal or Node heartbeat of
        # the others; waiters without a kind (None) wake for any commit.
        self._lock = threading.Lock()
        self._conditions: dict[tuple[str, str] | None, threading.Condition] = {}
        self._waiters = 0
        self._poller: threading.Thread | None = None
        self._last_seen = 0  # the newest revision known to exist
        self._kind_rv: dict[tuple[str, str], int] = {}  # newest local commit per kind
        self._local_rvs: set[int] = set()  # local commits newer than _polled
        self._polled = 0  # the revision the poller last read
        self._foreign = 0  # the newest revision polled that holds another process's commit

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
        with self._lock:
            if len(self._local_rvs) > LOCAL_RVS_KEPT:
                self._local_rvs.clear()  # the next poll then wakes every watcher once
            self._local_rvs.update(txn.revisions())
            if txn.events:
                for ev in txn.events:
                    kind = (ev.key.group, ev.key.resource)
                    self._kind_rv[kind] = max(self._kind_rv.get(kind, 0), ev.rv)
                    self._notify(kind)
                self._last_seen = max(self._last_seen, txn.events[-1].rv)
                self._notify(None)

    def wait_for_change(self, after_rv: int, timeout: float,
                        kind: tuple[str, str] | None = None) -> bool:
        """Block until a revision newer than ``after_rv`` is known (with ``kind``, a
        ``(group, resource)``: one that may hold a change to that kind), or ``timeout``
        passes; returns whether one is.

        This process's commits wake the waiters at once, each kind's its own. Commits
        of other processes (the CLI, other supervisors on a shared database) are found
        by one poller thread, which reads the revision every ``poll_interval`` while
        anyone waits; which kinds another process changed is not known, so its commits
        wake every waiter. (With a read per waiter, and every waiter woken by every
        commit, a service's few dozen idle watches cost several percent of a core on a
        bare host, and most of a core inside an emulated VM.)"""
        deadline = time.monotonic() + timeout
        with self._lock:
            condition = self._conditions.get(kind)
            if condition is None:
                condition = self._conditions[kind] = threading.Condition(self._lock)
            self._waiters += 1
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll, name="store-poller",
                                                daemon=True)
                self._poller.start()
            try:
                while not self._newer(after_rv, kind):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    condition.wait(remaining)
                return True
            finally:
                self._waiters -= 1

    def _newer(self, after_rv: int, kind: tuple[str, str] | None) -> bool:
        if kind is None:
            return self._last_seen > after_rv
        return max(self._kind_rv.get(kind, 0), self._foreign) > after_rv

    def _notify(self, kind: tuple[str, str] | None) -> None:
        condition = self._conditions.get(kind)
        if condition is not None:
            condition.notify_all()

    def _poll(self) -> None:
        """The poller: reads the revision every ``poll_interval`` until nobody waits.

        Revisions are consecutive and commits serialise in their order, so the
        revisions between two reads that this process did not commit are other
        processes' commits."""
        while True:
            time.sleep(self.poll_interval)
            with self._lock:
                if self._waiters == 0:
                    self._poller = None
                    return
            try:
                with self.read() as txn:
                    rv = txn.revision()
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while
                LOG.warning("cannot read the store's revision: %s", exc)
                continue
            with self._lock:
                if rv <= self._polled:
                    continue
                local = sum(1 for x in self._local_rvs if self._polled < x <= rv)
                foreign = rv - self._polled > local
                self._local_rvs = {x for x in self._local_rvs if x > rv}
                self._polled = rv
                self._last_seen = max(self._last_seen, rv)
                if foreign:
                    self._foreign = rv
                    for condition in self._conditions.values():
                        condition.notify_all()

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
