"""What a process listens on, read from ``/proc`` in that process's own network namespace
(``ss`` only sees the namespace it runs in): the TCP sockets in LISTEN and the bound UDP
sockets that have no peer, among the process's open file descriptors."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from hypervisor.proc import processes

__all__ = ["Listener", "listeners", "process_group", "processes"]

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str
    protocol: str  # tcp or udp
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def beyond_loopback(self) -> bool:
        mapped = getattr(self.address, "ipv4_mapped", None)
        return not (mapped or self.address).is_loopback

    def __str__(self) -> str:
        return f"{self.command}[{self.pid}] {self.protocol} {self.address}:{self.port}"


def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``/proc/net/tcp``'s ``0100007F:1F90``: the address in the host's byte order, 32 bits
    at a time, then the port."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words), int(port, 16)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def listeners(pid: int) -> list[Listener]:
    """The sockets ``pid`` listens on (an empty list if it is gone)."""
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
        inodes = _socket_inodes(pid)
    except OSError:
        return []
    found = []
    for protocol, table in (("tcp", "tcp"), ("tcp", "tcp6"), ("udp", "udp"), ("udp", "udp6")):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            wanted = TCP_LISTEN if protocol == "tcp" else UDP_UNCONNECTED
            if inode in inodes and state == wanted:
                address, port = _address(local)
                found.append(Listener(pid, command, protocol, address, port))
    return found


def process_group(pgid: int) -> set[int]:
    """The processes of one process group (a lab server and what it started)."""
    return {pid for pid, _, fields in processes() if int(fields[2]) == pgid}
