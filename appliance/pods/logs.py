"""Container logs of pod VMs: written by the host agent, read by ``kubectl logs``.

Each run of a container has its own file, ``<root>/<pod uid>/logs/<container>/<n>.log``
where ``n`` is the container's restart count when it ran, so ``--previous`` is
the file before the current one. Lines use the CRI logging format kubelets
write (``<RFC3339Nano> <stream> <F|P> <text>``, ``P`` for a part of a longer
line), which keeps the stream and a timestamp for ``--timestamps`` and
``--since``. A run that has ended gets an ``<n>.end`` marker, which is what
ends ``kubectl logs -f``.

Everything is opened without following symlinks, under the state directory.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance import errors
from appliance.kinds.registry import Obj
from appliance.util.timefmt import parse_rfc3339
import contextlib

#: How long a follow waits for more output from a container that is still running.
FOLLOW_POLL = 0.25
#: A log line longer than this is split into parts (``P``), as kubelets do.
MAX_LINE = 16 * 1024


def _stamp(when: datetime | None = None) -> str:
    when = when or datetime.now(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}000Z"


@dataclass(frozen=True)
class LogLine:
    when: datetime
    stream: str
    partial: bool
    text: bytes

    @classmethod
    def parse(cls, raw: bytes) -> LogLine | None:
        parts = raw.rstrip(b"\n").split(b" ", 3)
        if len(parts) < 3:
            return None
        try:
            when = parse_rfc3339(parts[0].decode())
        except ValueError:
            return None
        return cls(when, parts[1].decode(errors="replace"), parts[2] == b"P",
                   parts[3] if len(parts) > 3 else b"")


class PodLogs:
    """The container log files of every pod on this host."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, int, str], bytes] = {}

    # -- paths -----------------------------------------------------------------------------

    def pod_dir(self, uid: str) -> Path:
        if not uid or "/" in uid or uid.startswith("."):
            raise ValueError(f"bad pod uid {uid!r}")
        return self.root / uid

    def path(self, uid: str, container: str, run: int) -> Path:
        return self.pod_dir(uid) / "logs" / container / f"{run}.log"

    def ended(self, uid: str, container: str, run: int) -> bool:
        return self.path(uid, container, run).with_suffix(".end").exists()

    # -- writing (the host agent) ----------------------------------------------------------

    def append(self, uid: str, container: str, run: int, stream: str, data: bytes) -> None:
        """Add output of one run; complete lines are written, a trailing part waits
        (up to :data:`MAX_LINE`) for the rest of its line."""
        key = (uid, container, run, stream)
        with self._lock:
            data = self._pending.pop(key, b"") + data
            lines = data.split(b"\n")
            rest = lines.pop()
            out = []
            now = _stamp()
            for line in lines:
                for i in range(0, max(len(line), 1), MAX_LINE):
                    piece = line[i:i + MAX_LINE]
                    last = i + MAX_LINE >= len(line)
                    out.append(b"%s %s %s %s\n" % (now.encode(), stream.encode(),
                                                    b"F" if last else b"P", piece))
            while len(rest) >= MAX_LINE:
                out.append(b"%s %s P %s\n" % (now.encode(), stream.encode(), rest[:MAX_LINE]))
                rest = rest[MAX_LINE:]
            if rest:
                self._pending[key] = rest
            if out:
                self._write(self.path(uid, container, run), b"".join(out))

    def end(self, uid: str, container: str, run: int) -> None:
        """The run is over: flush a last unterminated line and mark the file ended."""
        with self._lock:
            out = []
            for stream in ("stdout", "stderr"):
                rest = self._pending.pop((uid, container, run, stream), b"")
                if rest:
                    out.append(b"%s %s F %s\n" % (_stamp().encode(), stream.encode(), rest))
            path = self.path(uid, container, run)
            self._write(path, b"".join(out))
            marker = path.with_suffix(".end")
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.close(fd)

    def _write(self, path: Path, data: bytes) -> None:
        _mkdirs(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            if data:
                os.write(fd, data)
        finally:
            os.close(fd)

    def remove(self, uid: str) -> None:
        import shutil

        with self._lock:
            for key in [k for k in self._pending if k[0] == uid]:
                del self._pending[key]
        shutil.rmtree(self.pod_dir(uid) / "logs", ignore_errors=True)

    # -- reading (the API) -----------------------------------------------------------------

    def read(self, pod: Obj, args: Mapping[str, str], timeout: float) -> Iterator[bytes]:
        """``GET .../pods/NAME/log``: the parameters kubectl sends, Kubernetes' errors."""
        req = LogRequest.from_args(args)
        meta = pod["metadata"]
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        name = req.container
        if not name:
            if len(containers) != 1:
                raise errors.bad_request(
                    f"a container name must be specified for pod {meta['name']}, choose one "
                    f"of: [{' '.join(str(c) for c in containers)}]")
            name = containers[0]
        if name not in containers:
            raise errors.bad_request(f"container {name} is not valid for pod {meta['name']}")
        cstatus = next((cs for cs in (pod.get("status") or {}).get("containerStatuses") or []
                        if cs.get("name") == name), {})
        restarts = int(cstatus.get("restartCount") or 0)
        run = restarts - 1 if req.previous else restarts
        path = self.path(meta["uid"], name, run) if run >= 0 else None
        if path is None or not path.exists():
            if req.previous:
                raise errors.bad_request(f'previous terminated container "{name}" in pod '
                                         f'"{meta["name"]}" not found')
            waiting = ((cstatus.get("state") or {}).get("waiting") or {})
            reason = waiting.get("reason") or "ContainerCreating"
            message = ("trying and failing to pull image" if reason in (
                "ErrImagePull", "ImagePullBackOff") else reason)
            raise errors.bad_request(f'container "{name}" in pod "{meta["name"]}" is waiting '
                                     f"to start: {message}")
        live = not req.previous and not self.ended(meta["uid"], name, run)
        return _render(path, req, req.follow and live,
                       lambda: self.ended(meta["uid"], name, run), timeout)


@dataclass(frozen=True)
class LogRequest:
    container: str = ""
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since: datetime | None = None
    limit_bytes: int | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> LogRequest:
        def flag(name: str) -> bool:
            return str(args.get(name, "")).lower() in ("true", "1")

        def number(name: str) -> int | None:
            value = args.get(name)
            if value in (None, ""):
                return None
            try:
                n = int(str(value))
            except ValueError as exc:
                raise errors.bad_request(f"{name} must be an integer") from exc
            if n < 0 or (name != "tailLines" and n == 0):
                raise errors.bad_request(f"{name} must be greater than 0")
            return n

        since = None
        seconds = number("sinceSeconds")
        if seconds is not None:
            since = datetime.now(UTC) - timedelta(seconds=seconds)
        if args.get("sinceTime"):
            if seconds is not None:
                raise errors.bad_request("at most one of sinceTime or sinceSeconds may be "
                                         "specified")
            try:
                since = parse_rfc3339(str(args["sinceTime"]))
            except ValueError as exc:
                raise errors.bad_request("sinceTime must be an RFC 3339 time") from exc
        return cls(str(args.get("container") or ""), flag("follow"), flag("previous"),
                   flag("timestamps"), number("tailLines"), since, number("limitBytes"))


def _render(path: Path, req: LogRequest, follow: bool, ended: Callable[[], bool],
            timeout: float) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        budget = req.limit_bytes

        def emit(lines: list[bytes]) -> bytes:
            nonlocal budget
            out = bytearray()
            for raw in lines:
                line = LogLine.parse(raw)
                if line is None or (req.since is not None and line.when < req.since):
                    continue
                text = line.text + (b"" if line.partial else b"\n")
                if req.timestamps:
                    text = raw.split(b" ", 1)[0] + b" " + text
                out += text
            data = bytes(out)
            if budget is not None:
                data, budget = data[:budget], budget - len(data[:budget])
            return data

        lines = fh.read().splitlines(keepends=True)
        carry = b""
        if lines and not lines[-1].endswith(b"\n"):
            carry = lines.pop()
        if req.tail_lines is not None:
            lines = _tail_lines(lines, req.tail_lines)
        yield emit(lines)
        deadline = time.monotonic() + timeout
        while follow and (budget is None or budget > 0) and time.monotonic() < deadline:
            chunk = fh.read(65536)
            if chunk:
                data = carry + chunk
                parts = data.split(b"\n")
                carry = parts.pop()
                yield emit([p + b"\n" for p in parts])
                continue
            if ended():
                rest = fh.read()
                if rest or carry:
                    yield emit([line for line in (carry + rest).splitlines(keepends=True)])
                return
            time.sleep(FOLLOW_POLL)


def _tail_lines(lines: list[bytes], n: int) -> list[bytes]:
    """The last ``n`` whole lines (a line split into parts counts once)."""
    if n == 0:
        return []
    kept: list[bytes] = []
    count = 0
    for raw in reversed(lines):
        line = LogLine.parse(raw)
        if line is not None and not line.partial:
            count += 1
            if count > n:
                break
        kept.append(raw)
    return list(reversed(kept))


def _mkdirs(path: Path) -> None:
    """Create ``path`` and its parents (0700), refusing symlinks on the way."""
    if path.is_symlink():
        raise OSError(f"refusing symlink {path}")
    if path.is_dir():
        return
    _mkdirs(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
