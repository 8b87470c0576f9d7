"""A control-plane VM as a Node: role label, taint, facts and live annotations."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from appliance.agent.agent import CONTROL_PLANE_TAINT, node_object
from appliance.controllers.scheduler import host_rooms
from appliance.controlplane import node


def test_a_control_plane_node_is_labelled_and_tainted() -> None:
    facts = node.vm_facts("pacific-cp-1", "198.18.0.6")
    obj = node_object(facts, "control-plane")
    labels = obj["metadata"]["labels"]
    assert "node-role.kubernetes.io/control-plane" in labels
    assert "node-role.kubernetes.io/host" not in labels
    assert obj["spec"]["taints"] == [CONTROL_PLANE_TAINT]
    assert obj["status"]["addresses"][0] == {"type": "InternalIP", "address": "198.18.0.6"}
    host = node_object({"hostname": "h1"})
    assert "node-role.kubernetes.io/host" in host["metadata"]["labels"]
    assert "taints" not in host["spec"]
    with pytest.raises(ValueError, match="node role"):
        node_object(facts, "worker")


def test_a_host_in_the_host_role_publishes_its_log_endpoint() -> None:
    """Its address in the appliance network and the port (appliance.nodeapi), where the
    control-plane VMs' supervisors ask for consoles and pod logs; none when embedded."""
    facts = {"hostname": "h1", "address": "192.0.2.4",
             "node_api": {"address": "198.18.0.1", "port": 10250}}
    status = node_object(facts)["status"]
    assert status["addresses"] == [{"type": "InternalIP", "address": "192.0.2.4"},
                                   {"type": "InternalIP", "address": "198.18.0.1"},
                                   {"type": "Hostname", "address": "h1"}]
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    embedded = node_object({"hostname": "h1", "address": "192.0.2.4"})["status"]
    assert embedded["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 0}}
    assert len(embedded["addresses"]) == 2


def test_vm_facts_read_the_memory(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2013356 kB\nMemFree:  1 kB\n")
    facts = node.vm_facts("cp", "10.0.0.6", meminfo)
    assert facts["memory_bytes"] == 2013356 * 1024 and facts["cpus"] >= 1


class FakeApi:
    def __init__(self, nodes: list[dict]) -> None:
        self.nodes = nodes

    def list(self, ref, namespace: str = "", label_selector: str = ""):  # type: ignore[no-untyped-def]
        if ref.plural == "nodes":
            return self.nodes, "1"
        raise AssertionError(ref)


def ready(obj: dict) -> dict:
    obj["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return obj


def test_the_schedulers_leave_control_plane_nodes_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.controllers.scheduler as scheduler

    monkeypatch.setattr(scheduler, "placed_pods", lambda api: [])
    nodes = [ready(node_object({"hostname": "host-1", "cpus": 4, "memory_bytes": 8 << 30})),
             ready(node_object(node.vm_facts("pacific-cp-1", "198.18.0.6"), "control-plane"))]
    rooms = host_rooms(FakeApi(nodes), Decimal(4), [])  # type: ignore[arg-type]
    assert [r.node for r in rooms] == ["host-1"]


@pytest.fixture
def patroni() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            body = json.dumps({"role": "master", "state": "running"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_database_role_as_patroni_reports_it(patroni: int) -> None:
    assert node.database_role(patroni) == "primary"  # Patroni 3.0 still says "master"
    assert node.database_role(free_port()) == "unknown"
    assert node.etcd_healthy(free_port()) is False


def test_who_holds_the_floating_ip() -> None:
    assert node.holds("127.0.0.1")
    assert not node.holds("198.51.100.77")  # TEST-NET-2: on no interface here
    assert not node.holds("not-an-address")


def test_the_control_plane_summary_names_the_floating_ips_holder() -> None:
    now = 1_800_000_000.0

    def cp(name: str, ready: str, db: str, vip: str, age: float = 5) -> dict:
        obj = node_object(node.vm_facts(name, "198.18.0.6"), "control-plane")
        obj["metadata"]["annotations"] = {node.DATABASE_ROLE: db, node.ETCD: "member",
                                          node.FLOATING_IP: vip}
        beat = datetime.fromtimestamp(now - age, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj["status"]["conditions"] = [{"type": "Ready", "status": ready,
                                        "lastHeartbeatTime": beat}]
        return obj

    nodes = [cp("pacific-cp-2", "True", "replica", ""), node_object({"hostname": "h1"}),
             cp("pacific-cp-1", "False", "primary", "198.18.0.5")]
    rows, holder = node.control_plane_summary(nodes, now)
    assert [(r["name"], r["ready"], r["database"]) for r in rows] == [
        ("pacific-cp-1", "False", "primary"), ("pacific-cp-2", "True", "replica")]
    assert holder == "pacific-cp-1"
    assert node.control_plane_summary([node_object({"hostname": "h1"})], now) == ([], "")
    # A VM that died: its last word (Ready, primary, holding the floating IP) is stale.
    nodes = [cp("pacific-cp-1", "True", "primary", "198.18.0.5", age=120),
             cp("pacific-cp-2", "True", "primary", "198.18.0.5")]
    rows, holder = node.control_plane_summary(nodes, now)
    assert holder == "pacific-cp-2"
    assert (rows[0]["ready"], rows[0]["database"], rows[0]["floating_ip"]) == (
        "Unknown", "unknown", "")


def test_the_code_a_supervisor_started_with(tmp_path: Path) -> None:
    stamp = tmp_path / "stamp.json"
    stamp.write_text('{"code": "0123456789abcdef0123", "dependencies": "d"}')
    assert node.running_code(stamp) == "0123456789ab"
    stamp.write_text('{"code": "ffffffffffffffff", "dependencies": "d"}')
    assert node.running_code(stamp) == "0123456789ab"  # read once: the process's own code
    assert node.running_code(tmp_path / "missing.json") == "unknown"
    (tmp_path / "bad.json").write_text("{")
    assert node.running_code(tmp_path / "bad.json") == "unknown"


def test_the_summary_shows_each_vms_code() -> None:
    obj = node_object(node.vm_facts("pacific-cp-1", "198.18.0.6"), "control-plane")
    obj["metadata"]["annotations"] = {node.CODE: "0123456789ab"}
    rows, _ = node.control_plane_summary([obj])
    assert rows[0]["code"] == "0123456789ab"
