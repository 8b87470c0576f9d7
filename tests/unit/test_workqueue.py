"""The controllers' work queue: due times, de-duplication, and keys held by a worker."""

from __future__ import annotations

import threading
import time

from appliance.controllers.base import WorkQueue

KEY = ("dev", "web")


def test_a_key_queued_twice_runs_once_at_the_earlier_time() -> None:
    q, stop = WorkQueue(), threading.Event()
    q.add(KEY, 5.0)
    q.add(KEY, 0.0)
    assert q.get(stop, timeout=1) == KEY
    q.done(KEY)
    assert q.get(stop, timeout=0.2) is None


def test_a_held_key_is_not_handed_to_a_second_worker() -> None:
    q, stop = WorkQueue(), threading.Event()
    q.add(KEY)
    assert q.get(stop, timeout=1) == KEY
    q.add(KEY)  # changed while a worker reconciles it
    assert q.get(stop, timeout=0.3) is None
    q.done(KEY)  # ... so it runs again once that worker is done
    assert q.get(stop, timeout=1) == KEY


def test_workers_never_reconcile_one_object_at_once() -> None:
    q, stop = WorkQueue(), threading.Event()
    busy: set[tuple[str, str]] = set()
    clashes, runs = [], []
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            key = q.get(stop, timeout=0.2)
            if key is None:
                continue
            with lock:
                if key in busy:
                    clashes.append(key)
                busy.add(key)
            time.sleep(0.01)
            with lock:
                busy.discard(key)
                runs.append(key)
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        q.add(("dev", f"pod-{i % 5}"))
        time.sleep(0.001)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(2)
    assert not clashes and len(runs) >= 5


class _Flaky:
    """An API whose first read fails as a remote API's does while its floating IP moves."""

    def __init__(self) -> None:
        self.reads = 0

    def get(self, ref: object, namespace: str, name: str) -> dict:
        self.reads += 1
        if self.reads == 1:
            raise ConnectionError("Connection aborted: RemoteDisconnected")
        return {"metadata": {"namespace": namespace, "name": name}}


def test_a_read_that_fails_in_transit_is_retried_not_fatal() -> None:
    from appliance.controllers.base import Controller

    seen: list[str] = []

    class Recorder(Controller):
        def reconcile(self, obj: dict) -> float | None:
            seen.append(obj["metadata"]["name"])
            return None

    controller = Recorder(_Flaky())  # type: ignore[arg-type]
    controller._process(KEY)  # the worker thread survives the error ...
    stop = threading.Event()
    started = time.monotonic()
    assert controller.queue.get(stop, timeout=10) == KEY  # ... and the key comes back
    assert 4.0 <= time.monotonic() - started < 10
    controller._process(KEY)
    assert seen == ["web"]


def test_a_remote_watch_notices_a_silent_server_after_three_missed_bookmarks() -> None:
    from appliance.api.app import KEEPALIVE_SECONDS
    from appliance.resources import WATCH_IDLE_TIMEOUT

    assert 3 * KEEPALIVE_SECONDS < WATCH_IDLE_TIMEOUT < 4 * KEEPALIVE_SECONDS
