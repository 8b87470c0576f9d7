"""The supervisor's view into a guest cluster, through its endpoint.

The controllers read a guest cluster's Nodes (for ``nodeRef`` and node
health) and apply ClusterResourceSets with the credentials in the
``<cluster>-kubeconfig`` Secret, as CAPI's controllers do. The kubeconfig
holds either a client certificate (what the supervisor writes) or a bearer
token. Client certificates are written, mode 0600, to a private directory
under the state directory for the TLS library and removed with the client.
"""

from __future__ import annotations

import base64
import copy
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from appliance import errors
from appliance.client import ApiClient
from appliance.clusters.objects import SECRETS, plural_of, secret_value
from appliance.kinds.registry import Obj
from appliance.resources import ResourceApi, get_or_none

LOG = logging.getLogger(__name__)

#: A guest cluster that does not answer must not hold a controller's worker long.
TIMEOUT = 4.0


#: Kinds of a guest cluster that live outside namespaces (what add-ons usually bring).
CLUSTER_SCOPED = frozenset({
    "namespaces", "nodes", "persistentvolumes", "clusterroles", "clusterrolebindings",
    "storageclasses", "csidrivers", "csinodes", "volumeattachments", "priorityclasses",
    "runtimeclasses", "customresourcedefinitions", "apiservices",
    "mutatingwebhookconfigurations", "validatingwebhookconfigurations",
    "validatingadmissionpolicies", "validatingadmissionpolicybindings", "ingressclasses",
    "podsecuritypolicies", "certificatesigningrequests"})


class GuestUnreachable(Exception):
    """The guest cluster's API did not answer (yet): not an error of the supervisor."""


@dataclass
class GuestCluster:
    server: str
    client: ApiClient
    workdir: Path | None = None

    def nodes(self) -> list[Obj]:
        return list(self._get("/api/v1/nodes").get("items") or [])

    def get(self, path: str) -> Any:
        return self._get(path)

    def apply(self, obj: Obj) -> str:
        """Create ``obj`` (CRS ApplyOnce semantics): "created" or "exists"."""
        path = self._collection(obj)
        try:
            self.client.create(path, obj)
            return "created"
        except errors.ApiError as err:
            if err.code == 409:
                return "exists"
            raise
        except requests.RequestException as exc:
            raise GuestUnreachable(f"{self.server}: {exc.__class__.__name__}") from exc

    def replace(self, obj: Obj) -> str:
        """Create ``obj``, or replace the object of that name with it (CRS Reconcile
        semantics): "created" or "replaced"."""
        path = self._collection(obj)
        item = f"{path}/{(obj.get('metadata') or {}).get('name', '')}"
        try:
            try:
                self.client.create(path, obj)
                return "created"
            except errors.ApiError as err:
                if err.code != 409:
                    raise
            current = self.client.get(item)
            body = copy.deepcopy(obj)
            body.setdefault("metadata", {})["resourceVersion"] = \
                (current.get("metadata") or {}).get("resourceVersion")
            self.client.replace(item, body)
            return "replaced"
        except requests.RequestException as exc:
            raise GuestUnreachable(f"{self.server}: {exc.__class__.__name__}") from exc

    @staticmethod
    def _collection(obj: Obj) -> str:
        group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
        plural = plural_of(str(obj.get("kind", "")))
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        if plural not in CLUSTER_SCOPED and not ns:
            ns = "default"
        return ApiClient.path(group, version, plural, ns)

    def _get(self, path: str) -> Any:
        try:
            return self.client.get(path)
        except requests.RequestException as exc:
            raise GuestUnreachable(f"{self.server}: {exc.__class__.__name__}") from exc

    def close(self) -> None:
        self.client.session.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def open_guest(api: ResourceApi, namespace: str, cluster: str, run_dir: Path) -> GuestCluster:
    """A client for the guest cluster, from its ``<cluster>-kubeconfig`` Secret."""
    secret = get_or_none(api, SECRETS, namespace, f"{cluster}-kubeconfig")
    if secret is None:
        raise GuestUnreachable("no kubeconfig Secret yet")
    text = secret_value(secret, "value") or ""
    return from_kubeconfig(text, run_dir)


def from_kubeconfig(text: str, run_dir: Path) -> GuestCluster:
    try:
        config = yaml.safe_load(text) or {}
        ctx_name = config.get("current-context") or config["contexts"][0]["name"]
        ctx = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])
        server = str(cluster["server"]).rstrip("/")
    except (yaml.YAMLError, KeyError, IndexError, StopIteration, TypeError) as exc:
        raise GuestUnreachable(f"the kubeconfig Secret cannot be read: {exc!r}") from exc
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    workdir = Path(tempfile.mkdtemp(prefix="guest-", dir=run_dir))
    try:
        ca = _write(workdir, "ca.crt", cluster.get("certificate-authority-data"))
        client = ApiClient(server, str(user.get("token") or ""), str(ca) if ca else None,
                           timeout=TIMEOUT)
        cert = _write(workdir, "client.crt", user.get("client-certificate-data"))
        key = _write(workdir, "client.key", user.get("client-key-data"))
        if cert and key:
            client.session.cert = (str(cert), str(key))
    except Exception:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return GuestCluster(server, client, workdir)


def _write(workdir: Path, name: str, data_b64: str | None) -> Path | None:
    if not data_b64:
        return None
    path = workdir / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data_b64))
    return path

