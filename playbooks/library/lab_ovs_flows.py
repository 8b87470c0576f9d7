#!/usr/bin/python
"""Ansible module: exactly a given set of OpenFlow flows under one cookie."""

from __future__ import annotations

import json
import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_ovs_flows
short_description: Make the flows of one cookie on an OVS bridge exactly the given list
description:
  - The flows of O(bridge) whose cookie is exactly O(cookie) are compared with O(flows)
    (both parsed by C(ovs-ofctl diff-flows), so spelling differences do not count);
    when they differ they are replaced in one atomic bundle
    (C(ovs-ofctl --bundle add-flows)). Flows of other cookies are never touched.
  - Ports may be named in C(in_port=NAME); names are resolved to OpenFlow port numbers.
    A flow naming a port that does not exist (or has no number yet) is left out and the
    port is reported in RV(missing_ports); install again once it exists.
  - C(state=absent) deletes every flow of the cookie.
options:
  bridge: {type: str, required: true}
  cookie: {type: int, required: true, description: The cookie (exact match) owning the flows.}
  flows: {type: list, elements: str, default: [], description: Flows without a cookie field.}
  state: {type: str, default: present, choices: [present, absent]}
"""

EXAMPLES = r"""
- lab_ovs_flows:
    bridge: br-int
    cookie: 101
    flows:
      - table=0,priority=100,in_port=plg101,arp actions=NORMAL
"""

RETURN = r"""
installed: {description: Number of flows of the cookie afterwards., returned: success, type: int}
missing_ports: {description: Named ports that do not exist., returned: always, type: list}
"""

_RESERVED = {"LOCAL", "IN_PORT", "ANY", "NONE", "CONTROLLER", "NORMAL", "FLOOD", "ALL",
             "TABLE", "UNSET"}
_IN_PORT = re.compile(r"(?<![A-Za-z_])in_port=([A-Za-z][A-Za-z0-9_.-]*)")


def ofctl(module: AnsibleModule, *args: str, check: bool = True) -> tuple[int, str, str]:
    rc, out, err = module.run_command(["ovs-ofctl", *args])
    if check and rc != 0:
        module.fail_json(msg=f"ovs-ofctl {' '.join(args)} failed (rc={rc}): {err.strip()}",
                         rc=rc, stdout=out, stderr=err)
    return rc, out, err


def ofports(module: AnsibleModule) -> dict[str, int]:
    rc, out, err = module.run_command(["ovs-vsctl", "--timeout=10", "--format=json",
                                       "--data=json", "--columns=name,ofport", "list",
                                       "Interface"])
    if rc != 0:
        module.fail_json(msg=f"ovs-vsctl list Interface failed: {err.strip()}")
    data = json.loads(out)
    found = {}
    for name, number in data["data"]:
        if isinstance(number, int) and number > 0:
            found[name] = number
    return found


def resolve(flows: list[str], ports: dict[str, int]) -> tuple[list[str], list[str]]:
    resolved, missing = [], []
    for flow in flows:
        names = [n for n in _IN_PORT.findall(flow) if n.upper() not in _RESERVED]
        absent = [n for n in names if n not in ports]
        if absent:
            missing += absent
            continue
        resolved.append(_IN_PORT.sub(
            lambda m: f"in_port={ports.get(m.group(1), m.group(1))}"
            if m.group(1).upper() not in _RESERVED else m.group(0), flow))
    return resolved, sorted(set(missing))


def write(lines: list[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="lab-flows-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(line + "\n" for line in lines))
    return path


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "bridge": {"type": "str", "required": True},
            "cookie": {"type": "int", "required": True},
            "flows": {"type": "list", "elements": "str", "default": []},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
    )
    p = module.params
    bridge, cookie = p["bridge"], p["cookie"]
    match = f"cookie={cookie:#x}/-1"
    rc, _, err = module.run_command(["ovs-vsctl", "--timeout=10", "br-exists", bridge])
    if rc == 2:
        if p["state"] == "absent":
            module.exit_json(changed=False, installed=0, missing_ports=[])
        module.fail_json(msg=f"bridge {bridge} does not exist")
    _, out, _ = ofctl(module, "--no-stats", "dump-flows", bridge, match)
    current = [line.strip() for line in out.splitlines()
               if line.strip() and not line.startswith("NXST_FLOW")]
    if p["state"] == "absent":
        if current and not module.check_mode:
            ofctl(module, "--bundle", "del-flows", bridge, match)
        module.exit_json(changed=bool(current), installed=0, missing_ports=[])

    wanted, missing = resolve(p["flows"], ofports(module))
    wanted = [f"cookie={cookie:#x},{flow}" for flow in wanted]
    paths = [write(current), write(wanted)]
    try:
        rc, diff, err = ofctl(module, "diff-flows", paths[0], paths[1], check=False)
        if rc != 0 and not diff.strip():
            module.fail_json(msg=f"ovs-ofctl diff-flows failed (rc={rc}): {err.strip()}",
                             flows=wanted)
        if not diff.strip():
            module.exit_json(changed=False, installed=len(current), missing_ports=missing)
        if not module.check_mode:
            mods = write([f"delete {match}"] + [f"add {flow}" for flow in wanted])
            paths.append(mods)
            ofctl(module, "--bundle", "add-flows", bridge, mods)
        module.exit_json(changed=True, installed=len(wanted), missing_ports=missing)
    finally:
        for path in paths:
            os.unlink(path)


if __name__ == "__main__":
    main()
