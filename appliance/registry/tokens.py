"""Registry tokens: JWTs in the Docker token protocol, signed with a per-install key.

The first start of a lab makes an RSA key and a self-signed certificate for it
under the registry directory (``token.key``, mode 0600, and ``token.crt``). The
certificate is Distribution's ``auth.token.rootcertbundle`` and travels in each
token's ``x5c`` header, which is how Distribution finds the key to check the
signature with. Nothing is shipped: every lab signs with its own key, and a token
signed by any other key, even one with a certificate from the lab CA, is refused.

A token names its subject, the ``service`` (audience), the issuer, a lifetime of
minutes, and the granted ``access``: one entry per repository scope, with the
actions granted (possibly none).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from appliance.registry import ISSUER, SERVICE
from appliance.registry.names import Scope
from appliance.util.files import write_atomic

LEEWAY_S = 30  # clocks of the front and Distribution are the same host's; a little slack
MAX_TOKEN = 16 * 1024


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Claims:
    subject: str
    access: tuple[Scope, ...]
    expires: int

    def allows(self, repository: str, action: str) -> bool:
        return any(s.type == "repository" and s.name == repository and
                   (action in s.actions or "*" in s.actions) for s in self.access)


class Signer:
    """The lab's token key: signs tokens, checks the ones it signed."""

    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self._public = key.public_key()
        self.cert = cert
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    @classmethod
    def ensure(cls, directory: Path) -> Signer:
        """Load the key and certificate in ``directory``, making them on first use."""
        key_path, cert_path = directory / "token.key", directory / "token.crt"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(_read_nofollow(key_path), None)
            cert = x509.load_pem_x509_certificate(_read_nofollow(cert_path))
            if isinstance(key, rsa.RSAPrivateKey) and _same_key(cert, key) and \
                    cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=30):
                return cls(key, cert)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _self_signed(key)
        write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, subject: str, access: Sequence[Scope], ttl: int) -> tuple[str, int]:
        """A signed token and its lifetime in seconds."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": now,
                  "nbf": now - LEEWAY_S, "exp": now + ttl, "jti": secrets.token_hex(16),
                  "access": [{"type": s.type, "name": s.name, "actions": list(s.actions)}
                             for s in access]}
        signing_input = f"{_b64url(json.dumps(header).encode())}." \
                        f"{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}", ttl

    def verify(self, token: str) -> Claims | None:
        """The claims of a token this key signed and that is valid now; None otherwise."""
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            return None
        head, body, sig = token.split(".")
        try:
            header = json.loads(_unb64url(head))
            if not isinstance(header, dict) or header.get("alg") != "RS256":
                return None
            self._public.verify(_unb64url(sig), f"{head}.{body}".encode(), padding.PKCS1v15(),
                                hashes.SHA256())
            claims = json.loads(_unb64url(body))
        except (ValueError, InvalidSignature, UnicodeDecodeError):
            return None
        now = time.time()
        if not isinstance(claims, dict) or claims.get("iss") != ISSUER or \
                claims.get("aud") != SERVICE or not isinstance(claims.get("exp"), int) or \
                claims["exp"] < now - LEEWAY_S or int(claims.get("nbf") or 0) > now + LEEWAY_S:
            return None
        access = tuple(Scope(str(a.get("type")), str(a.get("name")),
                             tuple(str(x) for x in a.get("actions") or ()))
                       for a in claims.get("access") or () if isinstance(a, dict))
        return Claims(str(claims.get("sub") or ""), access, int(claims["exp"]))


def _read_nofollow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(1 << 20)


def _same_key(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pacific Lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"Pacific Lab registry tokens {secrets.token_hex(4)}")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))


def describe(claims: Any) -> str:
    """A log-safe summary of a token request or grant: never the token itself."""
    return ", ".join(str(s) for s in claims) or "nothing"
