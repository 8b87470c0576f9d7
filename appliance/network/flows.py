"""OpenFlow rules for the integration bridge: isolation and NetworkPolicy with conntrack.

Why OpenFlow and not nftables: traffic between two workloads of one namespace
is switched inside Open vSwitch and never reaches the host's IP stack, so
only the switch can filter it; and conntrack (``ct()``) works in the
userspace datapath as well as in the kernel one. Traffic between namespaces
is routed by the host between the two gateway ports, so it crosses the
bridge twice and is checked on the way in to its destination segment.

The pipeline (tables)::

  0   classify: which port, which namespace (reg6 = VLAN, reg7 = 1 from a
      workload / 2 from the gateway); anti-spoofing (a workload may only send
      from its own MAC and IP); ARP and DHCP pass; then ct(zone=VLAN) -> 1.
      Anything unknown is dropped (a port without flows yet, IPv6).
  1   connection state: established/related -> NORMAL; invalid -> drop;
      new -> 10.
  10  egress policy of the sending workload (only from workload ports).
  20  ingress policy of the receiving workload, and the namespace baseline:
      sources inside the namespace's subnets are allowed, others dropped.
  30  ct(commit) and NORMAL (the learning switch with VLAN access ports).

Each namespace's flows carry the cookie ``vlan``; the base pipeline carries
:data:`appliance.network.config.BASE_COOKIE`. Ports are named
(``in_port=plw...``); the ``lab_ovs_flows`` module resolves names to
OpenFlow port numbers when it installs the flows, and leaves out the flows of
a port that does not exist (yet), so such a port can send nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from appliance.network.model import Segment, Workload, host_network
from appliance.network.policy import CompiledPolicy, PortMatch, Rule

T_CLASSIFY, T_CT, T_EGRESS, T_INGRESS, T_COMMIT = 0, 1, 10, 20, 30
FROM_WORKLOAD, FROM_GATEWAY = 1, 2

CT = "ct(table=1,zone=NXM_NX_REG6[0..15])"

# priorities
P_DHCP = 110
P_CLASSIFY = 100
P_GATEWAY_SOURCE = 1000
P_ALLOW = 500
P_ISOLATED = 100
P_BASELINE_ALLOW = 50
P_BASELINE_DROP = 40


def base_flows() -> list[str]:
    """The bridge-wide pipeline (no cookie: the installer adds it)."""
    return [
        f"table={T_CLASSIFY},priority=0 actions=drop",
        f"table={T_CT},priority=100,ct_state=+est+trk,ip actions=NORMAL",
        f"table={T_CT},priority=100,ct_state=+rel+trk,ip actions=NORMAL",
        f"table={T_CT},priority=90,ct_state=+inv+trk,ip actions=drop",
        f"table={T_CT},priority=50,ct_state=+new+trk,ip actions=resubmit(,{T_EGRESS})",
        f"table={T_CT},priority=0 actions=drop",
        f"table={T_EGRESS},priority=0 actions=resubmit(,{T_INGRESS})",
        f"table={T_INGRESS},priority=0 actions=resubmit(,{T_COMMIT})",
        f"table={T_COMMIT},priority=0,ip actions=ct(commit,zone=NXM_NX_REG6[0..15]),NORMAL",
    ]


def port_masks(first: int, last: int) -> list[str]:
    """Cover the port range first..last with value/mask pairs (OpenFlow has no ranges)."""
    if not 0 <= first <= last <= 65535:
        raise ValueError(f"bad port range {first}-{last}")
    out = []
    value = first
    while value <= last:
        size = value & -value if value else 1 << 16
        while size > 1 and value + size - 1 > last:
            size >>= 1
        if size == 1:
            out.append(str(value))
        else:
            out.append(f"{value:#x}/{(0xFFFF ^ (size - 1)):#x}")
        value += size
    return out


def _port_matches(ports: tuple[PortMatch, ...] | None) -> list[str]:
    """Match fragments for a rule's ports: ``ip`` (any), ``tcp``, ``tcp,tp_dst=80``..."""
    if ports is None:
        return ["ip"]
    out: list[str] = []
    for port in ports:
        if port.first is None:
            out.append(port.protocol)
            continue
        last = port.last if port.last is not None else port.first
        out += [f"{port.protocol},tp_dst={m}" for m in port_masks(port.first, last)]
    return list(dict.fromkeys(out))


def _peer_matches(peers: tuple[object, ...] | None, field: str) -> list[str]:
    if peers is None:
        return [""]
    return [f"{field}={_net(p)}" for p in peers]


def _net(net: object) -> str:
    text = str(net)
    return text[:-3] if text.endswith("/32") else text


def _join(*parts: str) -> str:
    return ",".join(p for p in parts if p)


def classify_flows(segment: Segment, workloads: Sequence[Workload]) -> list[str]:
    v, gw = segment.vlan, segment.gateway_port
    load = f"load:{v}->NXM_NX_REG6[]"
    flows = [
        f"table=0,priority={P_DHCP},in_port={gw},udp,tp_src=67,tp_dst=68 actions=NORMAL",
        f"table=0,priority={P_CLASSIFY},in_port={gw},arp actions=NORMAL",
        f"table=0,priority={P_CLASSIFY},in_port={gw},ip actions={load},"
        f"load:{FROM_GATEWAY}->NXM_NX_REG7[],{CT}",
    ]
    for w in sorted(workloads, key=lambda w: w.port):
        src = f"in_port={w.port},dl_src={w.mac}"
        flows += [
            f"table=0,priority={P_DHCP},{src},udp,tp_src=68,tp_dst=67 actions=NORMAL",
            f"table=0,priority={P_DHCP - 5},in_port={w.port},udp,tp_src=67 actions=drop",
            f"table=0,priority={P_CLASSIFY},{src},arp,arp_spa={w.ip},arp_sha={w.mac} "
            "actions=NORMAL",
            f"table=0,priority={P_CLASSIFY},{src},ip,nw_src={w.ip} actions={load},"
            f"load:{FROM_WORKLOAD}->NXM_NX_REG7[],{CT}",
        ]
    return flows


def _rule_flows(table: int, selector: str, rule: Rule, peer_field: str, action: str
                ) -> list[str]:
    return [f"table={table},priority={P_ALLOW},{_join(ports, selector, peer)} actions={action}"
            for ports in _port_matches(rule.ports)
            for peer in _peer_matches(rule.peers, peer_field)]


def baseline_flows(segment: Segment) -> list[str]:
    """Inside a namespace everything is allowed; from elsewhere nothing is."""
    v = segment.vlan
    flows = []
    for dst in segment.subnets:
        for src in segment.subnets:
            flows.append(f"table={T_INGRESS},priority={P_BASELINE_ALLOW},ip,reg6={v},"
                         f"nw_src={src},nw_dst={dst} actions=resubmit(,{T_COMMIT})")
        flows.append(f"table={T_INGRESS},priority={P_BASELINE_DROP},ip,reg6={v},nw_dst={dst} "
                     "actions=drop")
    return flows


def policy_flows(segment: Segment, policies: Iterable[CompiledPolicy]) -> list[str]:
    """Flows for the workloads of ``segment`` that policies isolate."""
    v = segment.vlan
    ingress: dict[Workload, list[Rule]] = {}
    egress: dict[Workload, list[Rule]] = {}
    for policy in policies:
        if policy.namespace != segment.namespace:
            continue
        for w in policy.selected:
            if policy.ingress is not None:
                ingress.setdefault(w, []).extend(policy.ingress)
            if policy.egress is not None:
                egress.setdefault(w, []).extend(policy.egress)
    flows: list[str] = []
    for w in sorted(ingress, key=lambda w: w.port):
        selector = f"reg6={v},nw_dst={w.ip}"
        for gateway in segment.gateways:  # the host: load balancers, health checks, DNS
            flows.append(f"table={T_INGRESS},priority={P_GATEWAY_SOURCE},ip,{selector},"
                         f"nw_src={gateway} actions=resubmit(,{T_COMMIT})")
        for rule in ingress[w]:
            flows += _rule_flows(T_INGRESS, selector, rule, "nw_src", f"resubmit(,{T_COMMIT})")
        flows.append(f"table={T_INGRESS},priority={P_ISOLATED},ip,{selector} actions=drop")
    for w in sorted(egress, key=lambda w: w.port):
        selector = f"reg6={v},reg7={FROM_WORKLOAD},nw_src={w.ip}"
        for rule in egress[w]:
            flows += _rule_flows(T_EGRESS, selector, rule, "nw_dst", f"resubmit(,{T_INGRESS})")
        flows.append(f"table={T_EGRESS},priority={P_ISOLATED},ip,{selector} actions=drop")
    return list(dict.fromkeys(flows))


def namespace_flows(segment: Segment, workloads: Sequence[Workload],
                    policies: Iterable[CompiledPolicy]) -> list[str]:
    """Every flow of one namespace (without cookie)."""
    here = [w for w in workloads if w.namespace == segment.namespace]
    return classify_flows(segment, here) + baseline_flows(segment) + \
        policy_flows(segment, policies)


__all__ = ["base_flows", "namespace_flows", "port_masks", "host_network"]
