"""Which registries may be contacted, and how: the one place that says yes or no to a URL.

Every URL this package fetches (the registry itself, each redirect, the token
realm) goes through ``check_url()`` first. The answer is a ``Target`` that
carries the addresses the host name resolved to *when it was checked*; the
connection goes to those addresses only (see ``hypervisor.oci.transport``),
so a second DNS answer cannot send it somewhere else.

By default a registry is spoken to over HTTPS and must not resolve to a
loopback, link-local, private, shared, reserved or multicast address, nor to
an address of this host (the rules of ``hypervisor.images.address_refusal``):
an image reference is written by any user who may create a pod, and must not
become a way to probe the host's or the lab's internal services. An
administrator lists the exceptions in ``RegistryPolicy``:

- ``allowed_private``: ``host[:port]`` of registries that may resolve to any
  address (the lab's own registry on loopback or a private network);
- ``insecure``: ``host[:port]`` of registries spoken to over plain HTTP;
- ``registry_cas``: ``(host[:port], CA bundle)`` pairs: the certificate of
  that registry is checked against that bundle only (the lab registry and the
  lab CA), so a private CA is trusted for its own registry and nowhere else;
  every other registry is checked against ``ca_bundle`` or the system's CAs.

An entry without a port matches every port of that host; an entry with a
port matches only that port. Host names match case-insensitively. Docker Hub
is contacted as ``registry-1.docker.io`` (and redirects to its storage
hosts); entries name the host actually contacted.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hypervisor.images import ImageError, address_refusal, host_addresses
from hypervisor.oci.errors import PolicyRefused, RegistryUnreachable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class RegistryPolicy:
    """Exceptions to "HTTPS to public addresses only", each a ``host[:port]``."""

    allowed_private: frozenset[str] = frozenset()
    insecure: frozenset[str] = frozenset()
    ca_bundle: Path | None = None  # CA certificates to trust instead of the system's
    registry_cas: tuple[tuple[str, Path], ...] = ()  # (host[:port], the only CAs it may use)

    def allows_private(self, host: str, port: int) -> bool:
        return _listed(self.allowed_private, host, port)

    def ca_for(self, host: str, port: int) -> Path | None:
        """The CA bundle that ``host:port``'s certificate must chain to; None: the system's."""
        for entry, bundle in self.registry_cas:
            if _listed(frozenset({entry}), host, port):
                return bundle
        return self.ca_bundle

    def is_insecure(self, host: str, port: int) -> bool:
        return _listed(self.insecure, host, port)

    def registry_url(self, registry: str) -> str:
        """``http://`` or ``https://`` plus ``registry`` (a ``host[:port]``) per this policy."""
        host, port = _split_hostport(registry)
        scheme = "http" if _listed(self.insecure, host, port) else "https"
        return f"{scheme}://{registry}"


def _split_hostport(hostport: str) -> tuple[str, int | None]:
    hostport = hostport.lower()
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    return host, int(port) if port.isdigit() else None


def _listed(entries: frozenset[str], host: str, port: int | None) -> bool:
    host = host.lower().strip("[]")
    for entry in entries:
        entry_host, entry_port = _split_hostport(entry)
        if entry_host == host and (entry_port is None or entry_port == port):
            return True
    return False


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses it may be fetched from."""

    url: str
    scheme: str  # "http" or "https"
    host: str  # without brackets
    port: int
    addresses: tuple[str, ...]
    request_target: str  # path and query for the request line

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def display(self) -> str:
        """The URL without its query (signed storage URLs carry credentials there)."""
        return redact_url(self.url)


@dataclass
class AddressGuard:
    """Checks addresses; learns this host's own addresses once, and only when needed."""

    own_addresses: Callable[[], frozenset[IPAddress]] = host_addresses
    _own: frozenset[IPAddress] | None = field(default=None, init=False, repr=False)

    def refusal(self, address: IPAddress) -> str | None:
        reason = address_refusal(address)
        if reason is not None:
            return reason
        if self._own is None:
            try:
                self._own = self.own_addresses()
            except ImageError as exc:
                raise PolicyRefused(f"cannot check the registry's address: {exc}") from exc
        return address_refusal(address, self._own)


def check_url(url: str, policy: RegistryPolicy, guard: AddressGuard) -> Target:
    """Refuse ``url`` unless the policy allows its scheme and every address its host has."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise PolicyRefused(f"refusing the malformed URL {redact_url(url)!r}") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not host:
        raise PolicyRefused(f"refusing the URL {redact_url(url)!r}: it has no host")
    if parts.username is not None or parts.password is not None:
        raise PolicyRefused(f"refusing a URL with credentials in it (host {host[:100]})")
    if scheme == "https":
        port = port or 443
    elif scheme == "http":
        port = port or 80
        if not policy.is_insecure(host, port):
            raise PolicyRefused(f"refusing plain HTTP to {_hostport(host, port)}: it is not "
                                "listed as an insecure registry")
    else:
        raise PolicyRefused(f"refusing a {scheme[:20] or 'schemeless'} URL to {host[:100]}: only https "
                            "(and http for insecure registries)")
    addresses = _resolve(host, port)
    if not policy.allows_private(host, port):
        for address in addresses:
            reason = guard.refusal(address)
            if reason:
                shown = "" if host == str(address) else f" (it resolves to {address})"
                raise PolicyRefused(f"refusing to contact {_hostport(host, port)}{shown}: "
                                    f"{reason}; an administrator can allow this registry")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port,
                  addresses=tuple(str(a) for a in addresses), request_target=target)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        raise RegistryUnreachable(f"cannot resolve {host[:100]}: {detail}") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise RegistryUnreachable(f"cannot resolve {host[:100]}: no addresses")
    return addresses


def _hostport(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host[:100]
    return f"{shown}:{port}"


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: no user info, no query, no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"[:300]
