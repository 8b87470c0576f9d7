#!/usr/bin/python
"""Ansible module: an Open vSwitch bridge with a given datapath type and fail mode."""

from __future__ import annotations

import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_ovs_bridge
short_description: Ensure an Open vSwitch bridge exists (or not), with its datapath type
description:
  - Creates the bridge with C(ovs-vsctl --may-exist add-br) and sets C(datapath_type)
    and C(fail_mode); changes either on an existing bridge. C(state=absent) deletes it.
options:
  name: {description: Bridge name., type: str, required: true}
  datapath_type:
    description: C(system) (kernel module) or C(netdev) (userspace datapath).
    type: str
    default: system
    choices: [system, netdev]
  fail_mode:
    description: C(secure) (only the installed flows forward) or C(standalone).
    type: str
    default: secure
    choices: [secure, standalone]
  external_ids: {description: Keys to set in the bridge's external_ids., type: dict, default: {}}
  state: {type: str, default: present, choices: [present, absent]}
"""

EXAMPLES = r"""
- lab_ovs_bridge: {name: br-int, datapath_type: netdev}
"""

RETURN = r"""
datapath_type: {description: The datapath type afterwards., returned: success, type: str}
"""


def vsctl(module: AnsibleModule, *args: str, check: bool = True) -> tuple[int, str, str]:
    rc, out, err = module.run_command(["ovs-vsctl", "--timeout=10", *args])
    if check and rc != 0:
        module.fail_json(msg=f"ovs-vsctl {' '.join(args)} failed (rc={rc}): {err.strip()}",
                         rc=rc, stdout=out, stderr=err)
    return rc, out, err


def bridge_record(module: AnsibleModule, name: str) -> dict | None:
    rc, _, _ = vsctl(module, "br-exists", name, check=False)
    if rc == 2:
        return None
    _, out, _ = vsctl(module, "--format=json", "--data=json",
                      "--columns=datapath_type,fail_mode,external_ids", "list", "Bridge", name)
    data = json.loads(out)
    row = dict(zip(data["headings"], data["data"][0], strict=True))
    fail_mode = row["fail_mode"]
    ids = row["external_ids"]
    return {
        "datapath_type": row["datapath_type"] or "system",
        "fail_mode": fail_mode if isinstance(fail_mode, str) else "",
        "external_ids": {k: v for k, v in ids[1]} if isinstance(ids, list) else {},
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "datapath_type": {"type": "str", "default": "system",
                              "choices": ["system", "netdev"]},
            "fail_mode": {"type": "str", "default": "secure",
                          "choices": ["secure", "standalone"]},
            "external_ids": {"type": "dict", "default": {}},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
    )
    p = module.params
    current = bridge_record(module, p["name"])
    if p["state"] == "absent":
        if current is None:
            module.exit_json(changed=False)
        if not module.check_mode:
            vsctl(module, "--if-exists", "del-br", p["name"])
        module.exit_json(changed=True)
    wanted_ids = {str(k): str(v) for k, v in p["external_ids"].items()}
    sets = []
    if current is None or current["datapath_type"] != p["datapath_type"]:
        sets.append(f"datapath_type={p['datapath_type']}")
    if current is None or current["fail_mode"] != p["fail_mode"]:
        sets.append(f"fail_mode={p['fail_mode']}")
    for key, value in sorted(wanted_ids.items()):
        if current is None or current["external_ids"].get(key) != value:
            sets.append(f"external_ids:{key}={json.dumps(value)}")
    if not sets:
        module.exit_json(changed=False, datapath_type=current["datapath_type"])
    if not module.check_mode:
        vsctl(module, "--may-exist", "add-br", p["name"], "--", "set", "Bridge", p["name"],
              *sets)
    module.exit_json(changed=True, datapath_type=p["datapath_type"], set=sets)


if __name__ == "__main__":
    main()
