"""A real, throwaway PostgreSQL server for tests.

``PostgresServer`` runs Debian's packaged server binaries
(``/usr/lib/postgresql/<version>/bin``, the newest installed; installed with
``apt-get`` when missing and we are root). The cluster lives in a fresh
temporary directory; as root every binary runs as the ``postgres`` system user
through ``runuser``, since PostgreSQL refuses to run as root. Authentication is
``trust``; the server listens on 127.0.0.1 on a free port and on a private
unix socket directory. fsync and synchronous commit keep their defaults, so
crash tests (``stop("immediate")`` then ``start()``) see real recovery.

Use it as a context manager, or import the session fixture into a conftest::

    from tests.support.postgres import postgres_server  # noqa: F401

    def test_something(postgres_server):
        engine = sqlalchemy.create_engine(postgres_server.url)
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import pytest

from hypervisor.proc import ProcessError, run

LOG = logging.getLogger(__name__)

PG_ROOT = Path("/usr/lib/postgresql")
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "createdb", "dropdb")
_SYSTEM_USER = "postgres"
_CONF_FILE = "pacific-lab-test.conf"
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")

StopMode = Literal["smart", "fast", "immediate"]


class PostgresUnavailable(RuntimeError):
    """No usable PostgreSQL server binaries (and they could not be installed)."""


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def find_postgres_bin_dir(root: Path = PG_ROOT) -> Path | None:
    """The newest ``<root>/<version>/bin`` that has the server binaries, if any."""
    found: list[tuple[tuple[int, ...], Path]] = []
    if root.is_dir():
        for bin_dir in root.glob("*/bin"):
            if all((bin_dir / exe).is_file() for exe in _REQUIRED_BINARIES):
                found.append((_version_key(bin_dir.parent.name), bin_dir))
    return max(found)[1] if found else None


def ensure_postgres_bin_dir(install_if_missing: bool = True) -> Path:
    """Find the server binaries; as root, ``apt-get install postgresql`` if needed."""
    bin_dir = find_postgres_bin_dir()
    if bin_dir is not None:
        return bin_dir
    if not install_if_missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable(
            f"no PostgreSQL server binaries under {PG_ROOT}; install Debian's 'postgresql' package")
    LOG.info("installing Debian's postgresql package for the test server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update"], env=env, timeout=900)
    run(["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
        env=env, timeout=900)
    bin_dir = find_postgres_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(f"installed postgresql but found no binaries under {PG_ROOT}")
    return bin_dir


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _read_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _temp_parent() -> str:
    """Where to make the cluster directory.

    The system temporary directory, unless the ``postgres`` user could not
    reach it (as root) or it is so deep that the unix socket path would pass
    the kernel's 107-byte limit; then ``/tmp``.
    """
    parent = Path(tempfile.gettempdir())
    if len(str(parent)) > 60:
        return "/tmp"
    if os.geteuid() == 0:
        for directory in (parent, *parent.parents):
            if not directory.stat().st_mode & 0o001:  # others may not traverse it
                return "/tmp"
    return str(parent)


def _cleanup(base_dir: Path, data_dir: Path) -> None:
    """Last-resort cleanup (also run at interpreter exit): kill our server, remove files."""
    pid = _read_pid(data_dir)
    if pid is not None and _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        if not _wait_gone(pid, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base_dir, ignore_errors=True)


class PostgresServer:
    """A throwaway PostgreSQL cluster with one database, for tests.

    ``url`` is a SQLAlchemy URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/DB``)
    and ``dsn`` a libpq conninfo string for psycopg. ``start`` creates the
    cluster the first time; ``stop`` keeps its files (``stop("immediate")``
    is a crash: the next ``start`` runs WAL recovery); ``close`` (and leaving
    the ``with`` block) stops the server and removes every file.
    """

    def __init__(self, *, database: str = "lab_test", bin_dir: Path | None = None,
                 install_if_missing: bool = True, shared_buffers: str = "16MB",
                 settings: Mapping[str, str] | None = None, timeout: float = 60.0) -> None:
        if not _NAME_RE.fullmatch(database):
            raise ValueError(f"database name must match {_NAME_RE.pattern}: {database!r}")
        self.database = database
        self.user = _SYSTEM_USER
        self.host = "127.0.0.1"
        self.port = 0
        self._bin_dir = bin_dir
        self._install = install_if_missing
        self._settings = {"shared_buffers": shared_buffers, **(settings or {})}
        self._timeout = timeout
        self._base: Path | None = None
        self._finalizer: weakref.finalize[[Path, Path], PostgresServer] | None = None
        self._initialised = False

    # -- paths and addresses ----------------------------------------------------
    @property
    def base_dir(self) -> Path:
        if self._base is None:
            raise RuntimeError("the PostgreSQL test server has not been started")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_postgres_bin_dir(self._install)
        return self._bin_dir

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def dsn(self) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={self.database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        if self._base is None:
            return None
        pid = _read_pid(self.data_dir)
        return pid if pid is not None and _alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- running the binaries ------------------------------------------------------
    def _as_owner(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", self.user, "--"]

    def _run(self, tool: str, *args: str, timeout: float | None = None) -> str:
        cmd = [*self._as_owner(), str(self.bin_dir / tool), *args]
        return run(cmd, cwd=str(self.base_dir), timeout=timeout or self._timeout).stdout

    def _make_base_dir(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="pacific-pg-", dir=_temp_parent()))
        self._base = base
        self._finalizer = weakref.finalize(self, _cleanup, base, base / "data")
        (base / "sock").mkdir(mode=0o700)
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(self.user)
            except KeyError:
                raise PostgresUnavailable(f"no '{self.user}' system user to run the server as")\
                    from None
            for path in (base, base / "sock"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name

    def _write_config(self) -> None:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "logging_collector": "off",
            **self._settings,
        }
        lines = [f"{key} = '{value}'" for key, value in settings.items()]
        conf = self.data_dir / _CONF_FILE
        conf.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            owner = pwd.getpwnam(self.user)
            os.chown(conf, owner.pw_uid, owner.pw_gid)

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
                  "--encoding=UTF8", "--locale=C")
        with (self.data_dir / "postgresql.conf").open("a") as main_conf:
            main_conf.write(f"\ninclude = '{_CONF_FILE}'\n")

    def _pg_ctl_start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                  "-t", str(int(self._timeout)), "-s", "start", timeout=self._timeout + 30)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Self:
        """Start the server (creating the cluster and database the first time)."""
        if self.running:
            return self
        first = not self._initialised
        if first:
            _ = self.bin_dir  # find (or install) the binaries before anything else
            self._make_base_dir()
            self._initdb()
            self._initialised = True
            self.port = free_port(self.host)
        for attempt in range(3):
            self._write_config()
            try:
                self._pg_ctl_start()
                break
            except ProcessError as exc:
                log = self._log_tail()
                if attempt < 2 and "could not bind" in log and first:
                    LOG.info("port %d was taken, trying another", self.port)
                    self.port = free_port(self.host)
                    continue
                raise ProcessError(exc.cmd, exc.rc, exc.stdout, exc.stderr + "\n" + log,
                                   reason=exc.reason) from exc
        if first:
            self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port),
                      "-U", self.user, self.database)
        LOG.info("PostgreSQL test server up at %s (pid %s)", self.url, self.pid)
        return self

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server, keeping its files; ``"immediate"`` simulates a crash."""
        pid = self.pid
        if pid is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w",
                      "-t", str(int(self._timeout)), "-s", "stop", timeout=self._timeout + 30)
        except ProcessError:
            if mode != "immediate":
                LOG.warning("pg_ctl stop -m %s failed; stopping immediately", mode)
                self.stop("immediate")
                return
            raise
        if not _wait_gone(pid, self._timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop (in ``mode``) and start again on the same port."""
        self.stop(mode)
        self.start()

    def create_database(self, name: str) -> str:
        """Create another database on this server and return its SQLAlchemy URL."""
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"database name must match {_NAME_RE.pattern}: {name!r}")
        self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user,
                  name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database created with :meth:`create_database` (its sessions are ended)."""
        self._run("dropdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user,
                  "--if-exists", "--force", name)

    def close(self) -> None:
        """Stop the server and remove all its files."""
        if self._base is None:
            return
        try:
            self.stop("fast")
        finally:
            if self._finalizer is not None:
                self._finalizer()  # kills a server that would not stop; removes the files
            self._base = None
            self._initialised = False

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole test session (import it into a conftest)."""
    with PostgresServer() as server:
        yield server

