"""What the network layer is configured with, and how it names things on the host.

``NetworkConfig`` is built once from the supervisor's ``Settings`` (see
:meth:`NetworkConfig.from_settings`) and passed down. Every host object the
layer makes carries the short ``tag`` (``pl`` by default), so that they are
easy to list and cannot clash with anything else on the host (or with a
second lab instance, such as a test run, that uses another tag):

========================  =====================  ===========================
what                      name                   example (tag ``pl``)
========================  =====================  ===========================
gateway port (internal)   ``<tag>g<vlan>``       ``plg101``
workload port (tap/veth)  ``<tag>w<uid hex>``    ``plw3f2a9c01b7``
nftables table (inet)     ``<tag>_ns<vlan>``     ``pl_ns101``
OpenFlow cookie           ``vlan``               ``0x65``
========================  =====================  ===========================
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.network import ipam

BASE_COOKIE = 0x10000  # the bridge-wide pipeline (network-host.yml)
_TAG_RE = re.compile(r"^[a-z]{2,4}$")

DEFAULTS: dict[str, Any] = {
    "network_pool_cidr": "198.19.0.0/16",
    "network_subnet_prefix": 28,
    "network_ingress_cidr": "198.18.128.0/24",
    "network_cluster_ip_cidr": "198.18.129.0/24",
    "network_bridge": "br-int",
    "network_tag": "pl",
    "network_uplink": "",
    "network_dns_domain": "pacific.internal",
    "network_snat": True,
}


@dataclass(frozen=True)
class NetworkConfig:
    state_dir: Path
    pool_cidr: str = DEFAULTS["network_pool_cidr"]
    subnet_prefix: int = DEFAULTS["network_subnet_prefix"]
    ingress_cidr: str = DEFAULTS["network_ingress_cidr"]
    cluster_ip_cidr: str = DEFAULTS["network_cluster_ip_cidr"]
    bridge: str = DEFAULTS["network_bridge"]
    tag: str = DEFAULTS["network_tag"]
    uplink: str = DEFAULTS["network_uplink"]  # "" : the default-route interface, at run time
    dns_domain: str = DEFAULTS["network_dns_domain"]
    snat_default: bool = DEFAULTS["network_snat"]
    playbooks_dir: Path | None = None  # None: the settings' playbooks directory
    templates_root: Path = Path(__file__).resolve().parents[2] / "templates"
    excluded_namespaces: tuple[str, ...] = ("kube-*", "vmware-system-*")
    resync_seconds: float = 300.0
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not _TAG_RE.match(self.tag):
            raise ValueError(f"network tag {self.tag!r}: 2-4 lower-case letters")
        if not re.match(r"^[A-Za-z0-9_.-]{1,15}$", self.bridge):
            raise ValueError(f"bad bridge name {self.bridge!r}")
        layout = self.layout
        problems = layout.problems()
        if problems:
            raise ValueError("network settings: " + "; ".join(problems))
        if not layout.pool.prefixlen <= self.subnet_prefix <= 29:
            raise ValueError(f"network_subnet_prefix /{self.subnet_prefix} does not fit the "
                             f"pool {layout.pool}")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> NetworkConfig:
        """Read the ``network_*`` settings (defaults for those a Settings lacks)."""
        def get(key: str) -> Any:
            return getattr(settings, key, DEFAULTS[key])
        values: dict[str, Any] = dict(
            state_dir=settings.state_dir, pool_cidr=get("network_pool_cidr"),
            subnet_prefix=int(get("network_subnet_prefix")),
            ingress_cidr=get("network_ingress_cidr"),
            cluster_ip_cidr=get("network_cluster_ip_cidr"), bridge=get("network_bridge"),
            tag=get("network_tag"), uplink=get("network_uplink"),
            dns_domain=get("network_dns_domain"), snat_default=bool(get("network_snat")),
            playbooks_dir=settings.playbooks_dir, templates_root=settings.templates_dir)
        values.update(overrides)
        return cls(**values)

    # -- ranges ---------------------------------------------------------------------------

    @property
    def layout(self) -> ipam.PoolLayout:
        return ipam.PoolLayout(ipam.parse_network(self.pool_cidr, "network_pool_cidr"),
                               ipam.parse_network(self.ingress_cidr, "network_ingress_cidr"),
                               ipam.parse_network(self.cluster_ip_cidr,
                                                  "network_cluster_ip_cidr"))

    # -- names ----------------------------------------------------------------------------

    def gateway_port(self, vlan: int) -> str:
        return f"{self.tag}g{vlan}"

    def workload_port(self, uid: str) -> str:
        return f"{self.tag}w{hashlib.sha256(uid.encode()).hexdigest()[:10]}"

    def nft_table(self, vlan: int) -> str:
        return f"{self.tag}_ns{vlan}"

    @property
    def gateway_port_glob(self) -> str:
        return f"{self.tag}g*"

    @property
    def workload_port_prefix(self) -> str:
        return f"{self.tag}w"

    @property
    def templates_dir(self) -> Path:
        return self.templates_root / "network"

    @property
    def network_dir(self) -> Path:
        return self.state_dir / "network" / self.tag

    def namespace_dir(self, vlan: int) -> Path:
        return self.network_dir / f"vlan{vlan}"

    def dns_domain_of(self, namespace: str) -> str:
        return f"{namespace}.{self.dns_domain}"

    def excluded(self, namespace: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(namespace, pat) for pat in self.excluded_namespaces)


def mac_for(uid: str) -> str:
    """A stable, locally administered unicast MAC address from an object's uid."""
    digest = hashlib.sha256(uid.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
