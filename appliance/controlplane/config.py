"""The control-plane VMs' configuration: what cloud-init writes on each of 1 or 3 VMs.

The supervisor can run in 1 or 3 VMs of the appliance image
(``hypervisor.applianceimage``: Debian 12 with PostgreSQL 15, Patroni 3.0,
etcd 3.4 and keepalived 2.2, all disabled). Each VM gets its identity,
certificates and secrets through cloud-init; nothing of them is in the image.

On every VM:

- **etcd** (``/etc/default/etcd``): one member of an N-member cluster, the
  store Patroni keeps its leader key in. Peers and clients speak plain HTTP
  on the appliance network (isolated, unrouted; see
  ``hypervisor.appliance_net``); TLS between members is not done yet.
- **Patroni** (``/etc/patroni/config.yml``) runs PostgreSQL 15 in
  ``/var/lib/postgresql/15/pacific``. With 3 members ``synchronous_mode`` is
  on: a commit is acknowledged once the primary and one synchronous standby
  have flushed it, and Patroni promotes only that standby, so an
  acknowledged write survives the loss of any one VM. With 1 member there is
  no standby to wait for: synchronous mode is off (``synchronous_commit`` is
  still on, so a commit is on the local disk). ``failsafe_mode`` keeps the
  primary running when etcd is unreachable but every Patroni member still
  answers: a single VM's own etcd failing does not make its database
  read-only. The supervisor's role and database are made by a
  ``post_bootstrap`` script (``bootstrap.users`` is deprecated in Patroni 3).
  The REST API (:8008) is plain HTTP with basic auth on its writing endpoints.
- **keepalived** (``/etc/keepalived/keepalived.conf``) holds the floating IP
  (VIP) on one VM whose supervisor answers ``/readyz``; VRRP over unicast to
  the other members, ``nopreempt`` so the VIP does not move back and forth.

Timers are paced for emulated CPUs, where three VMs may share two host cores
and a member can be starved for a second or two: etcd heartbeats every 500 ms
and elects after 5 s (the defaults, 100 ms and 1 s, made it re-elect and cost
Patroni its leader key); VRRP advertises every 2 s (a dead VM's floating IP
moves after about 7 s); the ``/readyz`` check runs every 10 s with 8 s to
answer and must fail 3 times before the VM gives the floating IP up.
- **the supervisor**: ``pacific-lab.service`` runs ``lab serve`` with the
  ``LAB_*`` settings of ``/etc/pacific-lab/env`` (the database is every
  member's PostgreSQL, ``target_session_attrs=read-write`` picks the primary)
  and the lab's CA and a server certificate under ``/var/lib/pacific-lab/pki``.

Addresses (``plan_for``): the appliance network has no DHCP (cloud-init's
network-config gives every VM a static address); the VM scheduler hands out
the addresses from the network's 10th host up (``.10`` in a /24) and keeps
``.2``-``.9`` for the host. The control plane takes four of those: the VIP
is the 5th host (``.5``) and the members the 6th to 8th (``.6``-``.8``).

The NIC: network-config finds it by the VM's MAC address and names it ``eth0``
(as the VM Service does for its VMs), so keepalived's ``interface eth0`` holds
whatever name Debian's predictable naming would have given it (``ens3`` or
``enp1s0``, by machine type).

Secrets (``Secrets``) are made once per install with ``secrets.token_urlsafe``
and kept in ``<state_dir>/controlplane-secrets.json`` (mode 0600), so a
second ``lab up`` renders the same files. Their ``repr`` hides the values;
they appear only in the files that need them.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import jinja2
import yaml

from appliance.pki import Pki
from appliance.settings import PROJECT_ROOT
from hypervisor.applianceimage import VENV_DIR

LOG = logging.getLogger(__name__)

SIZES = (1, 3)  # etcd and Patroni need a majority: 2 members survive no more failures than 1
SCOPE = "pacific-lab"  # Patroni's cluster name (its key prefix in etcd)
INTERFACE = "eth0"
# Hosts of the appliance network by index (hosts()[0] is the gateway, .1 in a /24).
VIP_HOST = 4
FIRST_MEMBER_HOST = 5
SCHEDULER_FIRST_HOST = 9  # appliance.controllers.scheduler.free_appliance_address starts here
VIRTUAL_ROUTER_ID = 51
API_PORT = 6443  # Settings.api_port: what keepalived's check asks for /readyz
SSH_USER = "pacific"  # as on the VM Service's VMs

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
PATRONI_PORT = 8008
POSTGRES_PORT = 5432

SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
RESTAPI_USER = "patroni"
APP_USER = "pacific"
APP_DATABASE = "pacific"

# Paths on the VM.
ETCD_ENV = "/etc/default/etcd"
ETCD_DATA_DIR = "/var/lib/etcd/pacific-lab"
PATRONI_CONFIG = "/etc/patroni/config.yml"
POST_BOOTSTRAP = "/etc/patroni/post-bootstrap.sh"
PATRONI_DROPIN = "/etc/systemd/system/patroni.service.d/pacific-lab.conf"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
READY_CHECK = "/etc/keepalived/supervisor-ready"
LAB_ENV = "/etc/pacific-lab/env"
LAB_UNIT = "/etc/systemd/system/pacific-lab.service"
STATE_DIR = "/var/lib/pacific-lab"
PKI_DIR = f"{STATE_DIR}/pki"
PG_DATA_DIR = "/var/lib/postgresql/15/pacific"
PG_BIN_DIR = "/usr/lib/postgresql/15/bin"
PG_SOCKET_DIR = "/var/run/postgresql"
PGPASS = "/var/lib/postgresql/.pgpass-patroni"
LAB_PROGRAM = f"{VENV_DIR}/bin/lab"

# The units cloud-init enables and starts, in this order. etcd does not block: its start
# waits for a quorum, that is for the other VMs.
SERVICES = ("etcd.service", "patroni.service", "keepalived.service", "pacific-lab.service")

TEMPLATES = "controlplane"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAC_RE = re.compile(r"^52:54:00(:[0-9a-f]{2}){3}$")
_IFNAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # secrets.token_urlsafe's alphabet
# What a value may hold where it is written bare (keepalived.conf, EnvironmentFile values).
_CONF_RE = re.compile(r"^[A-Za-z0-9._:/,=@?&%+-]+$")
_SSH_KEY_RE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) "
                         r"[A-Za-z0-9+/=]+( [^\r\n]*)?$")


class PlanError(ValueError):
    """The control plane cannot be planned or rendered as asked."""


# -- secrets ------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Secrets:
    """The install's passwords and tokens. ``repr`` and ``str`` never show them."""

    postgres_password: str  # PostgreSQL superuser (also pg_rewind's user)
    replication_password: str
    pacific_password: str  # the supervisor's role "pacific"
    vrrp_password: str  # keepalived's PASS authentication: it uses 8 characters at most
    patroni_api_password: str  # Patroni's REST API, basic auth
    etcd_token: str  # ETCD_INITIAL_CLUSTER_TOKEN

    FILE_NAME: ClassVar[str] = "controlplane-secrets.json"
    VRRP_LENGTH: ClassVar[int] = 8

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, str) or not _TOKEN_RE.match(value):
                raise PlanError(f"secret {item.name} is not a URL-safe token")
            if len(value) < self.VRRP_LENGTH:
                raise PlanError(f"secret {item.name} is shorter than {self.VRRP_LENGTH} characters")
        if len(self.vrrp_password) > self.VRRP_LENGTH:
            raise PlanError(f"vrrp_password is longer than {self.VRRP_LENGTH} characters "
                            "(keepalived would cut it)")

    def __repr__(self) -> str:
        return f"Secrets({', '.join(f'{f.name}=<hidden>' for f in dataclasses.fields(self))})"

    __str__ = __repr__

    def values(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def generate(cls) -> Secrets:
        return cls(postgres_password=secrets.token_urlsafe(24),
                   replication_password=secrets.token_urlsafe(24),
                   pacific_password=secrets.token_urlsafe(24),
                   vrrp_password=secrets.token_urlsafe(6),  # 6 bytes: exactly 8 characters
                   patroni_api_password=secrets.token_urlsafe(24),
                   etcd_token=secrets.token_urlsafe(16))

    @classmethod
    def load_or_create(cls, directory: Path) -> Secrets:
        """The secrets kept in ``directory``; made and written (0600) the first time.

        Two callers at once end up with the same secrets: the file is created with a
        hard link, which fails if another caller made it first."""
        path = directory / cls.FILE_NAME
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        made = cls.generate()
        data = (json.dumps(made.values(), indent=2, sort_keys=True) + "\n").encode()
        tmp = directory / f".{cls.FILE_NAME}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
                LOG.info("[controlplane] made the install's secrets in %s", path)
            except FileExistsError:
                LOG.info("[controlplane] %s was made meanwhile; using it", path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> Secrets:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise PlanError(f"{path} is not a regular file")
            if st.st_mode & 0o077:
                os.fchmod(handle.fileno(), 0o600)
                LOG.warning("[controlplane] %s was readable by others; made it 0600", path)
            raw = handle.read()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise PlanError(f"{path} is not JSON ({exc}); move it away to make new secrets "
                            "(VMs already installed keep the old ones)") from None
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise PlanError(f"{path} does not hold the control plane's secrets "
                            f"(expected the keys {sorted(names)})")
        return cls(**data)


# -- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str  # host name, etcd member name and Patroni member name
    address: str
    mac: str  # the VM's NIC; network-config finds the NIC by it

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise PlanError(f"member name {self.name!r} is not a DNS label")
        if not _MAC_RE.match(self.mac):
            raise PlanError(f"member {self.name}: MAC {self.mac!r} is not 52:54:00:xx:xx:xx")
        try:
            ipaddress.IPv4Address(self.address)
        except ValueError:
            raise PlanError(f"member {self.name}: {self.address!r} is not an IPv4 address") from None


@dataclass(frozen=True)
class Plan:
    """Where the control-plane VMs live and what they share; see ``plan_for``."""

    members: tuple[Member, ...]
    vip: str
    prefix_length: int
    gateway: str
    secrets: Secrets
    interface: str = INTERFACE
    virtual_router_id: int = VIRTUAL_ROUTER_ID
    api_port: int = API_PORT

    def __post_init__(self) -> None:
        if len(self.members) not in SIZES:
            raise PlanError(f"a control plane has 1 or 3 VMs, not {len(self.members)}: etcd and "
                            "Patroni need a majority, and 2 VMs survive no failure that 1 does not")
        try:
            network = ipaddress.IPv4Network(f"{self.vip}/{self.prefix_length}", strict=False)
        except ValueError:
            raise PlanError(f"VIP {self.vip}/{self.prefix_length} is not an IPv4 address "
                            "and prefix length") from None
        addresses = [self.vip, self.gateway, *(m.address for m in self.members)]
        if len(set(addresses)) != len(addresses):
            raise PlanError(f"the VIP, gateway and members need distinct addresses: {addresses}")
        for address in addresses:
            if ipaddress.IPv4Address(address) not in network:
                raise PlanError(f"{address} is not in the appliance network {network}")
        for unique in ("name", "mac"):
            values = [getattr(m, unique) for m in self.members]
            if len(set(values)) != len(values):
                raise PlanError(f"member {unique}s are not unique: {values}")
        if not _IFNAME_RE.match(self.interface):
            raise PlanError(f"{self.interface!r} is not an interface name")
        if not 1 <= self.virtual_router_id <= 255:
            raise PlanError(f"virtual_router_id {self.virtual_router_id} is not in 1..255")
        if not 1 <= self.api_port <= 65535:
            raise PlanError(f"api_port {self.api_port} is not a port")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.vip}/{self.prefix_length}", strict=False)

    @property
    def size(self) -> int:
        return len(self.members)

    def member(self, index: int) -> Member:
        if not 0 <= index < len(self.members):
            raise PlanError(f"no member {index} in a control plane of {len(self.members)}")
        return self.members[index]

    def database_url(self) -> str:
        """The supervisor's ``LAB_DATABASE_URL``: every member, the primary chosen by libpq.

        The hosts go in ``host=`` query parameters, the form SQLAlchemy's URL parser
        takes for several hosts (it refuses libpq's ``@a:5432,b:5432/`` form); its
        psycopg dialect hands them to libpq as ``host=a,b,c port=5432,5432,5432``."""
        hosts = "&".join(f"host={m.address}:{POSTGRES_PORT}" for m in self.members)
        return (f"postgresql://{APP_USER}:{self.secrets.pacific_password}@/{APP_DATABASE}"
                f"?{hosts}&target_session_attrs=read-write")


def mac_for(name: str) -> str:
    """A stable, locally administered unicast MAC address for a control-plane VM."""
    digest = hashlib.sha256(f"pacific-lab-controlplane/{name}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def member_name(index: int) -> str:
    return f"pacific-cp-{index + 1}"


def plan_for(n: int, network_cidr: str, state_dir: Path, *, interface: str = INTERFACE) -> Plan:
    """The plan of an ``n``-VM control plane (1 or 3) in the appliance network.

    The VIP is the network's 5th host and the members the 6th to 8th (``.5`` and
    ``.6``-``.8`` in a /24): below the addresses the VM scheduler hands out (from
    the 10th host), in the block it keeps for the host. The secrets are loaded
    from ``state_dir``, or made and kept there."""
    if n not in SIZES:
        raise PlanError(f"a control plane has 1 or 3 VMs, not {n}: etcd and Patroni need a "
                        "majority, and 2 VMs survive no failure that 1 does not")
    try:
        network = ipaddress.IPv4Network(network_cidr)
    except ValueError as exc:
        raise PlanError(f"appliance network {network_cidr!r}: {exc}") from None
    if network.num_addresses - 2 < SCHEDULER_FIRST_HOST + 1:
        raise PlanError(f"appliance network {network} is too small for a control plane "
                        f"(a /28 or larger is needed)")
    hosts = [str(h) for _, h in zip(range(SCHEDULER_FIRST_HOST), network.hosts(), strict=False)]
    members = tuple(Member(member_name(i), hosts[FIRST_MEMBER_HOST + i], mac_for(member_name(i)))
                    for i in range(n))
    return Plan(members=members, vip=hosts[VIP_HOST], prefix_length=network.prefixlen,
                gateway=hosts[0], secrets=Secrets.load_or_create(state_dir), interface=interface)


# -- rendering ----------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class PkiFiles:
    """The certificates a VM gets (PEM text): the lab's CA and its server certificate and key."""

    ca_cert: str
    server_cert: str
    server_key: str

    def __post_init__(self) -> None:
        for name, marker in (("ca_cert", "CERTIFICATE"), ("server_cert", "CERTIFICATE"),
                             ("server_key", "PRIVATE KEY")):
            text = getattr(self, name)
            if not isinstance(text, str) or "-----BEGIN " not in text or marker not in text:
                raise PlanError(f"{name} is not a PEM {marker.lower()}")

    def __repr__(self) -> str:
        return "PkiFiles(ca_cert=..., server_cert=..., server_key=<hidden>)"

    @classmethod
    def read(cls, pki: Pki, server_cert: Path | None = None,
             server_key: Path | None = None) -> PkiFiles:
        """The CA of ``pki`` with its server certificate (or one issued for the VMs)."""
        return cls(pki.ca_cert.read_text(), (server_cert or pki.server_cert).read_text(),
                   (server_key or pki.server_key).read_text())


class MemberFile(NamedTuple):
    """One file cloud-init writes on a VM."""

    content: str
    mode: int
    owner: str  # "user:group" as the image names them


#: The host's settings a control-plane VM's supervisor must share, so that it schedules
#: and admits as the host's lab does: whether namespaces get networks of their own, and
#: the lab's address ranges (which guest clusters must avoid).
SHARED_SETTINGS = ("network_enabled", "network_pool_cidr", "network_ingress_cidr",
                   "network_cluster_ip_cidr")


def shared_settings(settings: Any) -> dict[str, str]:
    """``LAB_*`` values of ``SHARED_SETTINGS`` from the host's settings."""
    def text(value: object) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    return {f"LAB_{name.upper()}": text(getattr(settings, name)) for name in SHARED_SETTINGS}


def render_member(plan: Plan, index: int, pki: PkiFiles, *,
                  shared: dict[str, str] | None = None,
                  templates_dir: Path = PROJECT_ROOT / "templates") -> dict[str, MemberFile]:
    """The files cloud-init writes on member ``index`` (0-based), by path. ``shared``: the
    host's ``shared_settings`` (none: namespace networks off)."""
    member = plan.member(index)
    env = _environment(templates_dir)
    context: dict[str, Any] = {
        "plan": plan, "member": member, "index": index, "secrets": plan.secrets,
        "peers": [m for m in plan.members if m != member],
        "synchronous": plan.size > 1, "priority": 150 - 10 * index,
        "pg_hba": pg_hba(plan), "database_url": plan.database_url(),
        "scope": SCOPE, "etcd_data_dir": ETCD_DATA_DIR, "ready_check": READY_CHECK,
        "post_bootstrap": POST_BOOTSTRAP, "lab_env": LAB_ENV, "lab_program": LAB_PROGRAM,
        "state_dir": STATE_DIR, "data_dir": PG_DATA_DIR, "bin_dir": PG_BIN_DIR,
        "socket_dir": PG_SOCKET_DIR, "pgpass": PGPASS,
        "shared": shared if shared is not None else {"LAB_NETWORK_ENABLED": "false"},
        "ports": {"etcd_client": ETCD_CLIENT_PORT, "etcd_peer": ETCD_PEER_PORT,
                  "patroni": PATRONI_PORT, "postgres": POSTGRES_PORT},
        "users": {"superuser": SUPERUSER, "replication": REPLICATION_USER,
                  "restapi": RESTAPI_USER, "app": APP_USER, "app_database": APP_DATABASE},
    }

    def render(name: str) -> str:
        return env.get_template(f"{TEMPLATES}/{name}").render(context)

    files = {
        ETCD_ENV: MemberFile(render("etcd.env.j2"), 0o600, "root:root"),
        PATRONI_CONFIG: MemberFile(render("patroni.yml.j2"), 0o600, "postgres:postgres"),
        POST_BOOTSTRAP: MemberFile(render("post-bootstrap.sh.j2"), 0o700, "postgres:postgres"),
        PATRONI_DROPIN: MemberFile(render("patroni-dropin.conf.j2"), 0o644, "root:root"),
        KEEPALIVED_CONF: MemberFile(render("keepalived.conf.j2"), 0o600, "root:root"),
        READY_CHECK: MemberFile(render("supervisor-ready.j2"), 0o755, "root:root"),
        LAB_ENV: MemberFile(render("lab.env.j2"), 0o600, "root:root"),
        LAB_UNIT: MemberFile(render("pacific-lab.service.j2"), 0o644, "root:root"),
        f"{PKI_DIR}/ca.crt": MemberFile(pki.ca_cert, 0o644, "root:root"),
        f"{PKI_DIR}/server.crt": MemberFile(pki.server_cert, 0o644, "root:root"),
        f"{PKI_DIR}/server.key": MemberFile(pki.server_key, 0o600, "root:root"),
    }
    return files


def pg_hba(plan: Plan) -> list[str]:
    """PostgreSQL's access rules: peer for the local superuser (Patroni and psql run as the
    OS user postgres), SCRAM for everything over TCP: replication from loopback (a standby's
    Patroni asks its own server for its timeline that way) and from the members, pg_rewind
    from the members, the supervisor's role from the appliance network."""
    method = "scram-sha-256"
    return [
        f"local all {SUPERUSER} peer",
        f"host all {SUPERUSER} 127.0.0.1/32 {method}",
        f"host replication {REPLICATION_USER} 127.0.0.1/32 {method}",
        *(f"host replication {REPLICATION_USER} {m.address}/32 {method}" for m in plan.members),
        *(f"host postgres {SUPERUSER} {m.address}/32 {method}" for m in plan.members),
        f"host {APP_DATABASE} {APP_USER} {plan.network} {method}",
    ]


def user_data(plan: Plan, index: int, pki: PkiFiles, ssh_public_key: str | None, *,
              shared: dict[str, str] | None = None,
              templates_dir: Path = PROJECT_ROOT / "templates") -> str:
    """Member ``index``'s ``#cloud-config``: its host name, an SSH user (none when
    ``ssh_public_key`` is None: the VM Service adds its own access user), the files of
    ``render_member`` (base64) and the services started in order."""
    users: list[Any] = []
    if ssh_public_key is not None:
        key = ssh_public_key.strip()
        if not _SSH_KEY_RE.match(key):
            raise PlanError("the SSH public key is not one line in OpenSSH format")
        users = [{"name": SSH_USER, "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash",
                  "lock_passwd": True, "ssh_authorized_keys": [key]}]
    member = plan.member(index)
    files = render_member(plan, index, pki, shared=shared, templates_dir=templates_dir)
    document: dict[str, Any] = {
        "hostname": member.name,
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        **({"users": users} if users else {}),
        "ssh_pwauth": False,
        "write_files": [
            {"path": path, "encoding": "b64", "permissions": f"{f.mode:04o}", "owner": f.owner,
             "content": base64.b64encode(f.content.encode()).decode()}
            for path, f in sorted(files.items())],
        "runcmd": [["systemctl", "daemon-reload"],
                   *(["systemctl", "enable", "--now", *(["--no-block"] if unit == "etcd.service"
                                                        else []), unit] for unit in SERVICES)],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, default_flow_style=False, sort_keys=False)


def meta_data(plan: Plan, index: int) -> dict[str, str]:
    """NoCloud meta-data. The instance-id follows the plan (names, addresses, the install):
    the same plan boots as the same instance, a changed one runs cloud-init again."""
    member = plan.member(index)
    public = {"members": [dataclasses.astuple(m) for m in plan.members], "vip": plan.vip,
              "prefix": plan.prefix_length, "gateway": plan.gateway,
              "install": hashlib.sha256(plan.secrets.etcd_token.encode()).hexdigest()}
    digest = hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()
    return {"instance-id": f"{member.name}-{digest[:16]}", "local-hostname": member.name}


def network_config(plan: Plan, index: int) -> dict[str, Any]:
    """cloud-init network config v2: the NIC found by its MAC, named ``plan.interface``,
    a static address, the gateway as default route and DNS server."""
    member = plan.member(index)
    return {"version": 2, "ethernets": {plan.interface: {
        "match": {"macaddress": member.mac}, "set-name": plan.interface,
        "addresses": [f"{member.address}/{plan.prefix_length}"],
        "routes": [{"to": "0.0.0.0/0", "via": plan.gateway}],
        "nameservers": {"addresses": [plan.gateway]},
    }}}


# -- templates ----------------------------------------------------------------------------------


def _yaml_scalar(value: object) -> str:
    """A YAML flow scalar: JSON (a string, number or boolean) is valid YAML."""
    if not isinstance(value, str | int | bool):
        raise PlanError(f"cannot write {type(value).__name__} as a YAML scalar")
    return json.dumps(value)


def _conf_word(value: object) -> str:
    """A value written bare into keepalived.conf or an EnvironmentFile: refused if it holds
    anything that either could read as syntax (space, quotes, backslash, $, #, braces)."""
    text = str(value)
    if not _CONF_RE.match(text):
        raise PlanError(f"refusing to write {text!r} into a configuration file")
    return text


@functools.lru_cache(maxsize=4)
def _environment(templates_dir: Path) -> jinja2.Environment:
    # YAML, INI and shell, not HTML: no autoescape; every value goes through a filter
    # that quotes it (yaml) or refuses what would be syntax (conf).
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates_dir), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(yaml=_yaml_scalar, conf=_conf_word)
    return env

