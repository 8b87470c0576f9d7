#!/usr/bin/python
"""Ansible module: start a daemon by hand unless its processes already run.

For hosts without a service manager (no systemd): changed only when the
start command actually ran.
"""

from __future__ import annotations

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_daemon
short_description: Start a daemon with a plain command unless it already runs
description:
  - Looks for running processes by their command name (C(/proc/PID/comm)).
  - When any of them is missing, runs O(start) once; reports changed then.
options:
  processes:
    description: Command names that must all be running (at most 15 characters each).
    type: list
    elements: str
    required: true
  start:
    description: The argv that starts (the missing part of) the daemon; never run through a shell.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Start libvirtd
  lab_daemon:
    processes: [libvirtd]
    start: [libvirtd, -d]
"""

RETURN = r"""
missing:
  description: The processes that were not running before the module ran.
  returned: always
  type: list
  elements: str
"""

_COMM_MAX = 15  # the kernel truncates /proc/PID/comm to 15 characters


def running_commands(proc: Path = Path("/proc")) -> set[str]:
    names: set[str] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            names.add((entry / "comm").read_text().strip())
        except OSError:  # the process went away while we looked
            continue
    return names


def missing_processes(wanted: list[str], running: set[str]) -> list[str]:
    return [name for name in wanted if name[:_COMM_MAX] not in running]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "processes": {"type": "list", "elements": "str", "required": True},
            "start": {"type": "list", "elements": "str", "required": True},
        },
        supports_check_mode=True,
    )
    missing = missing_processes(module.params["processes"], running_commands())
    if not missing:
        module.exit_json(changed=False, missing=[])
    if module.check_mode:
        module.exit_json(changed=True, missing=missing)
    rc, out, err = module.run_command(module.params["start"], environ_update={"LC_ALL": "C"})
    if rc != 0:
        module.fail_json(msg=f"starting {' '.join(missing)} failed (rc={rc})", rc=rc,
                         stdout=out, stderr=err, missing=missing)
    module.exit_json(changed=True, missing=missing, stdout=out, stderr=err)


if __name__ == "__main__":
    main()
