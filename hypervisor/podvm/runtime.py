"""Starting, stopping and listing pod VMs through libvirt.

Pod VMs are *transient* domains (``createXML``): libvirt forgets them when
they stop, which they do by themselves when their pod is done (the init
powers off; ``on_poweroff``/``on_reboot``/``on_crash`` all destroy). Every
libvirt call goes through ``LibvirtDriver.call`` so that errors are
translated in one place (``HypervisorError``, ``TransientHypervisorError``,
``DomainNotFound``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import libvirt

from hypervisor.libvirt_driver import HypervisorError, LibvirtDriver
from hypervisor.podvm.channel import CONTROL_TIMEOUT, ControlError, send_control
from hypervisor.podvm.domain import PodVmSpec, render_podvm_xml

LOG = logging.getLogger(__name__)

_ACTIVE = frozenset({libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED,
                     libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED,
                     libvirt.VIR_DOMAIN_SHUTDOWN})


class PodVmRuntime:
    """Pod VMs on one libvirt connection."""

    def __init__(self, driver: LibvirtDriver) -> None:
        self.driver = driver

    def start(self, spec: PodVmSpec) -> bool:
        """Create and start the pod VM; return False when it already runs (same uuid).

        The console, event and output logs are truncated by the start (the
        caller's saved offsets go back to 0). A stopped persistent domain of
        the same name is an error: pod VM names must not collide with VMs.
        """
        xml = render_podvm_xml(spec, templates_dir=self.driver.templates_dir)

        def create(conn: libvirt.virConnect) -> bool:
            dom = _lookup(conn, spec.name)
            if dom is not None:
                if dom.UUIDString().lower() != spec.uuid:
                    raise HypervisorError(f"[{spec.name}] a domain of that name exists with uuid "
                                          f"{dom.UUIDString()}, not {spec.uuid}")
                if dom.isActive():
                    return False
                raise HypervisorError(f"[{spec.name}] a defined (persistent) domain of that name "
                                      "exists; pod VMs are transient")
            LOG.info("[%s] starting pod VM", spec.name)
            conn.createXML(xml, 0)
            return True

        return self.driver.call(f"start pod VM {spec.name}", create)

    def terminate(self, spec_or_socket: PodVmSpec | Path, *, grace_seconds: int | None = None,
                  timeout: float = CONTROL_TIMEOUT) -> None:
        """Ask the pod init to stop its containers (SIGTERM, SIGKILL after the grace
        period: ``grace_seconds``, or the pod's terminationGracePeriodSeconds) and
        power off.

        Returns once the init has acknowledged the message (at once for a
        running pod; a VM still booting answers when its init runs, ~2-4 s
        under TCG). The VM then reports ``terminating``, ``exited`` per
        container and ``done``, and goes away by itself. Raises
        ``ControlError`` when the VM is not there or does not answer within
        ``timeout`` seconds (``kill()`` it then).
        """
        socket_path = (spec_or_socket.control_socket if isinstance(spec_or_socket, PodVmSpec)
                       else Path(spec_or_socket))
        LOG.info("[%s] TERM (grace %s)", socket_path.name,
                 "from the pod" if grace_seconds is None else f"{grace_seconds}s")
        send_control(socket_path, "TERM", grace_seconds=grace_seconds, timeout=timeout)

    def kill(self, name: str) -> bool:
        """Destroy the pod VM at once; return whether it was running (idempotent)."""

        def destroy(conn: libvirt.virConnect) -> bool:
            dom = _lookup(conn, name)
            if dom is None or not dom.isActive():
                return False
            LOG.info("[%s] destroying pod VM", name)
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                # It stopped by itself meanwhile.
                if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN,
                                            libvirt.VIR_ERR_OPERATION_INVALID):
                    return False
                raise
            return True

        return self.driver.call(f"kill pod VM {name}", destroy)

    def running(self, name: str) -> bool:
        """Whether the pod VM is running (a stopped transient domain no longer exists)."""

        def look(conn: libvirt.virConnect) -> bool:
            dom = _lookup(conn, name)
            if dom is None:
                return False
            try:
                return dom.state(0)[0] in _ACTIVE
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise

        return self.driver.call(f"look up pod VM {name}", look)

    def list(self, prefix: str) -> list[str]:
        """Names of the running pod VMs (and any other domains) starting with ``prefix``."""
        return self.driver.call("list pod VMs", lambda conn: sorted(
            dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            if dom.name().startswith(prefix)))


def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


__all__ = ["ControlError", "PodVmRuntime"]
