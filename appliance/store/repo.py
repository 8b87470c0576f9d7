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

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

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


# The statements of the hot paths, built once. Building a statement per call (and going
# through the ORM's identity map) cost about 340 us a lookup against about 70 us for a
# prebuilt Core statement: most of the CPU an API create spent in the store.
_R = ResourceRow.__table__
_E = WatchEvent.__table__
_C = Counter.__table__


def _by_key(stmt: Any) -> Any:
    return stmt.where(_R.c.api_group == bindparam("k_group"), _R.c.resource == bindparam("k_res"),
                      _R.c.namespace == bindparam("k_ns"), _R.c.name == bindparam("k_name"))


def _kind_filter(stmt: Any, namespaced: bool) -> Any:
    stmt = stmt.where(_R.c.api_group == bindparam("k_group"), _R.c.resource == bindparam("k_res"))
    return stmt.where(_R.c.namespace == bindparam("k_ns")) if namespaced else stmt


def _iterate_stmt(namespaced: bool, after: bool) -> Any:
    stmt = _kind_filter(select(_R.c.namespace, _R.c.name, _R.c.body), namespaced)
    if after:
        stmt = stmt.where(tuple_(_R.c.namespace, _R.c.name)
                          > tuple_(bindparam("after_ns"), bindparam("after_name")))
    return stmt.order_by(_R.c.namespace, _R.c.name).limit(bindparam("batch"))


def _events_stmt(of_kind: bool) -> Any:
    stmt = select(_E.c.rv, _E.c.type, _E.c.api_group, _E.c.resource, _E.c.namespace, _E.c.name,
                  _E.c.body).where(_E.c.rv > bindparam("after_rv"))
    if of_kind:
        stmt = stmt.where(_E.c.api_group == bindparam("k_group"),
                          _E.c.resource == bindparam("k_res"))
    return stmt.order_by(_E.c.rv).limit(bindparam("batch"))


_COUNTER = select(_C.c.value).where(_C.c.name == bindparam("counter"))
_COUNTERS = select(_C.c.name, _C.c.value).where(_C.c.name.in_(("revision", "compacted")))
_BUMP = (update(_C).where(_C.c.name == "revision").values(value=_C.c.value + 1)
         .returning(_C.c.value))
_GET = _by_key(select(_R.c.body))
_ROW = _by_key(select(_R.c.id, _R.c.resource_version, _R.c.body))
_EXISTS = _by_key(select(_R.c.id))
_INSERT = insert(_R)
_REWRITE = update(_R).where(_R.c.id == bindparam("row_id")).values(
    body=bindparam("new_body"), resource_version=bindparam("new_rv"))
_REMOVE = delete(_R).where(_R.c.id == bindparam("row_id"))
_LOG = insert(_E)
_ITERATE = {(ns, after): _iterate_stmt(ns, after) for ns in (False, True) for after in (False, True)}
_COUNT = {ns: _kind_filter(select(func.count()).select_from(_R), ns) for ns in (False, True)}
_EVENTS = {of_kind: _events_stmt(of_kind) for of_kind in (False, True)}
_KINDS_PRESENT = select(_R.c.api_group, _R.c.resource).where(
    _R.c.namespace == bindparam("k_ns")).distinct()


def _key_params(key: Key) -> dict[str, str]:
    return {"k_group": key.group, "k_res": key.resource, "k_ns": key.namespace,
            "k_name": key.name}


class ReadTxn:
    """One transaction on one connection. Resources go through the prebuilt statements;
    bodies come back freshly decoded from JSON, so nothing is shared with anybody else's
    copy. ``session`` (made on first use, in the same transaction) is there for the ORM
    tables of people and tokens."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._session: Session | None = None

    @property
    def connection(self) -> Connection:
        """The transaction's connection, for prebuilt Core statements of other tables."""
        return self._conn

    @property
    def session(self) -> Session:
        if self._session is None:
            # The transaction is the connection's: the session never commits or ends it.
            self._session = Session(bind=self._conn, join_transaction_mode="rollback_only",
                                    expire_on_commit=False)
        return self._session

    def _run(self, stmt: Any, params: dict[str, Any]) -> Any:
        return self._conn.execute(stmt, params)

    def _flush(self) -> None:
        """Write what the ORM holds back, before the connection commits."""
        if self._session is not None:
            self._session.flush()

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()

    def revision(self) -> int:
        return int(self._run(_COUNTER, {"counter": "revision"}).scalar_one())

    def compacted(self) -> int:
        return int(self._run(_COUNTER, {"counter": "compacted"}).scalar_one())

    def counters(self) -> tuple[int, int]:
        """The revision and the compaction floor, in one read."""
        values = dict(self._run(_COUNTERS, {}).all())
        return int(values["revision"]), int(values["compacted"])

    def get(self, key: Key) -> Obj | None:
        row = self._run(_GET, _key_params(key)).first()
        return row[0] if row else None

    def iterate(self, group: str, resource: str, namespace: str | None = None,
                after: tuple[str, str] | None = None, batch: int = 500) -> Iterator[Obj]:
        """Objects of one kind ordered by (namespace, name), fetched in batches."""
        params: dict[str, Any] = {"k_group": group, "k_res": resource, "k_ns": namespace,
                                  "batch": batch}
        cursor = after
        while True:
            if cursor is not None:
                params["after_ns"], params["after_name"] = cursor
            stmt = _ITERATE[namespace is not None, cursor is not None]
            rows = self._run(stmt, params).all()
            for ns, name, body in rows:
                yield body
                cursor = (ns, name)
            if len(rows) < batch:
                return

    def namespaced_kinds_present(self, namespace: str) -> list[tuple[str, str]]:
        return [(g, r) for g, r in self._run(_KINDS_PRESENT, {"k_ns": namespace}).all()]

    def count(self, group: str, resource: str, namespace: str | None = None) -> int:
        params = {"k_group": group, "k_res": resource, "k_ns": namespace}
        return int(self._run(_COUNT[namespace is not None], params).scalar_one())

    def events_after(self, rv: int, group: str | None = None, resource: str | None = None,
                     limit: int = 1000) -> list[Event]:
        of_kind = group is not None and resource is not None
        rows = self._run(_EVENTS[of_kind], {"after_rv": rv, "k_group": group, "k_res": resource,
                                            "batch": limit}).all()
        return [Event(r.rv, r.type, Key(r.api_group, r.resource, r.namespace, r.name), r.body)
                for r in rows]


class WriteTxn(ReadTxn):
    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.events: list[Event] = []
        self._reserved: int | None = None
        # What admission read once in this transaction and may read again (a namespace's
        # quotas, for the check and again for the refresh), with the count of this
        # transaction's writes to that kind when it was read: see writes_to().
        self.memo: dict[Any, tuple[int, Any]] = {}
        self._writes: dict[tuple[str, str], int] = {}

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
        return int(self._run(_BUMP, {}).scalar_one())

    def writes_to(self, group: str, resource: str) -> int:
        """How many objects of a kind this transaction wrote so far: a memo read at one
        count is stale at another."""
        return self._writes.get((group, resource), 0)

    def create(self, key: Key, body: Obj) -> Obj:
        if self._run(_EXISTS, _key_params(key)).first():
            raise StoreConflict(str(key))
        rv = self.next_rv()
        body = _with_rv(body, rv)
        try:
            self._run(_INSERT, {"api_group": key.group, "resource": key.resource,
                                "namespace": key.namespace, "name": key.name,
                                "uid": body["metadata"]["uid"], "resource_version": rv,
                                "body": body})
        except IntegrityError as exc:  # pragma: no cover - guarded by the select above
            raise StoreConflict(str(key)) from exc
        self._log(rv, "ADDED", key, body)
        return copy.deepcopy(body)

    def update(self, key: Key, body: Obj, expect_rv: int | None = None) -> Obj:
        row = self._row(key, expect_rv)
        rv = self.next_rv()
        body = _with_rv(body, rv)
        self._run(_REWRITE, {"row_id": row.id, "new_body": body, "new_rv": rv})
        self._log(rv, "MODIFIED", key, body)
        return copy.deepcopy(body)

    def delete(self, key: Key, expect_rv: int | None = None) -> Obj:
        row = self._row(key, expect_rv)
        rv = self.next_rv()
        body = _with_rv(row.body, rv)
        self._run(_REMOVE, {"row_id": row.id})
        self._log(rv, "DELETED", key, body)
        return copy.deepcopy(body)

    def _row(self, key: Key, expect_rv: int | None) -> Any:
        row = self._run(_ROW, _key_params(key)).first()
        if row is None:
            raise StoreMissing(str(key))
        if expect_rv is not None and row.resource_version != expect_rv:
            raise StoreConflict(str(key))
        return row

    def _log(self, rv: int, type_: str, key: Key, body: Obj) -> None:
        self._run(_LOG, {"rv": rv, "type": type_, "api_group": key.group,
                         "resource": key.resource, "namespace": key.namespace,
                         "name": key.name, "body": body})
        self.events.append(Event(rv, type_, key, body))
        kind = (key.group, key.resource)
        self._writes[kind] = self._writes.get(kind, 0) + 1


def _with_rv(body: Obj, rv: int) -> Obj:
    body = copy.deepcopy(body)
    body.setdefault("metadata", {})["resourceVersion"] = str(rv)
    return body


LOCAL_RVS_KEPT = 100_000  # local commits remembered between polls (none run without waiters)


class Store:
    """Transactions over the resource tables, and wake-ups for watchers."""

    poll_interval = 1.0  # seconds between reads of the revision while watchers wait

    def __init__(self, engine: Engine, history: int = 20000) -> None:
        self.engine = engine
        self.history = history
        # Reads see one snapshot: a list's resourceVersion and its items, a watch
        # poll's revision and its events, agree. (SQLite's read transactions do
        # that already; PostgreSQL needs REPEATABLE READ. Writes stay READ
        # COMMITTED: they serialise on the revision counter instead.)
        self._read_engine = (engine.execution_options(isolation_level="REPEATABLE READ")
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
        with self._read_engine.connect() as conn, conn.begin():
            txn = ReadTxn(conn)
            try:
                yield txn
                txn._flush()
            finally:
                txn._close()

    @contextmanager
    def write(self, dry_run: bool = False) -> Iterator[WriteTxn]:
        """A write transaction; with ``dry_run`` everything is rolled back."""
        with self.engine.connect() as conn:
            conn.begin()
            txn = WriteTxn(conn)
            try:
                txn.lock()  # first statement: take the writers' lock
                yield txn
                txn._flush()
            except BaseException:
                txn._close()
                conn.rollback()
                raise
            txn._close()
            if dry_run:
                conn.rollback()
                return
            conn.commit()
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
