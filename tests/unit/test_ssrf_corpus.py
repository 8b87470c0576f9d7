"""A corpus of URLs that image import must refuse without ``allow_private`` (issue 17).

``hypervisor.images.import_image`` resolves a URL's host once per hop
(``resolve_url``: ``socket.getaddrinfo``), refuses it if any address is
internal (``address_refusal``) or one of this host's own (``host_addresses``,
read from ``ip -j address show``), and then connects to exactly the checked
addresses (``_PinnedHTTPSConnection``: ``socket.create_connection``).

The lab here replaces those three seams and nothing else:

- ``socket.getaddrinfo``: names in ``lab.dns`` answer what the case says;
  IP literals in every spelling (``127.1``, ``0x7f000001``, ``017700000001``…)
  go to the real resolver with ``AI_NUMERICHOST``, so they are parsed exactly
  as in production; no DNS query ever leaves the machine;
- ``images.host_addresses``: loopback plus two public addresses ``OWN_V4`` and
  ``OWN_V6`` that this "host" has;
- ``socket.create_connection``: every attempt is recorded; the public address
  of ``images.example`` (``FRONT``) and loopback are routed to one HTTPS server
  on 127.0.0.1 that records every request; anything else is refused without
  opening a socket.

So a case passes only if import raised the code's refusal text, tried no
connection but the allowed first hops, and the server served nothing but them:
a forbidden target would show up in ``lab.connects`` or ``lab.hits``.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hypervisor import images
from hypervisor.images import ImageError, import_image

FRONT = "93.184.216.34"  # the public address images.example resolves to: allowed
OWN_V4 = "81.2.69.160"  # public addresses of this host: refused although global
OWN_V6 = "2a01:4f8:c0c:1234::1"
OWN_DECIMAL = int(ipaddress.IPv4Address(OWN_V4))

LOOPBACK = "a loopback address"
UNSPECIFIED = "the unspecified address"
LINK_LOCAL = "a link-local address"
PRIVATE = "a private address"
SHARED = "a shared (carrier-grade NAT) address"
SITE_LOCAL = "a site-local address"
MULTICAST = "a multicast address"
RESERVED = "a reserved address"
OWN = "an address of this host"
ADDRESS_REASONS = (LOOPBACK, UNSPECIFIED, LINK_LOCAL, PRIVATE, SHARED, SITE_LOCAL, MULTICAST,
                   RESERVED, OWN)
SCHEME = "only https:// URLs are imported"
CREDENTIALS = "refusing a URL with credentials in it"
NOT_A_URL = "cannot open"  # no "://": import takes it for a local path, and it does not exist

DNS = {
    "images.example": [FRONT],
    "internal.example": ["10.1.2.3"],
    "metadata.example": ["169.254.169.254"],
    "v6-loopback.example": ["::1"],
    "127.0.0.1.nip.example": ["127.0.0.1"],
    "rebind.example": [FRONT, "127.0.0.1"],  # one bad answer refuses the name
    "this-host.example": [OWN_V4],
    "localhost": ["127.0.0.1", "::1"],
}


@dataclass(frozen=True)
class Refusal:
    """A URL import must refuse; ``{port}`` is the loopback server's port."""

    url: str
    why: str  # a fragment of the code's refusal text


@dataclass(frozen=True)
class Redirect:
    """An allowed first hop answers ``status`` with ``location``; the next hop is refused."""

    status: int
    location: str
    why: str


DIRECT: list[Refusal] = [
    # loopback, in every spelling (the port is the lab server's: a hole would fetch from it)
    Refusal("https://127.0.0.1:{port}/secret", LOOPBACK),
    Refusal("https://127.1:{port}/secret", LOOPBACK),
    Refusal("https://127.0.1:{port}/secret", LOOPBACK),
    Refusal("https://0x7f000001:{port}/secret", LOOPBACK),
    Refusal("https://0x7f.0.0.1:{port}/secret", LOOPBACK),
    Refusal("https://2130706433:{port}/secret", LOOPBACK),
    Refusal("https://017700000001:{port}/secret", LOOPBACK),
    Refusal("https://0177.0.0.1:{port}/secret", LOOPBACK),
    Refusal("https://127.255.255.254:{port}/secret", LOOPBACK),
    Refusal("https://localhost:{port}/secret", LOOPBACK),
    Refusal("https://LocalHost:{port}/secret", LOOPBACK),
    Refusal("https://[::1]:{port}/secret", LOOPBACK),
    Refusal("https://[::ffff:127.0.0.1]:{port}/secret", LOOPBACK),
    Refusal("https://[::ffff:7f00:1]:{port}/secret", LOOPBACK),
    Refusal("https://[0:0:0:0:0:0:0:1]:{port}/secret", LOOPBACK),
    Refusal("https://[::127.0.0.1]:{port}/secret", RESERVED),  # IPv4-compatible (deprecated)
    Refusal("https://[64:ff9b::7f00:1]:{port}/secret", RESERVED),  # NAT64 of 127.0.0.1
    Refusal("https://[2002:7f00:1::1]:{port}/secret", PRIVATE),  # 6to4 of 127.0.0.1
    # the unspecified address (Linux connects it to the host itself)
    Refusal("https://0.0.0.0:{port}/secret", UNSPECIFIED),
    Refusal("https://0:{port}/secret", UNSPECIFIED),
    Refusal("https://[::]:{port}/secret", UNSPECIFIED),
    # link-local: the cloud metadata service, spelt many ways
    Refusal("https://169.254.169.254/latest/meta-data/", LINK_LOCAL),
    Refusal("https://2852039166/latest/meta-data/", LINK_LOCAL),
    Refusal("https://0xa9fea9fe/latest/meta-data/", LINK_LOCAL),
    Refusal("https://0251.0376.0251.0376/latest/meta-data/", LINK_LOCAL),
    Refusal("https://169.254.43518/latest/meta-data/", LINK_LOCAL),
    Refusal("https://[::ffff:169.254.169.254]/latest/meta-data/", LINK_LOCAL),
    Refusal("https://[::ffff:a9fe:a9fe]/latest/meta-data/", LINK_LOCAL),
    Refusal("https://[fe80::1]/", LINK_LOCAL),
    Refusal("https://[fe80::a9fe:a9fe]/", LINK_LOCAL),
    Refusal("https://[fd00:ec2::254]/latest/meta-data/", PRIVATE),  # AWS's IPv6 metadata
    Refusal("https://100.100.100.200/latest/meta-data/", SHARED),  # Alibaba's metadata
    # private, shared, site-local, multicast, reserved
    Refusal("https://10.0.0.1/", PRIVATE),
    Refusal("https://10.255.255.255/", PRIVATE),
    Refusal("https://172.16.0.1/", PRIVATE),
    Refusal("https://172.31.255.254/", PRIVATE),
    Refusal("https://192.168.0.1/", PRIVATE),
    Refusal("https://192.168.122.1/", PRIVATE),  # libvirt's default network
    Refusal("https://167772161/", PRIVATE),  # 10.0.0.1 in decimal
    Refusal("https://[::ffff:10.0.0.1]/", PRIVATE),
    Refusal("https://[::ffff:c0a8:101]/", PRIVATE),  # 192.168.1.1
    Refusal("https://[fc00::1]/", PRIVATE),
    Refusal("https://[fd12:3456:789a::1]/", PRIVATE),
    Refusal("https://100.64.0.1/", SHARED),
    Refusal("https://100.127.255.254/", SHARED),
    Refusal("https://[fec0::1]/", SITE_LOCAL),
    Refusal("https://224.0.0.251/", MULTICAST),
    Refusal("https://[ff02::1]/", MULTICAST),
    Refusal("https://240.0.0.1/", PRIVATE),  # 240/4: Python's ipaddress calls it private
    Refusal("https://255.255.255.255/", PRIVATE),
    # this host's own addresses, which are global
    Refusal(f"https://{OWN_V4}/", OWN),
    Refusal(f"https://[{OWN_V6}]/", OWN),
    Refusal(f"https://[::ffff:{OWN_V4}]/", OWN),
    Refusal(f"https://{OWN_DECIMAL}/", OWN),
    Refusal("https://this-host.example/", OWN),
    # names that resolve to internal addresses
    Refusal("https://internal.example/disk.qcow2", PRIVATE),
    Refusal("https://metadata.example/computeMetadata/v1/", LINK_LOCAL),
    Refusal("https://v6-loopback.example:{port}/secret", LOOPBACK),
    Refusal("https://127.0.0.1.nip.example:{port}/secret", LOOPBACK),
    Refusal("https://rebind.example/disk.qcow2", LOOPBACK),
    # schemes other than https
    Refusal("http://images.example/disk.qcow2", SCHEME),
    Refusal("HTTP://127.0.0.1:{port}/secret", SCHEME),
    Refusal("file:///etc/passwd", SCHEME),
    Refusal("file://localhost/etc/shadow", SCHEME),
    Refusal("ftp://images.example/disk.qcow2", SCHEME),
    Refusal("gopher://127.0.0.1:6379/_INFO", SCHEME),
    Refusal("dict://127.0.0.1:11211/stats", SCHEME),
    Refusal("ldap://127.0.0.1:{port}/", SCHEME),
    Refusal("data:application/octet-stream;base64,UUZJ+w==", NOT_A_URL),
    # user information and other parser tricks
    Refusal("https://evil@127.0.0.1:{port}/secret", CREDENTIALS),
    Refusal("https://images.example@127.0.0.1:{port}/secret", CREDENTIALS),
    Refusal("https://images.example:443@127.0.0.1:{port}/secret", CREDENTIALS),
    Refusal("https://user:password@images.example/disk.qcow2", CREDENTIALS),
    Refusal("https://127.0.0.1:{port}\\@images.example/secret", CREDENTIALS),
    Refusal("https://127.0.0.1:{port}#@images.example/secret", LOOPBACK),
    Refusal("https://127.0.0.1:{port}?@images.example/secret", LOOPBACK),
]

REDIRECTS: list[Redirect] = [
    Redirect(301, "https://127.0.0.1:{port}/secret", LOOPBACK),
    Redirect(302, "https://localhost:{port}/secret", LOOPBACK),
    Redirect(303, "https://[::1]:{port}/secret", LOOPBACK),
    Redirect(307, "https://2130706433:{port}/secret", LOOPBACK),
    Redirect(308, "https://0x7f.1:{port}/secret", LOOPBACK),
    Redirect(302, "https://[::ffff:127.0.0.1]:{port}/secret", LOOPBACK),
    Redirect(302, "//127.0.0.1:{port}/secret", LOOPBACK),  # scheme-relative
    Redirect(302, "https://127.0.0.\t1:{port}/secret", LOOPBACK),  # urlsplit drops the tab
    Redirect(301, "https://0.0.0.0:{port}/secret", UNSPECIFIED),
    Redirect(302, "https://169.254.169.254/latest/meta-data/", LINK_LOCAL),
    Redirect(307, "https://[::ffff:a9fe:a9fe]/latest/meta-data/", LINK_LOCAL),
    Redirect(308, "https://10.0.0.1/disk.qcow2", PRIVATE),
    Redirect(301, "https://internal.example/disk.qcow2", PRIVATE),
    Redirect(302, "https://[fd00::1]/disk.qcow2", PRIVATE),
    Redirect(307, "https://100.64.0.1/disk.qcow2", SHARED),
    Redirect(302, f"https://{OWN_V4}/disk.qcow2", OWN),
    Redirect(308, f"https://[{OWN_V6}]/disk.qcow2", OWN),
    Redirect(301, "http://images.example/disk.qcow2", SCHEME),  # a downgrade
    Redirect(302, "file:///etc/passwd", SCHEME),
    Redirect(307, "gopher://127.0.0.1:6379/_INFO", SCHEME),
    Redirect(308, "data:text/plain,hello", SCHEME),
    Redirect(302, "https://evil@127.0.0.1:{port}/secret", CREDENTIALS),
]


# -- the lab -------------------------------------------------------------------------------------


@dataclass
class Lab:
    port: int  # of the HTTPS server on 127.0.0.1
    cafile: Path
    routes: dict[str, tuple[int, dict[str, str], bytes]]
    hits: list[str]  # request paths the server saw
    connects: list[tuple[str, int]] = field(default_factory=list)  # every connection tried
    dns: dict[str, list[str]] = field(default_factory=lambda: dict(DNS))


def _certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed CA certificate for the lab's names and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("images.example"), x509.DNSName("flip.example"),
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One HTTPS server on 127.0.0.1 for the module; it records every request."""
    cert, key = _certificate(tmp_path_factory.mktemp("tls"))
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            status, headers, body = routes.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield Lab(httpd.server_address[1], cert, routes, hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def lab(server: Lab, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """The server, with resolution, this host's addresses and connections under the lab's
    control."""
    server.routes.clear()
    server.hits.clear()
    lab = Lab(server.port, server.cafile, server.routes, server.hits)
    real_getaddrinfo = socket.getaddrinfo
    real_create_connection = socket.create_connection

    def getaddrinfo(host: str, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                    flags: int = 0) -> list[Any]:
        if host in lab.dns:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM,
                     socket.IPPROTO_TCP, "", (a, port, 0, 0) if ":" in a else (a, port))
                    for a in lab.dns[host]]
        try:  # an IP literal in any spelling, parsed by the real resolver
            return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        host, port = address[0], address[1]
        lab.connects.append((host, port))
        ip = ipaddress.ip_address(host)
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if (host, port) == (FRONT, 443) or \
                ((ip.is_loopback or (mapped and mapped.is_loopback)) and port == lab.port):
            return real_create_connection(("127.0.0.1", lab.port), *args, **kwargs)
        raise ConnectionRefusedError(f"the lab opens nothing but loopback, not {host}:{port}")

    own = frozenset(ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", OWN_V4, OWN_V6))
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(images, "host_addresses", lambda: own)
    return lab


def refused_import(lab: Lab, url: str, tmp_path: Path) -> str:
    """Import ``url`` without ``allow_private``; it must fail: its one-line message."""
    library = tmp_path / "library"
    with pytest.raises(ImageError) as err:
        import_image(url, "ssrf", library, allow_private=False, cafile=lab.cafile)
    assert not library.exists() or list(library.iterdir()) == []  # nothing kept
    message = str(err.value)
    assert "\n" not in message
    return message


def assert_says_why(message: str, why: str) -> None:
    assert why in message
    if why in ADDRESS_REASONS:
        assert message.startswith("refusing to fetch from ")
        assert "an administrator can allow private addresses" in message


# -- the corpus ----------------------------------------------------------------------------------


def test_the_corpus_is_large_enough() -> None:
    """Issue 17 asks for at least 40 URLs."""
    assert len(DIRECT) + len(REDIRECTS) >= 40
    assert len(DIRECT) >= 40


@pytest.mark.parametrize("case", DIRECT, ids=[case.url for case in DIRECT])
def test_import_refuses(lab: Lab, tmp_path: Path, case: Refusal) -> None:
    """Refused before any connection, and the message names why."""
    message = refused_import(lab, case.url.format(port=lab.port), tmp_path)
    assert_says_why(message, case.why)
    assert lab.connects == []
    assert lab.hits == []


@pytest.mark.parametrize("case", REDIRECTS,
                         ids=[f"{case.status}-{case.location}" for case in REDIRECTS])
def test_import_refuses_a_redirect(lab: Lab, tmp_path: Path, case: Redirect) -> None:
    """An allowed first hop redirects to a forbidden target: the target is never contacted."""
    lab.routes["/moved"] = (case.status, {"Location": case.location.format(port=lab.port)}, b"")
    message = refused_import(lab, "https://images.example/moved", tmp_path)
    assert_says_why(message, case.why)
    assert lab.connects == [(FRONT, 443)]  # the first hop only
    assert lab.hits == ["/moved"]


def test_import_refuses_the_end_of_a_redirect_chain(lab: Lab, tmp_path: Path) -> None:
    """Every hop is checked, not just the first and second."""
    lab.routes["/one"] = (302, {"Location": "/two"}, b"")
    lab.routes["/two"] = (307, {"Location": "https://images.example/three"}, b"")
    lab.routes["/three"] = (308, {"Location": f"https://[::1]:{lab.port}/secret"}, b"")
    message = refused_import(lab, "https://images.example/one", tmp_path)
    assert_says_why(message, LOOPBACK)
    assert lab.connects == [(FRONT, 443)] * 3
    assert lab.hits == ["/one", "/two", "/three"]


# -- the lab itself: what it would see if a guard failed -----------------------------------------


def test_the_lab_admits_a_public_host_and_follows_its_redirects(lab: Lab, tmp_path: Path) -> None:
    """The refusals above are the code's: a public name gets through to the server."""
    lab.routes["/moved"] = (302, {"Location": "/page.html"}, b"")
    lab.routes["/page.html"] = (200, {}, b"<html>not an image</html>")
    message = refused_import(lab, "https://images.example/moved", tmp_path)
    assert "not a disk image" in message
    assert lab.hits == ["/moved", "/page.html"]


def test_the_lab_sees_a_fetch_from_loopback(lab: Lab, tmp_path: Path) -> None:
    """With the administrator's switch, loopback is fetched and the server records it."""
    lab.routes["/secret"] = (200, {}, b"the metadata service's secret")
    with pytest.raises(ImageError, match="not a disk image"):
        import_image(f"https://127.0.0.1:{lab.port}/secret", "ssrf", tmp_path / "library",
                     allow_private=True, cafile=lab.cafile)
    assert lab.hits == ["/secret"]
    assert lab.connects == [("127.0.0.1", lab.port)]


def test_a_second_dns_answer_cannot_redirect_the_connection(lab: Lab, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name is resolved once, and the connection goes to that answer."""
    answers = iter([[FRONT], ["127.0.0.1"], ["127.0.0.1"]])
    lookup = socket.getaddrinfo

    def flipping(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "flip.example":
            lab.dns["flip.example"] = next(answers)
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", flipping)
    lab.routes["/page.html"] = (200, {}, b"<html>not an image</html>")
    message = refused_import(lab, "https://flip.example/page.html", tmp_path)
    assert "not a disk image" in message
    assert lab.connects == [(FRONT, 443)]
