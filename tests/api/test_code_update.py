"""``lab up`` after a ``git pull`` restarts a running host service onto the new code; with
the same code it leaves the service alone (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.checkout import newer_checkout
from tests.support.server import ROOT, LabServer

pytestmark = pytest.mark.api


def lab(server: LabServer, *args: str, checkout: Path = ROOT) -> str:
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", *args],
                          env={**server.env, "PYTHONPATH": str(checkout)}, cwd=checkout,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return " ".join((proc.stderr + proc.stdout).split())


def test_lab_up_restarts_the_service_only_when_the_code_changed(tmp_path: Path) -> None:
    server = LabServer(tmp_path / "state")
    pidfile = server.state_dir / "run" / "host-service.pid"
    try:
        lab(server, "up", "--skip-host-prep")
        first = pidfile.read_text().split()[0]
        again = lab(server, "up", "--skip-host-prep")
        assert "stopped to run this checkout's code" not in again
        assert pidfile.read_text().split()[0] == first

        newer = newer_checkout(tmp_path / "newer")
        out = lab(server, "up", "--skip-host-prep", checkout=newer)
        assert "host service stopped to run this checkout's code" in out
        assert pidfile.read_text().split()[0] != first
        assert "host service: running" in lab(server, "status", checkout=newer)
    finally:
        subprocess.run([sys.executable, "-m", "appliance.cli", "down"], env=server.env,
                       cwd=ROOT, capture_output=True, timeout=120)
