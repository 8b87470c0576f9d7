"""appliance.pki: CA and server certificate, made once, checked and repaired after."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from appliance.pki import Pki, PkiError, ensure_pki


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (set(san.get_values_for_type(x509.DNSName)),
            {str(ip) for ip in san.get_values_for_type(x509.IPAddress)})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return ensure_pki(tmp_path / "pki", ["lab.example.test", "Lab"], ["192.0.2.10"])


def test_files_and_permissions(pki: Pki, tmp_path: Path) -> None:
    assert pki.directory == tmp_path / "pki"
    assert {p.name for p in pki.directory.iterdir()} == {
        "ca.crt", "ca.key", "server.crt", "server.key"}
    assert _mode(pki.directory) == 0o700
    assert _mode(pki.ca_key) == 0o600
    assert _mode(pki.server_key) == 0o600
    assert _mode(pki.ca_cert) == 0o644
    assert pki.ca_pem() == pki.ca_cert.read_bytes()
    assert pki.ca_pem().startswith(b"-----BEGIN CERTIFICATE-----")


def test_ca_certificate(pki: Pki) -> None:
    ca = _cert(pki.ca_cert)
    cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str) and cn.startswith("Pacific Lab CA ") and len(cn) > 15
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3652)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


def test_server_certificate(pki: Pki) -> None:
    ca = _cert(pki.ca_cert)
    cert = _cert(pki.server_cert)
    cert.verify_directly_issued_by(ca)
    dns, ips = _sans(cert)
    assert dns == {"lab.example.test", "lab", "localhost"}
    assert ips == {"192.0.2.10", "127.0.0.1", "::1"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=729) < lifetime < dt.timedelta(days=731)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()


def test_chain_verifies_with_cryptography(pki: Pki) -> None:
    store = Store(x509.load_pem_x509_certificates(pki.ca_pem()))
    leaf = _cert(pki.server_cert)
    builder = PolicyBuilder().store(store)
    for subject in (x509.DNSName("lab.example.test"), x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                    x509.IPAddress(ipaddress.ip_address("192.0.2.10"))):
        chain = builder.build_server_verifier(subject).verify(leaf, [])
        assert chain[-1].subject == _cert(pki.ca_cert).subject


def _tls_handshake(pki: Pki, server_hostname: str) -> str:
    """Serve one TLS connection on 127.0.0.1 and connect to it with the CA as trust root."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    client_ctx = ssl.create_default_context(cadata=pki.ca_pem().decode())
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (OSError, ssl.SSLError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                  client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls):
                return tls.recv(5).decode()
        finally:
            thread.join(10)


def test_tls_handshake_on_loopback(pki: Pki) -> None:
    assert _tls_handshake(pki, "localhost") == "hello"
    assert _tls_handshake(pki, "127.0.0.1") == "hello"
    assert _tls_handshake(pki, "lab.example.test") == "hello"
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(pki, "other.example.test")


def test_reuse_changes_nothing(pki: Pki) -> None:
    before = {p.name: (p.read_bytes(), p.stat().st_ino) for p in pki.directory.iterdir()}
    again = ensure_pki(pki.directory, ["LAB", "lab.example.test."], ["192.0.2.10", "::1"])
    assert again == pki
    after = {p.name: (p.read_bytes(), p.stat().st_ino) for p in pki.directory.iterdir()}
    assert after == before


def test_reissue_when_names_change(pki: Pki) -> None:
    ca_before = pki.ca_cert.read_bytes(), pki.ca_key.read_bytes()
    key_before = pki.server_key.read_bytes()
    ensure_pki(pki.directory, ["lab.example.test", "lab", "new.example.test"], ["192.0.2.10"])
    assert (pki.ca_cert.read_bytes(), pki.ca_key.read_bytes()) == ca_before
    assert pki.server_key.read_bytes() != key_before
    assert "new.example.test" in _sans(_cert(pki.server_cert))[0]
    # a name taken away is also a change
    ensure_pki(pki.directory, ["lab.example.test"], [])
    dns, ips = _sans(_cert(pki.server_cert))
    assert dns == {"lab.example.test", "localhost"}
    assert ips == {"127.0.0.1", "::1"}


def test_reissue_when_expiring(pki: Pki) -> None:
    ca = _cert(pki.ca_cert)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    old = _cert(pki.server_cert)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=700))
               .not_valid_after(now + dt.timedelta(days=10)))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    soon = builder.sign(ca_key, hashes.SHA256())
    pki.server_cert.write_bytes(soon.public_bytes(serialization.Encoding.PEM))

    ensure_pki(pki.directory, ["lab.example.test", "lab"], ["192.0.2.10"])
    renewed = _cert(pki.server_cert)
    assert renewed.serial_number != soon.serial_number
    assert renewed.not_valid_after_utc - now > dt.timedelta(days=700)


def test_reissue_when_key_does_not_match(pki: Pki) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    pki.server_key.write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ensure_pki(pki.directory, ["lab.example.test", "lab"], ["192.0.2.10"])
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == _cert(pki.server_cert).public_key()
    assert key.public_key() != other.public_key()


def test_server_cert_from_another_ca_is_replaced(tmp_path: Path, pki: Pki) -> None:
    other = ensure_pki(tmp_path / "other", ["lab.example.test", "lab"], ["192.0.2.10"])
    pki.server_cert.write_bytes(other.server_cert.read_bytes())
    pki.server_key.write_bytes(other.server_key.read_bytes())
    ensure_pki(pki.directory, ["lab.example.test", "lab"], ["192.0.2.10"])
    _cert(pki.server_cert).verify_directly_issued_by(_cert(pki.ca_cert))


def test_missing_server_files_are_reissued(pki: Pki) -> None:
    ca_before = pki.ca_cert.read_bytes()
    pki.server_cert.unlink()
    ensure_pki(pki.directory, ["lab.example.test", "lab"], ["192.0.2.10"])
    assert pki.ca_cert.read_bytes() == ca_before
    _cert(pki.server_cert).verify_directly_issued_by(_cert(pki.ca_cert))


def test_permissions_are_repaired(pki: Pki) -> None:
    os.chmod(pki.directory, 0o755)
    os.chmod(pki.server_key, 0o644)
    os.chmod(pki.ca_key, 0o640)
    ensure_pki(pki.directory, ["lab.example.test", "lab"], ["192.0.2.10"])
    assert _mode(pki.directory) == 0o700
    assert _mode(pki.server_key) == 0o600
    assert _mode(pki.ca_key) == 0o600


def test_modes_do_not_depend_on_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pki = ensure_pki(tmp_path / "pki", [], [])
    finally:
        os.umask(old)
    assert _mode(pki.directory) == 0o700
    assert _mode(pki.ca_key) == 0o600
    assert _mode(pki.server_key) == 0o600
    assert not [p for p in pki.directory.iterdir() if p.name.startswith(".")]


def test_key_path_symlink_is_replaced_not_followed(tmp_path: Path, pki: Pki) -> None:
    outside = tmp_path / "outside"
    outside.write_text("precious")
    pki.server_key.unlink()
    pki.server_key.symlink_to(outside)
    ensure_pki(pki.directory, ["lab.example.test", "lab"], ["192.0.2.10"])
    assert outside.read_text() == "precious"
    assert not pki.server_key.is_symlink()
    assert _mode(pki.server_key) == 0o600


def test_unreadable_ca_is_an_error_not_replaced(pki: Pki) -> None:
    pki.ca_key.write_text("not a key")
    ca_before = pki.ca_cert.read_bytes()
    with pytest.raises(PkiError, match="cannot read the CA"):
        ensure_pki(pki.directory, [], [])
    assert pki.ca_cert.read_bytes() == ca_before


def test_half_a_ca_makes_a_new_one(pki: Pki) -> None:
    old_ca = _cert(pki.ca_cert)
    pki.ca_cert.unlink()
    ensure_pki(pki.directory, ["lab.example.test", "lab"], ["192.0.2.10"])
    new_ca = _cert(pki.ca_cert)
    assert new_ca.subject != old_ca.subject  # random CN suffix
    _cert(pki.server_cert).verify_directly_issued_by(new_ca)


def test_ip_given_as_hostname_becomes_ip_san(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", ["10.0.0.5", ""], ["", " 192.0.2.1 "])
    dns, ips = _sans(_cert(pki.server_cert))
    assert dns == {"localhost"}
    assert ips == {"10.0.0.5", "192.0.2.1", "127.0.0.1", "::1"}


def test_bad_address_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        ensure_pki(tmp_path / "pki", [], ["lab.example.test"])


# -- certificates for the control-plane VMs ------------------------------------------


def test_a_control_plane_vm_uses_a_certificate_issued_by_the_hosts_ca(tmp_path: Path) -> None:
    from appliance.pki import issue_server_cert, issued_pki

    host = ensure_pki(tmp_path / "host", ["lab.example"], ["192.0.2.10"])
    cert_pem, key_pem = issue_server_cert(host, ["pacific-cp-1"], ["198.18.0.5", "198.18.0.6"])
    vm = tmp_path / "vm"
    vm.mkdir()
    (vm / "ca.crt").write_bytes(host.ca_cert.read_bytes())
    (vm / "server.crt").write_text(cert_pem)
    (vm / "server.key").write_text(key_pem)

    pki = issued_pki(vm)
    assert not pki.ca_key.exists()  # the CA's key never leaves the host
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} >= {
        "198.18.0.5", "198.18.0.6"}
    assert "pacific-cp-1" in sans.get_values_for_type(x509.DNSName)
    # The host's own server certificate is untouched.
    assert ensure_pki(tmp_path / "host", ["lab.example"], ["192.0.2.10"]).server_cert.read_bytes()


def test_an_issued_pki_refuses_what_it_cannot_trust(tmp_path: Path) -> None:
    from appliance.pki import issue_server_cert, issued_pki

    host = ensure_pki(tmp_path / "host", ["lab"], [])
    other = ensure_pki(tmp_path / "other", ["lab"], [])
    vm = tmp_path / "vm"
    vm.mkdir()
    with pytest.raises(PkiError, match="ca.crt is missing"):
        issued_pki(vm)
    cert_pem, key_pem = issue_server_cert(host, ["cp"], [])
    (vm / "ca.crt").write_bytes(other.ca_cert.read_bytes())
    (vm / "server.crt").write_text(cert_pem)
    (vm / "server.key").write_text(key_pem)
    with pytest.raises(PkiError, match="was not issued by"):
        issued_pki(vm)
    (vm / "ca.crt").write_bytes(host.ca_cert.read_bytes())
    (vm / "server.key").write_text(issue_server_cert(host, ["cp"], [])[1])
    with pytest.raises(PkiError, match="does not match"):
        issued_pki(vm)
