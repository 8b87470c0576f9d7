"""The lock that keeps a browser test and Vagrant's network changes apart
(``tests.support.hostnet``): one holder at a time, across processes, released early on
request and when its holder dies."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.hostnet import HostAddressesLock, host_addresses_steady

HOLD = ("import sys, time\n"
        "from pathlib import Path\n"
        "from tests.support.hostnet import HostAddressesLock\n"
        "lock = HostAddressesLock(Path(sys.argv[1])); lock.acquire()\n"
        "print('held', flush=True); time.sleep(60)\n")


def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    got = threading.Event()
    with host_addresses_steady(path) as first:
        def second() -> None:
            with host_addresses_steady(path):
                got.set()

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        assert not got.wait(0.5)
        first.release()  # early, as the Vagrant test does once the domain starts
        assert got.wait(10)
    thread.join(10)


def test_the_lock_goes_with_a_killed_holder(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=root,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        proc.kill()
        proc.wait(10)
        started = time.monotonic()
        lock = HostAddressesLock(path)
        lock.acquire()
        lock.release()
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_libvirtd_users_share_and_its_killer_waits_for_them(tmp_path: Path) -> None:
    """The Vagrant scenario's commands hold libvirtd's lock together; the fault test that
    kills libvirtd gets it only when none of them holds it."""
    from tests.support.hostnet import libvirtd_in_use, libvirtd_may_die

    path = tmp_path / "libvirtd.lock"
    got = threading.Event()
    with libvirtd_in_use(path), libvirtd_in_use(path):  # two users at once
        def killer() -> None:
            with libvirtd_may_die(path):
                got.set()

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        assert not got.wait(0.5)
    assert got.wait(10)
    thread.join(10)
