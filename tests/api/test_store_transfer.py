"""Moving a lab's store between SQLite and PostgreSQL (issue 13): nothing lost, the same
uids and resourceVersions, users and their tokens, and a refused copy changes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from appliance.store.transfer import TransferError, copy_store
from tests.support.postgres import PostgresServer
from tests.support.server import LabServer


def kubectl(server: LabServer, *args: str, input: str | None = None) -> str:
    r = subprocess.run(["kubectl", "--kubeconfig", str(server.admin_kubeconfig), *args],
                       capture_output=True, text=True, timeout=60, input=input)
    assert r.returncode == 0, r.stderr
    return r.stdout


def snapshot(server: LabServer) -> dict[str, tuple[str, str]]:
    """Every namespaced and cluster object the admin can list: name -> (uid, rv)."""
    out = {}
    for kind in ("namespaces", "configmaps", "secrets", "resourcequotas", "roles",
                 "rolebindings", "virtualmachineclasses"):
        for item in json.loads(kubectl(server, "get", kind, "-A", "-o", "json"))["items"]:
            meta = item["metadata"]
            out[f"{kind}/{meta.get('namespace', '')}/{meta['name']}"] = (
                meta["uid"], meta["resourceVersion"])
    return out


def test_a_lab_moves_to_postgresql_and_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = LabServer(state)
    first.start()
    try:
        kubectl(first, "create", "namespace", "moving")
        for i in range(30):
            kubectl(first, "create", "configmap", f"cm-{i}", "-n", "moving",
                    f"--from-literal=i={i}")
        kubectl(first, "create", "secret", "generic", "s", "-n", "moving",
                "--from-literal=password=hunter2")
        kubectl(first, "create", "quota", "q", "-n", "moving", "--hard=pods=3")
        first.add_user("alice", "correct-horse-battery")
        first.lab("grant", "moving", "alice", "edit")
        alice_token = first.login("alice", "correct-horse-battery")["token"]
        before = snapshot(first)
    finally:
        first.stop()

    with PostgresServer(database="moved") as pg:
        copied = copy_store(f"sqlite:///{state / 'supervisor.db'}", pg.url)
        assert copied.objects >= len(before) and copied.users >= 2 and copied.tokens >= 1
        with pytest.raises(TransferError, match="not empty"):
            copy_store(f"sqlite:///{state / 'supervisor.db'}", pg.url)

        on_pg = LabServer(state, database_url=pg.url)
        on_pg.start()
        try:
            after = snapshot(on_pg)
            assert {k: v for k, v in after.items() if k in before} == before
            data = json.loads(kubectl(on_pg, "get", "secret", "s", "-n", "moving", "-o",
                                      "json"))["data"]
            assert data["password"] == "aHVudGVyMg=="
            # alice's token from before the move still works, and so does her password
            r = subprocess.run(["kubectl", "--kubeconfig",
                                str(on_pg.kubeconfig(tmp_path / "alice.kc", alice_token,
                                                     "moving")),
                                "get", "configmap", "cm-7", "-o", "jsonpath={.data.i}"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and r.stdout == "7", r.stderr
            assert on_pg.login("alice", "correct-horse-battery")["token"]
            kubectl(on_pg, "create", "configmap", "made-on-pg", "-n", "moving")
            newest = json.loads(kubectl(on_pg, "get", "configmap", "made-on-pg", "-n",
                                        "moving", "-o", "json"))["metadata"]
            assert int(newest["resourceVersion"]) > max(int(rv) for _, rv in before.values())
            on_pg_snapshot = snapshot(on_pg)
        finally:
            on_pg.stop()

        back = tmp_path / "back"
        back.mkdir()
        copy_store(pg.url, f"sqlite:///{back / 'supervisor.db'}")
    (state / "supervisor.db").rename(state / "supervisor.db.before-move")
    (back / "supervisor.db").rename(state / "supervisor.db")
    home = LabServer(state)
    home.start()
    try:
        assert {k: v for k, v in snapshot(home).items() if k in on_pg_snapshot} \
            == on_pg_snapshot
    finally:
        home.stop()
