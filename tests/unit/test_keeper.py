"""The keeper that respawns the host service where systemd does not (``appliance.keeper``),
with real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from appliance.keeper import Keeper, read_state
from tests.support.wait import wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
FAILING = [sys.executable, "-c", "import sys; sys.exit(3)"]


def running(keeper: Keeper) -> threading.Thread:
    thread = threading.Thread(target=keeper.run, daemon=True)
    thread.start()
    return thread


def test_a_killed_service_is_started_again_at_once_and_counted(tmp_path: Path) -> None:
    state = tmp_path / "keeper.json"
    keeper = Keeper(SLEEPER, state)
    thread = running(keeper)
    first = wait_for("the service", lambda: read_state(state), 10, 0.02)["service_pid"]
    killed = time.monotonic()
    os.kill(first, signal.SIGKILL)
    second = wait_for("a new service", lambda: (read_state(state) or {}).get(
        "service_pid") not in (None, first) and read_state(state), 10, 0.02)
    assert time.monotonic() - killed < 30  # at once: no delay before the first restart
    assert second["restarts"] == 1 and not second["crash_loop"]
    assert second["last_exit"]["how"] == "killed by SIGKILL"
    keeper.stop()
    thread.join(30)
    assert not thread.is_alive()
    assert not state.exists()
    assert keeper.child is not None and keeper.child.returncode == -signal.SIGTERM


def test_exits_in_a_row_wait_longer_each_time_and_are_a_crash_loop(tmp_path: Path) -> None:
    state = tmp_path / "keeper.json"
    keeper = Keeper(FAILING, state, first_delay=0.05, max_delay=0.2, loop_exits=3)
    thread = running(keeper)
    found = wait_for("a crash loop", lambda: (read_state(state) or {}).get(
        "crash_loop") and read_state(state), 30, 0.02)
    assert found["restarts"] >= 3 and found["last_exit"]["how"] == "exited with status 3"
    waits = wait_for("the longest wait", lambda: (read_state(state) or {}).get(
        "next_start_in") == 0.2, 30, 0.01)
    assert waits
    keeper.stop()
    thread.join(30)
    assert not thread.is_alive()


def test_a_service_killed_again_and_again_after_running_is_always_started_at_once(
        tmp_path: Path) -> None:
    state = tmp_path / "keeper.json"
    keeper = Keeper(SLEEPER, state, killed_quickly=0.1, loop_exits=3)
    thread = running(keeper)
    pid = wait_for("the service", lambda: read_state(state), 10, 0.02)["service_pid"]
    for kill in range(1, 6):
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        found = wait_for("a new service", lambda p=pid: (read_state(state) or {}).get(
            "service_pid") not in (None, p) and read_state(state), 10, 0.01)
        pid = found["service_pid"]
        assert found["restarts"] == kill and not found["crash_loop"]
    keeper.stop()
    thread.join(30)


def test_sigterm_stops_the_keeper_and_its_service_for_good(tmp_path: Path) -> None:
    state = tmp_path / "keeper.json"
    proc = subprocess.Popen([sys.executable, "-m", "appliance.keeper", str(state), "--",
                             *SLEEPER], cwd=Path(__file__).resolve().parents[2])
    service = wait_for("the service", lambda: read_state(state), 30, 0.05)["service_pid"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not Path(f"/proc/{service}").exists() or \
        Path(f"/proc/{service}/stat").read_text().split(")")[1].split()[0] == "Z"
    assert not state.exists()


def test_bad_arguments_are_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "appliance.keeper", "only-one"],
                          capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("usage: python -m appliance.keeper STATE_FILE -- "
                                   "COMMAND...")


def test_a_killed_keeper_takes_its_service_with_it(tmp_path: Path) -> None:
    state = tmp_path / "keeper.json"
    proc = subprocess.Popen([sys.executable, "-m", "appliance.keeper", str(state), "--",
                             *SLEEPER], cwd=Path(__file__).resolve().parents[2])
    service = wait_for("the service", lambda: read_state(state), 30, 0.05)["service_pid"]
    proc.kill()
    proc.wait(30)

    def gone() -> bool:
        try:
            return Path(f"/proc/{service}/stat").read_text().split(")")[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_for("the service to end with its keeper", gone, 30, 0.05)
