"""Keeping the host service up where systemd does not: respawn it when it dies.

``lab up`` on a host without systemd as PID 1 (containers, CI) starts this keeper as the
daemon, and the keeper runs the host service as its child::

    python -m appliance.keeper STATE_FILE -- python -m appliance.cli serve

When the service exits or is killed, the keeper starts it again after ``FIRST_DELAY``.
A quick exit (the service ended by itself within ``HEALTHY_AFTER`` seconds of its start,
as when it cannot start at all, or was killed within ``KILLED_QUICKLY``) doubles the delay
before the next start, up to ``MAX_DELAY``; five quick exits within ``LOOP_WINDOW``
seconds are a crash loop, which ``lab status`` reports. A service killed after it ran
(``kill -9``, the OOM killer) is started again at once, however often that happens. SIGTERM (what
``lab down`` sends) stops the service and the keeper for good; a keeper that is killed
takes its service with it (``PR_SET_PDEATHSIG``), so that ``lab up`` can start both
again. Under systemd the unit's ``Restart=always`` does this job instead.

``STATE_FILE`` (JSON, rewritten on every change) holds the service's pid, the restarts
and the last exit, for ``lab status``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.util.files import write_atomic

LOG = logging.getLogger("appliance.keeper")

FIRST_DELAY = 0.2
MAX_DELAY = 30.0
HEALTHY_AFTER = 10.0
KILLED_QUICKLY = 1.0
LOOP_WINDOW = 300.0
LOOP_EXITS = 5
STOP_TIMEOUT = 25.0  # then SIGKILL (the caller's own timeout is 30 s)


PR_SET_PDEATHSIG = 1


def _die_with(keeper_pid: int) -> Any:
    """In the child, before it runs the service: be sent SIGTERM when the keeper dies (a
    keeper killed with SIGKILL must not leave a service behind that holds the ports the
    next one needs)."""

    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != keeper_pid:  # the keeper died before prctl took effect
            os._exit(1)

    return setup


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Keeper:
    def __init__(self, argv: Sequence[str], state_file: Path, *,
                 first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY,
                 healthy_after: float = HEALTHY_AFTER, killed_quickly: float = KILLED_QUICKLY,
                 loop_window: float = LOOP_WINDOW, loop_exits: int = LOOP_EXITS) -> None:
        self.argv, self.state_file = list(argv), state_file
        self.first_delay, self.max_delay = first_delay, max_delay
        self.healthy_after, self.killed_quickly = healthy_after, killed_quickly
        self.loop_window, self.loop_exits = loop_window, loop_exits
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.last_exit: dict[str, Any] | None = None
        self._exits: deque[float] = deque()

    def stop(self, *_: object) -> None:
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        delay = self.first_delay
        while not self.stopping.is_set():
            started = time.monotonic()
            self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                          preexec_fn=_die_with(os.getpid()))
            self._write_state()
            if self.stopping.is_set():  # a stop that came while the child was starting
                self.stop()
            returncode = self.child.wait()
            ran = time.monotonic() - started
            if self.stopping.is_set():
                break
            now = time.monotonic()
            quick = ran < (self.healthy_after if returncode >= 0 else self.killed_quickly)
            if quick:
                self._exits.append(now)
                delay = min(self.max_delay, delay * 2) if self._exits_before(now) else \
                    self.first_delay
            else:
                delay = self.first_delay
            while self._exits and self._exits[0] < now - self.loop_window:
                self._exits.popleft()
            self.restarts += 1
            self.last_exit = {"how": describe_exit(returncode), "ran_seconds": round(ran, 1),
                              "at": datetime.now(UTC).isoformat(timespec="seconds")}
            LOG.warning("host service (pid %d) %s after %.1f s; starting it again in %.1f s "
                        "(restart %d%s)", self.child.pid, self.last_exit["how"], ran, delay,
                        self.restarts, ", crash loop" if self.crash_loop else "")
            self._write_state(next_start_in=delay)
            self.stopping.wait(delay)
        self._finish()
        return 0

    def _exits_before(self, now: float) -> bool:
        """Whether another quick exit came shortly before this one (within the window)."""
        return any(now - self.loop_window <= t < now for t in self._exits)

    @property
    def crash_loop(self) -> bool:
        return len(self._exits) >= self.loop_exits

    def _finish(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.state_file.unlink(missing_ok=True)

    def _write_state(self, next_start_in: float | None = None) -> None:
        assert self.child is not None
        state = {"keeper_pid": os.getpid(), "service_pid": self.child.pid,
                 "restarts": self.restarts, "last_exit": self.last_exit,
                 "crash_loop": self.crash_loop, "next_start_in": next_start_in}
        write_atomic(self.state_file, (json.dumps(state) + "\n").encode(), 0o644)


def read_state(state_file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m appliance.keeper STATE_FILE -- COMMAND...", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    keeper = Keeper(args[2:], Path(args[0]))
    signal.signal(signal.SIGTERM, keeper.stop)
    signal.signal(signal.SIGINT, keeper.stop)
    return keeper.run()


if __name__ == "__main__":
    sys.exit(main())
