"""inotify through libc: a write is seen at once, a wake ends a wait, removed watches are quiet."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from hypervisor.inotify import Inotify


def test_a_write_is_seen_at_once(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with Inotify() as watcher:
        watcher.add(a)
        watcher.add(b)
        assert watcher.wait(0.0) == (set(), False)
        threading.Timer(0.2, lambda: (a / "events.log").write_text("started 1 main 0\n")).start()
        started = time.monotonic()
        written, overflow = watcher.wait(5.0)
        assert (written, overflow) == ({a}, False)
        assert time.monotonic() - started < 1.0


def test_wake_ends_a_wait_and_removed_watches_are_quiet(tmp_path: Path) -> None:
    with Inotify() as watcher:
        wd = watcher.add(tmp_path)
        watcher.remove(wd)
        watcher.remove(wd)  # twice: nothing happens
        assert watcher.wait(0.2) == (set(), False)  # the kernel's IN_IGNORED for it
        (tmp_path / "x").write_text("x")
        threading.Timer(0.3, watcher.wake).start()
        started = time.monotonic()
        assert watcher.wait(5.0) == (set(), False)
        assert 0.2 < time.monotonic() - started < 1.0
    watcher.wake()  # closed: nothing happens


def test_a_directory_that_goes_away_drops_its_watch(tmp_path: Path) -> None:
    d = tmp_path / "pod"
    d.mkdir()
    with Inotify() as watcher:
        watcher.add(d)
        d.rmdir()
        assert watcher.wait(1.0)[0] <= {d}
        assert watcher._paths == {}
