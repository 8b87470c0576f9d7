"""SSH to guests with paramiko: key pairs, waiting for sshd, commands, an interactive shell.

Host keys are accepted on first contact and then pinned in a known_hosts file
that the caller keeps under the state directory: a later connection to the
same host that offers another key fails with ``HostKeyMismatch``. When a VM is
re-created (new host keys at the same address) the caller forgets the old key
with ``forget_host_key()``.
"""

from __future__ import annotations

import io
import logging
import os
import select
import signal
import sys
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

LOG = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
RETRY_INTERVAL = 1.0
_KNOWN_HOSTS_LOCK = threading.Lock()


class SshError(RuntimeError):
    """SSH to a guest failed (unreachable, refused, authentication, timeout)."""


class HostKeyMismatch(SshError):
    """The host offered a key other than the one pinned for it."""


def generate_keypair(comment: str = "pacific-lab") -> tuple[str, str]:
    """A new ed25519 key pair: (private key in OpenSSH PEM, public key as one OpenSSH line)."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private_pem, f"{public} {comment}" if comment else public


def load_private_key(pkey_pem: str) -> paramiko.PKey:
    """A paramiko key from an OpenSSH/PEM private key (ed25519, ECDSA or RSA)."""
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(pkey_pem))
        except (paramiko.SSHException, ValueError):
            continue
    raise SshError("the private key is not an unencrypted ed25519, ECDSA or RSA key")


class _PinOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host's key and write it to the known_hosts file."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        LOG.info("[%s] pinning %s host key %s", hostname, key.get_name(),
                 key.fingerprint if hasattr(key, "fingerprint") else key.get_base64()[:16])
        client.get_host_keys().add(hostname, key.get_name(), key)
        with _KNOWN_HOSTS_LOCK:
            keys = paramiko.HostKeys()
            if self.known_hosts.exists():
                keys.load(str(self.known_hosts))
            keys.add(hostname, key.get_name(), key)
            _write_known_hosts(self.known_hosts, keys)


def _write_known_hosts(path: Path, keys: paramiko.HostKeys) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            for hostname, entries in keys.items():
                for keytype, key in entries.items():
                    handle.write(f"{hostname} {keytype} {key.get_base64()}\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def forget_host_key(known_hosts: Path, host: str, port: int = 22) -> bool:
    """Drop the pinned key(s) of ``host``; return whether there were any."""
    name = host if port == 22 else f"[{host}]:{port}"
    with _KNOWN_HOSTS_LOCK:
        if not known_hosts.exists():
            return False
        keys = paramiko.HostKeys(str(known_hosts))
        if name not in keys:
            return False
        del keys[name]
        _write_known_hosts(known_hosts, keys)
        return True


def connect(host: str, user: str, pkey_pem: str, *, known_hosts: Path, port: int = 22,
            timeout: float = CONNECT_TIMEOUT) -> paramiko.SSHClient:
    """An authenticated SSH client (key only: no agent, no files from ~/.ssh, no password)."""
    client = paramiko.SSHClient()
    if known_hosts.exists():
        client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(_PinOnFirstUse(known_hosts))
    try:
        client.connect(host, port=port, username=user, pkey=load_private_key(pkey_pem),
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       allow_agent=False, look_for_keys=False)
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyMismatch(f"[{host}:{port}] offered a {exc.key.get_name()} host key other "
                              f"than the one pinned in {known_hosts}") from exc
    except BaseException:
        client.close()
        raise
    return client


def wait_for_ssh(host: str, user: str, pkey_pem: str, timeout: float, *, known_hosts: Path,
                 port: int = 22) -> None:
    """Return once ``user`` can log in with the key; ``SshError`` after ``timeout`` seconds.

    Refused connections, banner timeouts and rejected keys (cloud-init has not
    installed them yet) are retried; a host key mismatch is not.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SshError(f"[{host}:{port}] no SSH login as {user} within {timeout:.0f}s: {last}")
        try:
            client = connect(host, user, pkey_pem, known_hosts=known_hosts, port=port,
                             timeout=max(1.0, min(CONNECT_TIMEOUT, remaining)))
        except HostKeyMismatch:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            last = exc
            time.sleep(min(RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
            continue
        client.close()
        return


def run_command(host: str, user: str, pkey_pem: str, command: str, timeout: float, *,
                known_hosts: Path, port: int = 22, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``command`` on the guest; return (exit status, stdout, stderr).

    ``SshError`` when it has not finished within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    try:
        client = connect(host, user, pkey_pem, known_hosts=known_hosts, port=port,
                         timeout=max(1.0, min(CONNECT_TIMEOUT, timeout)))
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise SshError(f"[{host}:{port}] cannot connect: {exc}") from exc
    try:
        transport = client.get_transport()
        assert transport is not None
        channel = transport.open_session(timeout=max(1.0, deadline - time.monotonic()))
        channel.exec_command(command)
        if stdin is not None:
            channel.sendall(stdin)
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            if channel.recv_ready():
                out += channel.recv(65536)
                continue
            if channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
                continue
            if channel.exit_status_ready() and not channel.recv_ready() \
                    and not channel.recv_stderr_ready() and channel.eof_received:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                channel.close()
                raise SshError(f"[{host}:{port}] command did not finish within {timeout:.0f}s")
            select.select([channel], [], [], min(remaining, 0.5))
        rc = channel.recv_exit_status()
        return rc, out.decode(errors="replace"), err.decode(errors="replace")
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise SshError(f"[{host}:{port}] command failed: {exc}") from exc
    finally:
        client.close()


def interactive_shell(host: str, user: str, pkey_pem: str, *, known_hosts: Path, port: int = 22,
                      stdin_fd: int | None = None, stdout_fd: int | None = None) -> int:
    """A login shell on a real PTY (for ``lab ssh``); return its exit status.

    The local terminal is put in raw mode while the session lasts, window size
    changes are forwarded, and everything typed goes to the guest unchanged.
    """
    in_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    out_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
    try:
        client = connect(host, user, pkey_pem, known_hosts=known_hosts, port=port)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise SshError(f"[{host}:{port}] cannot connect: {exc}") from exc
    try:
        cols, rows = _window_size(out_fd)
        channel = client.invoke_shell(term=os.environ.get("TERM", "xterm-256color"),
                                      width=cols, height=rows)
        with _raw_terminal(in_fd), _forward_resize(channel, out_fd):
            _pump(channel, in_fd, out_fd)
        return channel.recv_exit_status()
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise SshError(f"[{host}:{port}] shell failed: {exc}") from exc
    finally:
        client.close()


def _pump(channel: paramiko.Channel, in_fd: int, out_fd: int) -> None:
    stdin_open = True
    while True:
        readers: list[paramiko.Channel | int] = [channel]
        if stdin_open:
            readers.append(in_fd)
        ready, _, _ = select.select(readers, [], [], 1.0)
        if channel in ready:
            data = channel.recv(65536)
            if not data:
                return
            _write_all(out_fd, data)
        if in_fd in ready:
            data = os.read(in_fd, 4096)
            if data:
                channel.sendall(data)
            else:  # end of input: let the remote side finish
                stdin_open = False
                channel.shutdown_write()
        if channel.exit_status_ready() and not channel.recv_ready():
            return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _window_size(fd: int) -> tuple[int, int]:
    """(columns, rows) of the terminal on ``fd``; 80x24 when it is not one."""
    try:
        rows, cols = termios.tcgetwinsize(fd)
    except (OSError, termios.error):
        return 80, 24
    return (cols or 80), (rows or 24)


@contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextmanager
def _forward_resize(channel: paramiko.Channel, fd: int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or not os.isatty(fd):
        yield
        return

    def resize(_signum: int, _frame: FrameType | None) -> None:
        cols, rows = _window_size(fd)
        with suppress(paramiko.SSHException, OSError):
            channel.resize_pty(width=cols, height=rows)

    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


__all__ = [
    "HostKeyMismatch", "SshError", "connect", "forget_host_key", "generate_keypair",
    "interactive_shell", "load_private_key", "run_command", "wait_for_ssh",
]
