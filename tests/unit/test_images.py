"""hypervisor.images: the URL guard, hostile-input checks of imports, the build's cache.

Imports run for real (qemu-img on small images made here, a local HTTPS
server with a self-signed certificate); nothing here runs mmdebstrap."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hypervisor import images
from hypervisor.images import (
    BuiltImage,
    ImageError,
    ImageProgress,
    address_refusal,
    build_debian_image,
    cache_key,
    configure_rootfs,
    host_addresses,
    host_apt_sources,
    import_image,
    resolve_url,
    sniff_format,
)
from hypervisor.proc import ProcessError, run

MiB = 1024 * 1024


# -- images made here --------------------------------------------------------------------------


def mbr_disk(path: Path, size: int = 2 * MiB) -> Path:
    """A raw disk whose first sector ends with the MBR signature, and some data."""
    data = bytearray(size)
    data[446:462] = bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + \
        (2048).to_bytes(4, "little")
    data[510:512] = b"\x55\xaa"
    data[MiB:MiB + 11] = b"hello world"
    path.write_bytes(bytes(data))
    return path


def qcow2_disk(path: Path, *extra: str, size: str = "64M") -> Path:
    run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), size])
    return path


def info(path: Path) -> dict:
    return json.loads(run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(path)]).stdout)


@dataclass
class Recorder:
    events: list[ImageProgress] = field(default_factory=list)

    def __call__(self, event: ImageProgress) -> None:
        self.events.append(event)

    @property
    def phases(self) -> list[str]:
        return list(dict.fromkeys(e.phase for e in self.events))


# -- the URL guard -----------------------------------------------------------------------------


@pytest.mark.parametrize("url, reason", [
    ("https://localhost/img.qcow2", "loopback"),
    ("https://127.0.0.1/img.qcow2", "loopback"),
    ("https://127.1.2.3:8443/img.qcow2", "loopback"),
    ("https://[::1]/img.qcow2", "loopback"),
    ("https://[::ffff:127.0.0.1]/img.qcow2", "loopback"),
    ("https://10.1.2.3/img.qcow2", "private"),
    ("https://172.16.0.9/img.qcow2", "private"),
    ("https://192.168.122.1/img.qcow2", "private"),
    ("https://[fd00::1]/img.qcow2", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/img.qcow2", "link-local"),
    ("https://224.0.0.1/img.qcow2", "multicast"),
    ("https://0.0.0.0/img.qcow2", "unspecified"),
    ("https://100.64.0.1/img.qcow2", "carrier-grade NAT"),
])
def test_internal_destinations_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ImageError, match=reason) as err:
        resolve_url(url)
    assert "\n" not in str(err.value)
    assert "an administrator can allow private addresses" in str(err.value)


@pytest.mark.parametrize("url", [
    "https://localhost/img.qcow2", "https://10.1.2.3/img.qcow2", "https://[fd00::1]/img.qcow2",
    "https://169.254.169.254/x", "https://0.0.0.0/x",
])
def test_allow_private_admits_them_and_pins_the_address(url: str) -> None:
    pinned = resolve_url(url, allow_private=True)
    assert pinned.port == 443
    assert ipaddress.ip_address(pinned.address)
    assert pinned.target.startswith("/")


def test_localhost_is_pinned_to_what_it_resolved_to() -> None:
    pinned = resolve_url("https://localhost:8443/a/b.qcow2?sig=1", allow_private=True)
    assert ipaddress.ip_address(pinned.address).is_loopback
    assert (pinned.host, pinned.port, pinned.target) == ("localhost", 8443, "/a/b.qcow2?sig=1")


def test_the_hosts_own_addresses_are_refused() -> None:
    own = host_addresses()
    assert ipaddress.ip_address("127.0.0.1") in own
    outward = sorted(str(a) for a in own if not a.is_loopback and not a.is_link_local)
    if not outward:
        pytest.skip("this host has no address besides loopback and link-local")
    ip = ipaddress.ip_address(outward[0])
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    with pytest.raises(ImageError, match="an address of this host"):
        resolve_url(f"https://{host}/img.qcow2")
    assert resolve_url(f"https://{host}/img.qcow2", allow_private=True).address == str(ip)


def test_own_public_address_is_refused_even_though_it_is_global() -> None:
    public = ipaddress.ip_address("8.8.8.8")
    assert address_refusal(public) is None
    assert address_refusal(public, frozenset({public})) == "an address of this host"
    assert address_refusal(ipaddress.ip_address("2001:4860:4860::8888")) is None
    assert address_refusal(ipaddress.ip_address("fec0::1")) == "a site-local address"
    assert address_refusal(ipaddress.ip_address("240.0.0.1")) is not None


@pytest.mark.parametrize("url, message", [
    ("http://example.org/img.qcow2", "only https"),
    ("ftp://example.org/img.qcow2", "only https"),
    ("file:///etc/shadow", "only https"),
    ("https://user:secret@example.org/img.qcow2", "credentials"),
    ("https://example.org:99999/img.qcow2", "invalid URL"),
    ("https:///img.qcow2", "no host"),
])
def test_malformed_or_non_https_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        resolve_url(url, allow_private=True)


@pytest.mark.parametrize("source", ["http://127.0.0.1/x.qcow2", "file:///etc/passwd",
                                    "ftp://example.org/x.raw"])
def test_import_refuses_non_https_before_anything(tmp_path: Path, source: str) -> None:
    with pytest.raises(ImageError, match="only https"):
        import_image(source, "img", tmp_path / "out", allow_private=True)
    assert not (tmp_path / "out").exists()


# -- local imports -----------------------------------------------------------------------------


def test_import_raw_converts_to_qcow2_and_records_the_checksum(tmp_path: Path) -> None:
    src = mbr_disk(tmp_path / "disk.img")
    progress = Recorder()
    built = import_image(str(src), "my-raw", tmp_path / "lib", progress=progress)
    assert isinstance(built, BuiltImage)
    assert built.disk.parent == tmp_path / "lib"
    assert built.disk.name == f"my-raw-{built.sha256[:12]}.qcow2"
    assert built.sha256 == hashlib.sha256(built.disk.read_bytes()).hexdigest()
    assert built.size_bytes == built.disk.stat().st_size
    assert built.virtual_size_bytes == 2 * MiB
    assert (built.kernel, built.initrd, built.cmdline) == (None, None, None)
    assert built.os == {"name": "unknown", "version": "unknown"}
    assert built.source == str(src)
    assert built.disk.stat().st_mode & 0o777 == 0o444
    meta = info(built.disk)
    assert meta["format"] == "qcow2" and "backing-filename" not in meta
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(src), str(built.disk)])
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == [built.disk.name]
    assert progress.phases == ["copying", "verifying", "converting", "checksumming", "done"]
    fractions = [e.fraction for e in progress.events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    copying = [e for e in progress.events if e.phase == "copying"]
    assert copying[-1].done_bytes == copying[-1].total_bytes == 2 * MiB


def test_import_raw_ext4_filesystem_without_partition_table(tmp_path: Path) -> None:
    src = tmp_path / "fs.raw"
    run(["mkfs.ext4", "-q", "-F", str(src), "8M"])
    built = import_image(str(src), "fs", tmp_path / "lib")
    assert built.virtual_size_bytes == 8 * MiB


def test_import_qcow2_is_rewritten_self_contained(tmp_path: Path) -> None:
    raw = mbr_disk(tmp_path / "seed.img")
    src = tmp_path / "src.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(src)])
    built = import_image(str(src), "my-qcow2", tmp_path / "lib")
    assert built.virtual_size_bytes == 2 * MiB
    assert built.sha256 == hashlib.sha256(built.disk.read_bytes()).hexdigest()
    run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(src), str(built.disk)])
    again = import_image(str(src), "my-qcow2", tmp_path / "lib")
    assert again.disk == built.disk


def test_qcow2_with_a_backing_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"secret" * 1024)
    src = qcow2_disk(tmp_path / "evil.qcow2", "-b", str(secret), "-F", "raw")
    with pytest.raises(ImageError, match="backing file"):
        import_image(str(src), "evil", tmp_path / "lib")
    assert list((tmp_path / "lib").iterdir()) == []


def test_qcow2_with_an_external_data_file_is_refused(tmp_path: Path) -> None:
    src = qcow2_disk(tmp_path / "evil.qcow2", "-o", f"data_file={tmp_path / 'data.raw'}")
    with pytest.raises(ImageError, match="external data file"):
        import_image(str(src), "evil", tmp_path / "lib")


@pytest.mark.parametrize("content, message", [
    (b"#!/bin/sh\necho not an image\n", "not a disk image"),
    (bytes(4096), "not a disk image"),
    (b"", "not a disk image"),
])
def test_non_images_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    src = tmp_path / "file.img"
    src.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        import_image(str(src), "junk", tmp_path / "lib")
    assert list((tmp_path / "lib").iterdir()) == []


def test_other_image_formats_are_refused_by_name(tmp_path: Path) -> None:
    src = tmp_path / "disk.vmdk"
    run(["qemu-img", "create", "-q", "-f", "vmdk", str(src), "16M"])
    with pytest.raises(ImageError, match="VMDK image; only qcow2 and raw"):
        import_image(str(src), "vm", tmp_path / "lib")


def test_symlink_is_refused(tmp_path: Path) -> None:
    real = mbr_disk(tmp_path / "real.img")
    link = tmp_path / "link.img"
    link.symlink_to(real)
    with pytest.raises(ImageError, match="symbolic link"):
        import_image(str(link), "linked", tmp_path / "lib")


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "missing"])
def test_only_regular_files_are_imported(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/zero")
    with pytest.raises(ImageError, match="not a regular file|cannot open"):
        import_image(str(path), "thing", tmp_path / "lib")


def test_size_cap_applies_to_local_files(tmp_path: Path) -> None:
    src = mbr_disk(tmp_path / "disk.img")
    with pytest.raises(ImageError, match="more than the limit"):
        import_image(str(src), "big", tmp_path / "lib", max_bytes=MiB)


@pytest.mark.parametrize("name", ["Bad_Name", "-lead", "trail-", "", "a" * 64, "a/b", "..", "x.y"])
def test_image_names_must_be_dns_labels(tmp_path: Path, name: str) -> None:
    src = mbr_disk(tmp_path / "disk.img")
    with pytest.raises(ImageError, match="invalid image name"):
        import_image(str(src), name, tmp_path / "lib")


def test_sniffing_never_takes_a_qcow2_header_for_raw(tmp_path: Path) -> None:
    # A "raw" disk whose first bytes are a qcow2 header with a backing file is
    # exactly what QEMU's own format probing would be fooled by.
    src = qcow2_disk(tmp_path / "evil.qcow2", "-b", "/etc/shadow", "-F", "raw", "-u")
    padded = tmp_path / "evil.raw"
    data = bytearray(src.read_bytes().ljust(MiB, b"\0"))
    data[510:512] = b"\x55\xaa"
    padded.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="backing file"):
        sniff_format(padded)


# -- URL imports against a local HTTPS server --------------------------------------------------


@dataclass
class TLSServer:
    port: int
    cafile: Path
    routes: dict[str, tuple[int, dict[str, str], bytes]]
    hits: list[str]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
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


@pytest.fixture()
def tls_server(tmp_path: Path) -> Iterator[TLSServer]:
    cert, key = _self_signed(tmp_path)
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            status, headers, body = routes.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "Content-Length" not in headers and headers.get("X-No-Length") is None:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield TLSServer(httpd.server_address[1], cert, routes, hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_url_import_with_allow_private(tmp_path: Path, tls_server: TLSServer) -> None:
    raw = mbr_disk(tmp_path / "seed.img")
    src = tmp_path / "served.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(src)])
    tls_server.routes["/images/served.qcow2?token=abc"] = (200, {}, src.read_bytes())
    progress = Recorder()
    built = import_image(tls_server.url("/images/served.qcow2?token=abc"), "served",
                         tmp_path / "lib", allow_private=True, cafile=tls_server.cafile,
                         progress=progress)
    assert tls_server.hits == ["/images/served.qcow2?token=abc"]
    assert built.source == tls_server.url("/images/served.qcow2")  # no query: may hold tokens
    assert built.sha256 == hashlib.sha256(built.disk.read_bytes()).hexdigest()
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(built.disk)])
    assert progress.phases[0] == "downloading"
    downloading = [e for e in progress.events if e.phase == "downloading"]
    assert downloading[-1].done_bytes == src.stat().st_size == downloading[-1].total_bytes


def test_url_import_by_name_resolves_and_verifies_the_name(tmp_path: Path,
                                                            tls_server: TLSServer) -> None:
    tls_server.routes["/d.img"] = (200, {}, mbr_disk(tmp_path / "d.img").read_bytes())
    built = import_image(tls_server.url("/d.img", host="localhost"), "by-name", tmp_path / "lib",
                         allow_private=True, cafile=tls_server.cafile)
    assert built.virtual_size_bytes == 2 * MiB


def test_url_import_is_refused_without_allow_private(tmp_path: Path,
                                                      tls_server: TLSServer) -> None:
    tls_server.routes["/d.img"] = (200, {}, mbr_disk(tmp_path / "d.img").read_bytes())
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(ImageError, match="loopback"):
            import_image(tls_server.url("/d.img", host=host), "nope", tmp_path / "lib",
                         cafile=tls_server.cafile)
    assert tls_server.hits == []


def test_untrusted_certificate_is_refused(tmp_path: Path, tls_server: TLSServer) -> None:
    tls_server.routes["/d.img"] = (200, {}, mbr_disk(tmp_path / "d.img").read_bytes())
    with pytest.raises(ImageError, match="TLS with 127.0.0.1 failed"):
        import_image(tls_server.url("/d.img"), "tls", tmp_path / "lib", allow_private=True)


def test_redirects_are_followed_and_checked_again(tmp_path: Path, tls_server: TLSServer) -> None:
    tls_server.routes["/d.img"] = (200, {}, mbr_disk(tmp_path / "d.img").read_bytes())
    tls_server.routes["/go"] = (302, {"Location": "/d.img"}, b"")
    tls_server.routes["/plain"] = (301, {"Location": f"http://127.0.0.1:{tls_server.port}/d.img"},
                                   b"")
    tls_server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    built = import_image(tls_server.url("/go"), "moved", tmp_path / "lib", allow_private=True,
                         cafile=tls_server.cafile)
    assert built.virtual_size_bytes == 2 * MiB
    with pytest.raises(ImageError, match="only https"):
        import_image(tls_server.url("/plain"), "plain", tmp_path / "lib", allow_private=True,
                     cafile=tls_server.cafile)
    with pytest.raises(ImageError, match="redirects"):
        import_image(tls_server.url("/loop"), "loop", tmp_path / "lib", allow_private=True,
                     cafile=tls_server.cafile)


def test_download_size_cap(tmp_path: Path, tls_server: TLSServer) -> None:
    body = mbr_disk(tmp_path / "d.img").read_bytes()
    tls_server.routes["/known"] = (200, {}, body)
    tls_server.routes["/unknown"] = (200, {"X-No-Length": "1", "Connection": "close"}, body)
    for path in ("/known", "/unknown"):
        with pytest.raises(ImageError, match="limit"):
            import_image(tls_server.url(path), "big", tmp_path / "lib", allow_private=True,
                         cafile=tls_server.cafile, max_bytes=MiB)
    assert list((tmp_path / "lib").iterdir()) == []


def test_http_errors_and_non_images_from_urls(tmp_path: Path, tls_server: TLSServer) -> None:
    tls_server.routes["/page.html"] = (200, {}, b"<html>an error page</html>")
    with pytest.raises(ImageError, match="HTTP 404"):
        import_image(tls_server.url("/missing"), "x", tmp_path / "lib", allow_private=True,
                     cafile=tls_server.cafile)
    with pytest.raises(ImageError, match="not a disk image"):
        import_image(tls_server.url("/page.html"), "x", tmp_path / "lib", allow_private=True,
                     cafile=tls_server.cafile)


# -- building: the parts that need no mirror ---------------------------------------------------


def _fake_root(tmp: Path, sources: dict[str, str], codename: str = "bookworm") -> Path:
    root = tmp / "root"
    (root / "etc/apt/sources.list.d").mkdir(parents=True)
    (root / "etc/os-release").write_text(f'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME={codename}\n')
    for rel, text in sources.items():
        (root / "etc/apt" / rel).write_text(text)
    return root


DEB822 = """\
Types: deb deb-src
URIs: http://mirror.test/debian
Suites: bookworm bookworm-updates bookworm-backports
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.test/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Enabled: no
Types: deb
URIs: http://disabled.test/debian
Suites: bookworm
Components: main
"""


def test_apt_sources_come_from_the_host(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, {
        "sources.list.d/debian.sources": DEB822,
        "sources.list.d/vendor.list": "deb https://vendor.test/apt vendor-bookworm main\n",
    })
    assert host_apt_sources("bookworm", root) == [
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.test/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.test/debian bookworm-updates main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.test/debian-security bookworm-security main",
    ]
    trixie = host_apt_sources("trixie", root)
    assert [line.split()[-2] for line in trixie] == ["trixie", "trixie-updates", "trixie-security"]


def test_one_line_sources_list(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, {"sources.list": (
        "# comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://m.test/debian bookworm main non-free-firmware\n"
        "deb-src http://m.test/debian bookworm main\n"
        "deb http://security.m.test/debian-security bookworm-security main # trailing\n")})
    assert host_apt_sources("bookworm", root) == [
        "deb [signed-by=/k.gpg] http://m.test/debian bookworm main",
        "deb http://security.m.test/debian-security bookworm-security main",
    ]


def test_no_debian_mirror_is_an_error(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, {"sources.list": "deb https://vendor.test/apt stable main\n"})
    with pytest.raises(ImageError, match="no Debian mirror for 'bookworm'"):
        host_apt_sources("bookworm", root)


def test_cache_key_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    key = cache_key("bookworm", 4)
    assert key == cache_key("bookworm", 4)
    assert key != cache_key("bookworm", 8)
    assert key != cache_key("trixie", 4)
    monkeypatch.setattr(images, "PACKAGES", (*images.PACKAGES, "curl"))
    assert key != cache_key("bookworm", 4)
    monkeypatch.setattr(images, "BUILD_SCRIPT_VERSION", images.BUILD_SCRIPT_VERSION + 1)
    assert cache_key("bookworm", 4) != key


def test_configure_rootfs_makes_every_clone_its_own(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    for rel in ("etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_rsa_key.pub",
                "etc/ssh/sshd_config", "var/lib/dbus/machine-id", "var/lib/cloud/instance/x"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/hostname").write_text("buildhost\n")
    configure_rootfs(root, "11111111-2222-4333-8444-555555555555")
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert not (root / "var/lib/cloud").exists()
    assert (root / "etc/hostname").read_text() == "debian\n"
    assert (root / "etc/fstab").read_text().startswith(
        "UUID=11111111-2222-4333-8444-555555555555\t/\text4\t")
    cfg = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/90_pacific.cfg").read_text())
    assert cfg["datasource_list"] == ["NoCloud", "None"]
    assert cfg["growpart"] == {"mode": "off"}
    assert (root / "etc/default/locale").read_text() == "LANG=C.UTF-8\n"
    dropin = (root / "etc/systemd/system/ssh.service.d/10-pacific-host-keys.conf").read_text()
    # Lost host keys are made anew before sshd's own check; "$$" is systemd's literal "$".
    assert dropin.splitlines()[1:] == [
        "ExecStartPre=",
        "ExecStartPre=/bin/sh -c 'for k in /etc/ssh/ssh_host_*_key; do [ -s \"$$k\" ] || "
        "rm -f \"$$k\" \"$$k.pub\"; done; exec /usr/bin/ssh-keygen -A'",
        "ExecStartPre=/usr/sbin/sshd -t"]


def test_configure_rootfs_never_writes_through_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("host file\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").symlink_to(outside)
    (root / "etc/machine-id").symlink_to(outside)
    configure_rootfs(root, "11111111-2222-4333-8444-555555555555")
    assert outside.read_text() == "host file\n"
    assert not (root / "etc/hostname").is_symlink()


def test_failed_commands_become_one_line() -> None:
    exc = ProcessError(["/usr/bin/mmdebstrap", "--include=" + "x," * 200, "bookworm"], 25,
                       "", "I: downloading\nE: cannot reach the mirror\n")
    assert images._describe(exc) == "mmdebstrap failed (rc=25): E: cannot reach the mirror"


def test_cmdline_boots_the_root_filesystem_by_uuid() -> None:
    line = images.kernel_cmdline("11111111-2222-4333-8444-555555555555")
    assert line.startswith("root=UUID=11111111-2222-4333-8444-555555555555 ro ")
    assert line.split()[-1].startswith("console=ttyS0")  # the serial console gets systemd's output


def _fake_cached_build(cache: Path, release: str = "bookworm", size_gib: int = 4) -> Path:
    key = cache_key(release, size_gib)
    entry = cache / f"debian-12-{key[:16]}"
    entry.mkdir(parents=True)
    disk = qcow2_disk(entry / "disk.qcow2", size="16M")
    (entry / "vmlinuz").write_bytes(b"kernel")
    (entry / "initrd.img").write_bytes(b"initrd")
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    (entry / "build.json").write_text(json.dumps({
        "name": "debian-12", "release": release, "key": key, "sha256": digest,
        "size_bytes": disk.stat().st_size, "virtual_size_bytes": 16 * MiB,
        "cmdline": images.kernel_cmdline("11111111-2222-4333-8444-555555555555"),
        "os": {"name": "debian", "version": "12"}}))
    return entry


def test_cached_build_is_published_without_building(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("built although a cached build exists")

    monkeypatch.setattr(images, "_build", no_build)
    _fake_cached_build(tmp_path / "cache")
    progress = Recorder()
    started = time.monotonic()
    built = build_debian_image("bookworm", out_dir=tmp_path / "lib", cache_dir=tmp_path / "cache",
                               progress=progress)
    assert time.monotonic() - started < 1.0
    stem = f"debian-12-{built.sha256[:12]}"
    assert (built.disk.name, built.kernel and built.kernel.name,
            built.initrd and built.initrd.name) == (
        f"{stem}.qcow2", f"{stem}.vmlinuz", f"{stem}.initrd")
    assert built.kernel is not None and built.kernel.read_bytes() == b"kernel"
    assert built.os == {"name": "debian", "version": "12"}
    assert built.cmdline and built.cmdline.startswith("root=UUID=")
    assert built.source == "debian:bookworm"
    for path in (built.disk, built.kernel, built.initrd):
        assert path is not None and path.stat().st_mode & 0o777 == 0o444
    assert progress.events[-1] == ImageProgress("done", 1.0)
    # Publishing again (another library) reuses the same files; nothing is rewritten.
    inode = built.disk.stat().st_ino
    again = build_debian_image("bookworm", out_dir=tmp_path / "lib", cache_dir=tmp_path / "cache")
    assert again == built and again.disk.stat().st_ino == inode


def test_superseded_builds_are_pruned(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    current = _fake_cached_build(cache)
    for entry, meta in (("debian-12-old4", {"key": "old", "size_gib": 4}),
                        ("debian-12-older", {"key": "older"}),
                        ("debian-12-old8", {"key": "old8", "size_gib": 8}),
                        ("debian-13-other", {"key": "other", "size_gib": 4})):
        (cache / entry).mkdir()
        (cache / entry / "build.json").write_text(json.dumps(meta))
    images._prune_superseded(cache, "debian-12", current, 4)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [current.name, "debian-12-old8", "debian-13-other"])


@pytest.mark.parametrize("release, size, message", [
    ("Bookworm", 4, "invalid Debian release"), ("bookworm; rm -rf /", 4, "invalid Debian release"),
    ("bookworm", 0, "1 to 1024 GiB"),
])
def test_bad_build_arguments(tmp_path: Path, release: str, size: int, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        build_debian_image(release, out_dir=tmp_path / "lib", cache_dir=tmp_path / "cache",
                           size_gib=size)
