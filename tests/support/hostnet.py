"""Keep tests that disturb the host apart from tests that would notice.

- **The host's addresses.** Chromium aborts a page load (``net::ERR_NETWORK_CHANGED``)
  when an address on the host appears or goes, as it does when libvirt makes or removes a
  network's bridge. ``lab test`` runs ``vagrant up lab``'s scenario beside the end-to-end
  tier, so the dashboard's browser test holds this lock while it runs, and the Vagrant
  scenario holds it while Vagrant makes or removes its network.
- **libvirtd.** The fault test in ``tests/e2e/test_vm_lifecycle.py`` kills libvirtd (the
  host service starts it again within seconds); a ``vagrant`` or ``virsh`` command that
  talks to it meanwhile would fail. The Vagrant scenario holds this lock shared while its
  commands run; the fault test takes it alone.

Each is an ``flock`` on a file in the temporary directory: it goes with the process that
holds it, however that process ends."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

LOCK = Path(tempfile.gettempdir()) / "pacific-lab-tests-host-addresses.lock"
LIBVIRTD_LOCK = Path(tempfile.gettempdir()) / "pacific-lab-tests-libvirtd.lock"


class HostAddressesLock:
    """A lock, held from :meth:`acquire` until :meth:`release` (which may come early);
    ``shared``: with other shared holders."""

    def __init__(self, path: Path = LOCK, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextmanager
def _held(lock: HostAddressesLock) -> Iterator[HostAddressesLock]:
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def host_addresses_steady(path: Path = LOCK) -> AbstractContextManager[HostAddressesLock]:
    """No test that takes this lock changes the host's addresses meanwhile."""
    return _held(HostAddressesLock(path))


def libvirtd_in_use(path: Path = LIBVIRTD_LOCK) -> AbstractContextManager[HostAddressesLock]:
    """Commands that talk to libvirtd run meanwhile: nobody kills it."""
    return _held(HostAddressesLock(path, shared=True))


def libvirtd_may_die(path: Path = LIBVIRTD_LOCK) -> AbstractContextManager[HostAddressesLock]:
    """No test that takes :func:`libvirtd_in_use` talks to libvirtd meanwhile."""
    return _held(HostAddressesLock(path))
