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
