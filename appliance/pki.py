"""The appliance's own small PKI: one CA and one TLS server certificate.

``ensure_pki`` is level-triggered: every call looks at what is on disk and
closes the gap. The CA is made once and kept (clients trust it through their
kubeconfigs); the server certificate is re-issued whenever its names no
longer match, it no longer belongs to the CA or its key, or it expires within
30 days.

Files under ``pki_dir`` (mode 0700): ``ca.crt``, ``ca.key``, ``server.crt``,
``server.key``. Keys are written 0600, every file atomically (temporary file,
then rename).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.util.files import write_atomic

LOG = logging.getLogger(__name__)

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=730)
RENEW_BEFORE = dt.timedelta(days=30)
# Certificates start a little in the past so that clients with a slightly
# slow clock accept a freshly issued one.
BACKDATE = dt.timedelta(minutes=5)

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class PkiError(RuntimeError):
    """The PKI directory holds something that cannot be used or safely replaced."""


@dataclass(frozen=True)
class Pki:
    """Where the appliance's CA and server certificate live."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def at(cls, pki_dir: Path) -> Pki:
        return cls(directory=pki_dir, ca_cert=pki_dir / "ca.crt", ca_key=pki_dir / "ca.key",
                   server_cert=pki_dir / "server.crt", server_key=pki_dir / "server.key")

    def ca_pem(self) -> bytes:
        """The CA certificate in PEM form (for kubeconfigs and host agents)."""
        return self.ca_cert.read_bytes()


def ensure_pki(pki_dir: Path, hostnames: Sequence[str], addresses: Sequence[str]) -> Pki:
    """Make (first call) or check and repair (later calls) the CA and server certificate.

    ``hostnames`` and ``addresses`` are the names the server is reached by;
    ``localhost``, ``127.0.0.1`` and ``::1`` are always added. A "hostname"
    that parses as an IP address is treated as an address.
    """
    pki = Pki.at(pki_dir)
    pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(pki_dir, 0o700)
    dns_names, ips = _wanted_names(hostnames, addresses)
    now = _now()

    ca = _load_ca(pki, now)
    new_ca = ca is None
    if ca is None:
        ca = _make_ca(now)
        write_atomic(pki.ca_key, _key_pem(ca[1]), 0o600)
        write_atomic(pki.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM), 0o644)
        LOG.info("[pki %s] made CA %s", pki_dir, ca[0].subject.rfc4514_string())
    ca_cert, ca_key = ca

    reason = "new CA" if new_ca else _server_cert_problem(pki, ca_cert, dns_names, ips, now)
    if reason:
        cert, key = _make_server_cert(ca_cert, ca_key, dns_names, ips, now)
        # Key first: a crash between the two writes leaves a cert that does
        # not match its key, which the next call detects and repairs.
        write_atomic(pki.server_key, _key_pem(key), 0o600)
        write_atomic(pki.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        LOG.info("[pki %s] issued server certificate (%s): %s", pki_dir, reason,
                 ", ".join(dns_names + [str(ip) for ip in ips]))
    for key_path in (pki.ca_key, pki.server_key):
        os.chmod(key_path, 0o600)
    return pki


def issued_pki(pki_dir: Path) -> Pki:
    """A PKI whose server certificate was issued elsewhere (a control-plane VM's, by the
    host's CA, written by cloud-init): ca.crt, server.crt and server.key, no CA key.

    Nothing is made or repaired here: a missing, mismatched, foreign or expired file is a
    ``PkiError`` that says which."""
    pki = Pki.at(pki_dir)
    for path in (pki.ca_cert, pki.server_cert, pki.server_key):
        if not path.is_file():
            raise PkiError(f"{path} is missing: a control-plane VM gets it from cloud-init")
    try:
        ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
        key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    except ValueError as exc:
        raise PkiError(f"{pki_dir}: cannot read the certificates ({exc})") from exc
    if cert.issuer != ca_cert.subject:
        raise PkiError(f"{pki.server_cert} was not issued by {pki.ca_cert}")
    if not _same_public_key(cert, key):
        raise PkiError(f"{pki.server_key} does not match {pki.server_cert}")
    if cert.not_valid_after_utc <= _now():
        raise PkiError(f"{pki.server_cert} expired on {cert.not_valid_after_utc.isoformat()}")
    return pki


def authenticates_clients(cert_pem: bytes) -> bool:
    """Whether a certificate may also be presented as a client's (issued before the
    host's log endpoint, a control-plane VM's certificate was for servers only)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage


def cert_covers(cert_pem: bytes, hostnames: Sequence[str], addresses: Sequence[str]) -> bool:
    """Whether the certificate names every one of ``hostnames`` and ``addresses``."""
    dns_names, ips = _wanted_names(hostnames, addresses)
    have_dns, have_ips = _cert_names(x509.load_pem_x509_certificate(cert_pem))
    return set(dns_names) <= have_dns and set(ips) <= have_ips


def issue_server_cert(pki: Pki, hostnames: Sequence[str], addresses: Sequence[str]
                      ) -> tuple[str, str]:
    """A server certificate and key (PEM text) from ``pki``'s CA for other machines (the
    control-plane VMs): nothing is written to ``pki``."""
    ca = _load_ca(pki, _now())
    if ca is None:
        raise PkiError(f"{pki.directory} has no usable CA to issue certificates with")
    dns_names, ips = _wanted_names(hostnames, addresses)
    cert, key = _make_server_cert(ca[0], ca[1], dns_names, ips, _now())
    return (cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key).decode())


# -- names -------------------------------------------------------------


def _wanted_names(hostnames: Sequence[str],
                  addresses: Sequence[str]) -> tuple[list[str], list[IPAddr]]:
    dns: list[str] = []
    ips: list[IPAddr] = []
    for raw in [*hostnames, "localhost"]:
        name = raw.strip().lower().rstrip(".")
        if not name:
            continue
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if name not in dns:
                dns.append(name)
        else:
            if ip not in ips:
                ips.append(ip)
    for raw in [*addresses, "127.0.0.1", "::1"]:
        if not raw.strip():
            continue
        try:
            ip = ipaddress.ip_address(raw.strip())
        except ValueError as exc:
            raise ValueError(f"not an IP address: {raw!r}") from exc
        if ip not in ips:
            ips.append(ip)
    return dns, ips


def _cert_names(cert: x509.Certificate) -> tuple[set[str], set[IPAddr]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return ({n.lower() for n in san.get_values_for_type(x509.DNSName)},
            {ip for ip in san.get_values_for_type(x509.IPAddress)
             if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)})


# -- loading and checking ----------------------------------------------


def _load_ca(pki: Pki, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The CA on disk, or None when a new one must be made."""
    if not pki.ca_cert.exists() or not pki.ca_key.exists():
        if pki.ca_cert.exists() or pki.ca_key.exists():
            LOG.warning("[pki %s] only half of the CA is present; making a new CA", pki.directory)
        return None
    try:
        cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    except ValueError as exc:
        raise PkiError(f"{pki.directory}: cannot read the CA ({exc}); "
                       "move ca.crt and ca.key away to make a new one") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{pki.ca_key}: expected an EC private key")
    if not _same_public_key(cert, key):
        LOG.warning("[pki %s] ca.key does not match ca.crt; making a new CA", pki.directory)
        return None
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        LOG.warning("[pki %s] CA expires %s; making a new CA (clients must trust it again)",
                    pki.directory, cert.not_valid_after_utc.isoformat())
        return None
    return cert, key


def _server_cert_problem(pki: Pki, ca_cert: x509.Certificate, dns_names: list[str],
                         ips: list[IPAddr], now: dt.datetime) -> str:
    """Why the server certificate must be (re-)issued; empty when it is fine."""
    if not pki.server_cert.exists() or not pki.server_key.exists():
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
        key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    except ValueError:
        return "unreadable"
    if not _same_public_key(cert, key):
        return "key mismatch"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by the current CA"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return "expiring"
    if cert.not_valid_before_utc > now:
        return "not yet valid"
    if _cert_names(cert) != (set(dns_names), set(ips)):
        return "names changed"
    return ""


def _same_public_key(cert: x509.Certificate, key: object) -> bool:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


# -- issuing -------------------------------------------------------------


def _make_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pacific Lab"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Pacific Lab CA {secrets.token_hex(4)}"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                      dns_names: list[str], ips: list[IPAddr],
                      now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = dns_names[0] if dns_names and len(dns_names[0]) <= 64 else "pacific-lab"
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pacific Lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        # client authentication too: a control-plane VM presents its certificate to the
        # host's log endpoint (appliance.nodeapi), as kube-apiserver does to a kubelet
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# -- files ---------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
