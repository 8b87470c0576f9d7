"""The narrow port to libvirt: ensure a domain is defined, powered, absent; observe it.

Every libvirt error is translated here into ``HypervisorError`` (permanent:
only a spec change or an operator can clear it), ``TransientHypervisorError``
(retry later: libvirtd restarting, a lock held, a connection lost) or
``DomainNotFound``. A ``libvirt.libvirtError`` never leaves this package.

The connection is opened on first use and opened again when it has died
(libvirtd restarted); an operation that failed because the connection broke
is retried once on a fresh connection (every operation here is idempotent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Literal, TypeVar

import libvirt

from hypervisor.domain import (
    DEFAULT_TEMPLATES_DIR,
    DomainObservation,
    DomainSpec,
    owned_differences,
    owned_view,
    parse_observation,
    render_domain_xml,
)

LOG = logging.getLogger(__name__)

T = TypeVar("T")
PowerState = Literal["running", "shutoff", "paused"]
POWER_STATES = ("running", "shutoff", "paused")
POLL_INTERVAL = 0.2

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
_ACTIVE_STATES = frozenset({"running", "blocked", "paused", "shutdown", "pmsuspended"})

# Errors that say the connection itself is gone (libvirtd restarted or not
# running): open a new one and try again. A VIR_ERR_SYSTEM_ERROR from another
# error domain is a failed system call on the daemon's side (a missing disk
# file, say), which a new connection does not cure.
_CONNECTION_CODES = frozenset({libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN,
                               libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_AUTH_UNAVAILABLE})
_CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
# Worth retrying later on the same connection.
_TRANSIENT_CODES = frozenset({
    libvirt.VIR_ERR_OPERATION_TIMEOUT,  # "cannot acquire state change lock"
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_OPERATION_ABORTED,
    libvirt.VIR_ERR_RESOURCE_BUSY,
})


def _connection_error(exc: libvirt.libvirtError) -> bool:
    return error_code(exc) in _CONNECTION_CODES or exc.get_error_domain() in _CONNECTION_DOMAINS


class HypervisorError(RuntimeError):
    """A libvirt operation failed; retrying the same thing will not help."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientHypervisorError(HypervisorError):
    """A libvirt operation failed for now (daemon restarting, lock held, ...)."""


class DomainNotFound(HypervisorError):
    """No domain of that name."""


class StorageNotFound(HypervisorError):
    """No storage pool or volume of that name."""


def translate(exc: libvirt.libvirtError, what: str) -> HypervisorError:
    """Our exception for a libvirt error met while doing ``what``."""
    code = exc.get_error_code()
    message = f"{what}: {exc.get_error_message() or exc}"
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(message, code=code)
    if code in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL):
        return StorageNotFound(message, code=code)
    if code in _TRANSIENT_CODES or _connection_error(exc):
        return TransientHypervisorError(message, code=code)
    return HypervisorError(message, code=code)


def error_code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code() or 0)


_handler_lock = threading.Lock()
_handler_installed = False


def _quiet_libvirt() -> None:
    """libvirt prints every error to stderr unless a handler is registered; we raise instead."""
    global _handler_installed
    with _handler_lock:
        if not _handler_installed:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _handler_installed = True


class LibvirtDriver:
    """Domains on one libvirt connection (``qemu:///system`` by default)."""

    def __init__(self, uri: str = "qemu:///system", *,
                 templates_dir: Path = DEFAULT_TEMPLATES_DIR) -> None:
        self.uri = uri
        self.templates_dir = templates_dir
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            conn = self._conn
            if conn is not None:
                if _alive(conn):
                    return conn
                LOG.info("libvirt connection to %s died; reconnecting", self.uri)
                self._drop_locked()
            _quiet_libvirt()
            self._conn = libvirt.open(self.uri)
            return self._conn

    def _drop_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(libvirt.libvirtError):
                conn.close()

    def _drop(self) -> None:
        with self._lock:
            self._drop_locked()

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        self._drop()

    def __enter__(self) -> LibvirtDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``fn(connection)``, translating libvirt errors; retry once on a lost connection.

        For this package's own modules (``hypervisor.disks``); ``fn`` must be
        safe to run twice.
        """
        for attempt in (1, 2):
            conn = None
            try:
                conn = self._connection()
                return fn(conn)
            except libvirt.libvirtError as exc:
                if not (_connection_error(exc) or (conn is not None and not _alive(conn))):
                    raise translate(exc, what) from None
                self._drop()
                if attempt == 2:
                    raise TransientHypervisorError(
                        f"{what}: no libvirt connection to {self.uri}: {exc.get_error_message()}",
                        code=error_code(exc)) from None
                LOG.info("%s: libvirt connection lost (%s); retrying once", what,
                         exc.get_error_message())
        raise AssertionError("unreachable")

    # -- the port ------------------------------------------------------

    def ensure_defined(self, spec: DomainSpec) -> bool:
        """Define the domain, or redefine it when what we own differs; return whether it changed.

        A running domain picks the new definition up at its next cold start
        (``observe().restart_pending`` says so).
        """
        xml = render_domain_xml(spec, templates_dir=self.templates_dir)

        def apply(conn: libvirt.virConnect) -> bool:
            dom = _lookup(conn, spec.name)
            if dom is not None:
                current = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                current_uuid = owned_view(current)["uuid"]
                if current_uuid != spec.uuid:
                    raise HypervisorError(f"[{spec.name}] a domain of that name already exists "
                                          f"with uuid {current_uuid}, not {spec.uuid}")
                changed = owned_differences(xml, current)
                if not changed and dom.isPersistent():
                    return False
                LOG.info("[%s] redefining domain: %s differ", spec.name,
                         ", ".join(changed) or "persistence")
            else:
                LOG.info("[%s] defining domain", spec.name)
            conn.defineXML(xml)
            return True

        return self.call(f"define domain {spec.name}", apply)

    def ensure_power(self, name: str, state: PowerState, graceful_timeout: float = 60.0) -> bool:
        """Bring the domain to ``state``; return whether anything was done.

        'shutoff' asks the guest to shut down (ACPI) and destroys it when it
        has not stopped after ``graceful_timeout`` seconds (0: destroy at
        once); 'paused' suspends it (starting it paused when it is off).
        Raises ``DomainNotFound`` when it is not defined.
        """
        if state not in POWER_STATES:
            raise ValueError(f"state must be one of {POWER_STATES}, not {state!r}")
        return self.call(f"power {state} domain {name}",
                         lambda conn: self._power(conn, name, state, graceful_timeout))

    def _power(self, conn: libvirt.virConnect, name: str, state: PowerState,
               graceful_timeout: float) -> bool:
        dom = conn.lookupByName(name)
        current = _state(dom)
        if state == "running":
            if current in ("running", "blocked"):
                return False
            if current == "paused":
                LOG.info("[%s] resuming", name)
                dom.resume()
            elif current == "pmsuspended":
                LOG.info("[%s] waking up from guest suspend", name)
                dom.pMWakeup(0)
            elif current in ("shutoff", "crashed"):
                if dom.isActive():
                    _destroy(dom)
                LOG.info("[%s] starting", name)
                dom.create()
            else:
                raise TransientHypervisorError(f"[{name}] is {current}; cannot start it now")
            return True
        if state == "paused":
            if current == "paused":
                return False
            if current in ("running", "blocked"):
                LOG.info("[%s] pausing", name)
                dom.suspend()
            elif current in ("shutoff", "crashed"):
                if dom.isActive():
                    _destroy(dom)
                LOG.info("[%s] starting paused", name)
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            else:
                raise TransientHypervisorError(f"[{name}] is {current}; cannot pause it now")
            return True
        # shutoff
        if not dom.isActive():
            return False
        if current in ("running", "blocked", "shutdown") and graceful_timeout > 0:
            LOG.info("[%s] shutting down (ACPI), up to %.0fs", name, graceful_timeout)
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                if error_code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:  # stopped meanwhile
                    raise
            deadline = time.monotonic() + graceful_timeout
            while dom.isActive() and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)
            if not dom.isActive():
                return True
            LOG.info("[%s] did not shut down within %.0fs; destroying", name, graceful_timeout)
        else:
            LOG.info("[%s] destroying (was %s)", name, current)
        _destroy(dom)
        return True

    def ensure_absent(self, name: str) -> bool:
        """Stop and undefine the domain (with managed save, snapshots, NVRAM); idempotent."""

        def remove(conn: libvirt.virConnect) -> bool:
            dom = _lookup(conn, name)
            if dom is None:
                return False
            try:
                if dom.isActive():
                    LOG.info("[%s] destroying", name)
                    _destroy(dom)
                if dom.isPersistent():
                    LOG.info("[%s] undefining", name)
                    _undefine(dom)
            except libvirt.libvirtError as exc:
                if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:  # gone meanwhile
                    return True
                raise
            return True

        return self.call(f"remove domain {name}", remove)

    def observe(self, name: str) -> DomainObservation | None:
        """What libvirt says about the domain now, or None when there is none."""

        def look(conn: libvirt.virConnect) -> DomainObservation | None:
            dom = _lookup(conn, name)
            if dom is None:
                return None
            try:
                state = _state(dom)
                persistent = bool(dom.isPersistent())
                live = dom.XMLDesc(0)
                inactive = None
                if persistent and state in _ACTIVE_STATES:
                    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            except libvirt.libvirtError as exc:
                if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return parse_observation(live, state=state, persistent=persistent,
                                     inactive_xml=inactive)

        return self.call(f"observe domain {name}", look)

    def list_domains(self, prefix: str) -> list[str]:
        """Names of all domains (running or not) that start with ``prefix``, sorted."""
        return self.call("list domains", lambda conn: sorted(
            dom.name() for dom in conn.listAllDomains(0) if dom.name().startswith(prefix)))


# -- helpers -----------------------------------------------------------

def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive() == 1)
    except libvirt.libvirtError:
        return False


def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _state(dom: libvirt.virDomain) -> str:
    code = dom.state(0)[0]
    return STATE_NAMES.get(code, "nostate")


def _destroy(dom: libvirt.virDomain) -> None:
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:
        # VIR_ERR_OPERATION_INVALID: "domain is not running" - it stopped meanwhile.
        if error_code(exc) != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
            raise


_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)


def _undefine(dom: libvirt.virDomain) -> None:
    try:
        dom.undefineFlags(_UNDEFINE_FLAGS)
    except libvirt.libvirtError as exc:
        if error_code(exc) not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG,
                                   libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):
            raise
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
