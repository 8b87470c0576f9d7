"""Leader election (issue 13): two supervisors on one PostgreSQL store, controllers in one.

Both host services are real, on loopback, sharing a real PostgreSQL database, as the
supervisor's control-plane VMs will. The Lease ``kube-system/pacific-lab-controllers``
says who leads; the controllers' own writes (a deleted namespace finalized by the
namespace controller) show where they run.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.postgres import PostgresServer
from tests.support.server import LabServer

LEASE = ("kube-system", "pacific-lab-controllers")
LEADS = re.compile(r"^(\S+ \S+) INFO appliance\.controllers\.leader: leader election: (\S+) "
                   r"leads", re.M)


def kubectl(server: LabServer, *args: str, check: bool = True) -> str:
    r = subprocess.run(["kubectl", "--kubeconfig", str(server.admin_kubeconfig), *args],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r.stdout


def holder(server: LabServer) -> str:
    lease = yaml.safe_load(kubectl(server, "get", "lease", "-n", LEASE[0], LEASE[1],
                                   "-o", "yaml"))
    return str(lease["spec"].get("holderIdentity") or "")


def log(server: LabServer) -> str:
    return server.log_path.read_text(errors="replace")


def wait(what: str, check, timeout: float) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def finalized_by(server: LabServer, namespace: str) -> bool:
    return f"[{namespace}] namespace emptied and finalized" in log(server)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabServer, LabServer]]:
    base = tmp_path_factory.mktemp("leader")
    with PostgresServer(database="leader") as pg:
        a = LabServer(base / "a", database_url=pg.url)
        b = LabServer(base / "b", database_url=pg.url)
        a.start()
        wait("a to lead", lambda: LEADS.search(log(a)) is not None, 30)
        b.start()
        try:
            yield a, b
        finally:
            for s in (a, b):
                s.stop()


def test_one_supervisor_leads_and_the_other_takes_over_when_it_dies(
        pair: tuple[LabServer, LabServer]) -> None:
    a, b = pair
    a_id = LEADS.search(log(a)).group(2)  # type: ignore[union-attr]
    assert holder(b) == a_id, "b sees a's Lease"
    assert "kube-system" in kubectl(a, "get", "ns")
    assert LEASE[1] in kubectl(b, "get", "leases", "-n", LEASE[0])
    time.sleep(5)  # several of b's retry periods
    assert LEADS.search(log(b)) is None, "b started controllers while a leads"

    # the controllers run in a only: a namespace deleted through b is finalized by a
    kubectl(b, "create", "namespace", "while-a-leads")
    kubectl(b, "delete", "namespace", "while-a-leads", "--wait=false")
    wait("a to finalize while-a-leads", lambda: finalized_by(a, "while-a-leads"), 60)
    assert not finalized_by(b, "while-a-leads")

    # a dies without a word: b takes the Lease once it has not been renewed for 15 s
    assert a.proc is not None
    a.kill(signal.SIGKILL)
    killed = time.monotonic()
    took = wait("b to lead", lambda: LEADS.search(log(b)) is not None, 40)
    assert time.monotonic() - killed >= 14, "b took the Lease before it could have expired"
    print(f"failover of the controllers: {took:.1f}s after SIGKILL")
    b_id = LEADS.search(log(b)).group(2)  # type: ignore[union-attr]
    assert holder(b) == b_id != a_id
    lease = yaml.safe_load(kubectl(b, "get", "lease", "-n", LEASE[0], LEASE[1], "-o", "yaml"))
    assert lease["spec"]["leaseTransitions"] >= 1

    kubectl(b, "create", "namespace", "while-b-leads")
    kubectl(b, "delete", "namespace", "while-b-leads", "--wait=false")
    wait("b to finalize while-b-leads", lambda: finalized_by(b, "while-b-leads"), 60)


def test_a_restarted_supervisor_waits_and_a_clean_stop_hands_over_at_once(
        pair: tuple[LabServer, LabServer]) -> None:
    a, b = pair
    b_id = holder(b)
    before = log(a).count("leads (")
    a.start()  # same state directory, same identity as before its crash
    time.sleep(8)
    assert log(a).count("leads (") == before, "a took the Lease that b keeps renewing"
    assert holder(a) == b_id

    b.stop()  # SIGTERM: b steps down and releases the Lease
    took = wait("a to lead again", lambda: log(a).count("leads (") > before, 15)
    assert took < 10, f"the hand-over took {took:.1f}s"
    assert "stopped controllers" in log(b)
    kubectl(a, "create", "namespace", "after-hand-over")
    kubectl(a, "delete", "namespace", "after-hand-over", "--wait=false")
    wait("a to finalize after-hand-over", lambda: finalized_by(a, "after-hand-over"), 60)


def test_leadership_intervals_never_overlap(pair: tuple[LabServer, LabServer]) -> None:
    """From both logs: every 'leads' of one supervisor comes after the other stopped or died."""
    a, b = pair
    events = []
    for name, server in (("a", a), ("b", b)):
        for line in log(server).splitlines():
            stamp = line[:23]
            if "leader election:" in line and " leads (" in line:
                events.append((stamp, name, "start"))
            elif "leader election:" in line and "stopped controllers" in line:
                events.append((stamp, name, "stop"))
            elif "host service ready" in line:
                events.append((stamp, name, "boot"))  # a boot ends any earlier term (crash)
    leading: set[str] = set()
    for _stamp, name, what in sorted(events):
        if what == "start":
            assert not (leading - {name}), f"{name} started while {leading} led: {events}"
            leading.add(name)
        else:
            leading.discard(name)
    assert Path(a.log_path).exists()
