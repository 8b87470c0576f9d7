"""Distribution (``docker-registry``) as a supervised child of the host service.

The registry listens on a unix socket in the run directory (mode 0700), so
only the registry front in the same service reaches it: every request from
outside passes the front's checks first, and Distribution checks each
request's token itself. If the process dies it is started again (with a
growing pause, so a registry that cannot start does not spin). A registry left
running by a host service that was killed is found by its pid file and stopped
before a new one starts.

Garbage collection needs a registry that cannot write: ``maintenance()``
restarts it read-only (pulls go on, pushes get Distribution's read-only error
for those seconds), runs the work, and restarts it writable.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from appliance.registry import ISSUER, SERVICE, TOKEN_PATH
from appliance.util.files import write_atomic

LOG = logging.getLogger(__name__)
BINARY = "docker-registry"
START_TIMEOUT_S = 20.0
GC_TIMEOUT_S = 600.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when the thread that started it ends (the service is gone)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class RegistryDaemon:
    def __init__(self, registry_dir: Path, run_dir: Path, log_path: Path, realm_host: str,
                 binary: str = BINARY) -> None:
        self.dir = registry_dir
        self.storage_root = registry_dir / "data"
        self.cert_path = registry_dir / "token.crt"
        self.socket_dir = run_dir / "registry"
        self.socket_path = self.socket_dir / "registry.sock"
        self.pidfile = run_dir / "registry.pid"
        self.log_path = log_path
        self.realm = f"https://{realm_host}{TOKEN_PATH}"
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()  # held while (re)starting
        self._readonly = False
        self.restarts = 0

    # -- configuration -----------------------------------------------------------------

    def _http_secret(self) -> str:
        path = self.dir / "http-secret"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd) as f:
                value = f.read(200).strip()
            if len(value) >= 32:
                return value
        except OSError:
            pass
        value = secrets.token_hex(32)
        write_atomic(path, value.encode(), 0o600)
        return value

    def config(self, readonly: bool) -> dict[str, Any]:
        return {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_root)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": True, "age": "24h",
                                                  "interval": "1h", "dryrun": False},
                                "readonly": {"enabled": readonly}},
                "redirect": {"disable": True},
            },
            # On SIGTERM (a restart for garbage collection) requests under way finish first.
            "http": {"net": "unix", "addr": str(self.socket_path), "draintimeout": "30s",
                     "secret": self._http_secret(),
                     "headers": {"X-Content-Type-Options": ["nosniff"]}},
            "auth": {"token": {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                               "rootcertbundle": str(self.cert_path)}},
        }

    def config_path(self, readonly: bool) -> Path:
        return self.dir / ("config-readonly.yml" if readonly else "config.yml")

    def _write_config(self, readonly: bool) -> Path:
        path = self.config_path(readonly)
        write_atomic(path, yaml.safe_dump(self.config(readonly), sort_keys=False).encode(),
                     0o600)
        return path

    # -- process -----------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.storage_root.mkdir(exist_ok=True, mode=0o700)
            # garbage-collect fails on a registry that has never stored anything
            for sub in ("repositories", "blobs"):
                (self.storage_root / "docker/registry/v2" / sub).mkdir(
                    parents=True, exist_ok=True, mode=0o700)
            self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.socket_dir, 0o700)
            self._stop_stale()
            self._spawn(readonly=False)

    def _spawn(self, readonly: bool) -> None:
        config = self._write_config(readonly)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen([self.binary, "serve", str(config)],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          close_fds=True, preexec_fn=_die_with_parent)
        finally:
            log.close()
        self._readonly = readonly
        write_atomic(self.pidfile, f"{self._proc.pid}\n".encode(), 0o644)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self._proc.returncode}; "
                                   f"see {self.log_path}")
            with contextlib.suppress(OSError), \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(self.socket_path))
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.binary} did not listen on {self.socket_path} within "
                           f"{START_TIMEOUT_S:.0f}s; see {self.log_path}")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def _stop_stale(self) -> None:
        """Stop a registry a previous host service left behind (killed before it could)."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return
        if len(argv) >= 3 and Path(argv[0].decode()).name == self.binary and \
                argv[2].decode().startswith(str(self.dir)):
            LOG.info("stopping the registry (pid %d) a previous service left running", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)

    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def supervise(self, stop: threading.Event) -> None:
        """Restart the registry whenever it exits, until ``stop``."""
        pause = 1.0
        while not stop.wait(1.0):
            with self._lock:
                proc = self._proc
                if proc is None or proc.poll() is None:
                    continue
                LOG.warning("%s exited with %s; starting it again in %.0fs", self.binary,
                            proc.returncode, pause)
            if stop.wait(pause):
                break
            with self._lock:
                if self._proc is proc:
                    try:
                        self._spawn(self._readonly)
                        self.restarts += 1
                        pause = 1.0
                    except (OSError, RuntimeError) as exc:
                        LOG.error("registry restart failed: %s", exc)
                        pause = min(pause * 2, 60.0)
        self.stop()

    def stop(self) -> None:
        with self._lock:
            self._terminate()
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()

    # -- maintenance -------------------------------------------------------------------

    @contextlib.contextmanager
    def maintenance(self) -> Iterator[None]:
        """Run the block with the registry read-only, then make it writable again."""
        with self._lock:
            self._terminate()
            self._spawn(readonly=True)
            try:
                yield
            finally:
                self._terminate()
                self._spawn(readonly=False)

    def garbage_collect(self) -> str:
        """Delete blobs no manifest references. Call inside ``maintenance()``."""
        result = subprocess.run(
            [self.binary, "garbage-collect", "--delete-untagged",
             str(self.config_path(True))], capture_output=True, text=True, timeout=GC_TIMEOUT_S,
            check=False)
        if result.returncode != 0:
            raise RuntimeError(f"garbage-collect failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-400:]}")
        deleted = sum(1 for line in result.stdout.splitlines() if "blob eligible for deletion"
                      in line or "Deleting blob" in line)
        return f"{deleted} blob(s) deleted"
