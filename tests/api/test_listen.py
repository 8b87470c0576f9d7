"""Every port the lab listens on queues a burst of clients instead of dropping their SYNs
(issue 17: cheroot's default backlog of 5 made 500 simultaneous GETs wait in SYN retries).

The figure that matters (1,000 simultaneous clients, their connect times and errors) is
measured by ``benchmarks/api.py``; here the backlog of each listening socket is read
back from the kernel (``ss -ltn``: a listening socket's Send-Q is its backlog)."""

from __future__ import annotations

import os
import re
import subprocess

from tests.support.listeners import process_group
from tests.support.server import LabServer

MIN_BACKLOG = 128


def _listening(pids: set[int]) -> dict[str, int]:
    """``address:port`` → backlog of the TCP sockets those processes listen on."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    sockets = {}
    for line in out.splitlines():
        fields = line.split()
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            sockets[fields[3]] = int(fields[2])
    return sockets


def test_every_listening_port_has_a_backlog_for_a_burst(lab: LabServer) -> None:
    assert lab.proc is not None
    sockets = _listening(process_group(os.getpgid(lab.proc.pid)))
    ports = {address.rsplit(":", 1)[1] for address in sockets}
    assert {str(lab.api_port), str(lab.dashboard_port)} <= ports, sockets
    assert all(backlog >= MIN_BACKLOG for backlog in sockets.values()), sockets
