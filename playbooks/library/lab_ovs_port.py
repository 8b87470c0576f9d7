#!/usr/bin/python
"""Ansible module: an Open vSwitch port (an access port with a VLAN tag), or none."""

from __future__ import annotations

import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_ovs_port
short_description: Ensure an OVS port with a VLAN tag and interface type, or remove ports
description:
  - C(state=present) makes port O(name) on O(bridge) with access tag O(tag) and interface
    type O(type) (C(internal) for a port the host itself uses), and sets O(external_ids).
  - C(state=absent) removes port O(name); or, with O(tag) and no O(name), every port of
    O(bridge) carrying that tag (whatever made it: libvirt, a test, by hand).
options:
  bridge: {type: str, required: true}
  name: {type: str}
  tag: {type: int, description: VLAN access tag (0-4095).}
  type: {type: str, default: "", description: "Interface type: '' (a system device) or internal."}
  external_ids: {type: dict, default: {}}
  state: {type: str, default: present, choices: [present, absent]}
"""

EXAMPLES = r"""
- lab_ovs_port: {bridge: br-int, name: plg101, tag: 101, type: internal}
- lab_ovs_port: {bridge: br-int, tag: 101, state: absent}
"""

RETURN = r"""
removed: {description: Ports removed., returned: always, type: list, elements: str}
"""


def vsctl(module: AnsibleModule, *args: str, check: bool = True) -> tuple[int, str, str]:
    rc, out, err = module.run_command(["ovs-vsctl", "--timeout=10", *args])
    if check and rc != 0:
        module.fail_json(msg=f"ovs-vsctl {' '.join(args)} failed (rc={rc}): {err.strip()}",
                         rc=rc, stdout=out, stderr=err)
    return rc, out, err


def cell(value):  # noqa: ANN001, ANN201 - ovsdb JSON
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        return [cell(v) for v in value[1]]
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        return {k: v for k, v in value[1]}
    return value


def rows(module: AnsibleModule, table: str, columns: str) -> list[dict]:
    _, out, _ = vsctl(module, "--format=json", "--data=json", f"--columns={columns}", "list",
                      table)
    data = json.loads(out)
    return [{h: cell(v) for h, v in zip(data["headings"], row, strict=True)}
            for row in data["data"]]


def bridge_ports(module: AnsibleModule, bridge: str) -> list[str]:
    rc, out, err = vsctl(module, "list-ports", bridge, check=False)
    if rc != 0:
        if "no bridge named" in err:
            return []
        module.fail_json(msg=f"ovs-vsctl list-ports {bridge} failed: {err.strip()}")
    return [n for n in out.split() if n]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "bridge": {"type": "str", "required": True},
            "name": {"type": "str"},
            "tag": {"type": "int"},
            "type": {"type": "str", "default": ""},
            "external_ids": {"type": "dict", "default": {}},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        required_if=[("state", "present", ["name"])],
        supports_check_mode=True,
    )
    p = module.params
    ports = bridge_ports(module, p["bridge"])
    if p["state"] == "absent":
        if p["name"]:
            doomed = [p["name"]] if p["name"] in ports else []
        elif p["tag"] is not None:
            tags = {r["name"]: r["tag"] for r in rows(module, "Port", "name,tag")}
            doomed = [n for n in ports if tags.get(n) == p["tag"]]
        else:
            module.fail_json(msg="state=absent needs name or tag")
        if doomed and not module.check_mode:
            args: list[str] = []
            for name in doomed:
                args += ["--", "--if-exists", "del-port", p["bridge"], name]
            vsctl(module, *args[1:])
        module.exit_json(changed=bool(doomed), removed=doomed)

    name = p["name"]
    wanted_ids = {str(k): str(v) for k, v in p["external_ids"].items()}
    sets: list[str] = []
    if name not in ports:
        args = ["--may-exist", "add-port", p["bridge"], name]
        if p["tag"] is not None:
            args.append(f"tag={p['tag']}")
        if p["type"]:
            args += ["--", "set", "Interface", name, f"type={p['type']}"]
        for key, value in sorted(wanted_ids.items()):
            args += ["--", "set", "Interface", name, f"external_ids:{key}={json.dumps(value)}"]
        if not module.check_mode:
            vsctl(module, *args)
        module.exit_json(changed=True, removed=[], created=name)
    port = next(r for r in rows(module, "Port", "name,tag") if r["name"] == name)
    iface = next(r for r in rows(module, "Interface", "name,type,external_ids")
                 if r["name"] == name)
    tag = port["tag"] if isinstance(port["tag"], int) else None
    if tag != p["tag"]:
        sets += ["--", "set", "Port", name, f"tag={p['tag']}"] if p["tag"] is not None else \
            ["--", "clear", "Port", name, "tag"]
    if (iface["type"] or "") != p["type"]:
        sets += ["--", "set", "Interface", name, "type=" + (p["type"] or '""')]
    ids = iface["external_ids"] if isinstance(iface["external_ids"], dict) else {}
    for key, value in sorted(wanted_ids.items()):
        if ids.get(key) != value:
            sets += ["--", "set", "Interface", name, f"external_ids:{key}={json.dumps(value)}"]
    if not sets:
        module.exit_json(changed=False, removed=[])
    if not module.check_mode:
        vsctl(module, *sets[1:])
    module.exit_json(changed=True, removed=[], updated=sets)


if __name__ == "__main__":
    main()
