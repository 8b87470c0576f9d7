"""The ansible-runner wrapper, against real (local, fast) ansible-playbook runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml

from appliance.ansible import PlaybookError, PlaybookEvent, run_playbook
from appliance.settings import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(environ={}, state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")


def _write_playbook(directory: Path, name: str, tasks: Sequence[Mapping[str, object]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    play = {"name": name, "hosts": "localhost", "gather_facts": False, "tasks": tasks}
    path = directory / f"{name}.yml"
    path.write_text(yaml.safe_dump([play], sort_keys=False))
    return directory


def _changed_and_ok_tasks() -> list[dict[str, object]]:
    return [
        {"name": "always changes", "ansible.builtin.command": "true", "changed_when": True},
        {"name": "never changes", "ansible.builtin.debug": {"msg": "{{ greeting }}"}},
    ]


def test_counts_changed_and_ok_tasks(settings: Settings, tmp_path: Path) -> None:
    books = _write_playbook(tmp_path / "books", "counts", _changed_and_ok_tasks())
    events: list[PlaybookEvent] = []

    result = run_playbook(settings, "counts", {"greeting": "hello"}, on_event=events.append,
                          playbooks_dir=books)

    assert result.status == "successful"
    assert result.rc == 0
    assert result.changed == 1
    assert result.ok == 2
    assert result.failures == []
    assert result.unreachable == 0
    assert result.succeeded
    started = [e.task for e in events if e.event == "playbook_on_task_start"]
    assert started == ["always changes", "never changes"]
    debug_ok = [e for e in events if e.event == "runner_on_ok" and e.task == "never changes"]
    assert debug_ok and debug_ok[0].message == "hello"
    assert not debug_ok[0].changed


def test_failing_task_is_named(settings: Settings, tmp_path: Path) -> None:
    tasks = [
        {"name": "fine", "ansible.builtin.debug": {"msg": "ok"}},
        {"name": "break on purpose",
         "ansible.builtin.command": {"argv": ["sh", "-c", "echo boom >&2; exit 3"]}},
        {"name": "never reached", "ansible.builtin.debug": {"msg": "unreachable"}},
    ]
    books = _write_playbook(tmp_path / "books", "fails", tasks)
    events: list[PlaybookEvent] = []

    result = run_playbook(settings, "fails.yml", {}, on_event=events.append, playbooks_dir=books)

    assert result.status == "failed"
    assert result.rc != 0
    assert not result.succeeded
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert failure.task == "break on purpose"
    assert failure.host == "localhost"
    assert "boom" in failure.message
    assert [e.task for e in events if e.failed] == ["break on purpose"]
    assert "never reached" not in {e.task for e in events}


def test_ignored_failure_is_not_a_failure(settings: Settings, tmp_path: Path) -> None:
    tasks = [{"name": "tolerated", "ansible.builtin.command": "false", "ignore_errors": True}]
    books = _write_playbook(tmp_path / "books", "ignored", tasks)

    result = run_playbook(settings, "ignored", {}, playbooks_dir=books)

    assert result.status == "successful"
    assert result.failures == []


def test_check_mode_changes_nothing(settings: Settings, tmp_path: Path) -> None:
    target = tmp_path / "made-by-playbook"
    tasks = [{"name": "make a file", "ansible.builtin.file": {"path": str(target),
                                                              "state": "touch"}}]
    books = _write_playbook(tmp_path / "books", "touch", tasks)

    result = run_playbook(settings, "touch", {}, check=True, playbooks_dir=books)

    assert result.succeeded
    assert result.changed == 1
    assert not target.exists()


def test_extravars_are_fresh_on_every_run(settings: Settings, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    tasks = [{"name": "write", "ansible.builtin.copy": {"content": "{{ value }}",
                                                        "dest": str(target)}}]
    books = _write_playbook(tmp_path / "books", "write", tasks)

    run_playbook(settings, "write", {"value": "first"}, playbooks_dir=books)
    run_playbook(settings, "write", {"value": "second"}, playbooks_dir=books)

    assert target.read_text() == "second"


def test_missing_playbook_raises(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(PlaybookError, match="not found"):
        run_playbook(settings, "nope", {}, playbooks_dir=tmp_path)


def test_unparseable_playbook_raises(settings: Settings, tmp_path: Path) -> None:
    books = tmp_path / "books"
    books.mkdir()
    (books / "broken.yml").write_text(yaml.safe_dump([{"hosts": "localhost",
                                                       "tasks": [{"no_such_module": {}}]}]))

    with pytest.raises(PlaybookError, match="did not run"):
        run_playbook(settings, "broken", {}, playbooks_dir=books)
