"""One HTTP request to a checked ``Target``, connected to the addresses it was checked at.

Plain ``http.client`` rather than ``requests``: nothing here may follow a
redirect on its own, read proxy settings from the environment, decode a
``Content-Encoding`` behind our back (blob digests are over the bytes as
sent) or look a host name up a second time. TLS checks the certificate
against the URL's host name (SNI included) while the TCP connection goes to
the pinned address.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hypervisor.oci.errors import RegistryUnreachable
from hypervisor.oci.policy import Target

USER_AGENT = "pacific-lab-oci/1"


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP to the addresses a ``Target`` was checked at."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._addresses = target.addresses

    def connect(self) -> None:
        self.sock = _connect_any(self._addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a pinned address; certificate and SNI checked against the URL's host."""

    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._addresses = target.addresses
        self._tls = context

    def connect(self) -> None:
        sock = _connect_any(self._addresses, self.port, self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _connect_any(addresses: tuple[str, ...], port: int, timeout: float | None) -> socket.socket:
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            error = exc
    raise error or OSError("no address to connect to")


@dataclass
class Opened:
    """A response with its connection; close it when done (a context manager)."""

    target: Target
    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def read(self, amount: int) -> bytes:
        return self.response.read(amount)

    def close(self) -> None:
        # The response holds its own reference to the socket (HTTP/1.0 and
        # "Connection: close" answers detach it from the connection).
        self.response.close()
        self.connection.close()

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system's CAs, or only those in ``ca_bundle``; TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def open_request(target: Target, method: str, headers: Mapping[str, str], *, timeout: float,
                 context: ssl.SSLContext) -> Opened:
    """Send one request and read the status line and headers; raise ``RegistryUnreachable``."""
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = _PinnedHTTPSConnection(target, timeout, context)
    else:
        conn = _PinnedHTTPConnection(target, timeout)
    all_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
    try:
        conn.request(method, target.request_target, headers=all_headers)
        response = conn.getresponse()
    except ssl.SSLError as exc:
        conn.close()
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        raise RegistryUnreachable(f"TLS with {target.host} failed: {detail}") from None
    except TimeoutError:
        conn.close()
        raise RegistryUnreachable(f"{target.display}: timed out after {timeout:.0f} s") from None
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        detail = getattr(exc, "strerror", None) or type(exc).__name__
        raise RegistryUnreachable(f"cannot reach {target.host}:{target.port}: {detail}") from None
    return Opened(target, conn, response)
