"""What one host must look like, as the extravars of the network playbooks.

``host_vars()`` is the integration bridge (``network-host.yml``);
``NamespaceHost`` is one namespace's segment (``network-namespace.yml`` and
``network-namespace-absent.yml``). Everything the playbooks and templates
need is computed here, so the playbooks stay declarative and a digest of the
extravars says whether anything changed since the last run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.network import flows as flowlib
from appliance.network.config import BASE_COOKIE, NetworkConfig
from appliance.network.ipam import Address, gateway_of
from appliance.network.model import Segment, Workload
from appliance.network.policy import CompiledPolicy

HOST_PLAYBOOK = "network-host.yml"
HOST_ABSENT_PLAYBOOK = "network-host-absent.yml"
NAMESPACE_PLAYBOOK = "network-namespace.yml"
NAMESPACE_ABSENT_PLAYBOOK = "network-namespace-absent.yml"
PACKAGES = ("openvswitch-switch", "dnsmasq-base", "nftables", "haproxy", "ethtool", "iproute2")
LEASE_TIME = "12h"


@dataclass(frozen=True)
class Backend:
    name: str
    ip: Address
    port: int


@dataclass(frozen=True)
class Listener:
    """One load-balanced port of a service: VIP:port spread over the backends."""

    kind: str  # VirtualMachineService | Service
    service: str
    vip: Address
    port: int
    protocol: str
    backends: tuple[Backend, ...]

    @property
    def name(self) -> str:
        return f"{self.kind.lower()}-{self.service}-{self.protocol.lower()}-{self.port}"


def host_vars(config: NetworkConfig, datapath: str, install_packages: bool = True
              ) -> dict[str, Any]:
    return {"lab_net": {
        "bridge": config.bridge, "datapath": datapath, "tag": config.tag,
        "dir": str(config.network_dir), "base_cookie": BASE_COOKIE,
        "base_flows": flowlib.base_flows(),
        "packages": list(PACKAGES) if install_packages else [],
        "ranges": _ranges(config),
    }}


def _ranges(config: NetworkConfig) -> list[str]:
    return [config.pool_cidr, config.ingress_cidr, config.cluster_ip_cidr]


@dataclass(frozen=True)
class NamespaceHost:
    config: NetworkConfig
    segment: Segment
    workloads: tuple[Workload, ...]  # of this namespace
    policies: tuple[CompiledPolicy, ...]  # of this namespace
    listeners: tuple[Listener, ...] = ()
    cluster_ips: tuple[Address, ...] = ()
    service_names: tuple[tuple[str, Address], ...] = ()  # DNS name -> VIP / cluster IP
    uplink: str = ""

    def flows(self) -> list[str]:
        return flowlib.namespace_flows(self.segment, self.workloads, self.policies)

    def extravars(self) -> dict[str, Any]:
        c, s = self.config, self.segment
        domain = c.dns_domain_of(s.namespace)
        subnets = [{"tag": f"s{i}", "cidr": str(net), "network": str(net.network_address),
                    "netmask": str(net.netmask), "gateway": str(gateway_of(net))}
                   for i, net in enumerate(s.subnets)]
        dns_hosts = [{"ip": str(w.ip), "names": [f"{w.hostname}.{domain}", w.hostname]}
                     for w in sorted(self.workloads, key=lambda w: (w.hostname, w.name))]
        dns_hosts += [{"ip": str(ip), "names": [f"{name}.{domain}", name]}
                      for name, ip in sorted(self.service_names)]
        vips = sorted({*(listener.vip for listener in self.listeners), *self.cluster_ips})
        return {
            "lab_net": {"bridge": c.bridge, "tag": c.tag, "dir": str(c.network_dir),
                        "gateway_glob": c.gateway_port_glob, "ingress_cidr": c.ingress_cidr,
                        "templates": str(c.templates_dir)},
            "lab_ns": {
                "namespace": s.namespace, "vlan": s.vlan, "cookie": s.vlan,
                "dir": str(c.namespace_dir(s.vlan)), "gateway_port": s.gateway_port,
                # the VIPs live on the gateway port too (/32): the kernel may lack `dummy`
                "gateway_addresses": [f"{gateway_of(n)}/{n.prefixlen}" for n in s.subnets]
                + [f"{v}/32" for v in vips],
                "gateways": [str(g) for g in s.gateways],
                "subnets": subnets, "subnet_cidrs": [str(n) for n in s.subnets],
                "domain": domain, "lease_time": LEASE_TIME,
                "dhcp_hosts": [{"mac": w.mac, "ip": str(w.ip), "name": w.hostname}
                               for w in sorted(self.workloads, key=lambda w: w.mac)],
                "dns_hosts": dns_hosts,
                "flows": self.flows(),
                "nft_table": c.nft_table(s.vlan), "snat": s.snat, "uplink": self.uplink,
                "vips": [str(v) for v in vips],
                "cluster_ips": [str(ip) for ip in sorted(self.cluster_ips)],
                "listeners": [{
                    "name": listener.name, "kind": listener.kind, "service": listener.service,
                    "vip": str(listener.vip), "port": listener.port,
                    "backends": [{"name": b.name, "ip": str(b.ip), "port": b.port}
                                 for b in listener.backends]}
                    for listener in self.listeners if listener.protocol == "TCP"],
            },
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.extravars(), sort_keys=True).encode()).hexdigest()


def absent_vars(config: NetworkConfig, namespace: str, vlan: int) -> dict[str, Any]:
    return {
        "lab_net": {"bridge": config.bridge, "tag": config.tag, "dir": str(config.network_dir)},
        "lab_ns": {"namespace": namespace, "vlan": vlan, "cookie": vlan,
                   "dir": str(config.namespace_dir(vlan)), "nft_table": config.nft_table(vlan)},
    }


def host_absent_vars(config: NetworkConfig) -> dict[str, Any]:
    return {"lab_net": {"bridge": config.bridge, "tag": config.tag,
                        "dir": str(config.network_dir), "ranges": _ranges(config)}}


def listeners_unsupported(listeners: Sequence[Listener]) -> list[Listener]:
    """Listeners HAProxy cannot serve (UDP, SCTP)."""
    return [listener for listener in listeners if listener.protocol != "TCP"]
