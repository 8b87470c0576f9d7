#!/usr/bin/python
"""Ansible module: set a kernel parameter (runtime only) unless it already has the value."""

from __future__ import annotations

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_sysctl
short_description: Set a sysctl through /proc/sys (no file under /etc is written)
description:
  - ansible-core has no sysctl module (it lives in the ansible.posix collection); this
    one writes C(/proc/sys/...) when the value differs. The playbook that needs the value
    runs on every start, so nothing is persisted.
options:
  name: {type: str, required: true, description: "Dotted name, e.g. net.ipv4.ip_forward."}
  value: {type: str, required: true}
"""

EXAMPLES = r"""
- lab_sysctl: {name: net.ipv4.ip_forward, value: "1"}
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={"name": {"type": "str", "required": True},
                       "value": {"type": "str", "required": True}},
        supports_check_mode=True,
    )
    name, value = module.params["name"], module.params["value"]
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        current = path.read_text().strip()
    except OSError as exc:
        module.fail_json(msg=f"cannot read {path}: {exc}")
    if current.split() == value.split():
        module.exit_json(changed=False, value=current)
    if not module.check_mode:
        try:
            path.write_text(value + "\n")
        except OSError as exc:
            module.fail_json(msg=f"cannot set {name}={value}: {exc}")
    module.exit_json(changed=True, value=value, previous=current)


if __name__ == "__main__":
    main()
