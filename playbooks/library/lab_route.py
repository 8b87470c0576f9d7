#!/usr/bin/python
"""Ansible module: an unreachable (or blackhole) IPv4 route, or none."""

from __future__ import annotations

import ipaddress
import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_route
short_description: Ensure an unreachable/blackhole route for a prefix (or remove it)
description:
  - Keeps a whole address range on this host. Routes of the range that are configured
    (a segment's connected /28, a VIP) are more specific and win; anything else in the
    range is refused here instead of following the default route off the host.
options:
  dest: {type: str, required: true, description: "The prefix, e.g. 198.19.0.0/16."}
  type: {type: str, default: unreachable, choices: [unreachable, blackhole, prohibit]}
  metric: {type: int, default: 4242}
  state: {type: str, default: present, choices: [present, absent]}
"""

EXAMPLES = r"""
- lab_route: {dest: 198.19.0.0/16}
"""


def routes(module: AnsibleModule, dest: str, kind: str) -> list[dict]:
    rc, out, err = module.run_command(["ip", "-j", "-4", "route", "show", "type", kind,
                                       "exact", dest])
    if rc != 0:
        module.fail_json(msg=f"ip route show failed: {err.strip()}")
    return json.loads(out or "[]")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dest": {"type": "str", "required": True},
            "type": {"type": "str", "default": "unreachable",
                     "choices": ["unreachable", "blackhole", "prohibit"]},
            "metric": {"type": "int", "default": 4242},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        dest = str(ipaddress.IPv4Network(p["dest"]))
    except ValueError as exc:
        module.fail_json(msg=f"bad prefix {p['dest']!r}: {exc}")
    mine = [r for r in routes(module, dest, p["type"]) if r.get("metric", 0) == p["metric"]]
    if p["state"] == "absent":
        if mine and not module.check_mode:
            rc, _, err = module.run_command(["ip", "route", "del", p["type"], dest, "metric",
                                             str(p["metric"])])
            if rc != 0:
                module.fail_json(msg=f"ip route del {p['type']} {dest} failed: {err.strip()}")
        module.exit_json(changed=bool(mine))
    if mine:
        module.exit_json(changed=False)
    if not module.check_mode:
        rc, _, err = module.run_command(["ip", "route", "add", p["type"], dest, "metric",
                                         str(p["metric"])])
        if rc != 0:
            module.fail_json(msg=f"ip route add {p['type']} {dest} failed: {err.strip()}")
    module.exit_json(changed=True)


if __name__ == "__main__":
    main()
