"""Namespace networking kinds (the NSX-T stand-in).

- ``vmware.com/v1alpha1 VirtualNetwork``: a namespace's segment, as NCP's
  kind of that name: VLAN, subnets, gateway, SNAT. The network controller
  makes one called ``default`` in every namespace.
- ``vmware.com/v1alpha1 VirtualNetworkInterface``: one NIC of a workload (a
  VM, a pod VM, a test host) on a namespace's network, as NCP's kind: its
  address, MAC, OVS port and VLAN are in its status.
- ``ipam.pacific.lab/v1alpha1`` ``Subnet``, ``IPAddress`` and ``VLAN``:
  cluster-scoped allocation records, one object per allocated thing and named
  after it (``198.19.0.16-28``, ``198.19.0.18``, ``vlan-101``), so the store
  refuses to hand out the same one twice.
- ``networking.k8s.io/v1 NetworkPolicy`` and ``core/v1 Service``
  (built-in kinds: kubectl sends them strategic merge patches).
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal

from appliance.errors import Cause
from appliance.kinds.services import service_causes
from appliance.kinds.registry import AdmissionContext, Kind, Lookup, Obj, PrinterColumn, Version
from appliance.kinds.schema import (
    CONDITION,
    array,
    boolean,
    int_or_string,
    integer,
    obj,
    preserve,
    string,
    string_map,
    top_level,
)
from appliance.util.labels import SelectorError, selector_from_label_selector_object
from appliance.util.names import dns1123_label

NET_GROUP = "vmware.com"
NET_VERSION = "v1alpha1"
IPAM_GROUP = "ipam.pacific.lab"
IPAM_VERSION = "v1alpha1"
NETPOL_GROUP = "networking.k8s.io"

NETWORK_FINALIZER = "vmware.com/virtualnetwork"
INTERFACE_FINALIZER = "vmware.com/virtualnetworkinterface"
SERVICE_FINALIZER = "pacific.lab/load-balancer"
DEFAULT_NETWORK = "default"

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # IANA_SVC_NAME shape
PROTOCOLS = ("TCP", "UDP", "SCTP")

AGE = PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp")
READY = PrinterColumn("Ready", json_path='.status.conditions[?(@.type=="Ready")].status')
REF = obj({"apiVersion": string(), "kind": string(), "name": string(), "uid": string()})

# -- VirtualNetwork ---------------------------------------------------------------------

def _validate_network(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    causes = []
    for i, text in enumerate((new.get("spec") or {}).get("cidrs") or []):
        try:
            net = ipaddress.ip_network(str(text), strict=True)
        except ValueError as exc:
            causes.append(Cause(f"spec.cidrs[{i}]", f"Invalid value: {text!r}: {exc}"))
            continue
        if net.version != 4:
            causes.append(Cause(f"spec.cidrs[{i}]", f"Invalid value: {text!r}: must be IPv4"))
        elif net.prefixlen > 29:
            causes.append(Cause(f"spec.cidrs[{i}]", f"Invalid value: {text!r}: a segment needs "
                                                    "at least a /29"))
    return causes


SUBNET_STATUS = obj({"cidr": string(), "gateway": string()})

VIRTUALNETWORK = Kind(
    group=NET_GROUP, kind="VirtualNetwork", plural="virtualnetworks",
    singular="virtualnetwork", namespaced=True, short_names=("vnet",),
    default_finalizers=(NETWORK_FINALIZER,), validate=_validate_network,
    versions=(Version(NET_VERSION, top_level(
        spec=obj({
            "snat": boolean("SNAT egress to the host's uplink (NSX's NAT mode); false "
                            "routes the namespace's addresses as they are", default=True),
            "subnetPrefixLength": integer("Size of each subnet taken from the pool "
                                          "(default: the supervisor's setting, /28)",
                                          minimum=16, maximum=29),
            "cidrs": array(string(), description="Explicit subnets instead of ones from "
                                                 "the pool (must not overlap any other)"),
        }),
        status=obj({
            "vlan": integer(), "bridge": string(), "gateway": string(),
            "gatewayPort": string(), "dnsDomain": string(),
            "subnets": array(SUBNET_STATUS),
            "snat": obj({"enabled": boolean(), "uplink": string()}),
            "addresses": obj({"used": integer(), "total": integer()}),
            "conditions": array(CONDITION, merge_key="type"),
            "observedGeneration": integer(),
        })), storage=True, printer_columns=(
            PrinterColumn("VLAN", type="integer", json_path=".status.vlan"),
            PrinterColumn("Gateway", json_path=".status.gateway"),
            PrinterColumn("Subnets", json_path=".status.subnets[*].cidr"),
            PrinterColumn("SNAT", type="boolean", json_path=".status.snat.enabled"),
            READY, AGE,
            PrinterColumn("Used", type="integer", json_path=".status.addresses.used",
                          priority=1),
            PrinterColumn("Uplink", json_path=".status.snat.uplink", priority=1))),),
)


# -- VirtualNetworkInterface ------------------------------------------------------------

IP_STATUS = obj({"ip": string(), "prefixLength": integer(), "subnetMask": string(),
                 "gateway": string()})


def _validate_interface(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    spec = new.get("spec") or {}
    causes = []
    mac = spec.get("macAddress")
    if mac and (not _MAC_RE.match(mac) or int(mac[:2], 16) & 1):
        causes.append(Cause("spec.macAddress", f"Invalid value: {mac!r}: must be a unicast "
                                               "MAC address like 52:54:00:12:34:56"))
    host = spec.get("hostName")
    if host:
        causes += [Cause("spec.hostName", f"Invalid value: {host!r}: {m}")
                   for m in dns1123_label(host)]
    return causes


VIRTUALNETWORKINTERFACE = Kind(
    group=NET_GROUP, kind="VirtualNetworkInterface", plural="virtualnetworkinterfaces",
    singular="virtualnetworkinterface", namespaced=True, short_names=("vnetif",),
    default_finalizers=(INTERFACE_FINALIZER,), validate=_validate_interface,
    immutable_fields=("spec.virtualNetwork", "spec.macAddress"),
    versions=(Version(NET_VERSION, top_level(
        spec=obj({
            "virtualNetwork": string(default=DEFAULT_NETWORK),
            "macAddress": string("Fixed MAC address; generated from the uid if empty"),
            "hostName": string("DNS name in the namespace; the object's name if empty"),
        }),
        status=obj({
            "ipAddresses": array(IP_STATUS), "macAddress": string(), "portName": string(),
            "vlan": integer(), "bridge": string(), "dnsName": string(),
            "nameservers": array(string()), "searchDomains": array(string()),
            "conditions": array(CONDITION, merge_key="type"),
        })), storage=True, printer_columns=(
            PrinterColumn("IP", json_path=".status.ipAddresses[0].ip"),
            PrinterColumn("MAC", json_path=".status.macAddress"),
            PrinterColumn("Port", json_path=".status.portName"),
            READY, AGE,
            PrinterColumn("DNS-Name", json_path=".status.dnsName", priority=1))),),
)

# -- allocation records (cluster-scoped) --------------------------------------------------

OWNER = obj({"apiVersion": string(), "kind": string(), "name": string(), "namespace": string(),
             "uid": string()})


def _allocation(kind: str, plural: str, short: tuple[str, ...], spec: Obj,
                columns: tuple[PrinterColumn, ...]) -> Kind:
    return Kind(group=IPAM_GROUP, kind=kind, plural=plural, singular=kind.lower(),
                namespaced=False, short_names=short, has_status=False,
                immutable_fields=("spec",),
                versions=(Version(IPAM_VERSION, top_level(spec=spec), storage=True,
                                  printer_columns=(*columns, AGE)),))


SUBNET = _allocation("Subnet", "subnets", ("ipsubnet",), obj({
    "cidr": string(), "gateway": string(), "namespace": string(), "owner": OWNER}), (
    PrinterColumn("CIDR", json_path=".spec.cidr"),
    PrinterColumn("Gateway", json_path=".spec.gateway"),
    PrinterColumn("Namespace", json_path=".spec.namespace")))

IPADDRESS = _allocation("IPAddress", "ipaddresses", ("ipaddr",), obj({
    "address": string(), "prefixLength": integer(), "gateway": string(),
    "purpose": string(enum=["Workload", "LoadBalancer", "ClusterIP"]),
    "namespace": string(), "owner": OWNER}), (
    PrinterColumn("Address", json_path=".spec.address"),
    PrinterColumn("Purpose", json_path=".spec.purpose"),
    PrinterColumn("Namespace", json_path=".spec.namespace"),
    PrinterColumn("Owner", json_path=".spec.owner.name")))

VLAN = _allocation("VLAN", "vlans", (), obj({
    "vlan": integer(), "namespace": string(), "owner": OWNER}), (
    PrinterColumn("VLAN", type="integer", json_path=".spec.vlan"),
    PrinterColumn("Namespace", json_path=".spec.namespace")))

# -- NetworkPolicy (networking.k8s.io/v1) -----------------------------------------------

LABEL_SELECTOR = obj({
    "matchLabels": string_map(),
    "matchExpressions": array(obj({"key": string(), "operator": string(),
                                   "values": array(string())}, required=["key", "operator"])),
})
POLICY_PEER = obj({
    "podSelector": LABEL_SELECTOR, "namespaceSelector": LABEL_SELECTOR,
    "ipBlock": obj({"cidr": string(), "except": array(string())}, required=["cidr"]),
})
POLICY_PORT = obj({"protocol": string(default="TCP"), "port": int_or_string(),
                   "endPort": integer()})

NETWORKPOLICY_SCHEMA = top_level(spec=obj({
    "podSelector": LABEL_SELECTOR,
    "policyTypes": array(string(enum=["Ingress", "Egress"])),
    "ingress": array(obj({"from": array(POLICY_PEER), "ports": array(POLICY_PORT)})),
    "egress": array(obj({"to": array(POLICY_PEER), "ports": array(POLICY_PORT)})),
}, required=["podSelector"]), status=preserve(type="object"))


def _selector_causes(path: str, selector: object) -> list[Cause]:
    if selector is None:
        return []
    try:
        selector_from_label_selector_object(selector)  # type: ignore[arg-type]
    except SelectorError as exc:
        return [Cause(path, f"Invalid value: {exc}")]
    return []


def _service_name(name: str) -> bool:
    return bool(_PORT_NAME_RE.match(name)) and len(name) <= 15 and \
        re.search(r"[a-z]", name) is not None


def policy_port_causes(path: str, port: Obj) -> list[Cause]:
    causes = []
    protocol = port.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        causes.append(Cause(f"{path}.protocol", f"Unsupported value: {protocol!r}: supported "
                                                "values: \"TCP\", \"UDP\", \"SCTP\"",
                            "FieldValueNotSupported"))
    number = port.get("port")
    end = port.get("endPort")
    if isinstance(number, int):
        if not 1 <= number <= 65535:
            causes.append(Cause(f"{path}.port", f"Invalid value: {number}: must be between 1 "
                                                "and 65535, inclusive"))
    elif isinstance(number, str) and not _service_name(number):
        causes.append(Cause(f"{path}.port", f"Invalid value: {number!r}: must be a port "
                                            "number or an IANA service name"))
    if end is not None:
        if not isinstance(number, int):
            causes.append(Cause(f"{path}.endPort", "Invalid value: endPort needs a numeric "
                                                   "port"))
        elif not number <= end <= 65535:
            causes.append(Cause(f"{path}.endPort", f"Invalid value: {end}: must be between "
                                                   f"port ({number}) and 65535"))
    return causes


def _peer_causes(path: str, peer: Obj) -> list[Cause]:
    causes: list[Cause] = []
    block = peer.get("ipBlock")
    if block is not None and (peer.get("podSelector") is not None
                              or peer.get("namespaceSelector") is not None):
        causes.append(Cause(path, "Invalid value: ipBlock may not be combined with "
                                  "podSelector or namespaceSelector", "FieldValueForbidden"))
    if block is None and peer.get("podSelector") is None and \
            peer.get("namespaceSelector") is None:
        causes.append(Cause(path, "Required value: must specify a peer", "FieldValueRequired"))
    causes += _selector_causes(f"{path}.podSelector", peer.get("podSelector"))
    causes += _selector_causes(f"{path}.namespaceSelector", peer.get("namespaceSelector"))
    if block is not None:
        try:
            cidr = ipaddress.ip_network(str(block.get("cidr")), strict=False)
        except ValueError as exc:
            return [*causes, Cause(f"{path}.ipBlock.cidr", f"Invalid value: "
                                                           f"{block.get('cidr')!r}: {exc}")]
        for j, text in enumerate(block.get("except") or []):
            try:
                excepted = ipaddress.ip_network(str(text), strict=False)
            except ValueError as exc:
                causes.append(Cause(f"{path}.ipBlock.except[{j}]", f"Invalid value: {text!r}: "
                                                                   f"{exc}"))
                continue
            inside = excepted.version == cidr.version and \
                excepted.subnet_of(cidr)  # type: ignore[arg-type]
            if not inside or excepted == cidr:
                causes.append(Cause(f"{path}.ipBlock.except[{j}]",
                                    f"Invalid value: {text!r}: must be a strict subset of "
                                    f"{cidr}"))
    return causes


def _validate_policy(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    spec = new.get("spec") or {}
    causes = _selector_causes("spec.podSelector", spec.get("podSelector"))
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            for j, peer in enumerate(rule.get(peers_key) or []):
                causes += _peer_causes(f"spec.{direction}[{i}].{peers_key}[{j}]", peer)
            for j, port in enumerate(rule.get("ports") or []):
                causes += policy_port_causes(f"spec.{direction}[{i}].ports[{j}]", port)
    types = spec.get("policyTypes") or []
    if len(set(types)) != len(types):
        causes.append(Cause("spec.policyTypes", "Duplicate value", "FieldValueDuplicate"))
    return causes


def _pod_selector_text(o: Obj) -> str:
    sel = (o.get("spec") or {}).get("podSelector") or {}
    try:
        text = str(selector_from_label_selector_object(sel))
    except SelectorError:
        return "<invalid>"
    return text or "<none>"


NETWORKPOLICY = Kind(
    group=NETPOL_GROUP, kind="NetworkPolicy", plural="networkpolicies",
    singular="networkpolicy", namespaced=True, short_names=("netpol",), builtin=True,
    has_status=False, validate=_validate_policy,
    versions=(Version("v1", NETWORKPOLICY_SCHEMA, storage=True, printer_columns=(
        PrinterColumn("Pod-Selector", compute=_pod_selector_text), AGE)),),
)

# -- core/v1 Service ------------------------------------------------------------------------

SERVICE_TYPES = ("ClusterIP", "LoadBalancer", "NodePort", "ExternalName")


def _service_ports_text(o: Obj) -> str:
    parts = []
    for p in (o.get("spec") or {}).get("ports") or []:
        text = f"{p.get('port')}"
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        parts.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(parts) or "<none>"


def _external_ip(o: Obj) -> str:
    ingress = (((o.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
    ips = [i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")]
    if ips:
        return ",".join(ips)
    return "<pending>" if (o.get("spec") or {}).get("type") == "LoadBalancer" else "<none>"


def _validate_service(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    return service_causes(new.get("spec") or {}, SERVICE_TYPES, PROTOCOLS, "ClusterIP")


def _service_consumes(o: Obj, lookup: Lookup) -> dict[str, Decimal]:
    if (o.get("spec") or {}).get("type") == "LoadBalancer":
        return {"services.loadbalancers": Decimal(1)}
    return {}


SERVICE = Kind(
    group="", kind="Service", plural="services", singular="service", namespaced=True,
    short_names=("svc",), categories=("all",), builtin=True, validate=_validate_service,
    consumes=_service_consumes,
    versions=(Version("v1", top_level(
        spec=obj({
            "type": string(default="ClusterIP"),
            "ports": array(obj({
                "name": string(), "protocol": string(default="TCP"), "port": integer(),
                "targetPort": int_or_string(), "nodePort": integer(),
                "appProtocol": string()}, required=["port"]), merge_key="port"),
            "selector": string_map(), "clusterIP": string(), "clusterIPs": array(string()),
            "loadBalancerIP": string(), "loadBalancerSourceRanges": array(string()),
            "externalName": string(), "externalIPs": array(string()),
            "sessionAffinity": string(default="None"), "externalTrafficPolicy": string(),
            "internalTrafficPolicy": string(), "ipFamilies": array(string()),
            "ipFamilyPolicy": string(), "publishNotReadyAddresses": boolean(),
            "allocateLoadBalancerNodePorts": boolean(), "loadBalancerClass": string(),
            "healthCheckNodePort": integer(), "sessionAffinityConfig": preserve(type="object"),
        }),
        status=obj({"loadBalancer": obj({"ingress": array(obj({
            "ip": string(), "hostname": string(), "ipMode": string(),
            "ports": array(preserve(type="object"))}))}),
            "conditions": array(CONDITION, merge_key="type")})),
        storage=True, printer_columns=(
            PrinterColumn("Name", format="name", json_path=".metadata.name"),
            PrinterColumn("Type", json_path=".spec.type"),
            PrinterColumn("Cluster-IP", json_path=".spec.clusterIP"),
            PrinterColumn("External-IP", compute=_external_ip),
            PrinterColumn("Port(s)", compute=_service_ports_text), AGE,
            PrinterColumn("Selector", json_path=".spec.selector", priority=1))),),
)

KINDS = (VIRTUALNETWORK, VIRTUALNETWORKINTERFACE, SUBNET, IPADDRESS, VLAN, NETWORKPOLICY,
         SERVICE)
