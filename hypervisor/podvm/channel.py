"""Host <-> pod VM channels: parsing what the pod init writes, and the control socket.

The init writes two files through ISA serial ports in raw mode (QEMU
appends them to files; see ``templates/podvm/init.sh``). Both are lines of
space-separated ASCII fields, one record per line; the second field is the
guest's wall clock (``$EPOCHREALTIME``, seconds with microseconds, from the
RTC the host set at boot):

events (ttyS1)::

    booted TIME UPTIME
    network TIME IFNAME ADDRESS/PREFIX GATEWAY|-
    started TIME CONTAINER RESTARTS
    exited TIME CONTAINER RESTARTS CODE            (a signal n gives 128+n)
    failed TIME CONTAINER RESTARTS REASON MESSAGE...  (start failed; MESSAGE to end of line)
    waiting TIME CONTAINER RESTARTS REASON DELAY_MS   (CrashLoopBackOff before a restart)
    finished TIME CONTAINER RESTARTS               (will not run again)
    terminating TIME TERM|KILL GRACE
    done TIME                                      (nothing runs; the VM powers off)
    error TIME MESSAGE...                          (the pod could not be set up; it powers off)

output (ttyS2)::

    out TIME CONTAINER RESTARTS stdout|stderr BASE64

Each output record is one ``write()`` in the guest (at most 24 KiB of data,
so long lines are split), so records of two containers never interleave;
base64 keeps binary data intact. ``RESTARTS`` tells container instances
apart (``kubectl logs --previous``).

Readers are incremental: give them the offset you saved and they return the
complete records after it plus the new offset; a partial trailing record is
left for the next call. A line that does not parse is returned as
``Malformed`` (the guest is not trusted: a container could forge a line if
it got hold of the port) and never raises.

The control channel is a unix socket QEMU listens on (ttyS3 in the guest):
``send_control(path, "TERM")`` or ``"KILL"`` sends ``TERM GRACE|- ID`` or
``KILL - ID`` and waits for the init's ``ack ID`` on the same socket.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

Stream = Literal["stdout", "stderr"]
ControlCommand = Literal["TERM", "KILL"]

# A line longer than this is garbage (the longest real record is ~32.1 KiB).
MAX_RECORD = 64 * 1024
CONTROL_TIMEOUT = 30.0
# Newlines before each control message: bytes that reach the UART before the
# guest opened the port sit in its receive FIFO (16 bytes) and are cleared
# when the port is opened; what is lost then is only blank lines.
_PAD = b"\n" * 32


@dataclass(frozen=True)
class Booted:
    time: float
    uptime: float


@dataclass(frozen=True)
class NetworkUp:
    time: float
    interface: str
    address: str  # ADDRESS/PREFIX
    gateway: str | None


@dataclass(frozen=True)
class Started:
    time: float
    container: str
    restart_count: int


@dataclass(frozen=True)
class Exited:
    time: float
    container: str
    restart_count: int
    exit_code: int

    @property
    def signal(self) -> int | None:
        """The signal that ended the process, when the exit code says so (128+n)."""
        return self.exit_code - 128 if 128 < self.exit_code < 160 else None


@dataclass(frozen=True)
class StartFailed:
    time: float
    container: str
    restart_count: int
    reason: str  # StartError, CreateContainerError
    message: str


@dataclass(frozen=True)
class Waiting:
    time: float
    container: str
    restart_count: int
    reason: str  # CrashLoopBackOff
    delay_seconds: float


@dataclass(frozen=True)
class Finished:
    time: float
    container: str
    restart_count: int


@dataclass(frozen=True)
class Terminating:
    time: float
    signal: str  # TERM or KILL
    grace_seconds: int


@dataclass(frozen=True)
class Done:
    time: float


@dataclass(frozen=True)
class GuestError:
    time: float
    message: str


@dataclass(frozen=True)
class Output:
    time: float
    container: str
    restart_count: int
    stream: Stream
    data: bytes


@dataclass(frozen=True)
class Malformed:
    """A line that is not a record (kept short: at most 200 bytes of it)."""

    line: bytes


Event = (Booted | NetworkUp | Started | Exited | StartFailed | Waiting | Finished | Terminating
         | Done | GuestError | Malformed)
Record = TypeVar("Record")


class ControlError(RuntimeError):
    """The control message could not be delivered (the VM is gone or not listening)."""


# -- parsing -----------------------------------------------------------

def _fields(line: bytes, count: int) -> list[str]:
    """Split into ``count`` fields, the last taking the rest of the line."""
    text = line.decode("ascii")
    parts = text.split(" ", count - 1)
    if len(parts) != count:
        raise ValueError("too few fields")
    return parts


def _exact(line: bytes, count: int) -> list[str]:
    parts = line.decode("ascii").rstrip(" ").split(" ")
    if len(parts) != count or not all(parts):
        raise ValueError(f"expected {count} fields")
    return parts


def _count(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"not a count: {value!r}")
    return int(value)


def parse_event(line: bytes) -> Event:
    """One event line (without its newline) as a record."""
    try:
        kind = line.split(b" ", 1)[0]
        if kind == b"booted":
            _, t, uptime = _exact(line, 3)
            return Booted(float(t), float(uptime))
        if kind == b"network":
            _, t, ifname, address, gateway = _exact(line, 5)
            return NetworkUp(float(t), ifname, address, None if gateway == "-" else gateway)
        if kind == b"started":
            _, t, name, restarts = _exact(line, 4)
            return Started(float(t), name, _count(restarts))
        if kind == b"exited":
            _, t, name, restarts, code = _exact(line, 5)
            return Exited(float(t), name, _count(restarts), _count(code))
        if kind == b"failed":
            _, t, name, restarts, reason, message = _fields(line, 6)
            return StartFailed(float(t), name, _count(restarts), reason, message.strip())
        if kind == b"waiting":
            _, t, name, restarts, reason, delay = _exact(line, 6)
            return Waiting(float(t), name, _count(restarts), reason, _count(delay) / 1000)
        if kind == b"finished":
            _, t, name, restarts = _exact(line, 4)
            return Finished(float(t), name, _count(restarts))
        if kind == b"terminating":
            _, t, signal, grace = _exact(line, 4)
            if signal not in ("TERM", "KILL"):
                raise ValueError(signal)
            return Terminating(float(t), signal, _count(grace))
        if kind == b"done":
            _, t = _exact(line, 2)
            return Done(float(t))
        if kind == b"error":
            parts = _fields(line + b" ", 3)
            return GuestError(float(parts[1]), parts[2].strip())
    except (ValueError, UnicodeDecodeError):
        pass
    return Malformed(line[:200])


def parse_output(line: bytes) -> Output | Malformed:
    """One output line (without its newline) as a record."""
    try:
        kind, t, name, restarts, stream, data = _exact(line, 6)
        if kind != "out" or stream not in ("stdout", "stderr"):
            raise ValueError(kind)
        return Output(float(t), name, _count(restarts), stream,  # type: ignore[arg-type]
                      base64.b64decode(data, validate=True))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return Malformed(line[:200])


def read_records(path: Path, offset: int, parse: Callable[[bytes], Record], *,
                 max_bytes: int = 4 * 1024 * 1024) -> tuple[list[Record], int]:
    """The complete records in ``path`` after ``offset``, and the offset to resume from.

    A missing file gives no records. A file shorter than ``offset`` was
    started afresh (a new boot truncates it): reading starts over at 0. At
    most ``max_bytes`` are read per call; call again while records come.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < offset:
                offset = 0
            handle.seek(offset)
            chunk = handle.read(max_bytes)
    except FileNotFoundError:
        return [], offset
    records: list[Record] = []
    consumed = 0
    for line, end in _lines(chunk):
        consumed = end
        line = line.rstrip(b"\r")
        if line:
            records.append(parse(line))
    rest = len(chunk) - consumed
    if rest > MAX_RECORD:  # no newline in sight: garbage, skip it
        records.append(parse(chunk[consumed:consumed + 200]))
        consumed = len(chunk)
    return records, offset + consumed


def _lines(chunk: bytes) -> Iterator[tuple[bytes, int]]:
    start = 0
    while True:
        end = chunk.find(b"\n", start)
        if end < 0:
            return
        yield chunk[start:end], end + 1
        start = end + 1


def read_events(path: Path, offset: int = 0) -> tuple[list[Event], int]:
    return read_records(path, offset, parse_event)


def read_output(path: Path, offset: int = 0) -> tuple[list[Output | Malformed], int]:
    return read_records(path, offset, parse_output)


class EventReader:
    """Tails an event log: ``read()`` returns the records that arrived since the last call."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset

    def read(self) -> list[Event]:
        records, self.offset = read_events(self.path, self.offset)
        return records


class OutputReader:
    """Tails an output log: ``read()`` returns the records that arrived since the last call."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset

    def read(self) -> list[Output | Malformed]:
        records, self.offset = read_output(self.path, self.offset)
        return records


# -- control -----------------------------------------------------------

def control_message(command: ControlCommand, grace_seconds: int | None = None,
                    message_id: str = "0") -> bytes:
    """The bytes sent for ``command``: blank lines (see ``_PAD``), then
    ``TERM GRACE|- ID`` or ``KILL - ID``; the guest answers ``ack ID``."""
    if not message_id.isalnum():
        raise ValueError(f"bad message id {message_id!r}")
    if command == "TERM":
        if grace_seconds is None:
            grace = "-"
        elif 0 <= grace_seconds <= 86400 * 7:
            grace = str(int(grace_seconds))
        else:
            raise ValueError(f"grace period {grace_seconds} is not 0 to a week")
        return _PAD + f"TERM {grace} {message_id}\n".encode()
    if command == "KILL":
        if grace_seconds is not None:
            raise ValueError("KILL takes no grace period")
        return _PAD + f"KILL - {message_id}\n".encode()
    raise ValueError(f"control command must be TERM or KILL, not {command!r}")


def send_control(socket_path: Path, command: ControlCommand, *, grace_seconds: int | None = None,
                 timeout: float = CONTROL_TIMEOUT) -> None:
    """Deliver ``command`` to the pod init through the VM's control socket; return once the
    init has acknowledged it.

    ``grace_seconds`` overrides the pod's terminationGracePeriodSeconds for
    a TERM (``kubectl delete --grace-period``). The connection stays open
    until the guest answers (QEMU drops what it has not passed on to the
    guest when the client hangs up, and a VM still booting reads its control
    port only once its init runs). Raises ``ControlError`` when the VM is
    not there or does not answer within ``timeout`` seconds.
    """
    message_id = secrets.token_hex(4)
    message = control_message(command, grace_seconds, message_id)
    expected = f"ack {message_id}".encode()
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(message)
            received = b""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ControlError(f"{command} to {socket_path}: no answer in {timeout:.0f}s")
                sock.settimeout(left)
                chunk = sock.recv(4096)
                if not chunk:
                    raise ControlError(f"{command} to {socket_path}: the VM closed the channel")
                received = (received + chunk)[-4096:]
                if any(line.strip() == expected for line in received.split(b"\n")):
                    return
    except ControlError:
        raise
    except TimeoutError as exc:
        raise ControlError(f"{command} to {socket_path}: no answer in {timeout:.0f}s") from exc
    except OSError as exc:
        raise ControlError(f"cannot send {command} to {socket_path}: {exc}") from exc
