"""One way to run a subprocess: errors carry the command, exit code and output.

This module sits in the lowest layer so that both ``hypervisor`` and
``appliance`` can use it.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)


class ProcessError(RuntimeError):
    """A command failed (non-zero exit, or it could not be started)."""

    def __init__(self, cmd: Sequence[str], rc: int | None, stdout: str, stderr: str,
                 reason: str = "") -> None:
        self.cmd = list(cmd)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.reason = reason
        tail = (stderr or stdout).strip().splitlines()[-1:] or [reason]
        super().__init__(f"{shlex.join(self.cmd)} failed (rc={rc}): {tail[0]}")


@dataclass(frozen=True)
class Completed:
    cmd: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str


def run(cmd: Sequence[str], *, check: bool = True, input: str | bytes | None = None,
        timeout: float | None = 600, env: Mapping[str, str] | None = None,
        cwd: str | None = None) -> Completed:
    """Run ``cmd`` (never through a shell) and return its output as text."""
    LOG.debug("run: %s", shlex.join(cmd))
    data = input.encode() if isinstance(input, str) else input
    try:
        proc = subprocess.run(list(cmd), input=data, capture_output=True, timeout=timeout,
                              env=dict(env) if env is not None else None, cwd=cwd, check=False)
    except FileNotFoundError as exc:
        raise ProcessError(cmd, None, "", "", reason=f"not found: {exc.filename}") from exc
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        raise ProcessError(cmd, None, out, err, reason=f"timed out after {timeout}s") from exc
    result = Completed(tuple(cmd), proc.returncode, proc.stdout.decode(errors="replace"),
                       proc.stderr.decode(errors="replace"))
    if check and proc.returncode != 0:
        raise ProcessError(cmd, proc.returncode, result.stdout, result.stderr)
    return result


def processes(root: Path = Path("/proc")) -> Iterator[tuple[int, str, list[str]]]:
    """(pid, command name, the fields of ``/proc/<pid>/stat`` after the name) of every
    process that is still there when read: ``fields[0]`` is the state (``Z``: a zombie),
    ``fields[1]`` the parent, ``fields[2]`` the process group, ``fields[11:15]`` the CPU
    times in clock ticks."""
    for entry in root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process went away while we looked
            continue
        name_end = stat.rindex(")")
        yield int(entry.name), stat[stat.index("(") + 1:name_end], stat[name_end + 2:].split()
