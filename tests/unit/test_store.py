"""The resource store, against a SQLite file and against a real PostgreSQL.

Each test gets a fresh database: a file under ``tmp_path`` for SQLite, its own
database on the session's PostgreSQL server otherwise. Concurrency tests use
real threads and real connections; nothing sleeps, every wait has a deadline.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from appliance.errors import ApiError
from appliance.kinds import default_registry
from appliance.objects import SYSTEM, ObjectService, Target
from appliance.store.db import make_engine, migrate
from appliance.store.models import Counter, ResourceRow, WatchEvent
from appliance.store.repo import Event, Key, ReadTxn, Store, StoreConflict, StoreMissing
from tests.support.postgres import (
    PostgresServer,
    postgres_server,  # noqa: F401 - the session fixture, used through getfixturevalue
)

DEADLINE = 60.0  # seconds any single wait in these tests may take before it is a failure


def _key(name: str, namespace: str = "default") -> Key:
    return Key("", "configmaps", namespace, name)


def _body(name: str, namespace: str = "default", **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "data": dict(data)}


@dataclass
class Backend:
    name: str
    engine: Engine
    store: Store

    def revision(self) -> int:
        with self.store.read() as txn:
            return txn.revision()

    def events(self, after: int = 0) -> list[Event]:
        with self.store.read() as txn:
            return txn.events_after(after, limit=100000)

    def row_rv(self, key: Key) -> int | None:
        with self.store.read() as txn:
            return txn.session.execute(select(ResourceRow.resource_version).where(
                ResourceRow.api_group == key.group, ResourceRow.resource == key.resource,
                ResourceRow.namespace == key.namespace, ResourceRow.name == key.name)
            ).scalar_one_or_none()

    def count_rows(self) -> int:
        with self.store.read() as txn:
            return int(txn.session.execute(
                select(func.count()).select_from(ResourceRow)).scalar_one())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = "store_" + uuid.uuid4().hex[:16]
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@pytest.fixture
def backend(database_url: str) -> Iterator[Backend]:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        yield Backend(engine.dialect.name, engine, Store(engine))
    finally:
        engine.dispose()


def _run_threads(n: int, target: Callable[[int], None]) -> list[BaseException]:
    """Run ``target(i)`` in ``n`` threads started together; return what they raised."""
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            go.wait(DEADLINE)
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), name=f"worker-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE * 3)
        assert not t.is_alive(), f"{t.name} did not finish"
    return errors


# -- single writes -----------------------------------------------------------------------


def test_writes_bump_the_global_revision(backend: Backend) -> None:
    key = _key("one")
    start = backend.revision()

    with backend.store.write() as txn:
        created = txn.create(key, _body("one", a="1"))
    rv_create = int(created["metadata"]["resourceVersion"])
    assert rv_create > start
    assert backend.revision() == rv_create
    assert backend.row_rv(key) == rv_create
    with backend.store.read() as txn:
        got = txn.get(key)
    assert got == created
    assert got is not None and got["data"] == {"a": "1"}

    updated_body = dict(created, data={"a": "2"})
    with backend.store.write() as txn:
        updated = txn.update(key, updated_body, expect_rv=rv_create)
    rv_update = int(updated["metadata"]["resourceVersion"])
    assert rv_update > rv_create
    assert backend.revision() == rv_update
    assert backend.row_rv(key) == rv_update
    with backend.store.read() as txn:
        assert txn.get(key) == updated

    with backend.store.write() as txn:
        gone = txn.delete(key, expect_rv=rv_update)
    rv_delete = int(gone["metadata"]["resourceVersion"])
    assert rv_delete > rv_update
    assert backend.revision() == rv_delete
    assert backend.row_rv(key) is None
    with backend.store.read() as txn:
        assert txn.get(key) is None


def test_create_of_an_existing_key_conflicts(backend: Backend) -> None:
    with backend.store.write() as txn:
        txn.create(_key("dup"), _body("dup", v="first"))
    before = backend.revision()
    with pytest.raises(StoreConflict), backend.store.write() as txn:
        txn.create(_key("dup"), _body("dup", v="second"))
    assert backend.revision() == before
    with backend.store.read() as txn:
        got = txn.get(_key("dup"))
    assert got is not None and got["data"] == {"v": "first"}
    # The same name in another namespace is another object.
    with backend.store.write() as txn:
        txn.create(_key("dup", "other"), _body("dup", "other"))


def test_stale_expected_revision_conflicts(backend: Backend) -> None:
    key = _key("stale")
    with backend.store.write() as txn:
        first = txn.create(key, _body("stale", v="1"))
    rv1 = int(first["metadata"]["resourceVersion"])
    with backend.store.write() as txn:
        second = txn.update(key, dict(first, data={"v": "2"}), expect_rv=rv1)
    before = backend.revision()

    with pytest.raises(StoreConflict), backend.store.write() as txn:
        txn.update(key, dict(first, data={"v": "3"}), expect_rv=rv1)
    with pytest.raises(StoreConflict), backend.store.write() as txn:
        txn.delete(key, expect_rv=rv1)
    with pytest.raises(StoreMissing), backend.store.write() as txn:
        txn.update(_key("absent"), _body("absent"))
    with pytest.raises(StoreMissing), backend.store.write() as txn:
        txn.delete(_key("absent"))

    assert backend.revision() == before
    with backend.store.read() as txn:
        assert txn.get(key) == second


# -- the watch log ------------------------------------------------------------------------


def test_events_after_in_revision_order_with_bodies(backend: Backend) -> None:
    start = backend.revision()
    key = _key("w")
    with backend.store.write() as txn:
        created = txn.create(key, _body("w", step="1"))
    with backend.store.write() as txn:
        txn.create(Key("", "secrets", "default", "s"), _body("s"))
    with backend.store.write() as txn:
        updated = txn.update(key, dict(created, data={"step": "2"}))
    with backend.store.write() as txn:
        deleted = txn.delete(key)

    events = backend.events(start)
    assert [e.type for e in events] == ["ADDED", "ADDED", "MODIFIED", "DELETED"]
    assert [e.rv for e in events] == sorted(e.rv for e in events)
    assert len({e.rv for e in events}) == 4
    for ev in events:
        assert ev.body["metadata"]["resourceVersion"] == str(ev.rv)

    with backend.store.read() as txn:
        cms = txn.events_after(start, "", "configmaps")
    assert [(e.type, e.key, e.body) for e in cms] == [
        ("ADDED", key, created), ("MODIFIED", key, updated), ("DELETED", key, deleted)]
    assert cms[1].body["data"] == {"step": "2"}
    assert cms[2].body["data"] == {"step": "2"}  # the last state, at the delete's revision

    with backend.store.read() as txn:
        assert [e.rv for e in txn.events_after(cms[0].rv, "", "configmaps")] == \
            [cms[1].rv, cms[2].rv]
        assert [e.rv for e in txn.events_after(start, limit=2)] == [e.rv for e in events[:2]]
        assert txn.events_after(cms[2].rv) == []


def test_dry_run_write_rolls_back(backend: Backend) -> None:
    before = backend.revision()
    with backend.store.write(dry_run=True) as txn:
        shown = txn.create(_key("dry"), _body("dry"))
        assert txn.get(_key("dry")) is not None  # visible inside its own transaction
    assert int(shown["metadata"]["resourceVersion"]) > before
    assert backend.revision() == before
    assert backend.row_rv(_key("dry")) is None
    assert backend.events(before) == []


def test_exception_inside_write_rolls_back_everything(backend: Backend) -> None:
    with backend.store.write() as txn:
        kept = txn.create(_key("kept"), _body("kept"))
    before = backend.revision()
    rows_before = backend.count_rows()

    class Boom(Exception):
        pass

    with pytest.raises(Boom), backend.store.write() as txn:
        txn.create(_key("a"), _body("a"))
        txn.update(_key("kept"), dict(kept, data={"changed": "yes"}))
        txn.create(_key("b"), _body("b"))
        raise Boom

    assert backend.revision() == before
    assert backend.count_rows() == rows_before
    assert backend.row_rv(_key("a")) is None
    assert backend.row_rv(_key("b")) is None
    assert backend.events(before) == []
    with backend.store.read() as txn:
        assert txn.get(_key("kept")) == kept


def test_compaction_drops_old_events(backend: Backend) -> None:
    store = Store(backend.engine, history=5)
    assert store.compact() == 0  # nothing old enough yet
    for i in range(10):
        with store.write() as txn:
            txn.create(_key(f"c{i}"), _body(f"c{i}"))
    all_events = backend.events(0)
    assert len(all_events) == 10
    before = backend.revision()

    floor = store.compact()
    # The compaction is a write: it takes the next revision, and keeps `history` below it.
    assert floor == before + 1 - 5
    with backend.store.read() as txn:
        assert txn.compacted() == floor
    kept = backend.events(0)
    assert kept == [e for e in all_events if e.rv > floor]
    assert 0 < len(kept) < len(all_events)
    with backend.store.read() as txn:
        # The objects themselves stay; only their history goes.
        assert txn.count("", "configmaps", "default") == 10
        compacted_count = int(txn.session.execute(
            select(func.count()).select_from(WatchEvent).where(WatchEvent.rv <= floor)
        ).scalar_one())
    assert compacted_count == 0


def test_wait_for_change_wakes_on_a_local_commit(backend: Backend) -> None:
    store = backend.store
    rv = backend.revision()
    t0 = time.monotonic()
    store.wait_for_change(rv, timeout=0.2)  # nothing happens: it times out
    assert time.monotonic() - t0 >= 0.2

    woke = threading.Event()
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        store.wait_for_change(rv, timeout=DEADLINE)
        woke.set()

    thread = threading.Thread(target=waiter, name="waiter")
    thread.start()
    assert waiting.wait(DEADLINE)
    t1 = time.monotonic()
    with store.write() as txn:
        txn.create(_key("wake"), _body("wake"))
    assert woke.wait(DEADLINE / 2), "wait_for_change did not wake on a commit"
    thread.join(DEADLINE)
    assert time.monotonic() - t1 < DEADLINE / 2
    # A later revision is already known: no wait at all.
    t2 = time.monotonic()
    store.wait_for_change(rv, timeout=DEADLINE)
    assert time.monotonic() - t2 < 1.0


def test_waiters_share_one_read_of_the_revision_and_see_other_writers(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty idle waiters read the revision about once per poll interval between them,
    not once each; a commit through another Store (another process, as far as this one
    knows) wakes them within about one interval."""
    store = backend.store
    monkeypatch.setattr(store, "poll_interval", 0.2)
    reads: list[float] = []
    real_revision = ReadTxn.revision

    def counted(self: ReadTxn) -> int:
        reads.append(time.monotonic())
        return real_revision(self)

    monkeypatch.setattr(ReadTxn, "revision", counted)
    rv = backend.revision()
    reads.clear()
    woke: list[float] = []

    def waiter() -> None:
        if store.wait_for_change(rv, timeout=DEADLINE):
            woke.append(time.monotonic())

    threads = [threading.Thread(target=waiter, name=f"waiter-{i}") for i in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    idle_reads = len(reads)
    assert 2 <= idle_reads <= 8, idle_reads  # about 1 s / 0.2 s, shared by all 20

    other = Store(backend.engine)  # commits there do not notify ``store``
    with other.write() as txn:
        txn.create(_key("elsewhere"), _body("elsewhere"))
    committed = time.monotonic()
    for thread in threads:
        thread.join(DEADLINE)
    assert len(woke) == 20
    assert max(woke) - committed < 0.2 + 1.0  # one interval, plus a loaded machine's slack


def test_a_kinds_waiters_sleep_through_other_kinds_local_commits(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ConfigMap waiter is not woken by this process's Secret commits (a Lease renewal
    every 2 s must not wake every watch), is woken by a ConfigMap commit, and by any
    commit of another process, whose kinds it cannot know."""
    store = backend.store
    monkeypatch.setattr(store, "poll_interval", 0.1)
    configmaps = ("", "configmaps")
    rv = backend.revision()
    store.wait_for_change(rv, 0.3, kind=configmaps)  # a poll: nothing foreign after rv

    with store.write() as txn:
        txn.create(Key("", "secrets", "default", "s1"), {"metadata": {"name": "s1", "uid": "u-s1"}})
    with store.write():
        pass  # a write transaction that changes nothing still takes a revision
    assert not store.wait_for_change(rv, 0.5, kind=configmaps)
    assert store.wait_for_change(rv, 0.5)  # without a kind: any newer revision

    with store.write() as txn:
        txn.create(_key("cm1"), _body("cm1"))
    assert store.wait_for_change(rv, 0.5, kind=configmaps)

    rv = backend.revision()
    other = Store(backend.engine)  # another process, as far as ``store`` knows
    with other.write() as txn:
        txn.create(Key("", "secrets", "default", "s2"), {"metadata": {"name": "s2", "uid": "u-s2"}})
    t0 = time.monotonic()
    assert store.wait_for_change(rv, DEADLINE, kind=configmaps)
    assert time.monotonic() - t0 < 0.1 + 1.0


# -- concurrency -----------------------------------------------------------------------------


def test_concurrent_creates_and_a_watcher_that_misses_nothing(backend: Backend) -> None:
    threads, per_thread = 8, 50
    total = threads * per_thread
    store = backend.store
    start = backend.revision()
    created: dict[str, int] = {}
    created_lock = threading.Lock()
    seen: list[Event] = []
    watcher_done = threading.Event()
    watcher_errors: list[BaseException] = []

    def watch() -> None:
        last = start
        deadline = time.monotonic() + DEADLINE * 2
        try:
            while len(seen) < total and time.monotonic() < deadline:
                with store.read() as txn:
                    events = txn.events_after(last, "", "configmaps", limit=37)
                if events:
                    seen.extend(events)
                    last = events[-1].rv
                else:
                    store.wait_for_change(last, 0.5)
        except BaseException as exc:  # noqa: BLE001
            watcher_errors.append(exc)
        finally:
            watcher_done.set()

    watcher = threading.Thread(target=watch, name="watcher")
    watcher.start()

    def writer(i: int) -> None:
        for j in range(per_thread):
            name = f"w{i}-{j}"
            with store.write() as txn:
                body = txn.create(_key(name, "conc"), _body(name, "conc", writer=str(i)))
            with created_lock:
                created[name] = int(body["metadata"]["resourceVersion"])

    errors = _run_threads(threads, writer)
    assert errors == []
    assert watcher_done.wait(DEADLINE * 2)
    watcher.join(DEADLINE)
    assert watcher_errors == []

    assert len(created) == total
    assert len(set(created.values())) == total  # every create got its own revision
    log = [e for e in backend.events(start) if e.key.resource == "configmaps"]
    assert len(log) == total
    assert [e.rv for e in log] == sorted(e.rv for e in log)
    by_name = {e.key.name: e for e in log}
    assert set(by_name) == set(created)  # every object's create event is there
    for name, rv in created.items():
        ev = by_name[name]
        assert (ev.type, ev.rv, ev.body["metadata"]["resourceVersion"]) == \
            ("ADDED", rv, str(rv))
        assert backend.row_rv(_key(name, "conc")) == rv

    # The watcher saw exactly the log: every event, once, in order.
    assert [e.type for e in seen] == ["ADDED"] * total
    assert [e.rv for e in seen] == [e.rv for e in log]
    assert {e.key.name for e in seen} == set(created)


def test_concurrent_updates_with_expected_revision_lose_none(backend: Backend) -> None:
    """Optimistic concurrency: read, then update with expect_rv; retry on conflict."""
    key = _key("counter")
    with backend.store.write() as txn:
        txn.create(key, _body("counter", n="0"))
    threads, per_thread = 4, 25

    def bump(_i: int) -> None:
        done = 0
        while done < per_thread:
            with backend.store.read() as txn:
                cur = txn.get(key)
            assert cur is not None
            cur["data"]["n"] = str(int(cur["data"]["n"]) + 1)
            try:
                with backend.store.write() as txn:
                    txn.update(key, cur, expect_rv=int(cur["metadata"]["resourceVersion"]))
            except StoreConflict:
                continue
            done += 1

    assert _run_threads(threads, bump) == []
    with backend.store.read() as txn:
        final = txn.get(key)
    assert final is not None and final["data"]["n"] == str(threads * per_thread)


# -- migrations ----------------------------------------------------------------------------


def test_migrate_twice_is_idempotent(backend: Backend) -> None:
    with backend.store.write() as txn:
        txn.create(_key("survivor"), _body("survivor"))
    rv = backend.revision()
    migrate(backend.engine)  # the fixture already migrated once
    migrate(backend.engine)
    assert backend.revision() == rv
    with backend.store.read() as txn:
        assert txn.get(_key("survivor")) is not None
        counters = dict(txn.session.execute(select(Counter.name, Counter.value)).all())
        version = txn.session.execute(text("SELECT version_num FROM alembic_version")).all()
    assert counters == {"revision": rv, "compacted": 0}
    assert version == [("0001",)]


# -- admission through the object service ---------------------------------------------------


def test_quota_holds_under_concurrent_creates(backend: Backend) -> None:
    registry = default_registry()
    service = ObjectService(backend.store, registry)
    ns_kind = registry.by_group_plural("", "namespaces")
    cm_kind = registry.by_group_plural("", "configmaps")
    quota_kind = registry.by_group_plural("", "resourcequotas")
    assert ns_kind and cm_kind and quota_kind

    service.create(SYSTEM, Target(ns_kind, "v1"),
                   {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "q"}})
    service.create(SYSTEM, Target(quota_kind, "v1", namespace="q"), {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "cms"},
        "spec": {"hard": {"count/configmaps": "10"}}})

    threads, per_thread = 4, 10
    made: list[str] = []
    refused: list[ApiError] = []
    other: list[BaseException] = []
    lock = threading.Lock()
    target = Target(cm_kind, "v1", namespace="q")

    def create(i: int) -> None:
        for j in range(per_thread):
            name = f"cm-{i}-{j}"
            try:
                service.create(SYSTEM, target, {"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": name},
                                                "data": {"k": "v"}})
            except ApiError as exc:
                with lock:
                    refused.append(exc)
                continue
            except BaseException as exc:  # noqa: BLE001
                with lock:
                    other.append(exc)
                continue
            with lock:
                made.append(name)

    assert _run_threads(threads, create) == []
    assert other == []
    assert len(made) == 10
    assert len(refused) == threads * per_thread - 10
    for err in refused:
        assert err.code == 403, err
        assert "exceeded quota" in err.message, err.message

    listed = service.list(SYSTEM, target)
    assert sorted(o["metadata"]["name"] for o in listed.items) == sorted(made)
    quota = service.get(SYSTEM, Target(quota_kind, "v1", namespace="q", name="cms"))
    assert quota["status"]["used"]["count/configmaps"] == "10"
    assert quota["status"]["hard"]["count/configmaps"] == "10"


# -- watches through the object service ------------------------------------------------------


def _service_with_namespace(backend: Backend, namespace: str) -> tuple[ObjectService, Target]:
    registry = default_registry()
    service = ObjectService(backend.store, registry)
    ns_kind = registry.by_group_plural("", "namespaces")
    cm_kind = registry.by_group_plural("", "configmaps")
    assert ns_kind and cm_kind
    service.create(SYSTEM, Target(ns_kind, "v1"),
                   {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    return service, Target(cm_kind, "v1", namespace=namespace)


def test_object_watch_delivers_a_write_committed_during_its_poll(
        backend: Backend, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    service, target = _service_with_namespace(backend, "gap")
    start = backend.revision()
    stream = service.watch(SYSTEM, target, str(start), timeout=2.0)

    # Another writer commits a ConfigMap while the watch loop polls: the loop's
    # counters() and events_after() must agree (one snapshot), or the event is lost.
    real_counters = ReadTxn.counters
    armed = [True]
    me = threading.current_thread()

    def counters(self: ReadTxn) -> tuple[int, int]:
        if armed[0] and threading.current_thread() is me:
            armed[0] = False
            writer = threading.Thread(target=service.create, args=(SYSTEM, target, {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}}))
            writer.start()
            writer.join(DEADLINE)
        return real_counters(self)

    monkeypatch.setattr(ReadTxn, "counters", counters)
    names = []
    for ev in stream:
        if ev is not None:
            names.append((ev.type, ev.obj["metadata"]["name"]))
            break
    assert not armed[0], "the watch loop never read the revision"
    assert names == [("ADDED", "late")]


def test_object_watch_misses_nothing_under_concurrent_writes(
        backend: Backend, request: pytest.FixtureRequest) -> None:
    service, target = _service_with_namespace(backend, "busy")
    threads, per_thread = 8, 25
    total = threads * per_thread
    # The stream ends by itself (timeout) well before the database goes away.
    stream = service.watch(SYSTEM, target, str(backend.revision()), timeout=20.0)
    seen: list[str] = []

    def consume() -> None:
        for ev in stream:
            if ev is not None:
                seen.append(ev.obj["metadata"]["name"])
                if len(seen) == total:
                    return

    consumer = threading.Thread(target=consume, name="consumer")
    consumer.start()

    def write(i: int) -> None:
        for j in range(per_thread):
            service.create(SYSTEM, target, {"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": {"name": f"cm-{i}-{j}"}})
            # Writes to another kind: the ConfigMap watch's polls often find nothing.
            with backend.store.write() as txn:
                txn.create(Key("", "secrets", "busy", f"s-{i}-{j}"), _body(f"s-{i}-{j}", "busy"))

    assert _run_threads(threads, write) == []
    consumer.join(DEADLINE)  # all seen, or the stream's timeout passed
    assert not consumer.is_alive()
    assert len(seen) == total, f"the watch delivered {len(seen)} of {total} ADDED events"
    assert len(set(seen)) == total


def test_a_postgresql_engine_shares_the_server_and_notices_a_dead_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Three supervisors share a control plane's PostgreSQL: each keeps at most 50
    connections, with TCP keepalives (a destroyed VM's server fails them in ~25 s)."""
    from appliance.store.db import make_engine

    engine = make_engine("postgresql://pacific:secret@198.18.0.6,198.18.0.7/pacific")
    asked: dict[str, object] = {}

    def connect(*args: object, **kwargs: object) -> None:
        asked.update(kwargs)
        raise OSError("not connecting in a unit test")

    monkeypatch.setattr(engine.dialect, "connect", connect)
    try:
        assert engine.pool.size() == 10 and engine.pool._max_overflow == 40  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="not connecting"):
            engine.connect()
        assert {k: asked.get(k) for k in ("keepalives", "keepalives_idle",
                                          "keepalives_interval", "keepalives_count")} == {
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
            "keepalives_count": 3}
    finally:
        engine.dispose()


def test_a_transaction_reads_a_namespace_s_quotas_once_until_it_writes_one(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A create checks the namespace's quotas and then refreshes their status: one read of
    them. A quota written in the same transaction is seen by the next check."""
    from appliance.admission import quota

    service, configmaps = _service_with_namespace(backend, "m")
    reads: list[tuple[str, str | None]] = []
    real_iterate = ReadTxn.iterate

    def iterate(self: ReadTxn, group: str, resource: str, namespace: str | None = None,
                **kw: object) -> Iterator[dict]:
        if resource == "resourcequotas":
            reads.append((resource, namespace))
        return real_iterate(self, group, resource, namespace, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ReadTxn, "iterate", iterate)
    service.create(SYSTEM, configmaps, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one"}})
    assert reads == [("resourcequotas", "m")]

    with backend.store.write() as txn:
        assert quota._quotas(txn, "m") == []
        txn.create(Key("", "resourcequotas", "m", "late"), {
            "metadata": {"name": "late", "namespace": "m", "uid": str(uuid.uuid4())},
            "spec": {"hard": {"count/configmaps": "1"}}})
        assert [q["metadata"]["name"] for q in quota._quotas(txn, "m")] == ["late"]
        # What a caller does to the list it got is not what the next caller gets.
        quota._quotas(txn, "m")[0]["spec"]["hard"]["count/configmaps"] = "99"
        assert quota._quotas(txn, "m")[0]["spec"]["hard"] == {"count/configmaps": "1"}
    assert len(reads) == 3
