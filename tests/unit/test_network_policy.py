"""NetworkPolicy compilation and the OpenFlow rules generated from it (policy -> flows text)."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from appliance.network import flows
from appliance.network.ipam import parse_network
from appliance.network.model import NamespaceInfo, Segment, Workload
from appliance.network.policy import compile_policy, policy_types

A_NET = parse_network("198.19.0.0/28")
B_NET = parse_network("198.19.0.16/28")
SEG_A = Segment("team-a", 101, (A_NET,), "plg101")
SEG_B = Segment("team-b", 102, (B_NET,), "plg102")
NAMESPACES = {
    "team-a": NamespaceInfo("team-a", {"team": "a"}, (A_NET,)),
    "team-b": NamespaceInfo("team-b", {"team": "b", "env": "prod"}, (B_NET,)),
}


def wl(ns: str, name: str, ip: str, **labels: str) -> Workload:
    n = int(ipaddress.IPv4Address(ip)) & 0xFF
    return Workload(ns, name, ipaddress.IPv4Address(ip), f"52:54:00:00:00:{n:02x}",
                    f"plw{n:010x}", name, labels)


A1 = wl("team-a", "a1", "198.19.0.2", app="web")
A2 = wl("team-a", "a2", "198.19.0.3", app="db")
B1 = wl("team-b", "b1", "198.19.0.18", app="web")
B2 = wl("team-b", "b2", "198.19.0.19", app="db")
WORKLOADS = [A1, A2, B1, B2]


def policy(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name, "uid": f"uid-{name}"},
            "spec": {"podSelector": {}, **spec}}


def compiled(p: dict[str, Any]):  # type: ignore[no-untyped-def]
    return compile_policy(p, NAMESPACES, WORKLOADS)


# -- port ranges -------------------------------------------------------------------------


def test_port_masks_examples() -> None:
    assert flows.port_masks(80, 80) == ["80"]
    assert flows.port_masks(8000, 8007) == ["0x1f40/0xfff8"]
    assert flows.port_masks(0, 65535) == ["0x0/0x0"]
    assert flows.port_masks(1000, 1003) == ["0x3e8/0xfffc"]
    assert flows.port_masks(1, 3) == ["1", "0x2/0xfffe"]


def test_port_masks_cover_exactly_the_range() -> None:
    rng = random.Random(5)
    for _ in range(300):
        first = rng.randrange(0, 65536)
        last = min(65535, first + rng.choice([0, 1, 2, 7, 100, 1000, 40000]))
        covered: set[int] = set()
        for m in flows.port_masks(first, last):
            value, _, mask = m.partition("/")
            v = int(value, 0)
            k = int(mask, 0) if mask else 0xFFFF
            block = {p for p in range(v, v + ((~k) & 0xFFFF) + 1)}
            assert all((p & k) == (v & k) for p in block)
            assert not covered & block
            covered |= block
        assert covered == set(range(first, last + 1))


# -- compilation ---------------------------------------------------------------------------


def test_policy_types_default() -> None:
    assert policy_types({}) == ["Ingress"]
    assert policy_types({"egress": [{}]}) == ["Ingress", "Egress"]
    assert policy_types({"policyTypes": ["Egress"]}) == ["Egress"]


def test_allow_one_port_from_another_namespace() -> None:
    p = compiled(policy("team-b", "web-from-a", podSelector={"matchLabels": {"app": "web"}},
                        ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}],
                                  "ports": [{"protocol": "TCP", "port": 8080}]}]))
    assert p.selected == (B1,)
    assert p.egress is None
    assert p.ingress is not None and len(p.ingress) == 1
    rule = p.ingress[0]
    assert rule.peers == (A_NET,)
    assert [(x.protocol, x.first, x.last) for x in rule.ports or ()] == [("tcp", 8080, 8080)]
    text = flows.policy_flows(SEG_B, [p])
    assert text == [
        "table=20,priority=1000,ip,reg6=102,nw_dst=198.19.0.18,nw_src=198.19.0.17 "
        "actions=resubmit(,30)",
        "table=20,priority=500,tcp,tp_dst=8080,reg6=102,nw_dst=198.19.0.18,"
        "nw_src=198.19.0.0/28 actions=resubmit(,30)",
        "table=20,priority=100,ip,reg6=102,nw_dst=198.19.0.18 actions=drop",
    ]


def test_deny_all_ingress() -> None:
    p = compiled(policy("team-a", "deny", policyTypes=["Ingress"]))
    assert p.selected == (A1, A2) and p.ingress == ()
    text = flows.policy_flows(SEG_A, [p])
    assert [t for t in text if "priority=500" in t] == []
    assert sum("actions=drop" in t for t in text) == 2


def test_empty_rule_allows_everything() -> None:
    p = compiled(policy("team-a", "all", ingress=[{}]))
    assert p.ingress is not None and p.ingress[0].peers is None and p.ingress[0].ports is None
    text = flows.policy_flows(SEG_A, [p])
    assert "table=20,priority=500,ip,reg6=101,nw_dst=198.19.0.2 actions=resubmit(,30)" in text


def test_pod_selector_peer_is_addresses_in_the_same_namespace() -> None:
    p = compiled(policy("team-a", "db", podSelector={"matchLabels": {"app": "db"}},
                        ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]))
    assert p.selected == (A2,)
    assert p.ingress is not None and p.ingress[0].peers == (parse_network("198.19.0.2/32"),)


def test_namespace_and_pod_selector_together() -> None:
    p = compiled(policy("team-a", "x", ingress=[{"from": [{
        "namespaceSelector": {"matchLabels": {"env": "prod"}},
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In",
                                              "values": ["db"]}]}}]}]))
    assert p.ingress is not None and p.ingress[0].peers == (parse_network("198.19.0.19/32"),)


def test_namespace_name_label_is_implicit() -> None:
    p = compiled(policy("team-a", "x", ingress=[{"from": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "team-b"}}}]}]))
    assert p.ingress is not None and p.ingress[0].peers == (B_NET,)


def test_ip_block_with_except() -> None:
    p = compiled(policy("team-a", "x", egress=[{"to": [{"ipBlock": {
        "cidr": "198.18.200.0/24", "except": ["198.18.200.128/25"]}}],
        "ports": [{"protocol": "UDP", "port": 53}]}], policyTypes=["Egress"]))
    assert p.ingress is None
    assert p.egress is not None and p.egress[0].peers == (parse_network("198.18.200.0/25"),)
    text = flows.policy_flows(SEG_A, [p])
    assert ("table=10,priority=500,udp,tp_dst=53,reg6=101,reg7=1,nw_src=198.19.0.2,"
            "nw_dst=198.18.200.0/25 actions=resubmit(,20)") in text
    assert "table=10,priority=100,ip,reg6=101,reg7=1,nw_src=198.19.0.3 actions=drop" in text


def test_port_range_and_protocol_only() -> None:
    p = compiled(policy("team-a", "x", ingress=[{"ports": [
        {"protocol": "TCP", "port": 8000, "endPort": 8007}, {"protocol": "SCTP"}]}]))
    text = flows.policy_flows(SEG_A, [p])
    assert ("table=20,priority=500,tcp,tp_dst=0x1f40/0xfff8,reg6=101,nw_dst=198.19.0.2 "
            "actions=resubmit(,30)") in text
    assert "table=20,priority=500,sctp,reg6=101,nw_dst=198.19.0.2 actions=resubmit(,30)" in text


def test_named_port_matches_nothing_and_says_why() -> None:
    p = compiled(policy("team-a", "x", ingress=[{"ports": [{"port": "http"}]}]))
    assert p.ingress == ()  # isolated, nothing allowed
    assert any("named port 'http'" in w for w in p.warnings)


def test_rule_whose_peers_select_nothing_allows_nothing() -> None:
    p = compiled(policy("team-a", "x", ingress=[{"from": [{"podSelector": {
        "matchLabels": {"app": "nothing"}}}]}]))
    assert p.ingress == ()


def test_policies_add_up() -> None:
    p1 = compiled(policy("team-a", "p1", ingress=[{"ports": [{"port": 80}]}]))
    p2 = compiled(policy("team-a", "p2", podSelector={"matchLabels": {"app": "web"}},
                         ingress=[{"ports": [{"port": 443}]}]))
    text = flows.policy_flows(SEG_A, [p1, p2])
    a1_allows = [t for t in text if "nw_dst=198.19.0.2 " in t and "priority=500" in t]
    assert [t.split(",")[3] for t in a1_allows] == ["tp_dst=80", "tp_dst=443"]
    a2_allows = [t for t in text if "nw_dst=198.19.0.3 " in t and "priority=500" in t]
    assert [t.split(",")[3] for t in a2_allows] == ["tp_dst=80"]


def test_policies_of_other_namespaces_are_ignored() -> None:
    p = compiled(policy("team-b", "deny"))
    assert flows.policy_flows(SEG_A, [p]) == []


# -- the namespace's flows -----------------------------------------------------------------


def test_classify_and_baseline_flows() -> None:
    text = flows.namespace_flows(SEG_A, WORKLOADS, [])
    assert "table=0,priority=100,in_port=plg101,arp actions=NORMAL" in text
    assert ("table=0,priority=100,in_port=plw0000000002,dl_src=52:54:00:00:00:02,ip,"
            "nw_src=198.19.0.2 actions=load:101->NXM_NX_REG6[],load:1->NXM_NX_REG7[],"
            "ct(table=1,zone=NXM_NX_REG6[0..15])") in text
    assert ("table=0,priority=100,in_port=plw0000000002,dl_src=52:54:00:00:00:02,arp,"
            "arp_spa=198.19.0.2,arp_sha=52:54:00:00:00:02 actions=NORMAL") in text
    assert "table=0,priority=105,in_port=plw0000000002,udp,tp_src=67 actions=drop" in text
    assert ("table=20,priority=50,ip,reg6=101,nw_src=198.19.0.0/28,nw_dst=198.19.0.0/28 "
            "actions=resubmit(,30)") in text
    assert "table=20,priority=40,ip,reg6=101,nw_dst=198.19.0.0/28 actions=drop" in text
    assert not any("plw0000000012" in t for t in text)  # team-b's workloads are not here


def test_two_subnets_allow_each_other() -> None:
    seg = Segment("team-a", 101, (A_NET, parse_network("198.19.0.32/28")), "plg101")
    baseline = flows.baseline_flows(seg)
    assert len([t for t in baseline if "priority=50" in t]) == 4
    assert len([t for t in baseline if "priority=40" in t]) == 2


def test_base_pipeline() -> None:
    base = flows.base_flows()
    assert base[0] == "table=0,priority=0 actions=drop"
    assert "table=1,priority=50,ct_state=+new+trk,ip actions=resubmit(,10)" in base
    assert "table=30,priority=0,ip actions=ct(commit,zone=NXM_NX_REG6[0..15]),NORMAL" in base


def test_flows_are_deterministic() -> None:
    p = compiled(policy("team-b", "x", ingress=[{"from": [{"namespaceSelector": {}}]}]))
    shuffled = WORKLOADS[:]
    random.Random(1).shuffle(shuffled)
    assert flows.namespace_flows(SEG_B, shuffled, [p]) == \
        flows.namespace_flows(SEG_B, WORKLOADS, [p])


@pytest.mark.parametrize("bad", [{"matchExpressions": [{"key": "a", "operator": "Bogus"}]}])
def test_invalid_selector_raises(bad: dict[str, Any]) -> None:
    from appliance.util.labels import SelectorError

    with pytest.raises(SelectorError):
        compiled(policy("team-a", "x", podSelector=bad))
