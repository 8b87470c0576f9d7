"""Settings: one typed object, built once at start-up and passed down.

Values come from defaults, then ``<state_dir>/config.yaml`` (if present), then
``LAB_*`` environment variables. Nothing below this module reads the
environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    state_dir: Path = Path("/var/lib/pacific-lab")
    cache_dir: Path = Path("/var/cache/pacific-lab")
    database_url: str = ""  # empty: SQLite file under state_dir
    api_bind: str = "0.0.0.0"  # comma-separated; 0.0.0.0: the host's own addresses and loopback
    api_port: int = 6443
    dashboard_port: int = 8443
    public_host: str = ""  # host name / address put in kubeconfigs; empty: detected
    token_ttl_seconds: int = 10 * 3600
    max_body_bytes: int = 3 * 1024 * 1024
    watch_history: int = 20000  # watch-log events kept before compaction
    max_watches: int = 256  # open at once per API process (each holds a worker thread)
    # The appliance network VMs use until namespace networks take over. The
    # default is from 198.18.0.0/15 (RFC 2544, benchmarking), which no real
    # network routes, so lab traffic can never leak onto someone's LAN.
    appliance_cidr: str = "198.18.0.0/24"
    appliance_bridge: str = "pacific0"
    cpu_allocation_ratio: float = 4.0  # vCPUs per host CPU the scheduler hands out
    # Namespace networks (Open vSwitch, docs/networking.md). All ranges are in
    # 198.18.0.0/15 too; they must not overlap each other or appliance_cidr.
    network_enabled: bool = True
    network_pool_cidr: str = "198.19.0.0/16"  # carved into per-namespace subnets
    network_subnet_prefix: int = 28  # size of each subnet (another one when full)
    network_ingress_cidr: str = "198.18.128.0/24"  # load-balancer VIPs
    network_cluster_ip_cidr: str = "198.18.129.0/24"  # ClusterIP services
    network_bridge: str = "br-int"
    network_tag: str = "pl"  # prefix of every host object the network layer makes
    network_uplink: str = ""  # SNAT uplink; empty: the default route's interface
    network_dns_domain: str = "pacific.internal"
    network_snat: bool = True  # NAT mode of new namespaces
    # Pod images: registries that may be on loopback or private addresses, and those
    # spoken to over plain HTTP ("host:port", comma-separated in LAB_* variables).
    # Both are administrator choices; nothing is trusted by default.
    registries_private: tuple[str, ...] = ()
    registries_insecure: tuple[str, ...] = ()
    # The lab registry (appliance.registry): one per lab, a project per namespace.
    registry_enabled: bool = True
    registry_port: int = 5000
    registry_token_ttl_seconds: int = 300
    # Where Debian's linux-source package puts the tarball the pod kernel is built from.
    pod_kernel_source_dir: Path = Path("/usr/src")
    # What this supervisor runs. "embedded": everything on this host (the API, the
    # controllers and this host's agents). "control-plane": a supervisor in a
    # control-plane VM (appliance.controlplane): the API and the controllers, no host
    # agents, and a certificate issued by the host's CA instead of a CA of its own.
    role: str = "embedded"
    # In the host role: the port of the host's log endpoint for the control-plane VMs
    # (appliance.nodeapi), on its address in the appliance network; a kubelet's port.
    node_api_port: int = 10250
    # On a lab host without a service manager, start libvirt's and Open vSwitch's daemons
    # again when they die (appliance.hostdaemons); systemd does it where it runs.
    keep_host_daemons: bool = True
    project_root: Path = PROJECT_ROOT
    extra: dict[str, str] = field(default_factory=dict)

    # -- derived paths -------------------------------------------------
    @property
    def playbooks_dir(self) -> Path:
        return self.project_root / "playbooks"

    @property
    def templates_dir(self) -> Path:
        return self.project_root / "templates"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def host_facts_path(self) -> Path:
        return self.state_dir / "host-facts.json"

    @property
    def admin_credentials_path(self) -> Path:
        return self.state_dir / "admin-credentials"

    @property
    def admin_kubeconfig_path(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def pods_dir(self) -> Path:
        """Per-pod files on this host (config, scratch disk, channels, logs), by uid."""
        return self.state_dir / "pods"

    @property
    def pod_images_dir(self) -> Path:
        """Container images as read-only erofs disks, shared by every pod using them."""
        return self.state_dir / "pod-images"

    @property
    def registry_dir(self) -> Path:
        """The lab registry: its storage, configuration and token-signing key."""
        return self.state_dir / "registry"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'supervisor.db'}"

    @property
    def api_url(self) -> str:
        return f"https://{self.public_host or 'localhost'}:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"https://{self.public_host or 'localhost'}:{self.dashboard_port}"


def _names(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(str(v).strip() for v in items if str(v).strip())


def _flag(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


_ENV_FIELDS: dict[str, Callable[[Any], Any]] = {
    "state_dir": Path, "cache_dir": Path, "database_url": str, "api_bind": str,
    "api_port": int, "dashboard_port": int, "public_host": str,
    "token_ttl_seconds": int, "max_body_bytes": int, "watch_history": int,
    "max_watches": int,
    "appliance_cidr": str, "appliance_bridge": str, "cpu_allocation_ratio": float,
    "network_enabled": _flag, "network_pool_cidr": str, "network_subnet_prefix": int,
    "network_ingress_cidr": str, "network_cluster_ip_cidr": str, "network_bridge": str,
    "network_tag": str, "network_uplink": str, "network_dns_domain": str,
    "network_snat": _flag, "registries_private": _names, "registries_insecure": _names,
    "registry_enabled": _flag, "registry_port": int, "registry_token_ttl_seconds": int,
    "role": str, "keep_host_daemons": _flag, "node_api_port": int,
    "pod_kernel_source_dir": Path,
}
ROLES = ("embedded", "control-plane")


def load_settings(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Build the settings: defaults, then the config file, then ``LAB_*`` variables."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    state_dir = Path(env.get("LAB_STATE_DIR", str(Settings.state_dir)))
    config_file = state_dir / "config.yaml"
    if config_file.is_file():
        loaded = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping")
        for key, value in loaded.items():
            if key not in _ENV_FIELDS:
                raise ValueError(f"{config_file}: unknown setting {key!r}")
            values[key] = _ENV_FIELDS[key](value)
    for key, typ in _ENV_FIELDS.items():
        raw = env.get("LAB_" + key.upper())
        if raw is not None and raw != "":
            values[key] = typ(raw)
    values.update(overrides)
    settings = replace(Settings(), **values)  # type: ignore[arg-type]
    if settings.role not in ROLES:
        raise ValueError(f"LAB_ROLE must be one of {', '.join(ROLES)}, not {settings.role!r}")
    return settings
