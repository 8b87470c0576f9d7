#!/usr/bin/python
"""Ansible module: one nftables table with exactly the given content."""

from __future__ import annotations

import hashlib
import json
import os

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_nft_table
short_description: Make one nftables table exactly the given ruleset, atomically
description:
  - O(content) is the body of the table (its chains, sets and rules). The table is
    replaced in one C(nft -f) transaction (create, delete, create) when it differs.
  - Idempotence without re-parsing nft syntax: after applying, nft's own listing of the
    table (C(nft -s list table), without counter values) is recorded in O(state_file)
    next to a digest of O(content). The table is unchanged when the digest matches and
    the live listing still equals the recorded one, so a rule deleted by hand is noticed
    and put back.
  - C(state=absent) deletes the table and the state file.
options:
  family: {type: str, default: inet, choices: [ip, ip6, inet, arp, bridge, netdev]}
  name: {type: str, required: true}
  content: {type: str, default: "", description: Table body (what goes between the braces).}
  state_file: {type: path, required: true}
  state: {type: str, default: present, choices: [present, absent]}
"""

EXAMPLES = r"""
- lab_nft_table:
    name: pl_ns101
    content: "{{ lookup('template', 'nft.j2') }}"
    state_file: /var/lib/pacific-lab/network/pl/vlan101/nft.json
"""

RETURN = r"""
listing: {description: nft's listing of the table afterwards., returned: present, type: str}
"""


def listing(module: AnsibleModule, family: str, name: str) -> str | None:
    rc, out, _ = module.run_command(["nft", "-s", "list", "table", family, name])
    return out if rc == 0 else None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "family": {"type": "str", "default": "inet",
                       "choices": ["ip", "ip6", "inet", "arp", "bridge", "netdev"]},
            "name": {"type": "str", "required": True},
            "content": {"type": "str", "default": ""},
            "state_file": {"type": "path", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
    )
    p = module.params
    family, name, state_file = p["family"], p["name"], p["state_file"]
    live = listing(module, family, name)
    if p["state"] == "absent":
        changed = live is not None or os.path.exists(state_file)
        if changed and not module.check_mode:
            if live is not None:
                rc, _, err = module.run_command(["nft", "delete", "table", family, name])
                if rc != 0:
                    module.fail_json(msg=f"nft delete table {family} {name} failed: {err}")
            if os.path.exists(state_file):
                os.unlink(state_file)
        module.exit_json(changed=changed)

    digest = hashlib.sha256(p["content"].encode()).hexdigest()
    try:
        with open(state_file) as fh:
            recorded = json.load(fh)
    except (OSError, ValueError):
        recorded = {}
    if live is not None and recorded.get("digest") == digest and recorded.get("listing") == live:
        module.exit_json(changed=False, listing=live)
    if module.check_mode:
        module.exit_json(changed=True)
    script = (f"table {family} {name} {{}}\n"
              f"delete table {family} {name}\n"
              f"table {family} {name} {{\n{p['content']}\n}}\n")
    rc, out, err = module.run_command(["nft", "-f", "-"], data=script, binary_data=True)
    if rc != 0:
        module.fail_json(msg=f"nft rejected the ruleset of table {family} {name}: "
                             f"{err.strip()}", rc=rc, script=script)
    live = listing(module, family, name) or ""
    os.makedirs(os.path.dirname(state_file) or ".", exist_ok=True)
    tmp = state_file + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"digest": digest, "listing": live}, fh)
    os.replace(tmp, state_file)
    module.exit_json(changed=True, listing=live)


if __name__ == "__main__":
    main()
