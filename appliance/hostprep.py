"""Prepare this host for the lab (``playbooks/host.yml``) and read back its facts."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from appliance.ansible import EventCallback, PlaybookResult, TaskFailure, run_playbook
from appliance.settings import Settings

LOG = logging.getLogger(__name__)

HOST_PLAYBOOK = "host.yml"


class HostPrepError(RuntimeError):
    """host.yml ran but a task failed (or the facts it should write are missing)."""

    def __init__(self, message: str, failures: Sequence[TaskFailure] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


def host_extravars(settings: Settings, extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """The extravars host.yml expects."""
    return {
        "lab_state_dir": str(settings.state_dir),
        "lab_cache_dir": str(settings.cache_dir),
        "lab_host_facts_path": str(settings.host_facts_path),
        "lab_project_root": str(settings.project_root),
        "lab_extra_packages": list(extra_packages),
    }


def prepare_host(settings: Settings, on_event: EventCallback | None = None, *,
                 extra_packages: Sequence[str] = (), check: bool = False) -> dict[str, Any]:
    """Run host.yml and return the host facts it recorded.

    Raises ``HostPrepError`` naming the failing task(s), or
    ``appliance.ansible.PlaybookError`` when the playbook could not run at all.
    """
    result = run_playbook(settings, HOST_PLAYBOOK, host_extravars(settings, extra_packages),
                          on_event=on_event, check=check)
    _raise_for_failure(result)
    LOG.info("[host] prepared: %d tasks ok, %d changed", result.ok, result.changed)
    facts = load_host_facts(settings)
    if facts is None:
        if check:  # check mode skips the facts task; nothing to report yet
            return {}
        raise HostPrepError(f"host.yml succeeded but wrote no facts to "
                            f"{settings.host_facts_path}")
    return facts


def load_host_facts(settings: Settings) -> dict[str, Any] | None:
    """The facts recorded by the last host preparation, or None if there are none."""
    try:
        loaded = json.loads(settings.host_facts_path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        LOG.warning("[host] ignoring unreadable facts %s: %s", settings.host_facts_path, exc)
        return None
    return loaded if isinstance(loaded, dict) else None


def _raise_for_failure(result: PlaybookResult) -> None:
    if result.succeeded:
        return
    if result.failures:
        detail = "; ".join(f"task {f.task!r} failed: {f.message}" for f in result.failures)
    else:
        detail = f"status={result.status} rc={result.rc} unreachable={result.unreachable}"
    raise HostPrepError(f"preparing the host failed: {detail}", result.failures)
