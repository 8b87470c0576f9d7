"""The certificates CAPI keeps for a cluster: CAs, service-account keys, Secrets, kubeconfig."""

from __future__ import annotations

import base64
import datetime as dt
import re
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.clusters import certs

PKI = Path(__file__).parent / "data" / "clusters" / "pki-test-only"
# Computed once with openssl (see the README next to the fixture).
FIXTURE_CA_HASH = "sha256:0551e104d6155d01137d425183c1945b6c1668676b802ec4d98ad0f5a34e32bc"


@pytest.fixture(scope="module")
def ca() -> certs.KeyPair:
    return certs.new_ca("kubernetes")


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_new_ca_is_a_kubeadm_style_ca(ca: certs.KeyPair) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert)
    key = serialization.load_pem_private_key(ca.key, password=None)
    assert ca.key.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert _cn(cert.subject) == "kubernetes" and cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.digital_signature and usage.key_encipherment
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3652)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    assert (cert.public_key().public_bytes(serialization.Encoding.DER, pub)
            == key.public_key().public_bytes(serialization.Encoding.DER, pub))


def test_cluster_certificates_have_capi_purposes_and_kubeadm_names() -> None:
    pairs = certs.cluster_certificates()
    assert set(pairs) == {"ca", "etcd", "proxy", "sa"}
    names = {p: _cn(x509.load_pem_x509_certificate(pairs[p].cert).subject)
             for p in ("ca", "etcd", "proxy")}
    assert names == {"ca": "kubernetes", "etcd": "etcd-ca", "proxy": "front-proxy-ca"}
    assert len({pairs[p].cert for p in pairs}) == 4


def test_service_account_keys_are_a_public_and_private_key() -> None:
    sa = certs.new_service_account_keys()
    assert sa.cert.startswith(b"-----BEGIN PUBLIC KEY-----")
    public = serialization.load_pem_public_key(sa.cert)
    private = serialization.load_pem_private_key(sa.key, password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey)
    signature = private.sign(b"token", padding.PKCS1v15(), hashes.SHA256())
    public.verify(signature, b"token", padding.PKCS1v15(), hashes.SHA256())


def test_secret_for_is_what_capi_writes_and_reads_back(ca: certs.KeyPair) -> None:
    owner = {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
             "metadata": {"name": "tkc-1-control-plane", "namespace": "dev", "uid": "u-1"}}
    secret = certs.secret_for("tkc-1", "ca", ca, owner)
    assert secret["kind"] == "Secret" and secret["type"] == "cluster.x-k8s.io/secret"
    meta = secret["metadata"]
    assert meta["name"] == "tkc-1-ca" and meta["namespace"] == "dev"
    assert meta["labels"] == {"cluster.x-k8s.io/cluster-name": "tkc-1"}
    assert meta["ownerReferences"] == [{
        "apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
        "name": "tkc-1-control-plane", "uid": "u-1", "controller": True,
        "blockOwnerDeletion": True}]
    assert base64.b64decode(secret["data"]["tls.crt"]) == ca.cert
    assert certs.keypair_from_secret(secret) == ca

    bare = certs.secret_for("tkc-1", "sa", ca, None)
    assert "ownerReferences" not in bare["metadata"] and bare["metadata"]["name"] == "tkc-1-sa"


def test_keypair_from_secret_tolerates_a_missing_key_but_not_a_missing_cert() -> None:
    only_cert = {"metadata": {"name": "x-etcd"}, "data": {"tls.crt": base64.b64encode(b"C").decode()}}
    assert certs.keypair_from_secret(only_cert) == certs.KeyPair(b"C", b"")
    with pytest.raises(ValueError, match="tls.crt"):
        certs.keypair_from_secret({"metadata": {"name": "x-ca"}, "data": {}})
    with pytest.raises(ValueError, match="base64"):
        certs.keypair_from_secret({"data": {"tls.crt": "not base64!"}})


def test_admin_kubeconfig_is_capis_and_its_client_cert_is_signed_by_the_ca(
        ca: certs.KeyPair) -> None:
    text = certs.admin_kubeconfig("tkc-1", "198.18.0.10:6443", ca)
    config = yaml.safe_load(text)
    assert config["apiVersion"] == "v1" and config["kind"] == "Config"
    assert config["current-context"] == "tkc-1-admin@tkc-1"
    [cluster] = config["clusters"]
    assert cluster["name"] == "tkc-1"
    assert cluster["cluster"]["server"] == "https://198.18.0.10:6443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == ca.cert
    [context] = config["contexts"]
    assert context == {"name": "tkc-1-admin@tkc-1",
                       "context": {"cluster": "tkc-1", "user": "tkc-1-admin"}}
    [user] = config["users"]
    assert user["name"] == "tkc-1-admin"

    client = x509.load_pem_x509_certificate(base64.b64decode(user["user"]["client-certificate-data"]))
    client_key = serialization.load_pem_private_key(
        base64.b64decode(user["user"]["client-key-data"]), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    client.verify_directly_issued_by(ca_cert)
    assert _cn(client.subject) == "kubernetes-admin"
    orgs = [a.value for a in client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    lifetime = client.not_valid_after_utc - client.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime < dt.timedelta(days=366)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    assert isinstance(client_key, rsa.RSAPrivateKey)
    assert (client.public_key().public_bytes(serialization.Encoding.DER, pub)
            == client_key.public_key().public_bytes(serialization.Encoding.DER, pub))

    with_scheme = yaml.safe_load(certs.admin_kubeconfig("c", "https://h:1", ca))
    assert with_scheme["clusters"][0]["cluster"]["server"] == "https://h:1"


def test_kubeconfig_secret_holds_the_text_under_value(ca: certs.KeyPair) -> None:
    secret = certs.kubeconfig_secret("tkc-1", "apiVersion: v1\n", None)
    assert secret["metadata"]["name"] == "tkc-1-kubeconfig"
    assert secret["type"] == "cluster.x-k8s.io/secret"
    assert base64.b64decode(secret["data"]["value"]) == b"apiVersion: v1\n"


def test_ca_cert_hash_matches_openssl() -> None:
    assert certs.ca_cert_hash((PKI / "ca.crt").read_bytes()) == FIXTURE_CA_HASH


def test_ca_cert_hash_differs_per_ca(ca: certs.KeyPair) -> None:
    value = certs.ca_cert_hash(ca.cert)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", value) and value != FIXTURE_CA_HASH


def test_bootstrap_tokens_have_kubeadms_format_and_are_random() -> None:
    tokens = {certs.new_bootstrap_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", t) for t in tokens)
