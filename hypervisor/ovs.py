"""A narrow Open vSwitch, nftables and network-namespace helper.

Reading only, plus test hosts: the appliance *configures* the host through
Ansible playbooks (``playbooks/network*.yml``); this module observes what is
there (ports, flows, nft tables, daemons) so that a controller can notice
drift and a test can list what is left, and it plugs network namespaces into
OVS segments as stand-in workloads (``NetnsHost``) for tests and benchmarks.

Everything runs through :func:`hypervisor.proc.run`, so a failure carries the
command, its exit code and its output.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypervisor.proc import Completed, ProcessError, run

LOG = logging.getLogger(__name__)

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class OvsError(RuntimeError):
    """Open vSwitch (or ip/nft) could not be read or changed."""


@dataclass(frozen=True)
class OvsPort:
    name: str
    ofport: int  # -1 while the interface does not exist (yet)
    tag: int | None
    type: str  # "" (a system device), "internal", "patch", ...
    external_ids: Mapping[str, str] = field(default_factory=dict, hash=False)


def _ovs(*args: str, timeout: float = 30) -> Completed:
    try:
        return run(["ovs-vsctl", "--timeout=10", *args], timeout=timeout)
    except ProcessError as exc:
        raise OvsError(str(exc)) from exc


def _ovsdb_value(value: Any) -> Any:
    """Decode one cell of ``ovs-vsctl --format=json`` output (sets, maps, uuids)."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        kind, inner = value
        if kind == "set":
            return [_ovsdb_value(v) for v in inner]
        if kind == "map":
            return {str(k): _ovsdb_value(v) for k, v in inner}
        if kind == "uuid":
            return inner
    return value


def _table(table: str, columns: Sequence[str]) -> list[dict[str, Any]]:
    out = _ovs("--format=json", "--data=json", f"--columns={','.join(columns)}", "list", table)
    data = json.loads(out.stdout or "{}")
    heading = data.get("headings") or []
    return [{h: _ovsdb_value(v) for h, v in zip(heading, row, strict=True)}
            for row in data.get("data") or []]


def bridge_exists(bridge: str) -> bool:
    try:
        run(["ovs-vsctl", "--timeout=10", "br-exists", bridge])
    except ProcessError as exc:
        if exc.rc == 2:
            return False
        raise OvsError(str(exc)) from exc
    return True


def bridge_datapath(bridge: str) -> str:
    return str(_ovs("get", "Bridge", bridge, "datapath_type").stdout.strip()).strip('"')


def list_ports(bridge: str) -> list[OvsPort]:
    """The ports of ``bridge`` (not its own bridge-local port), with ofport and tag."""
    if not bridge_exists(bridge):
        return []
    names = [n for n in _ovs("list-ports", bridge).stdout.split() if n]
    if not names:
        return []
    wanted = set(names)
    tags = {row["name"]: row["tag"] for row in _table("Port", ["name", "tag"])
            if row["name"] in wanted}
    ports = []
    for row in _table("Interface", ["name", "ofport", "type", "external_ids"]):
        if row["name"] not in wanted:
            continue
        ofport = row["ofport"]
        tag = tags.get(row["name"])
        ports.append(OvsPort(
            name=row["name"], ofport=int(ofport) if isinstance(ofport, int) else -1,
            tag=int(tag) if isinstance(tag, int) else None, type=str(row["type"] or ""),
            external_ids=dict(row["external_ids"] or {})))
    return sorted(ports, key=lambda p: p.name)


def dump_flows(bridge: str, cookie: int | None = None) -> list[str]:
    """Flows of ``bridge`` without statistics (optionally those of one exact cookie)."""
    if not bridge_exists(bridge):
        return []
    cmd = ["ovs-ofctl", "--no-stats", "dump-flows", bridge]
    if cookie is not None:
        cmd.append(f"cookie={cookie:#x}/-1")
    try:
        out = run(cmd)
    except ProcessError as exc:
        raise OvsError(str(exc)) from exc
    return [line.strip() for line in out.stdout.splitlines()
            if line.strip() and not line.startswith("NXST_FLOW")]


def nft_tables() -> list[tuple[str, str]]:
    """``(family, name)`` of every nftables table on the host."""
    try:
        out = run(["nft", "-j", "list", "tables"])
    except ProcessError as exc:
        raise OvsError(str(exc)) from exc
    tables = []
    for item in json.loads(out.stdout or "{}").get("nftables", []):
        table = item.get("table")
        if table:
            tables.append((str(table["family"]), str(table["name"])))
    return tables


def nft_table_text(family: str, name: str) -> str | None:
    """``nft -s list table``: the table's rules without counter values, or None."""
    proc = run(["nft", "-s", "list", "table", family, name], check=False)
    return proc.stdout if proc.rc == 0 else None


def link_names() -> list[str]:
    out = run(["ip", "-j", "link", "show"])
    return [str(link["ifname"]) for link in json.loads(out.stdout or "[]")]


def link_addresses(name: str) -> list[str]:
    """IPv4 addresses of a link, as ``address/prefix``; [] when it does not exist."""
    proc = run(["ip", "-j", "-4", "addr", "show", "dev", name], check=False)
    if proc.rc != 0:
        return []
    addrs = []
    for link in json.loads(proc.stdout or "[]"):
        for info in link.get("addr_info") or []:
            addrs.append(f"{info['local']}/{info['prefixlen']}")
    return addrs


def default_route_interface() -> str | None:
    """The interface of the IPv4 default route (the uplink for SNAT), if there is one."""
    proc = run(["ip", "-j", "-4", "route", "show", "default"], check=False)
    if proc.rc != 0:
        return None
    for route in json.loads(proc.stdout or "[]"):
        if route.get("dev"):
            return str(route["dev"])
    return None


def pid_alive(pidfile: Path, binary: str) -> int | None:
    """The pid in ``pidfile`` if that process runs ``binary``; otherwise None."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if cmdline and Path(cmdline[0].decode()).name == binary else None


# -- network namespaces as stand-in workloads ---------------------------------------------


def _check_ifname(name: str) -> None:
    if not _IFNAME_RE.match(name):
        raise OvsError(f"bad interface name {name!r} (1-15 of [A-Za-z0-9_.-])")


@dataclass
class NetnsHost:
    """A network namespace with one NIC (``eth0``) plugged into an OVS bridge.

    The host side of the veth pair is the OVS port ``port`` (access port with
    ``tag``). With the userspace datapath, TCP only works when the sender does
    not leave checksums to the NIC, so transmit checksum offload is turned off
    inside the namespace (``ethtool -K eth0 tx off``), just as the libvirt NIC
    driver element does for guests.
    """

    name: str
    port: str
    bridge: str
    mac: str
    tag: int | None = None
    csum_offload_off: bool = True

    def __post_init__(self) -> None:
        _check_ifname(self.port)
        if not _NETNS_RE.match(self.name):
            raise OvsError(f"bad network namespace name {self.name!r}")

    # -- lifecycle ----------------------------------------------------------------------

    def create(self) -> NetnsHost:
        self.destroy()
        run(["ip", "netns", "add", self.name])
        try:
            run(["ip", "link", "add", self.port, "type", "veth", "peer", "name", "eth0",
                 "netns", self.name])
            run(["ip", "-n", self.name, "link", "set", "eth0", "address", self.mac])
            run(["ip", "link", "set", self.port, "up"])
            run(["ip", "-n", self.name, "link", "set", "lo", "up"])
            run(["ip", "-n", self.name, "link", "set", "eth0", "up"])
            if self.csum_offload_off:
                self.exec(["ethtool", "-K", "eth0", "tx", "off"])
            self.plug()
        except Exception:
            self.destroy()
            raise
        return self

    def plug(self) -> None:
        """Attach the host side to the bridge (again), as libvirt does for a tap."""
        args = ["--may-exist", "add-port", self.bridge, self.port]
        if self.tag is not None:
            args.append(f"tag={self.tag}")
        _ovs(*args)

    def unplug(self) -> None:
        _ovs("--if-exists", "del-port", self.bridge, self.port)

    def destroy(self) -> None:
        run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-port", self.bridge, self.port],
            check=False)
        run(["ip", "link", "del", self.port], check=False)
        run(["ip", "netns", "del", self.name], check=False)

    # -- inside ---------------------------------------------------------------------------

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def exec(self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60,
             input: str | None = None) -> Completed:
        return run(self.argv(cmd), check=check, timeout=timeout, input=input)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a long-running process inside (a server); the caller stops it."""
        LOG.debug("netns %s: %s", self.name, shlex.join(cmd))
        return subprocess.Popen(self.argv(cmd), stdin=subprocess.DEVNULL,  # noqa: S603
                                start_new_session=True, **kwargs)

    def set_address(self, cidr: str, gateway: str | None = None) -> None:
        ipaddress.ip_interface(cidr)
        self.exec(["ip", "addr", "flush", "dev", "eth0"])
        self.exec(["ip", "addr", "add", cidr, "dev", "eth0"])
        if gateway:
            self.exec(["ip", "route", "replace", "default", "via", gateway])

    def addresses(self) -> list[str]:
        out = self.exec(["ip", "-j", "-4", "addr", "show", "dev", "eth0"]).stdout
        return [f"{i['local']}/{i['prefixlen']}" for link in json.loads(out or "[]")
                for i in link.get("addr_info") or []]


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def iter_lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip():
            yield line.strip()
