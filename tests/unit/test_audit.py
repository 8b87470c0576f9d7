"""The audit log's Events, file and rotation, and reading it back (``appliance.audit``)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from appliance import audit


def record(**kw: str) -> audit.Request:
    fields = {"uri": "/api/v1/namespaces/dev/secrets/db", "method": "DELETE",
              "source": "192.0.2.5", "user_agent": "kubectl/v1.29.0", **kw}
    r = audit.Request(**fields)  # type: ignore[arg-type]
    r.user, r.groups, r.verb = "alice", ("system:authenticated",), "delete"
    r.resource, r.api_version, r.namespace, r.name = "secrets", "v1", "dev", "db"
    return r


def test_an_event_is_kubernetes_audit_v1_at_the_metadata_level() -> None:
    event = record().event(200)
    assert event["apiVersion"] == "audit.k8s.io/v1" and event["kind"] == "Event"
    assert event["level"] == "Metadata" and event["stage"] == "ResponseComplete"
    assert event["user"] == {"username": "alice", "groups": ["system:authenticated"]}
    assert event["sourceIPs"] == ["192.0.2.5"]
    assert event["verb"] == "delete"
    assert event["objectRef"] == {"resource": "secrets", "namespace": "dev", "name": "db",
                                  "apiVersion": "v1"}
    assert event["responseStatus"]["code"] == 200
    assert event["requestReceivedTimestamp"] <= event["stageTimestamp"]
    assert "annotations" not in event and "requestObject" not in event


def test_a_request_before_authentication_is_anonymous_and_has_no_object() -> None:
    event = audit.Request("/version", "GET", "127.0.0.1").event(401)
    assert event["user"] == {"username": "system:anonymous"}
    assert event["verb"] == "get" and "objectRef" not in event


@pytest.mark.parametrize(("method", "collection", "watch", "verb"), [
    ("GET", True, False, "list"), ("GET", True, True, "watch"), ("GET", False, False, "get"),
    ("POST", True, False, "create"), ("PUT", False, False, "update"),
    ("PATCH", False, False, "patch"), ("DELETE", False, False, "delete"),
    ("DELETE", True, False, "deletecollection"),
])
def test_verbs_are_kube_apiservers(method: str, collection: bool, watch: bool,
                                   verb: str) -> None:
    assert audit.api_verb(method, collection, watch) == verb


def read(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_are_json_lines_in_a_file_only_root_reads(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path / "logs")
    log.write(record().event(200))
    log.write(record(method="GET").event(403))
    path = tmp_path / "logs" / "audit.log"
    assert [e["responseStatus"]["code"] for e in read(path)] == [200, 403]
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_log_rotates_and_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path, max_bytes=2000, keep=3)
    for i in range(40):
        log.write(record(uri=f"/api/v1/namespaces/dev/secrets/s{i}").event(200))
    names = sorted(p.name for p in tmp_path.glob("audit.log*") if not p.name.endswith(".lock"))
    assert names == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
    kept = [e["requestURI"] for p in audit.files(tmp_path, keep=3) for e in read(p)]
    assert kept == sorted(kept, key=lambda uri: int(uri.rsplit("s", 1)[1]))  # oldest first
    assert kept[-1].endswith("/s39")


def test_a_writer_whose_file_was_rotated_away_writes_to_the_new_one(tmp_path: Path) -> None:
    first, second = audit.AuditLog(tmp_path, max_bytes=1500), audit.AuditLog(tmp_path)
    second.write(record().event(200))
    while not (tmp_path / "audit.log.1").exists():
        first.write(record().event(200))
    second.write(record(uri="/after-rotation").event(200))
    assert read(tmp_path / "audit.log")[-1]["requestURI"] == "/after-rotation"


def test_a_link_in_place_of_the_log_is_not_followed(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "audit.log").symlink_to(target)
    with caplog.at_level(logging.WARNING):
        audit.AuditLog(tmp_path).write(record().event(200))
    assert target.read_text() == ""
    assert "cannot write the audit log" in caplog.text


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path)

    def writer(n: int) -> None:
        for i in range(200):
            log.write(record(uri=f"/w{n}/{i}").event(200))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read(tmp_path / "audit.log")) == 800


def test_filters_and_one_line_per_event() -> None:
    event = record().event(200)
    assert audit.matches(event, user="alice") and audit.matches(event, namespace="dev")
    assert not audit.matches(event, user="bob") and not audit.matches(event, namespace="prod")
    line = audit.describe(event)
    assert "alice  192.0.2.5  api  delete  secrets dev/db  200" in line


def test_follow_reads_what_is_appended_across_a_rotation(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path, max_bytes=1200)
    log.write(record(uri="/before").event(200))
    seen: list[str] = []

    def reader() -> None:
        for event in audit.events(audit.follow(tmp_path / "audit.log", poll=0.05)):
            seen.append(event["requestURI"])
            if event["requestURI"] == "/last":
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.3)
    for i in range(5):
        log.write(record(uri=f"/n{i}").event(200))
        time.sleep(0.2)  # a rotation at a time: what one poll sees
    log.write(record(uri="/last").event(200))
    thread.join(10)
    assert seen == ["/n0", "/n1", "/n2", "/n3", "/n4", "/last"]
    assert os.path.exists(tmp_path / "audit.log.1")
