"""Container log files of pod VMs and the reader behind `kubectl logs`."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ApiError
from appliance.pods.logs import MAX_LINE, PodLogs

UID = "4ba14339-0659-4b34-86cf-6ce2bf7e45f6"


def _pod(restarts: int = 0, containers: tuple[str, ...] = ("app",),
         waiting: str = "") -> dict[str, Any]:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return {"metadata": {"name": "web", "namespace": "dev", "uid": UID},
            "spec": {"containers": [{"name": c} for c in containers]},
            "status": {"containerStatuses": [{"name": c, "restartCount": restarts,
                                              "state": state} for c in containers]}}


def _read(logs: PodLogs, pod: dict[str, Any], **args: str) -> bytes:
    return b"".join(logs.read(pod, args, timeout=5))


def test_lines_streams_and_partial_lines(tmp_path: Path) -> None:
    logs = PodLogs(tmp_path)
    logs.append(UID, "app", 0, "stdout", b"hello\nwor")
    logs.append(UID, "app", 0, "stderr", b"oops\n")
    assert _read(logs, _pod()) == b"hello\noops\n"  # "wor" waits for the rest of its line
    logs.append(UID, "app", 0, "stdout", b"ld\n")
    logs.append(UID, "app", 0, "stdout", b"no newline at the end")
    logs.end(UID, "app", 0)
    assert _read(logs, _pod()) == b"hello\noops\nworld\nno newline at the end\n"
    stamped = _read(logs, _pod(), timestamps="true").splitlines()
    assert stamped[0].endswith(b" hello") and stamped[0][:4].isdigit() and b"Z " in stamped[0]
    assert _read(logs, _pod(), tailLines="2") == b"world\nno newline at the end\n"
    assert _read(logs, _pod(), limitBytes="3") == b"hel"
    files = sorted(p.name for p in (tmp_path / UID / "logs" / "app").iterdir())
    assert files == ["0.end", "0.log"]
    assert oct((tmp_path / UID / "logs" / "app" / "0.log").stat().st_mode & 0o777) == "0o600"


def test_long_lines_are_split_and_joined_again(tmp_path: Path) -> None:
    logs = PodLogs(tmp_path)
    long = b"x" * (MAX_LINE * 2 + 10)
    logs.append(UID, "app", 0, "stdout", long + b"\nshort\n")
    assert _read(logs, _pod()) == long + b"\nshort\n"
    assert _read(logs, _pod(), tailLines="1") == b"short\n"
    assert _read(logs, _pod(), tailLines="2") == long + b"\nshort\n"


def test_previous_run_and_kubernetes_errors(tmp_path: Path) -> None:
    logs = PodLogs(tmp_path)
    logs.append(UID, "app", 0, "stdout", b"first run\n")
    logs.end(UID, "app", 0)
    logs.append(UID, "app", 1, "stdout", b"second run\n")
    assert _read(logs, _pod(1)) == b"second run\n"
    assert _read(logs, _pod(1), previous="true") == b"first run\n"
    with pytest.raises(ApiError, match='previous terminated container "app" in pod "web" '
                                       "not found"):
        _read(logs, _pod(0), previous="true")
    with pytest.raises(ApiError, match=r"a container name must be specified for pod web, "
                                       r"choose one of: \[app side\]"):
        _read(logs, _pod(containers=("app", "side")))
    with pytest.raises(ApiError, match="container nope is not valid for pod web"):
        _read(logs, _pod(), container="nope")
    with pytest.raises(ApiError, match='container "app" in pod "web" is waiting to start: '
                                       "trying and failing to pull image"):
        logs2 = PodLogs(tmp_path / "other")
        _read(logs2, _pod(waiting="ImagePullBackOff"))
    with pytest.raises(ApiError, match="tailLines must be an integer"):
        _read(logs, _pod(1), tailLines="many")
    with pytest.raises(ApiError, match="at most one of sinceTime or sinceSeconds"):
        _read(logs, _pod(1), sinceSeconds="5", sinceTime="2026-01-01T00:00:00Z")


def test_since_filters_by_time(tmp_path: Path) -> None:
    logs = PodLogs(tmp_path)
    logs.append(UID, "app", 0, "stdout", b"old\n")
    assert _read(logs, _pod(), sinceTime="2100-01-01T00:00:00Z") == b""
    assert _read(logs, _pod(), sinceSeconds="60") == b"old\n"


def test_follow_streams_until_the_run_ends(tmp_path: Path) -> None:
    logs = PodLogs(tmp_path)
    logs.append(UID, "app", 0, "stdout", b"one\n")
    got: list[bytes] = []

    def follow() -> None:
        got.extend(logs.read(_pod(), {"follow": "true"}, timeout=30))

    reader = threading.Thread(target=follow)
    started = time.monotonic()
    reader.start()
    time.sleep(0.5)
    logs.append(UID, "app", 0, "stdout", b"two\n")
    time.sleep(0.5)
    logs.end(UID, "app", 0)
    reader.join(10)
    assert not reader.is_alive() and time.monotonic() - started < 10
    assert b"".join(got) == b"one\ntwo\n"


def test_paths_refuse_odd_uids_and_symlinks(tmp_path: Path) -> None:
    logs = PodLogs(tmp_path)
    with pytest.raises(ValueError):
        logs.path("../x", "app", 0)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / UID).symlink_to(target)
    with pytest.raises(OSError):
        logs.append(UID, "app", 0, "stdout", b"x\n")
    assert list(target.iterdir()) == []
