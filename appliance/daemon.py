"""Running the host service: a systemd unit where systemd is PID 1, else a daemon.

Without a service manager (containers, CI) the service runs as a detached
daemon with a pidfile and a log file under the state directory. A pidfile
records more than the pid: the process's start time and argv, so that a
stale pidfile whose pid now belongs to some other process is never taken
for ours.

Pidfile format (the first line alone is a classic pidfile)::

    12345
    {"starttime": 987654, "argv": ["/usr/bin/python3", "-m", "appliance", "serve"]}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import jinja2

from appliance.settings import PROJECT_ROOT
from hypervisor.proc import run

from appliance.util.files import write_atomic

LOG = logging.getLogger(__name__)

UNIT_DIR = Path("/etc/systemd/system")
UNIT_TEMPLATE = "systemd/pacific-lab.service.j2"
_POLL = 0.05

# Started with `python -I -c`: it starts the daemon in a new session, reports
# the pid on stdout and exits, so the daemon is not the caller's child (no
# zombie, nothing to reap) and outlives the caller.
_LAUNCHER = """\
import json, os, subprocess, sys
try:
    child = subprocess.Popen(json.loads(sys.argv[1]), stdin=subprocess.DEVNULL, stdout=2,
                             stderr=2, close_fds=True, start_new_session=True)
except OSError as exc:
    print(json.dumps({"error": str(exc)}), flush=True)
    os._exit(1)
print(json.dumps({"pid": child.pid}), flush=True)
os._exit(0)
"""


class DaemonError(RuntimeError):
    """A daemon could not be started or stopped."""


# -- systemd ---------------------------------------------------------------


def systemd_is_pid1(root: Path = Path("/")) -> bool:
    """True when systemd is the running service manager (``root`` is for other trees)."""
    if not (root / "run/systemd/system").is_dir():
        return False
    try:
        return (root / "proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BARE_ARG = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def _c_quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ValueError(f"control character {ch!r} in {text!r}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _systemd_arg(arg: str) -> str:
    """One ExecStart= word: quoted if needed, ``%`` and ``$`` escaped."""
    word = arg if _BARE_ARG.match(arg) else _c_quote(arg)
    return word.replace("%", "%%").replace("$", "$$")


def _systemd_env(assignment: str) -> str:
    """One Environment= assignment: quoted, ``%`` escaped (``$`` is not special there)."""
    return _c_quote(assignment).replace("%", "%%")


def _systemd_text(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"line break in {text!r}")
    return text.replace("%", "%%")


def _unit_name(name: str) -> str:
    name = name.removesuffix(".service")
    if not _UNIT_NAME.match(name):
        raise ValueError(f"not a valid unit name: {name!r}")
    return name


def render_unit(name: str, argv: Sequence[str], env: Mapping[str, str], description: str,
                *, templates_dir: Path = PROJECT_ROOT / "templates") -> str:
    """The text of ``<name>.service`` running ``argv`` with ``env`` (Type=simple)."""
    name = _unit_name(name)
    if not argv or not argv[0].startswith("/"):
        raise ValueError(f"ExecStart needs an absolute program path, got {list(argv)!r}")
    for key in env:
        if not _ENV_NAME.match(key):
            raise ValueError(f"not a valid environment variable name: {key!r}")
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir), autoescape=False,  # INI, not HTML
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(systemd_arg=_systemd_arg, systemd_env=_systemd_env,
                               systemd_text=_systemd_text)
    return environment.get_template(UNIT_TEMPLATE).render(
        name=name, argv=list(argv), env=dict(env), description=description)


def install_unit(name: str, argv: Sequence[str], env: Mapping[str, str], description: str,
                 *, unit_dir: Path = UNIT_DIR,
                 templates_dir: Path = PROJECT_ROOT / "templates") -> Path:
    """Write the unit, reload systemd, enable and start it; restart it if it changed.

    The unit file is world-readable: pass secrets in files, not in ``env``.
    """
    name = _unit_name(name)
    text = render_unit(name, argv, env, description, templates_dir=templates_dir)
    path = unit_dir / f"{name}.service"
    try:
        changed = path.read_text() != text
    except FileNotFoundError:
        changed = True
    was_active = unit_active(name)
    if changed:
        write_atomic(path, text.encode(), 0o644)
        run(["systemctl", "daemon-reload"])
        LOG.info("[unit %s] wrote %s", name, path)
    run(["systemctl", "enable", "--now", f"{name}.service"])
    if changed and was_active:
        run(["systemctl", "restart", f"{name}.service"])
        LOG.info("[unit %s] restarted with the new unit", name)
    return path


def stop_unit(name: str, *, disable: bool = False) -> None:
    """Stop the unit (and with ``disable``, keep it from starting at boot)."""
    unit = f"{_unit_name(name)}.service"
    run(["systemctl", "disable", "--now", unit] if disable else ["systemctl", "stop", unit])


def unit_active(name: str) -> bool:
    """True when systemd reports the unit active."""
    unit = f"{_unit_name(name)}.service"
    return run(["systemctl", "is-active", "--quiet", unit], check=False).rc == 0


# -- daemon without a service manager -----------------------------------------


@dataclass(frozen=True)
class _ProcInfo:
    state: str
    starttime: int
    cmdline: list[str]


def _proc_info(pid: int) -> _ProcInfo | None:
    """What /proc says about ``pid``, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold anything.
    fields = stat[stat.rindex(")") + 2:].split()
    cmdline = raw.split(b"\0")
    if cmdline and cmdline[-1] == b"":
        cmdline.pop()
    return _ProcInfo(state=fields[0], starttime=int(fields[19]),
                     cmdline=[os.fsdecode(a) for a in cmdline])


def _alive(info: _ProcInfo | None) -> bool:
    return info is not None and info.state not in ("Z", "X", "x")


def _cmdline_matches(cmdline: list[str], argv: list[str]) -> bool:
    """True when ``cmdline`` is ``argv``, allowing the kernel's rewrite for ``#!`` scripts."""
    if cmdline == argv:
        return True
    args = argv[1:]
    if len(cmdline) <= len(args) or (args and cmdline[-len(args):] != args):
        return False
    head = cmdline[:len(cmdline) - len(args)]
    return Path(argv[0]).name in {Path(c).name for c in head}


def _read_pidfile(pidfile: Path) -> tuple[int, int, list[str]] | None:
    try:
        lines = pidfile.read_text().splitlines()
        pid = int(lines[0])
        meta = json.loads(lines[1])
        starttime, argv = meta["starttime"], meta["argv"]
    except FileNotFoundError:
        return None
    except (ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError):
        LOG.warning("[daemon %s] pidfile is not ours or is damaged; ignoring it", pidfile)
        return None
    if (pid <= 0 or not isinstance(starttime, int) or not isinstance(argv, list)
            or not all(isinstance(a, str) for a in argv)):
        return None
    return pid, starttime, argv


def read_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive and is the one we started."""
    recorded = _read_pidfile(pidfile)
    if recorded is None:
        return None
    pid, starttime, argv = recorded
    info = _proc_info(pid)
    if info is None or not _alive(info):
        return None
    if info.starttime != starttime or not _cmdline_matches(info.cmdline, argv):
        LOG.info("[daemon %s] pid %d belongs to another process now", pidfile, pid)
        return None
    return pid


def start_daemon(argv: list[str], pidfile: Path, logfile: Path,
                 env: dict[str, str] | None = None) -> int:
    """Start ``argv`` detached (new session, stdin /dev/null, output appended to ``logfile``).

    ``env`` is the daemon's whole environment (None: this process's). When a
    live daemon already owns ``pidfile`` its pid is returned and nothing is
    started. The daemon is not this process's child and outlives it.
    """
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with _locked(pidfile):
        existing = read_pid(pidfile)
        if existing is not None:
            LOG.info("[daemon %s] already running as pid %d", pidfile, existing)
            return existing
        log_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(log_fd, 0o600)
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            os.write(log_fd, f"--- {stamp} starting: {shlex.join(argv)}\n".encode())
            launcher = subprocess.run(
                [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(argv)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_fd,
                env=env, close_fds=True, timeout=60, check=False)
        finally:
            os.close(log_fd)
        try:
            report = json.loads(launcher.stdout.decode().strip() or "{}")
        except ValueError:
            report = {}
        if "pid" not in report:
            reason = report.get("error") or f"launcher exited with {launcher.returncode}"
            raise DaemonError(f"cannot start {shlex.join(argv)}: {reason}")
        pid = int(report["pid"])
        info = _proc_info(pid)
        if info is None or not _alive(info):
            raise DaemonError(f"{shlex.join(argv)} exited at once; see {logfile}:\n"
                              + _tail_text(logfile, 10))
        payload = json.dumps({"starttime": info.starttime, "argv": argv})
        write_atomic(pidfile, f"{pid}\n{payload}\n".encode(), 0o644)
        LOG.info("[daemon %s] started pid %d, log %s", pidfile, pid, logfile)
        return pid


def stop_daemon(pidfile: Path, timeout: float = 30) -> bool:
    """SIGTERM the daemon, SIGKILL its process group after ``timeout``; remove the pidfile.

    Returns True when a running daemon was stopped, False when none was running.
    """
    if not pidfile.parent.is_dir():
        return False
    with _locked(pidfile):
        pid = read_pid(pidfile)
        if pid is None:
            pidfile.unlink(missing_ok=True)
            return False
        info = _proc_info(pid)
        starttime = info.starttime if info else -1
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, starttime, timeout):
            LOG.warning("[daemon %s] pid %d ignored SIGTERM for %ss; killing it",
                        pidfile, pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, starttime, 10):
                raise DaemonError(f"pid {pid} from {pidfile} survived SIGKILL")
        pidfile.unlink(missing_ok=True)
        LOG.info("[daemon %s] stopped pid %d", pidfile, pid)
        return True


def _wait_gone(pid: int, starttime: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        info = _proc_info(pid)
        if not _alive(info) or (info is not None and info.starttime != starttime):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


@contextlib.contextmanager
def _locked(pidfile: Path) -> Iterator[None]:
    """Serialise starting and stopping the daemon of one pidfile."""
    lock = pidfile.with_name(pidfile.name + ".lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- logs ---------------------------------------------------------------------


def follow_log(logfile: Path, lines: int = 50, follow: bool = False,
               *, poll_interval: float = 0.25) -> Generator[str, None, None]:
    """Yield the last ``lines`` lines of ``logfile`` (without line ends), like ``tail``.

    With ``follow`` it goes on yielding lines as they are appended (like
    ``tail -F``: it waits for the file to appear, and reopens it when it is
    truncated or replaced). Without, a missing file yields nothing.
    """
    while not logfile.exists():
        if not follow:
            return
        time.sleep(poll_interval)
    f: BinaryIO = open(logfile, "rb")  # noqa: SIM115 (reopened on rotation)
    try:
        complete, pending = _last_lines(f, lines)
        if not follow:
            shown = complete + [pending] if pending else complete
            for line in shown[-lines:] if lines > 0 else []:
                yield _decode(line)
            return
        for line in complete:
            yield _decode(line)
        ident = os.fstat(f.fileno())
        while True:
            chunk = f.read(65536)
            if chunk:
                *done, pending = (pending + chunk).split(b"\n")
                for line in done:
                    yield _decode(line)
                continue
            try:
                now = os.stat(logfile)
            except FileNotFoundError:
                time.sleep(poll_interval)
                continue
            if (now.st_ino, now.st_dev) != (ident.st_ino, ident.st_dev):
                f.close()
                f = open(logfile, "rb")  # noqa: SIM115
                ident, pending = os.fstat(f.fileno()), b""
                continue
            if now.st_size < f.tell():  # truncated
                f.seek(0)
                pending = b""
                continue
            time.sleep(poll_interval)
    finally:
        f.close()


def _last_lines(f: BinaryIO, count: int) -> tuple[list[bytes], bytes]:
    """The last ``count`` complete lines and the unfinished one; leaves ``f`` at the end."""
    end = f.seek(0, os.SEEK_END)
    pos, data = end, b""
    while pos > 0 and data.count(b"\n") <= count:
        step = min(65536, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    f.seek(end)
    parts = data.split(b"\n")
    if pos > 0:
        parts = parts[1:]  # starts in the middle of a line
    complete = parts[:-1][-count:] if count > 0 else []
    return complete, parts[-1]


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _tail_text(logfile: Path, count: int) -> str:
    return "\n".join(follow_log(logfile, lines=count))
