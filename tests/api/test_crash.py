"""kill -9 of the host service during a stream of writes loses no acknowledged
write and corrupts nothing; its keeper starts it again with nobody touching it (a host
without systemd, as here), `lab status` counts the restart, and `lab down` stops it for
good."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.server import ROOT, LabServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.api


def _lab(server: LabServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], env=server.env,
                          capture_output=True, text=True, cwd=ROOT, timeout=180)


def _session(server: LabServer) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = server.ca_file
    s.headers["Authorization"] = "Bearer " + server.admin_token()
    return s


def test_kill_9_mid_writes_loses_nothing(tmp_path: Path) -> None:
    server = LabServer(tmp_path / "state")
    first = _lab(server, "up", "--skip-host-prep")
    assert first.returncode == 0, first.stderr
    assert "password:" in first.stdout  # shown once, on the first start
    assert f"https://127.0.0.1:{server.api_port}" in first.stdout
    assert str(server.admin_kubeconfig) in first.stdout
    pidfile = server.state_dir / "run" / "host-service.pid"
    keeper_state = server.state_dir / "run" / "host-service.keeper.json"
    try:
        s = _session(server)
        r = s.post(server.url + "/api/v1/namespaces", json={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "crash"}})
        assert r.status_code == 201, r.text
        acked: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(n: int) -> None:
            with _session(server) as ws:
                i = 0
                while not stop.is_set():
                    name = f"w{n}-{i}"
                    i += 1
                    try:
                        resp = ws.post(server.url + "/api/v1/namespaces/crash/configmaps",
                                       json={"apiVersion": "v1", "kind": "ConfigMap",
                                             "metadata": {"name": name},
                                             "data": {"i": str(i)}}, timeout=10)
                    except requests.RequestException:
                        return  # the server died under us
                    if resp.status_code == 201:
                        with lock:
                            acked.append(name)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        keeper = int(pidfile.read_text().split()[0])
        service = json.loads(keeper_state.read_text())["service_pid"]
        assert service != keeper
        os.kill(service, signal.SIGKILL)
        killed = time.monotonic()
        stop.set()
        for t in threads:
            t.join(30)
        assert len(acked) >= 150

        # Back by itself: the keeper started the service again.
        def answers() -> bool:
            try:
                return requests.get(server.url + "/readyz", verify=server.ca_file,
                                    timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for("the API to answer again by itself", answers, 60, 0.1)
        print(f"the API answered again {time.monotonic() - killed:.1f} s after kill -9")
        assert int(pidfile.read_text().split()[0]) == keeper
        assert json.loads(keeper_state.read_text())["service_pid"] != service
        status = _lab(server, "status")
        assert "restarts: 1 (last: killed by SIGKILL" in status.stdout, status.stdout
        # The database is intact.
        db = sqlite3.connect(server.state_dir / "supervisor.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        second = _lab(server, "up", "--skip-host-prep")
        assert second.returncode == 0, second.stderr
        assert "password:" not in second.stdout
        assert int(pidfile.read_text().split()[0]) == keeper  # `lab up` left it alone
        s = _session(server)
        listed = s.get(server.url + "/api/v1/namespaces/crash/configmaps").json()
        stored = {i["metadata"]["name"] for i in listed["items"]}
        missing = set(acked) - stored
        assert not missing, f"{len(missing)} acknowledged writes lost: {sorted(missing)[:5]}"
        rvs = [int(i["metadata"]["resourceVersion"]) for i in listed["items"]]
        assert len(rvs) == len(set(rvs))
        # It keeps working: a write after the restart gets a newer revision.
        r = s.post(server.url + "/api/v1/namespaces/crash/configmaps", json={
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}})
        assert r.status_code == 201
        assert int(r.json()["metadata"]["resourceVersion"]) > max(rvs)
        status = _lab(server, "status")
        assert status.returncode == 0 and "running" in status.stdout
        logs = _lab(server, "logs", "-n", "200")
        assert "host service ready" in logs.stdout
    finally:
        down = _lab(server, "down")
        assert down.returncode == 0, down.stderr
    assert _lab(server, "status").returncode == 3
    assert not keeper_state.exists()
    time.sleep(1)
    assert _lab(server, "status").returncode == 3  # stopped for good: nothing came back
