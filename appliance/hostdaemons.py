"""Keeping the lab host's daemons up where no service manager does: libvirt and Open vSwitch.

Under systemd their own units restart them (``libvirtd.service`` and
``ovs-vswitchd.service`` say ``Restart=on-failure``). Without a service manager
(containers, CI) nobody would: a killed libvirtd leaves the VMs running but nobody able
to manage them, and a killed ovs-vswitchd takes every namespace network down. So on such a
host the host service looks every ``CHECK_INTERVAL`` seconds whether the daemons' processes
run, and when one does not, runs ``playbooks/host-daemons.yml``: the tasks ``lab up`` runs
(``playbooks/tasks/host-daemons.yml``), which start what is missing and wait until libvirt
and Open vSwitch answer.

What a daemon's death took with it comes back through the others: the VMs' QEMU processes
never stopped, the libvirt driver opens a new connection when its old one died, and what
Open vSwitch keeps only in ovs-vswitchd (OpenFlow flows, the addresses of its internal
ports) the network controllers' drift checks put back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance import keeper
from appliance.ansible import PlaybookError, PlaybookResult, run_playbook
from appliance.settings import Settings
from appliance.util.files import write_atomic
from hypervisor.proc import processes

LOG = logging.getLogger(__name__)

#: The processes (``/proc/PID/comm``) that ``playbooks/tasks/host-daemons.yml`` starts.
WATCHED = ("virtlogd", "libvirtd", "ovsdb-server", "ovs-vswitchd")
PLAYBOOK = "host-daemons.yml"
CHECK_INTERVAL = 5.0
MAX_INTERVAL = 60.0  # between tries while starting them keeps failing

_COMM_MAX = 15  # the kernel truncates /proc/PID/comm to 15 characters


def service_manager_present(run_dir: Path = Path("/run/systemd/system")) -> bool:
    """Whether systemd manages services here (sd_booted(3)'s test)."""
    return run_dir.is_dir()


def running_commands(proc: Path = Path("/proc")) -> set[str]:
    """The command names of the live processes (a killed daemon that its parent has not
    reaped yet is a zombie, and does not count)."""
    return {name for _, name, fields in processes(proc) if fields[:1] not in (["Z"], ["X"])}


def missing(running: set[str], wanted: tuple[str, ...] = WATCHED) -> list[str]:
    return [name for name in wanted if name[:_COMM_MAX] not in running]


Runner = Callable[..., PlaybookResult]


def state_file(settings: Settings) -> Path:
    """What the watch says of its restarts, for ``lab status``."""
    return settings.run_dir / "host-daemons.json"


def read_state(settings: Settings) -> dict[str, Any] | None:
    return keeper.read_state(state_file(settings))


class HostDaemons:
    """The watch over the host's daemons; :meth:`run` until ``stop`` is set."""

    def __init__(self, settings: Settings, *, interval: float = CHECK_INTERVAL,
                 runner: Runner = run_playbook,
                 running: Callable[[], set[str]] = running_commands) -> None:
        self.settings = settings
        self.interval = interval
        self._runner = runner
        self._running = running
        self.restarts: dict[str, int] = {}  # daemon -> times it was started again

    def check(self) -> bool:
        """Start what is missing; True when everything runs (again)."""
        gone = missing(self._running())
        if not gone:
            return True
        LOG.warning("host daemons not running: %s; starting them again", ", ".join(gone))
        started = time.monotonic()
        try:
            result = self._runner(self.settings, PLAYBOOK, {}, timeout=300)
            failure = "" if result.succeeded else (
                result.failures[0].message if result.failures else result.status)
        except PlaybookError as exc:
            failure = str(exc)
        seconds = time.monotonic() - started
        if failure:
            LOG.error("starting the host daemons failed: %s", failure)
        else:
            for name in gone:
                self.restarts[name] = self.restarts.get(name, 0) + 1
            LOG.warning("host daemons started again: %s (%.1f s)", ", ".join(gone), seconds)
        self._save({"restarts": self.restarts, "last": {
            "daemons": gone, "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1), "error": failure}})
        return not failure

    def _save(self, state: dict[str, Any]) -> None:
        try:
            write_atomic(state_file(self.settings), (json.dumps(state) + "\n").encode(), 0o644)
        except OSError as exc:
            LOG.warning("cannot write %s: %s", state_file(self.settings), exc)

    def run(self, stop: threading.Event) -> None:
        delay = self.interval
        while not stop.wait(delay):
            try:
                ok = self.check()
            except Exception:  # noqa: BLE001 - the watch goes on
                LOG.exception("checking the host daemons failed")
                ok = False
            delay = self.interval if ok else min(delay * 2, MAX_INTERVAL)

