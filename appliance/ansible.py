"""The one typed wrapper around ``ansible_runner.run``.

Playbooks run against ``localhost`` over the local connection, with the
interpreter of this process (so the project's virtual environment, and the
``ansible-playbook`` next to it, are used). Progress is delivered through an
``on_event`` callback; the runner's own stdout is suppressed.

Every run gets a fresh private data directory under
``<state_dir>/ansible``: ansible-runner never rewrites its ``env/*`` files
once they exist, so reusing one directory would silently replay old
extravars. The newest few run directories are kept for debugging.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner
from ansible_runner.exceptions import AnsibleRunnerException

from appliance.settings import Settings

LOG = logging.getLogger(__name__)

KEEP_RUN_DIRS = 10
_MESSAGE_LIMIT = 2000


class PlaybookError(RuntimeError):
    """A playbook could not be run at all (missing file, parse error, no ansible...).

    A play that ran and had a failing task is not an error: it is a
    ``PlaybookResult`` with ``status == 'failed'``.
    """


@dataclass(frozen=True)
class TaskFailure:
    task: str
    host: str
    message: str


@dataclass(frozen=True)
class PlaybookEvent:
    event: str  # ansible-runner event name, e.g. "runner_on_ok"
    task: str | None
    changed: bool
    failed: bool
    message: str


@dataclass(frozen=True)
class PlaybookResult:
    status: str  # ansible-runner status: "successful", "failed", ...
    rc: int
    changed: int
    failures: list[TaskFailure]
    unreachable: int
    ok: int

    @property
    def succeeded(self) -> bool:
        return self.status == "successful" and not self.failures and not self.unreachable


EventCallback = Callable[[PlaybookEvent], None]


def run_playbook(settings: Settings, name: str, extravars: Mapping[str, Any], *,
                 on_event: EventCallback | None = None, check: bool = False,
                 playbooks_dir: Path | None = None,
                 timeout: int | None = None) -> PlaybookResult:
    """Run ``<playbooks_dir>/<name>`` on localhost and summarise the outcome.

    ``playbooks_dir`` defaults to ``settings.playbooks_dir``; ``name`` may omit
    the ``.yml`` suffix. Raises ``PlaybookError`` only when the playbook could
    not run at all.
    """
    playbook = _resolve_playbook(playbooks_dir or settings.playbooks_dir, name)
    run_dir = _new_run_dir(settings.state_dir / "ansible", playbook.stem)
    collector = _EventCollector(on_event)
    LOG.info("[playbook/%s] starting (check=%s, dir=%s)", playbook.stem, check, run_dir)
    started = time.monotonic()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(run_dir),
            project_dir=str(playbook.parent),
            playbook=str(playbook),
            inventory=_inventory(),
            extravars=dict(extravars),
            envvars=_envvars(),
            cmdline="--check" if check else None,
            event_handler=collector,
            quiet=True,
            timeout=timeout,
        )
    except (AnsibleRunnerException, OSError) as exc:
        raise PlaybookError(f"playbook {playbook.name} could not start: {exc}") from exc
    finally:
        _prune_run_dirs(run_dir.parent, KEEP_RUN_DIRS)
    result = _summarise(playbook, runner, collector.failures)
    LOG.info("[playbook/%s] %s in %.1fs: ok=%d changed=%d failed=%d unreachable=%d",
             playbook.stem, result.status, time.monotonic() - started, result.ok,
             result.changed, len(result.failures), result.unreachable)
    return result


# -- setup -------------------------------------------------------------

def _resolve_playbook(playbooks_dir: Path, name: str) -> Path:
    path = playbooks_dir / name
    if not path.suffix:
        path = path.with_suffix(".yml")
    if not path.is_file():
        raise PlaybookError(f"playbook not found: {path}")
    return path.resolve()


def _new_run_dir(base: Path, stem: str) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"{stamp}-{stem}-", dir=base))


def _prune_run_dirs(base: Path, keep: int) -> None:
    dirs = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in dirs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _inventory() -> dict[str, Any]:
    host_vars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    return {"all": {"hosts": {"localhost": host_vars}}}


def _envvars() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", os.defpath)
    return {
        "PATH": os.pathsep.join([bin_dir, path]),
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_NOCOLOR": "true",
    }


# -- events ------------------------------------------------------------

class _EventCollector:
    """ansible-runner ``event_handler``: records failures, forwards progress."""

    def __init__(self, on_event: EventCallback | None) -> None:
        self._on_event = on_event
        self.failures: list[TaskFailure] = []

    def __call__(self, raw: dict[str, Any]) -> bool:
        event = _to_event(raw)
        if event is not None:
            failure = _to_failure(raw, event)
            if failure is not None:
                self.failures.append(failure)
            if self._on_event is not None:
                self._on_event(event)
        return True  # keep ansible-runner's own job_events record


_FORWARDED = {
    "playbook_on_play_start", "playbook_on_task_start", "runner_on_ok", "runner_on_failed",
    "runner_on_unreachable", "runner_on_skipped", "runner_item_on_failed", "playbook_on_stats",
}
_FAILED = {"runner_on_failed", "runner_item_on_failed", "runner_on_unreachable"}


def _to_event(raw: dict[str, Any]) -> PlaybookEvent | None:
    kind = raw.get("event", "")
    if kind not in _FORWARDED:
        return None
    data = raw.get("event_data") or {}
    res = data.get("res")
    res = res if isinstance(res, dict) else {}
    if kind == "playbook_on_play_start":
        message = str(data.get("play", ""))
    else:
        message = _result_message(res)
    failed = kind in _FAILED and not data.get("ignore_errors")
    return PlaybookEvent(event=kind, task=data.get("task") or None,
                         changed=bool(res.get("changed", False)), failed=failed, message=message)


def _to_failure(raw: dict[str, Any], event: PlaybookEvent) -> TaskFailure | None:
    if event.event not in ("runner_on_failed", "runner_on_unreachable") or not event.failed:
        return None
    host = str((raw.get("event_data") or {}).get("host", "?"))
    return TaskFailure(task=event.task or "?", host=host,
                       message=event.message or "failed without a message")


def _result_message(res: Mapping[str, Any]) -> str:
    """The most useful text of a task result: msg, then stderr/stdout, then failed items."""
    parts: list[str] = []
    msg = res.get("msg")
    if msg:
        parts.append(str(msg))
    for key in ("stderr", "stdout"):
        text = str(res.get(key) or "").strip()
        if text and res.get("rc") not in (None, 0):
            parts.append(text)
            break
    parts.extend(_failed_item_messages(res.get("results")))
    return "\n".join(parts)[:_MESSAGE_LIMIT]


def _failed_item_messages(results: object) -> Iterable[str]:
    if not isinstance(results, list):
        return []
    return [f"item {item.get('item')!r}: {_result_message(item)}" for item in results
            if isinstance(item, dict) and item.get("failed")]


# -- result ------------------------------------------------------------

def _summarise(playbook: Path, runner: Any, failures: list[TaskFailure]) -> PlaybookResult:
    stats = runner.stats
    if stats is None:
        raise PlaybookError(f"playbook {playbook.name} did not run (status={runner.status}, "
                            f"rc={runner.rc}): {_output_tail(runner)}")
    bad_hosts = {host for key in ("failures", "dark")
                 for host, count in (stats.get(key) or {}).items() if count}
    return PlaybookResult(
        status=str(runner.status),
        rc=int(runner.rc),
        changed=_total(stats, "changed"),
        # a failure later rescued by a block leaves no count in the stats
        failures=[f for f in failures if f.host in bad_hosts],
        unreachable=_total(stats, "dark"),
        ok=_total(stats, "ok"),
    )


def _total(stats: Mapping[str, Mapping[str, int]], key: str) -> int:
    return sum((stats.get(key) or {}).values())


def _output_tail(runner: Any, lines: int = 15) -> str:
    stdout = Path(runner.config.artifact_dir) / "stdout"
    try:
        text = stdout.read_text(errors="replace")
    except OSError:
        return "(no output)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(tail) or "(no output)"
