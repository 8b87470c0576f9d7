"""Domain names: one lab's names never collide with, or orphan, another lab's."""

from __future__ import annotations

from pathlib import Path

from appliance.agent.vmnames import domain_name, orphans, pod_prefix, vm_prefix


def _obj(ns: str, name: str) -> dict[str, dict[str, str]]:
    return {"metadata": {"namespace": ns, "name": name}}


def test_names_carry_the_labs_tag_and_kind() -> None:
    a, b = Path("/var/lib/pacific-lab"), Path("/var/tmp/pacific-e2e-x/state")
    assert vm_prefix(a) != vm_prefix(b) and vm_prefix(a) == vm_prefix(str(a))
    assert vm_prefix(a).startswith("pl-") and pod_prefix(a).startswith("pp-")
    assert domain_name(_obj("dev", "web-1"), vm_prefix(a)) == f"{vm_prefix(a)}dev_web-1"
    # "_" cannot be in Kubernetes names, so a-b/c and a/b-c stay apart.
    assert domain_name(_obj("a-b", "c"), "p_") != domain_name(_obj("a", "b-c"), "p_")


def test_orphans_are_only_our_domains_without_objects() -> None:
    ours, theirs = vm_prefix("/state/a"), vm_prefix("/state/b")
    domains = [f"{ours}dev_web-1", f"{ours}dev_gone", f"{theirs}dev_gone", "unrelated"]
    assert orphans([_obj("dev", "web-1")], ours, domains) == [f"{ours}dev_gone"]
