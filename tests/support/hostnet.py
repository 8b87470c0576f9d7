"""Keep tests that change the host's addresses apart from a browser loading pages.

Chromium aborts a page load (``net::ERR_NETWORK_CHANGED``) when an address on the host
appears or goes, as it does when libvirt makes or removes a network's bridge. ``lab test``
runs ``vagrant up lab``'s scenario beside the end-to-end tier, so the dashboard's browser
test holds this lock while it runs, and the Vagrant scenario holds it while Vagrant makes
or removes its network. An ``flock`` on a file in the temporary directory: it goes with
the process that holds it, however that process ends."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = Path(tempfile.gettempdir()) / "pacific-lab-tests-host-addresses.lock"


class HostAddressesLock:
    """The lock, held from :meth:`acquire` until :meth:`release` (which may come early)."""

    def __init__(self, path: Path = LOCK) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextmanager
def host_addresses_steady(path: Path = LOCK) -> Iterator[HostAddressesLock]:
    """No test that takes this lock changes the host's addresses meanwhile."""
    lock = HostAddressesLock(path)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
