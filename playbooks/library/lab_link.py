#!/usr/bin/python
"""Ansible module: a network link that is up and has exactly the given IPv4 addresses."""

from __future__ import annotations

import ipaddress
import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_link
short_description: Ensure a link is up with exactly a set of IPv4 addresses (or is gone)
description:
  - O(kind=dummy) creates the link when missing; O(kind=existing) expects it to exist
    (an OVS internal port) and fails naming it otherwise.
  - The link's global IPv4 addresses become exactly O(addresses) (others are removed).
  - C(state=absent) deletes a dummy link (an existing link is left alone).
options:
  name: {type: str, required: true}
  kind: {type: str, default: existing, choices: [existing, dummy]}
  addresses: {type: list, elements: str, default: [], description: "address/prefix entries"}
  wait: {type: int, default: 10, description: Seconds to wait for an existing link to appear.}
  state: {type: str, default: present, choices: [present, absent]}
"""

EXAMPLES = r"""
- lab_link: {name: plg101, addresses: [198.19.0.1/28]}
- lab_link: {name: plv101, kind: dummy, addresses: [198.18.128.1/32]}
"""

RETURN = r"""
addresses: {description: Addresses afterwards., returned: present, type: list}
"""


def ip(module: AnsibleModule, *args: str, check: bool = True) -> tuple[int, str, str]:
    rc, out, err = module.run_command(["ip", *args])
    if check and rc != 0:
        module.fail_json(msg=f"ip {' '.join(args)} failed (rc={rc}): {err.strip()}", rc=rc)
    return rc, out, err


def show(module: AnsibleModule, name: str) -> dict | None:
    rc, out, _ = ip(module, "-j", "addr", "show", "dev", name, check=False)
    if rc != 0:
        return None
    data = json.loads(out or "[]")
    return data[0] if data else None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "kind": {"type": "str", "default": "existing", "choices": ["existing", "dummy"]},
            "addresses": {"type": "list", "elements": "str", "default": []},
            "wait": {"type": "int", "default": 10},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
    )
    p = module.params
    name = p["name"]
    link = show(module, name)
    if p["state"] == "absent":
        if link is None or p["kind"] != "dummy":
            module.exit_json(changed=False)
        if not module.check_mode:
            ip(module, "link", "del", name)
        module.exit_json(changed=True)

    wanted = []
    for text in p["addresses"]:
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError as exc:
            module.fail_json(msg=f"bad address {text!r}: {exc}")
        wanted.append(f"{iface.ip}/{iface.network.prefixlen}")
    changed = False
    if link is None and p["kind"] == "dummy":
        changed = True
        if module.check_mode:
            module.exit_json(changed=True)
        ip(module, "link", "add", name, "type", "dummy")
        link = show(module, name)
    if link is None:
        import time

        deadline = time.monotonic() + p["wait"]
        while link is None and time.monotonic() < deadline:
            time.sleep(0.2)
            link = show(module, name)
        if link is None:
            module.fail_json(msg=f"link {name} does not exist")
    if "UP" not in (link.get("flags") or []):
        changed = True
        if not module.check_mode:
            ip(module, "link", "set", name, "up")
    have = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info") or []
            if a.get("family") == "inet" and a.get("scope", "global") == "global"]
    for addr in wanted:
        if addr not in have:
            changed = True
            if not module.check_mode:
                ip(module, "addr", "add", addr, "dev", name)
    for addr in have:
        if addr not in wanted:
            changed = True
            if not module.check_mode:
                ip(module, "addr", "del", addr, "dev", name)
    module.exit_json(changed=changed, addresses=wanted)


if __name__ == "__main__":
    main()
