"""Parsing the pod init's event and output channels, and the control socket."""

from __future__ import annotations

import base64
import socket
import threading
from pathlib import Path

import pytest

from hypervisor.podvm.channel import (
    MAX_RECORD,
    Booted,
    ControlError,
    Done,
    EventReader,
    Exited,
    Finished,
    GuestError,
    Malformed,
    NetworkUp,
    Output,
    OutputReader,
    Started,
    StartFailed,
    Terminating,
    Waiting,
    control_message,
    parse_event,
    parse_output,
    read_events,
    send_control,
)


def out(container: str, restarts: int, stream: str, data: bytes, t: str = "1.5") -> bytes:
    return f"out {t} {container} {restarts} {stream} ".encode() + base64.b64encode(data) + b"\n"


@pytest.mark.parametrize("line, record", [
    (b"booted 1795312793.025278 2.35", Booted(1795312793.025278, 2.35)),
    (b"network 1.0 eth0 198.18.200.5/24 198.18.200.1",
     NetworkUp(1.0, "eth0", "198.18.200.5/24", "198.18.200.1")),
    (b"network 1.0 eth0 198.18.200.5/24 -", NetworkUp(1.0, "eth0", "198.18.200.5/24", None)),
    (b"started 2.0 web 0", Started(2.0, "web", 0)),
    (b"exited 3.0 web 4 143", Exited(3.0, "web", 4, 143)),
    (b'failed 4.0 web 0 StartError exec: "foo": executable file not found in $PATH ',
     StartFailed(4.0, "web", 0, "StartError", 'exec: "foo": executable file not found in $PATH')),
    (b"waiting 5.0 web 2 CrashLoopBackOff 20000", Waiting(5.0, "web", 2, "CrashLoopBackOff", 20.0)),
    (b"finished 6.0 web 2", Finished(6.0, "web", 2)),
    (b"terminating 7.0 TERM 30", Terminating(7.0, "TERM", 30)),
    (b"terminating 7.0 KILL 0", Terminating(7.0, "KILL", 0)),
    (b"done 8.0", Done(8.0)),
    (b"done 8.0 ", Done(8.0)),
    (b"error 9.0 no disk with serial 'config' ", GuestError(9.0, "no disk with serial 'config'")),
])
def test_parse_event(line: bytes, record: object) -> None:
    assert parse_event(line) == record


@pytest.mark.parametrize("line", [
    b"", b"started", b"started 1.0 web", b"started 1.0 web -1", b"started x web 0",
    b"exited 1.0 web 0 nine", b"terminating 1.0 STOP 3", b"bogus 1.0", b"done",
    b"started 1.0 w\xffeb 0", b"\x00\x01\x02",
])
def test_malformed_events_never_raise(line: bytes) -> None:
    assert isinstance(parse_event(line), Malformed)


def test_exit_code_signal() -> None:
    assert Exited(0, "c", 0, 137).signal == 9
    assert Exited(0, "c", 0, 143).signal == 15
    assert Exited(0, "c", 0, 3).signal is None


def test_parse_output_binary() -> None:
    data = bytes(range(256))
    assert parse_output(out("web", 1, "stderr", data).rstrip(b"\n")) == \
        Output(1.5, "web", 1, "stderr", data)
    assert isinstance(parse_output(b"out 1.0 web 0 stdin aGk="), Malformed)
    assert isinstance(parse_output(b"out 1.0 web 0 stdout !!notbase64"), Malformed)
    assert isinstance(parse_output(b"out 1.0 web 0 stdout"), Malformed)


def test_incremental_reads_keep_partial_records(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    reader = EventReader(path)
    assert reader.read() == []  # no file yet
    path.write_bytes(b"booted 1.0 0.5\nstarted 2.0 web 0\nexited 3.0 we")
    assert reader.read() == [Booted(1.0, 0.5), Started(2.0, "web", 0)]
    offset = reader.offset
    assert offset == len(b"booted 1.0 0.5\nstarted 2.0 web 0\n")
    assert reader.read() == []  # the partial record waits
    with open(path, "ab") as handle:
        handle.write(b"b 0 1\ndone 4.0\n")
    assert reader.read() == [Exited(3.0, "web", 0, 1), Done(4.0)]
    # A saved offset resumes where the last complete record ended.
    records, end = read_events(path, offset)
    assert records == [Exited(3.0, "web", 0, 1), Done(4.0)] and end == path.stat().st_size


def test_truncated_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"booted 1.0 0.5\nstarted 2.0 web 0\n")
    reader = EventReader(path)
    assert len(reader.read()) == 2
    path.write_bytes(b"booted 9.0 0.4\n")  # a new boot truncated it
    assert reader.read() == [Booted(9.0, 0.4)]


def test_interleaved_containers_demultiplex(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    chunks = [("a", "stdout", b"a1\n"), ("b", "stdout", b"b1"), ("a", "stderr", b"\x00\xff"),
              ("b", "stdout", b" still b1\n"), ("a", "stdout", b"a2\n")]
    path.write_bytes(b"".join(out(c, 0, s, d) for c, s, d in chunks) + b"out 1.0 a 0 stdout")
    reader = OutputReader(path)
    records = reader.read()
    assert all(isinstance(r, Output) for r in records)

    def joined(container: str, stream: str) -> bytes:
        return b"".join(r.data for r in records if isinstance(r, Output)
                        and r.container == container and r.stream == stream)
    assert joined("a", "stdout") == b"a1\na2\n"
    assert joined("a", "stderr") == b"\x00\xff"
    assert joined("b", "stdout") == b"b1 still b1\n"
    with open(path, "ab") as handle:
        handle.write(b" " + base64.b64encode(b"tail") + b"\r\n")
    assert reader.read() == [Output(1.0, "a", 0, "stdout", b"tail")]


def test_garbage_without_newline_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"x" * (MAX_RECORD + 10))
    records, offset = read_events(path, 0)
    assert len(records) == 1 and isinstance(records[0], Malformed)
    assert len(records[0].line) <= 200
    assert offset == MAX_RECORD + 10


def test_bad_lines_between_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"started 1.0 a 0\n\ngarbage here\nexited 2.0 a 0 0\n")
    records, _ = read_events(path, 0)
    assert records == [Started(1.0, "a", 0), Malformed(b"garbage here"), Exited(2.0, "a", 0, 0)]


def test_control_messages() -> None:
    pad = b"\n" * 32  # what a UART drops before the guest opens it is blank lines
    assert control_message("TERM", message_id="ab12") == pad + b"TERM - ab12\n"
    assert control_message("TERM", 7, "x") == pad + b"TERM 7 x\n"
    assert control_message("KILL", message_id="x") == pad + b"KILL - x\n"
    with pytest.raises(ValueError):
        control_message("KILL", 3)
    with pytest.raises(ValueError):
        control_message("STOP")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        control_message("TERM", -1)
    with pytest.raises(ValueError):
        control_message("TERM", message_id="a b")


class FakeGuest:
    """A unix socket listener standing in for QEMU + the pod init: it answers per ``reply``."""

    def __init__(self, path: Path, reply: object) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.reply = reply
        self.received = b""
        self.thread = threading.Thread(target=self.serve)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            while not (self.received.strip(b"\n") and self.received.endswith(b"\n")):
                chunk = conn.recv(100)
                if not chunk:
                    return
                self.received += chunk
            line = self.received.strip(b"\n").split(b"\n")[0].decode()
            answer = self.reply(line) if callable(self.reply) else self.reply
            if answer is not None:
                conn.sendall(answer)
                conn.recv(100)  # until the client hangs up

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.server.close()


def test_send_control_waits_for_the_ack(tmp_path: Path) -> None:
    guest = FakeGuest(tmp_path / "control.sock",
                      lambda line: b"noise\r\nack " + line.split()[2].encode() + b"\r\n")
    try:
        send_control(tmp_path / "control.sock", "TERM", grace_seconds=12)
    finally:
        guest.close()
    command, grace, message_id = guest.received.strip(b"\n").decode().split()
    assert (command, grace) == ("TERM", "12") and message_id.isalnum()


def test_send_control_without_an_ack(tmp_path: Path) -> None:
    guest = FakeGuest(tmp_path / "control.sock", b"ack someone-else\n")
    try:
        with pytest.raises(ControlError, match="no answer"):
            send_control(tmp_path / "control.sock", "KILL", timeout=0.5)
    finally:
        guest.close()


def test_send_control_channel_closed(tmp_path: Path) -> None:
    guest = FakeGuest(tmp_path / "control.sock", None)  # hangs up without answering
    try:
        with pytest.raises(ControlError, match="closed the channel"):
            send_control(tmp_path / "control.sock", "TERM", timeout=5)
    finally:
        guest.close()


def test_send_control_without_a_listener(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="cannot send KILL"):
        send_control(tmp_path / "nobody.sock", "KILL", timeout=1)
