"""NetworkPolicy (networking.k8s.io/v1) compiled to address and port sets.

Kubernetes semantics, over workloads (VirtualNetworkInterfaces) instead of pods:

- A policy selects workloads of its namespace (``spec.podSelector``, matched
  against the workload's labels). A workload selected by at least one policy
  of type Ingress (Egress) is *isolated* for ingress (egress): only what some
  rule of those policies allows gets in (out). Policies add up; order does
  not matter.
- ``policyTypes`` defaults to ``[Ingress]``, plus ``Egress`` when the policy
  has egress rules.
- A rule with no peers allows every peer, with no ports every port; a rule
  whose peers select nothing allows nothing.
- Peers: ``podSelector`` (workloads of the policy's namespace),
  ``namespaceSelector`` (every address of the selected namespaces: their
  subnets), both (workloads of the selected namespaces), ``ipBlock``
  (``cidr`` minus ``except``).
- Ports: protocol (TCP default, UDP, SCTP), a number, or a range with
  ``endPort``. Named ports name container ports, which VMs do not have: such
  an entry matches nothing, and the compiler says so in ``warnings``.

The result is consumed by :mod:`appliance.network.flows`, which adds the
baseline (traffic inside a namespace allowed, between namespaces dropped).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from appliance.kinds.registry import Obj
from appliance.network.ipam import Network
from appliance.network.model import NamespaceInfo, Workload, host_network
from appliance.util.labels import LabelSelector, SelectorError, selector_from_label_selector_object

PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True)
class PortMatch:
    protocol: str  # "tcp", "udp" or "sctp"
    first: int | None = None  # None: every port of the protocol
    last: int | None = None


@dataclass(frozen=True)
class Rule:
    """One ingress or egress rule: ``peers`` None means any peer, ``ports`` None any port."""

    peers: tuple[Network, ...] | None
    ports: tuple[PortMatch, ...] | None


@dataclass(frozen=True)
class CompiledPolicy:
    namespace: str
    name: str
    selected: tuple[Workload, ...]
    ingress: tuple[Rule, ...] | None  # None: not an Ingress policy
    egress: tuple[Rule, ...] | None
    warnings: tuple[str, ...] = field(default=(), hash=False)


def policy_types(spec: Obj) -> list[str]:
    types = spec.get("policyTypes")
    if types:
        return list(types)
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def _selector(obj: object) -> LabelSelector:
    return selector_from_label_selector_object(obj)  # type: ignore[arg-type]


def _merge_networks(nets: list[Network]) -> tuple[Network, ...]:
    return tuple(ipaddress.collapse_addresses(nets))


def _ip_block(block: Obj) -> list[Network]:
    cidr = ipaddress.ip_network(str(block["cidr"]), strict=False)
    if not isinstance(cidr, ipaddress.IPv4Network):
        return []  # IPv4-only segments: an IPv6 block cannot match
    nets = [cidr]
    for text in block.get("except") or []:
        excepted = ipaddress.ip_network(str(text), strict=False)
        if not isinstance(excepted, ipaddress.IPv4Network):
            continue
        out: list[Network] = []
        for net in nets:
            if excepted.subnet_of(net):
                out.extend(net.address_exclude(excepted))
            elif not net.subnet_of(excepted):
                out.append(net)
        nets = out
    return nets


def _peer_networks(peer: Obj, namespace: str, namespaces: Mapping[str, NamespaceInfo],
                   workloads: Sequence[Workload]) -> list[Network]:
    if peer.get("ipBlock") is not None:
        return _ip_block(peer["ipBlock"])
    pod_sel = peer.get("podSelector")
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:
        names = {namespace}
    else:
        selector = _selector(ns_sel)
        names = {n for n, info in namespaces.items() if selector.matches(info.selector_labels)}
    if pod_sel is None:
        # every address of the selected namespaces, present and future
        return [s for n in sorted(names) for s in (namespaces[n].subnets if n in namespaces
                                                    else ())]
    selector = _selector(pod_sel)
    return [host_network(w.ip) for w in workloads
            if w.namespace in names and selector.matches(w.labels)]


def _ports(ports: list[Obj] | None, where: str, warnings: list[str]) -> tuple[PortMatch, ...] | None:
    if not ports:
        return None
    out = []
    for i, port in enumerate(ports):
        proto = PROTOCOLS.get(str(port.get("protocol") or "TCP"))
        if proto is None:
            warnings.append(f"{where}.ports[{i}]: protocol {port.get('protocol')!r} is not "
                            "supported; the entry matches nothing")
            continue
        number = port.get("port")
        if number is None:
            out.append(PortMatch(proto))
        elif isinstance(number, int):
            out.append(PortMatch(proto, number, int(port.get("endPort") or number)))
        else:
            warnings.append(f"{where}.ports[{i}]: named port {number!r} needs container ports, "
                            "which VMs do not have; the entry matches nothing")
    return tuple(out)


def compile_policy(policy: Obj, namespaces: Mapping[str, NamespaceInfo],
                   workloads: Sequence[Workload]) -> CompiledPolicy:
    """Compile one NetworkPolicy against the current workloads and namespaces.

    ``workloads`` are all workloads of every namespace (peers may be anywhere).
    Raises ``SelectorError`` or ``ValueError`` only for input admission refuses.
    """
    meta = policy["metadata"]
    namespace = meta["namespace"]
    spec = policy.get("spec") or {}
    warnings: list[str] = []
    selector = _selector(spec.get("podSelector") or {})
    selected = tuple(w for w in workloads if w.namespace == namespace and
                     selector.matches(w.labels))
    types = policy_types(spec)
    compiled: dict[str, tuple[Rule, ...] | None] = {"Ingress": None, "Egress": None}
    for kind, key, peer_key in (("Ingress", "ingress", "from"), ("Egress", "egress", "to")):
        if kind not in types:
            continue
        rules = []
        for i, rule in enumerate(spec.get(key) or []):
            where = f"spec.{key}[{i}]"
            peers_spec = rule.get(peer_key)
            peers: tuple[Network, ...] | None = None
            if peers_spec:
                found: list[Network] = []
                for peer in peers_spec:
                    found += _peer_networks(peer, namespace, namespaces, workloads)
                peers = _merge_networks(found)
            ports = _ports(rule.get("ports"), where, warnings)
            if peers == () or ports == ():
                continue  # a rule that can match nothing
            rules.append(Rule(peers, ports))
        compiled[kind] = tuple(rules)
    return CompiledPolicy(namespace, meta["name"], selected, compiled["Ingress"],
                          compiled["Egress"], tuple(warnings))


def compile_policies(policies: Sequence[Obj], namespaces: Mapping[str, NamespaceInfo],
                     workloads: Sequence[Workload]) -> tuple[list[CompiledPolicy], list[str]]:
    """Compile every policy; a policy that cannot be compiled is skipped with a warning
    (it selects nothing then, which is the safe side only for ingress -- admission
    refuses such policies, so this is only reached by data written around it)."""
    out, problems = [], []
    for policy in sorted(policies, key=lambda p: (p["metadata"]["namespace"],
                                                  p["metadata"]["name"])):
        try:
            out.append(compile_policy(policy, namespaces, workloads))
        except (SelectorError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"NetworkPolicy {policy['metadata']['namespace']}/"
                            f"{policy['metadata']['name']}: {exc}")
    return out, problems
