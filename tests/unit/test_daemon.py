"""appliance.daemon: a real tiny daemon, pidfiles (fresh and stale), logs, unit files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import jinja2
import pytest

from appliance.daemon import (
    DaemonError,
    follow_log,
    read_pid,
    render_unit,
    start_daemon,
    stop_daemon,
    systemd_is_pid1,
)
from appliance.settings import PROJECT_ROOT

SLEEPER = "import sys, time; print('ready', sys.argv[1], flush=True); time.sleep(60)"


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def marker() -> str:
    return f"pacific-lab-test-{uuid.uuid4().hex}"


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    pidfile, logfile = tmp_path / "run" / "lab.pid", tmp_path / "logs" / "lab.log"
    yield pidfile, logfile
    stop_daemon(pidfile, timeout=5)  # never leave a daemon behind


def _argv(marker: str, code: str = SLEEPER) -> list[str]:
    return [sys.executable, "-c", code, marker]


def test_start_read_stop(paths: tuple[Path, Path], marker: str) -> None:
    pidfile, logfile = paths
    pid = start_daemon(_argv(marker), pidfile, logfile)
    assert read_pid(pidfile) == pid
    assert pidfile.read_text().splitlines()[0] == str(pid)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert marker.encode() in cmdline
    # detached: its own session, not our child
    assert os.getsid(pid) == pid != os.getsid(0)
    assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2]) != os.getpid()
    _wait_for(lambda: f"ready {marker}" in logfile.read_text())

    assert stop_daemon(pidfile, timeout=10) is True
    assert _gone(pid)
    assert not pidfile.exists()
    assert read_pid(pidfile) is None
    assert stop_daemon(pidfile) is False


def test_second_start_returns_the_running_pid(paths: tuple[Path, Path], marker: str) -> None:
    pidfile, logfile = paths
    pid = start_daemon(_argv(marker), pidfile, logfile)
    assert start_daemon(_argv(marker), pidfile, logfile) == pid
    assert logfile.read_text().count("starting:") == 1


def test_log_captures_stdout_and_stderr_and_appends(paths: tuple[Path, Path],
                                                    marker: str) -> None:
    pidfile, logfile = paths
    logfile.parent.mkdir(parents=True)
    logfile.write_text("earlier line\n")
    os.chmod(logfile, 0o644)
    code = ("import os, sys, time; print('out', os.environ['LAB_TEST_VALUE'], flush=True); "
            "print('err', file=sys.stderr, flush=True); "
            "print('stdin', repr(sys.stdin.read()), flush=True); time.sleep(60)")
    env = {"LAB_TEST_VALUE": "v42", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    start_daemon(_argv(marker, code), pidfile, logfile, env=env)
    _wait_for(lambda: "stdin ''" in logfile.read_text())
    text = logfile.read_text()
    assert text.startswith("earlier line\n")
    assert "out v42\n" in text and "err\n" in text
    assert stat.S_IMODE(logfile.stat().st_mode) == 0o600


def test_pidfile_of_an_unrelated_live_process_is_not_ours(paths: tuple[Path, Path],
                                                          marker: str) -> None:
    pidfile, logfile = paths
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(f"{os.getpid()}\n")  # a classic pidfile pointing at a live process
    assert read_pid(pidfile) is None
    # even with our metadata, a different start time or argv means someone else
    starttime = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    pidfile.write_text(f"{os.getpid()}\n" + json.dumps(
        {"starttime": starttime, "argv": _argv(marker)}) + "\n")
    assert read_pid(pidfile) is None
    pidfile.write_text(f"{os.getpid()}\n" + json.dumps(
        {"starttime": starttime + 1, "argv": Path("/proc/self/cmdline").read_bytes()
         .decode().rstrip("\0").split("\0")}) + "\n")
    assert read_pid(pidfile) is None
    # a stale pidfile does not stop a start, and is not signalled by a stop
    pid = start_daemon(_argv(marker), pidfile, logfile)
    assert pid != os.getpid() and read_pid(pidfile) == pid
    assert stop_daemon(pidfile, timeout=10) is True


@pytest.mark.parametrize("content", ["", "garbage\n", "-5\n{}\n", "123\nnot json\n",
                                     "999999999\n{\"starttime\": 1, \"argv\": [\"x\"]}\n"])
def test_damaged_or_dead_pidfiles(tmp_path: Path, content: str) -> None:
    pidfile = tmp_path / "lab.pid"
    pidfile.write_text(content)
    assert read_pid(pidfile) is None
    assert stop_daemon(pidfile) is False
    assert not pidfile.exists()


def test_stale_pidfile_after_the_daemon_died(paths: tuple[Path, Path], marker: str) -> None:
    pidfile, logfile = paths
    pid = start_daemon(_argv(marker), pidfile, logfile)
    os.kill(pid, 9)
    _wait_for(lambda: _gone(pid))
    assert read_pid(pidfile) is None
    new = start_daemon(_argv(marker), pidfile, logfile)
    assert new != pid and read_pid(pidfile) == new


def test_sigkill_when_sigterm_is_ignored(paths: tuple[Path, Path], marker: str) -> None:
    pidfile, logfile = paths
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', sys.argv[1], flush=True); time.sleep(60)")
    pid = start_daemon(_argv(marker, code), pidfile, logfile)
    _wait_for(lambda: f"ready {marker}" in logfile.read_text())
    began = time.monotonic()
    assert stop_daemon(pidfile, timeout=0.5) is True
    assert time.monotonic() - began >= 0.5
    assert _gone(pid) and not pidfile.exists()


def test_daemon_outlives_the_process_that_started_it(paths: tuple[Path, Path],
                                                     marker: str) -> None:
    pidfile, logfile = paths
    starter = ("import sys; from pathlib import Path; from appliance.daemon import start_daemon; "
               f"print(start_daemon({_argv(marker)!r}, Path({str(pidfile)!r}), "
               f"Path({str(logfile)!r})))")
    out = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=60,
                         check=True)
    pid = int(out.stdout.strip())
    assert read_pid(pidfile) == pid
    _wait_for(lambda: f"ready {marker}" in logfile.read_text())
    assert not _gone(pid)


def test_program_that_cannot_start(paths: tuple[Path, Path]) -> None:
    pidfile, logfile = paths
    with pytest.raises(DaemonError, match="cannot start"):
        start_daemon(["/nonexistent/pacific-lab-daemon"], pidfile, logfile)
    assert not pidfile.exists()


def test_start_rejects_empty_argv(paths: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError):
        start_daemon([], *paths)


# -- systemd --------------------------------------------------------------------


def test_systemd_is_pid1(tmp_path: Path) -> None:
    assert systemd_is_pid1(tmp_path) is False
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/comm").write_text("systemd\n")
    assert systemd_is_pid1(tmp_path) is False  # no /run/systemd/system
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert systemd_is_pid1(tmp_path) is True
    (tmp_path / "proc/1/comm").write_text("process_api\n")
    assert systemd_is_pid1(tmp_path) is False


def test_render_unit() -> None:
    text = render_unit(
        "pacific-lab.service",
        ["/opt/lab/.venv/bin/python", "-m", "appliance", "serve", "--name", "a b",
         "100%", "$HOME", 'say "hi"', "back\\slash"],
        {"LAB_STATE_DIR": "/var/lib/pacific lab", "LAB_X": 'p%c$t"q'},
        "Pacific Lab host service (100%)")
    lines = text.splitlines()
    assert lines[0].startswith("# pacific-lab.service")
    assert "Description=Pacific Lab host service (100%%)" in lines
    assert "Type=simple" in lines
    assert "Restart=always" in lines
    assert "WantedBy=multi-user.target" in lines
    assert ("ExecStart=/opt/lab/.venv/bin/python -m appliance serve --name \"a b\" 100%% "
            "\"$$HOME\" \"say \\\"hi\\\"\" \"back\\\\slash\"") in lines
    assert 'Environment="LAB_STATE_DIR=/var/lib/pacific lab"' in lines
    assert 'Environment="LAB_X=p%%c$t\\"q"' in lines
    assert text.endswith("\n") and "\n\n\n" not in text
    assert lines.index("[Unit]") < lines.index("[Service]") < lines.index("[Install]")


def test_render_unit_without_environment() -> None:
    text = render_unit("lab-agent", ["/usr/bin/lab", "agent"], {}, "agent")
    assert "Environment=" not in text
    assert "ExecStart=/usr/bin/lab agent" in text.splitlines()


@pytest.mark.parametrize("name, argv, env, description", [
    ("bad name", ["/usr/bin/lab"], {}, "d"),
    ("lab", ["lab", "serve"], {}, "d"),
    ("lab", [], {}, "d"),
    ("lab", ["/usr/bin/lab"], {"BAD-NAME": "x"}, "d"),
    ("lab", ["/usr/bin/lab"], {"OK": "bell\a"}, "d"),
    ("lab", ["/usr/bin/lab"], {}, "two\nlines"),
])
def test_render_unit_rejects(name: str, argv: list[str], env: dict[str, str],
                             description: str) -> None:
    with pytest.raises(ValueError):
        render_unit(name, argv, env, description)


def test_unit_template_is_strict(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd/pacific-lab.service.j2").write_text("X={{ missing }}\n")
    with pytest.raises(jinja2.UndefinedError):
        render_unit("lab", ["/usr/bin/lab"], {}, "d", templates_dir=tmp_path)


# -- logs -----------------------------------------------------------------------


def test_follow_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "lab.log"
    assert list(follow_log(log)) == []
    log.write_text("".join(f"line {i}\n" for i in range(200)))
    assert list(follow_log(log, lines=3)) == ["line 197", "line 198", "line 199"]
    assert len(list(follow_log(log))) == 50
    everything = list(follow_log(log, lines=1000))
    assert len(everything) == 200 and everything[0] == "line 0"
    assert list(follow_log(log, lines=0)) == []
    with log.open("a") as f:
        f.write("unfinished")
    assert list(follow_log(log, lines=2)) == ["line 199", "unfinished"]


def test_follow_log_tail_across_blocks(tmp_path: Path) -> None:
    log = tmp_path / "lab.log"
    long = "x" * 100_000
    log.write_text(f"first\n{long}\nlast\n")
    assert list(follow_log(log, lines=2)) == [long, "last"]
    assert list(follow_log(log, lines=5)) == ["first", long, "last"]


def test_follow_log_follows(tmp_path: Path) -> None:
    log = tmp_path / "lab.log"
    log.write_text("one\ntwo\npart")
    gen = follow_log(log, lines=5, follow=True, poll_interval=0.01)
    try:
        assert [next(gen), next(gen)] == ["one", "two"]
        with log.open("a") as f:
            f.write("ial\nthree\n")
        assert [next(gen), next(gen)] == ["partial", "three"]

        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(next(gen)))
        reader.start()
        with log.open("a") as f:
            f.write("four\n")
        reader.join(10)
        assert got == ["four"]

        log.write_text("new\n")  # truncated and rewritten
        assert next(gen) == "new"

        log.rename(tmp_path / "lab.log.1")  # rotated
        log.write_text("rotated\n")
        assert next(gen) == "rotated"
    finally:
        gen.close()


def test_follow_log_waits_for_the_file(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    gen = follow_log(log, follow=True, poll_interval=0.01)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(next(gen)))
    reader.start()
    log.write_text("hello\n")
    reader.join(10)
    gen.close()
    assert got == ["hello"]
