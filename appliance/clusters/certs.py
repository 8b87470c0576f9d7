"""The certificates Cluster API keeps for a cluster, in CAPI's own shapes.

CAPI's ``util/secret`` makes, per cluster, three CAs and the service-account
key pair and stores each in a Secret ``<cluster>-<purpose>`` (``ca``,
``etcd``, ``proxy``, ``sa``) of type ``cluster.x-k8s.io/secret`` with
``tls.crt``/``tls.key``; ``util/kubeconfig`` writes ``<cluster>-kubeconfig``
with a ``kubernetes-admin`` client certificate signed by the cluster CA.
Keys are RSA 2048 in PKCS#1 PEM ("RSA PRIVATE KEY"), as CAPI and kubeadm
write them; the service-account "certificate" is the PEM public key.

Everything here is pure: no files, no API calls, nothing logged (the values
are secrets).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import string
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.pki import BACKDATE, CA_VALIDITY

# kubeadm's CA names (cmd/kubeadm/app/phases/certs: KubeadmCertRootCA,
# KubeadmCertEtcdCA, KubeadmCertFrontProxyCA). CAPI itself names all three
# "kubernetes"; kubeadm's names say which CA a certificate is.
CLUSTER_CA_NAME = "kubernetes"
ETCD_CA_NAME = "etcd-ca"
FRONT_PROXY_CA_NAME = "front-proxy-ca"

# CAPI's secret purposes (util/secret/consts.go).
PURPOSE_CLUSTER_CA = "ca"
PURPOSE_ETCD_CA = "etcd"
PURPOSE_FRONT_PROXY_CA = "proxy"
PURPOSE_SERVICE_ACCOUNT = "sa"
PURPOSES = (PURPOSE_CLUSTER_CA, PURPOSE_ETCD_CA, PURPOSE_FRONT_PROXY_CA, PURPOSE_SERVICE_ACCOUNT)

CLUSTER_SECRET_TYPE = "cluster.x-k8s.io/secret"
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
TLS_CRT = "tls.crt"
TLS_KEY = "tls.key"
KUBECONFIG_DATA = "value"

RSA_BITS = 2048
CLIENT_CERT_VALIDITY = dt.timedelta(days=365)  # CAPI's certs.DefaultCertDuration
ADMIN_COMMON_NAME = "kubernetes-admin"
ADMIN_ORGANIZATION = "system:masters"

_TOKEN_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class KeyPair:
    """A certificate (or, for the service account, a public key) and its private key, PEM."""

    cert: bytes
    key: bytes


def new_ca(common_name: str) -> KeyPair:
    """A self-signed CA as CAPI makes it: RSA 2048, 10 years, CA:true with path length 0."""
    key = _new_key()
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
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
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert=cert.public_bytes(serialization.Encoding.PEM), key=_key_pem(key))


def new_service_account_keys() -> KeyPair:
    """The service-account signing key: ``cert`` is the PEM public key, ``key`` the private key."""
    key = _new_key()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(cert=public, key=_key_pem(key))


def cluster_certificates() -> dict[str, KeyPair]:
    """A fresh set of everything CAPI generates for a new cluster, keyed by purpose."""
    return {
        PURPOSE_CLUSTER_CA: new_ca(CLUSTER_CA_NAME),
        PURPOSE_ETCD_CA: new_ca(ETCD_CA_NAME),
        PURPOSE_FRONT_PROXY_CA: new_ca(FRONT_PROXY_CA_NAME),
        PURPOSE_SERVICE_ACCOUNT: new_service_account_keys(),
    }


def secret_name(cluster_name: str, purpose: str) -> str:
    return f"{cluster_name}-{purpose}"


def secret_for(cluster_name: str, purpose: str, pair: KeyPair,
               owner: dict[str, Any] | None) -> dict[str, Any]:
    """The Secret CAPI writes for one key pair (``Certificate.AsSecret``).

    ``owner`` is the owning object (apiVersion, kind, metadata.name/uid); the
    Secret gets a controller owner reference to it, and its namespace.
    """
    secret = _cluster_secret(cluster_name, secret_name(cluster_name, purpose), owner)
    secret["data"] = {TLS_CRT: _b64(pair.cert), TLS_KEY: _b64(pair.key)}
    return secret


def keypair_from_secret(secret: dict[str, Any]) -> KeyPair:
    """The key pair in a ``<cluster>-<purpose>`` Secret; a missing ``tls.key`` is empty (as CAPI)."""
    data = secret.get("data") or {}
    name = (secret.get("metadata") or {}).get("name", "")
    if TLS_CRT not in data:
        raise ValueError(f"secret {name!r} has no {TLS_CRT}")
    try:
        cert = base64.b64decode(data[TLS_CRT], validate=True)
        key = base64.b64decode(data.get(TLS_KEY) or "", validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"secret {name!r}: data is not valid base64") from exc
    return KeyPair(cert=cert, key=key)


def admin_kubeconfig(cluster_name: str, server: str, ca: KeyPair) -> str:
    """The kubeconfig CAPI stores in ``<cluster>-kubeconfig`` (``util/kubeconfig.New``).

    ``server`` is the API server URL; a bare ``host:port`` gets ``https://``
    (CAPI's ``https://<controlPlaneEndpoint>``). The client certificate is
    ``kubernetes-admin`` in ``system:masters``, signed by the cluster CA, 1 year.
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, rsa.RSAPrivateKey):
        raise ValueError("the cluster CA key is not an RSA key")
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ADMIN_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_COMMON_NAME),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + CLIENT_CERT_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        pass
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    client_cert = builder.sign(ca_key, hashes.SHA256())

    if "://" not in server:
        server = f"https://{server}"
    user = f"{cluster_name}-admin"
    context = f"{user}@{cluster_name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {
            "server": server,
            "certificate-authority-data": _b64(ca.cert),
        }}],
        "contexts": [{"name": context, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": context,
        "preferences": {},
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64(client_cert.public_bytes(serialization.Encoding.PEM)),
            "client-key-data": _b64(_key_pem(key)),
        }}],
    }
    return yaml.safe_dump(config, sort_keys=False)


def kubeconfig_secret(cluster_name: str, kubeconfig: str,
                      owner: dict[str, Any] | None) -> dict[str, Any]:
    """The ``<cluster>-kubeconfig`` Secret (data key ``value``), as CAPI writes it."""
    secret = _cluster_secret(cluster_name, secret_name(cluster_name, "kubeconfig"), owner)
    secret["data"] = {KUBECONFIG_DATA: _b64(kubeconfig.encode())}
    return secret


def ca_cert_hash(ca_cert_pem: bytes) -> str:
    """kubeadm's discovery-token-ca-cert-hash: ``sha256:`` + hex SHA-256 of the DER SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(ca_cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def new_bootstrap_token() -> str:
    """A kubeadm bootstrap token, ``[a-z0-9]{6}.[a-z0-9]{16}``."""
    token_id = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(6))
    token_secret = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(16))
    return f"{token_id}.{token_secret}"


# -- helpers -------------------------------------------------------------


def _cluster_secret(cluster_name: str, name: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {CLUSTER_NAME_LABEL: cluster_name}}
    if owner is not None:
        owner_meta = owner.get("metadata") or {}
        if owner_meta.get("namespace"):
            metadata["namespace"] = owner_meta["namespace"]
        metadata["ownerReferences"] = [{
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner_meta["name"],
            "uid": owner_meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }]
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": CLUSTER_SECRET_TYPE}


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    # PKCS#1 ("RSA PRIVATE KEY"), like CAPI's certs.EncodePrivateKeyPEM and kubeadm.
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
