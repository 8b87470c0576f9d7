"""A cluster's credentials, under CAPI's Secret names.

``<cluster>-ca``, ``-etcd``, ``-proxy`` and ``-sa`` are made once (looked up
first, as CAPI's ``LookupOrGenerate`` does, so certificates a user brings are
kept); ``<cluster>-kubeconfig`` (key ``value``) for the cluster's
administrator once the endpoint is known; ``<cluster>-bootstrap-token`` holds
the join token the first control-plane node creates at ``kubeadm init``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from appliance.clusters import certs
from appliance.clusters.objects import (
    CLUSTER_NAME,
    SECRET_TYPE,
    SECRETS,
    create_or_get,
    owner_reference,
    secret_value,
)
from appliance.kinds.registry import Obj
from appliance.resources import ResourceApi, get_or_none

PURPOSES = ("ca", "etcd", "proxy", "sa")
#: kubeadm's own default lifetime for tokens made at init.
TOKEN_TTL = timedelta(hours=24)


def ensure_certificates(api: ResourceApi, cluster: Obj, owner: Obj) -> dict[str, certs.KeyPair]:
    ns, name = cluster["metadata"]["namespace"], cluster["metadata"]["name"]
    out: dict[str, certs.KeyPair] = {}
    for purpose in PURPOSES:
        secret = get_or_none(api, SECRETS, ns, f"{name}-{purpose}")
        if secret is None:
            pair = certs.new_service_account_keys() if purpose == "sa" else \
                certs.new_ca({"ca": "kubernetes", "etcd": "etcd-ca",
                              "proxy": "front-proxy-ca"}[purpose])
            secret = create_or_get(api, SECRETS, ns,
                                   certs.secret_for(name, purpose, pair, owner))
        out[purpose] = certs.keypair_from_secret(secret)
    return out


def read_certificates(api: ResourceApi, cluster: Obj) -> dict[str, certs.KeyPair] | None:
    ns, name = cluster["metadata"]["namespace"], cluster["metadata"]["name"]
    out = {}
    for purpose in PURPOSES:
        secret = get_or_none(api, SECRETS, ns, f"{name}-{purpose}")
        if secret is None:
            return None
        out[purpose] = certs.keypair_from_secret(secret)
    return out


def ensure_kubeconfig(api: ResourceApi, cluster: Obj, ca: certs.KeyPair, owner: Obj) -> None:
    meta, spec = cluster["metadata"], cluster.get("spec") or {}
    endpoint = spec.get("controlPlaneEndpoint") or {}
    if not endpoint.get("host"):
        return
    ns, name = meta["namespace"], meta["name"]
    if get_or_none(api, SECRETS, ns, f"{name}-kubeconfig") is not None:
        return
    server = f"https://{endpoint['host']}:{int(endpoint.get('port') or 6443)}"
    text = certs.admin_kubeconfig(name, server, ca)
    create_or_get(api, SECRETS, ns, {
        "apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
        "metadata": {"name": f"{name}-kubeconfig", "labels": {CLUSTER_NAME: name},
                     "ownerReferences": [owner_reference(owner)]},
        "data": {"value": base64.b64encode(text.encode()).decode()}})


def join_token(api: ResourceApi, cluster: Obj) -> str:
    """The cluster's bootstrap token (made once, with kubeadm's 24 h lifetime)."""
    meta = cluster["metadata"]
    ns, name = meta["namespace"], meta["name"]
    secret = get_or_none(api, SECRETS, ns, f"{name}-bootstrap-token")
    if secret is None:
        token = certs.new_bootstrap_token()
        expires = (datetime.now(UTC) + TOKEN_TTL).strftime("%Y-%m-%dT%H:%M:%SZ")
        token_id, token_secret = token.split(".")
        secret = create_or_get(api, SECRETS, ns, {
            "apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
            "metadata": {"name": f"{name}-bootstrap-token", "labels": {CLUSTER_NAME: name},
                         "ownerReferences": [owner_reference(cluster)]},
            "stringData": {"token-id": token_id, "token-secret": token_secret,
                           "expiration": expires}})
    return f"{secret_value(secret, 'token-id')}.{secret_value(secret, 'token-secret')}"
