"""SSH helpers against an in-process paramiko server on loopback (no sshd, no subprocess)."""

from __future__ import annotations

import os
import pty
import select
import socket
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import paramiko.common
import pytest
from cryptography.hazmat.primitives import serialization

from hypervisor.ssh import (
    HostKeyMismatch,
    SshError,
    forget_host_key,
    generate_keypair,
    interactive_shell,
    load_private_key,
    run_command,
    wait_for_ssh,
)

USER = "lab"


# -- key pairs -----------------------------------------------------------

def test_generate_keypair_is_ed25519_openssh() -> None:
    private_pem, public = generate_keypair("lab@test")
    assert private_pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    kind, blob, comment = public.split()
    assert kind == "ssh-ed25519" and comment == "lab@test"
    key = load_private_key(private_pem)
    assert isinstance(key, paramiko.Ed25519Key)
    assert key.get_base64() == blob
    # The private half really belongs to the public half: a signature verifies.
    signature = key.sign_ssh_data(b"challenge")
    public_key = paramiko.Ed25519Key(data=paramiko.Message(key.asbytes()).asbytes())
    assert public_key.verify_ssh_sig(b"challenge", paramiko.Message(signature.asbytes()))
    # cryptography reads it back too (what other tools would do).
    serialization.load_ssh_private_key(private_pem.encode(), password=None)


def test_keypairs_differ_and_bad_keys_are_refused() -> None:
    assert generate_keypair()[0] != generate_keypair()[0]
    assert len(generate_keypair("")[1].split()) == 2
    with pytest.raises(SshError):
        load_private_key("-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n-----END OPENSSH PRIVATE KEY-----\n")


# -- a small SSH server ----------------------------------------------------

class _Session(paramiko.ServerInterface):
    def __init__(self, server: FakeSshd) -> None:
        self.server = server
        self.ready = threading.Event()
        self.command: bytes | None = None
        self.shell = False

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.common.OPEN_SUCCEEDED
        return paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == USER and key.get_base64() in self.server.authorized:
            return paramiko.common.AUTH_SUCCESSFUL
        return paramiko.common.AUTH_FAILED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.command = command
        self.ready.set()
        return True

    def check_channel_pty_request(self, *args: object) -> bool:
        self.server.pty_requests += 1
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        self.shell = True
        self.ready.set()
        return True

    def check_channel_window_change_request(self, *args: object) -> bool:
        return True


class FakeSshd:
    """Commands: ``big`` (2 MiB of stdout), ``hang`` (never exits), anything else is
    echoed on stdout with ``warn`` on stderr and exit status 3. The shell echoes
    input in upper case and exits (status 7) on ``exit``."""

    def __init__(self) -> None:
        self.host_key = load_private_key(generate_keypair()[0])
        self.authorized: set[str] = set()
        self.pty_requests = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        self.transports.append(transport)
        transport.add_server_key(self.host_key)
        session = _Session(self)
        try:
            transport.start_server(server=session)
        except (paramiko.SSHException, EOFError, OSError):
            return
        channel = transport.accept(10)
        if channel is None or not session.ready.wait(10):
            return
        try:
            if session.shell:
                self._shell(channel)
            else:
                self._exec(channel, session.command or b"")
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def _exec(self, channel: paramiko.Channel, command: bytes) -> None:
        if command == b"hang":
            while not self.stopping.wait(0.1) and not channel.closed:
                pass
            return
        if command == b"big":
            chunk = b"x" * 65536
            for _ in range(32):
                channel.sendall(chunk)
                channel.sendall_stderr(b"e" * 1024)
            channel.send_exit_status(0)
        else:
            channel.sendall(b"ran: " + command + b"\n")
            channel.sendall_stderr(b"warn\n")
            channel.send_exit_status(3)
        channel.shutdown_write()
        channel.close()

    def _shell(self, channel: paramiko.Channel) -> None:
        buffer = b""
        channel.sendall(b"$ ")
        while True:
            data = channel.recv(1024)
            if not data:
                break
            buffer += data
            while b"\r" in buffer or b"\n" in buffer:
                cut = min(i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0)
                line, buffer = buffer[:cut], buffer[cut + 1:]
                if line.strip() == b"exit":
                    channel.send_exit_status(7)
                    channel.close()
                    return
                if line:
                    channel.sendall(line.upper() + b"\r\n$ ")

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()
        for transport in self.transports:
            transport.close()
        self.thread.join(5)


@pytest.fixture
def sshd() -> Iterator[FakeSshd]:
    server = FakeSshd()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client_key(sshd: FakeSshd) -> str:
    private_pem, public = generate_keypair()
    sshd.authorized.add(public.split()[1])
    return private_pem


def _host(sshd: FakeSshd) -> str:
    return f"[127.0.0.1]:{sshd.port}"


# -- commands, pinning, waiting ---------------------------------------------

def test_run_command_and_pin_host_key(sshd: FakeSshd, client_key: str, tmp_path: Path) -> None:
    known = tmp_path / "state" / "known_hosts"
    rc, out, err = run_command("127.0.0.1", USER, client_key, "uname -a", 10,
                               known_hosts=known, port=sshd.port)
    assert (rc, out, err) == (3, "ran: uname -a\n", "warn\n")
    pinned = paramiko.HostKeys(str(known)).lookup(_host(sshd))
    assert pinned is not None
    assert pinned["ssh-ed25519"].get_base64() == sshd.host_key.get_base64()
    # Once pinned, a second connection uses the pin (and still works).
    assert run_command("127.0.0.1", USER, client_key, "true", 10, known_hosts=known,
                       port=sshd.port)[0] == 3


def test_large_output_on_both_streams(sshd: FakeSshd, client_key: str, tmp_path: Path) -> None:
    rc, out, err = run_command("127.0.0.1", USER, client_key, "big", 20,
                               known_hosts=tmp_path / "known_hosts", port=sshd.port)
    assert rc == 0 and len(out) == 32 * 65536 and len(err) == 32 * 1024


def test_command_timeout(sshd: FakeSshd, client_key: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(SshError, match="did not finish"):
        run_command("127.0.0.1", USER, client_key, "hang", 1.0, known_hosts=tmp_path / "kh",
                    port=sshd.port)
    assert time.monotonic() - started < 5


def test_changed_host_key_is_refused_until_forgotten(sshd: FakeSshd, client_key: str,
                                                     tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    run_command("127.0.0.1", USER, client_key, "x", 10, known_hosts=known, port=sshd.port)
    sshd.host_key = load_private_key(generate_keypair()[0])  # the VM was re-created
    with pytest.raises(HostKeyMismatch):
        run_command("127.0.0.1", USER, client_key, "x", 10, known_hosts=known, port=sshd.port)
    with pytest.raises(HostKeyMismatch):  # waiting does not paper over it either
        wait_for_ssh("127.0.0.1", USER, client_key, 10, known_hosts=known, port=sshd.port)
    assert forget_host_key(known, "127.0.0.1", sshd.port) is True
    assert forget_host_key(known, "127.0.0.1", sshd.port) is False
    assert run_command("127.0.0.1", USER, client_key, "x", 10, known_hosts=known,
                       port=sshd.port)[0] == 3


def test_wait_for_ssh(sshd: FakeSshd, client_key: str, tmp_path: Path) -> None:
    wait_for_ssh("127.0.0.1", USER, client_key, 10, known_hosts=tmp_path / "kh", port=sshd.port)


def test_wait_for_ssh_retries_a_rejected_key_until_it_is_installed(
        sshd: FakeSshd, tmp_path: Path) -> None:
    private_pem, public = generate_keypair()
    timer = threading.Timer(1.0, sshd.authorized.add, args=(public.split()[1],))
    timer.start()  # like cloud-init installing the key a moment later
    try:
        wait_for_ssh("127.0.0.1", USER, private_pem, 15, known_hosts=tmp_path / "kh", port=sshd.port)
    finally:
        timer.cancel()


def test_wait_for_ssh_gives_up(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here
    started = time.monotonic()
    with pytest.raises(SshError, match="no SSH login"):
        wait_for_ssh("127.0.0.1", USER, generate_keypair()[0], 1.5, known_hosts=tmp_path / "kh",
                     port=port)
    assert time.monotonic() - started < 5


# -- the interactive shell ---------------------------------------------------

def test_interactive_shell_on_a_pty(sshd: FakeSshd, client_key: str, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    result: dict[str, object] = {}

    def shell() -> None:
        try:
            result["rc"] = interactive_shell("127.0.0.1", USER, client_key,
                                             known_hosts=tmp_path / "kh", port=sshd.port,
                                             stdin_fd=slave, stdout_fd=slave)
        except Exception as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=shell)
    thread.start()
    seen = b""
    deadline = time.monotonic() + 10
    try:
        while b"$ " not in seen and time.monotonic() < deadline:
            seen += _read_some(master)
        # Raw mode: the local terminal neither echoes nor turns \r into \n.
        assert termios.tcgetattr(slave)[3] & termios.ECHO == 0
        os.write(master, b"hello\r")
        while b"HELLO" not in seen and time.monotonic() < deadline:
            seen += _read_some(master)
        os.write(master, b"exit\r")
        thread.join(10)
        assert not thread.is_alive()
        assert termios.tcgetattr(slave) == before  # the terminal is restored
    finally:
        os.close(master)
        os.close(slave)
    assert "error" not in result, result.get("error")
    assert result["rc"] == 7
    assert b"HELLO\r\n" in seen and b"hello" not in seen  # no local echo
    assert sshd.pty_requests == 1


def _read_some(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 0.2)
    return os.read(fd, 4096) if ready else b""
