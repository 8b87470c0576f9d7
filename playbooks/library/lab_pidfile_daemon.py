#!/usr/bin/python
"""Ansible module: one instance of a daemon, tracked by its pid file, kept in step with its config."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_pidfile_daemon
short_description: Run one instance of a daemon (dnsmasq, haproxy) by pid file
description:
  - Many instances of the same program run side by side (one dnsmasq per namespace), so a
    process is recognised by its pid file, checked against C(/proc/PID/cmdline).
  - Started when not running. Restarted when O(argv) or the content of O(config_files)
    changed since it was started; sent O(reload_signal) when only O(reload_files)
    changed (dnsmasq re-reads its hosts files on SIGHUP).
  - What the running instance was started with is recorded in O(pidfile)C(.json).
  - C(state=absent) stops it (SIGTERM, then SIGKILL) and removes the pid and record files.
options:
  name: {type: str, required: true, description: Used in messages.}
  argv: {type: list, elements: str, default: [], description: "Command that starts (and daemonises) it."}
  pidfile: {type: path, required: true, description: The pid file the daemon writes.}
  config_files: {type: list, elements: path, default: []}
  reload_files: {type: list, elements: path, default: []}
  reload_signal: {type: str, default: SIGHUP}
  timeout: {type: int, default: 15, description: Seconds to wait for start or stop.}
  state: {type: str, default: started, choices: [started, absent]}
"""

EXAMPLES = r"""
- lab_pidfile_daemon:
    name: dnsmasq for dev-team
    argv: [dnsmasq, --conf-file=/var/lib/pacific-lab/network/pl/vlan101/dnsmasq.conf]
    pidfile: /var/lib/pacific-lab/network/pl/vlan101/dnsmasq.pid
    config_files: [/var/lib/pacific-lab/network/pl/vlan101/dnsmasq.conf]
    reload_files: [/var/lib/pacific-lab/network/pl/vlan101/dns-hosts]
"""

RETURN = r"""
pid: {description: Pid of the running instance., returned: started, type: int}
action: {description: "none, started, restarted, reloaded or stopped.", returned: always, type: str}
"""


def digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.encode() + b"\0")
        try:
            h.update(Path(path).read_bytes())
        except OSError:
            h.update(b"<missing>")
    return h.hexdigest()


def running(pidfile: Path, program: str) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    if state == "Z" or not cmdline or os.path.basename(cmdline[0].decode()) != program:
        return None
    return pid


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def stop(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_gone(pid, timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_gone(pid, 5)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "argv": {"type": "list", "elements": "str", "default": []},
            "pidfile": {"type": "path", "required": True},
            "config_files": {"type": "list", "elements": "path", "default": []},
            "reload_files": {"type": "list", "elements": "path", "default": []},
            "reload_signal": {"type": "str", "default": "SIGHUP"},
            "timeout": {"type": "int", "default": 15},
            "state": {"type": "str", "default": "started", "choices": ["started", "absent"]},
        },
        required_if=[("state", "started", ["argv"])],
        supports_check_mode=True,
    )
    p = module.params
    pidfile = Path(p["pidfile"])
    record_file = Path(str(pidfile) + ".json")
    argv = p["argv"]
    program = os.path.basename(argv[0]) if argv else ""
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        record = {}
    program = program or os.path.basename((record.get("argv") or [""])[0])
    pid = running(pidfile, program) if program else None

    if p["state"] == "absent":
        leftovers = [f for f in (pidfile, record_file) if f.exists()]
        if pid is None and not leftovers:
            module.exit_json(changed=False, action="none")
        if not module.check_mode:
            if pid is not None:
                stop(pid, p["timeout"])
            for f in leftovers:
                f.unlink(missing_ok=True)
        module.exit_json(changed=True, action="stopped" if pid else "cleaned")

    config = digest(p["config_files"])
    reload_ = digest(p["reload_files"])
    if pid is not None and record.get("argv") == argv and record.get("config") == config:
        if record.get("reload") == reload_:
            module.exit_json(changed=False, action="none", pid=pid)
        if not module.check_mode:
            os.kill(pid, getattr(signal, p["reload_signal"]))
            record["reload"] = reload_
            record_file.write_text(json.dumps(record))
        module.exit_json(changed=True, action="reloaded", pid=pid)
    if module.check_mode:
        module.exit_json(changed=True, action="restarted" if pid else "started")
    action = "started"
    if pid is not None:
        stop(pid, p["timeout"])
        action = "restarted"
    pidfile.unlink(missing_ok=True)
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg=f"{p['name']}: {' '.join(argv)} failed (rc={rc}): "
                             f"{(err or out).strip()}", rc=rc, stdout=out, stderr=err)
    deadline = time.monotonic() + p["timeout"]
    new_pid = running(pidfile, program)
    while new_pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
        new_pid = running(pidfile, program)
    if new_pid is None:
        module.fail_json(msg=f"{p['name']}: started, but no running {program} is recorded in "
                             f"{pidfile}", stdout=out, stderr=err)
    record_file.write_text(json.dumps({"argv": argv, "config": config, "reload": reload_}))
    module.exit_json(changed=True, action=action, pid=new_pid)


if __name__ == "__main__":
    main()
