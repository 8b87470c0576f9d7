"""kubeadm configuration documents from a KubeadmConfig spec, the way CABPK renders them.

The input is CAPI's bootstrap ``v1beta1`` shape (``clusterConfiguration``,
``initConfiguration``, ``joinConfiguration``: ``extraArgs`` are maps). The
output is kubeadm's ``v1beta3`` (Kubernetes 1.22 to 1.30) or ``v1beta4``
(1.31 and later), chosen from the Kubernetes version as CABPK's
``KubeVersionToKubeadmAPIGroupVersion`` does, and converted as CABPK's
``types/upstreamv1beta3`` and ``upstreamv1beta4`` do:

* v1beta4: ``extraArgs``/``kubeletExtraArgs`` become lists of
  ``{name, value}`` sorted by name; ``apiServer.timeoutForControlPlane``
  moves to ``timeouts.controlPlaneComponentHealthCheck`` of the
  Init/JoinConfiguration and ``discovery.timeout`` to ``timeouts.tlsBootstrap``.
* v1beta3: a list of ``{name, value}`` args (CAPI's newer shape) becomes a
  map; v1beta4-only fields (``extraEnvs``, ``imagePullSerial``,
  ``timeouts``) are dropped, as CABPK drops them.
* Fields kubeadm does not know (CAPI-only ones such as
  ``discovery.file.kubeConfig``) are dropped.

What the controllers know is filled in where the spec leaves it empty
(CABPK's ``reconcileTopLevelObjectSettings`` and ``reconcileDiscovery``):
cluster name, Kubernetes version, control-plane endpoint, pod and service
subnets (comma-joined), DNS domain, the bootstrap token, the CA cert hashes.
Documents are dicts dumped with ``yaml.safe_dump`` (keys sorted, as kubeadm's
own marshalling does).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

V1BETA3 = "kubeadm.k8s.io/v1beta3"
V1BETA4 = "kubeadm.k8s.io/v1beta4"

DEFAULT_TOKEN_TTL = "24h0m0s"
TOKEN_USAGES = ("signing", "authentication")
TOKEN_GROUPS = ("system:bootstrappers:kubeadm:default-node-token",)

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?$")
_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


class KubeadmConfigError(ValueError):
    """The KubeadmConfig cannot be rendered; only a change to its spec (or the version) fixes it."""


# -- the shapes CABPK converts -------------------------------------------
#
# struct -> {field: kind}; a kind is "value" (copied as it is), "args" (a flag
# map/list), another struct's name, or "[]Struct" (a list of that struct).

_VALUE = "value"
_ARGS = "args"

_STRUCTS: dict[str, dict[str, str]] = {
    "ClusterConfiguration": {
        "etcd": "Etcd", "networking": "Networking", "kubernetesVersion": _VALUE,
        "controlPlaneEndpoint": _VALUE, "apiServer": "APIServer",
        "controllerManager": "ControlPlaneComponent", "scheduler": "ControlPlaneComponent",
        "dns": "DNS", "certificatesDir": _VALUE, "imageRepository": _VALUE,
        "featureGates": _VALUE, "clusterName": _VALUE,
    },
    "Etcd": {"local": "LocalEtcd", "external": "ExternalEtcd"},
    "LocalEtcd": {
        "imageRepository": _VALUE, "imageTag": _VALUE, "dataDir": _VALUE, "extraArgs": _ARGS,
        "extraEnvs": _VALUE, "serverCertSANs": _VALUE, "peerCertSANs": _VALUE,
    },
    "ExternalEtcd": {"endpoints": _VALUE, "caFile": _VALUE, "certFile": _VALUE, "keyFile": _VALUE},
    "Networking": {"serviceSubnet": _VALUE, "podSubnet": _VALUE, "dnsDomain": _VALUE},
    "APIServer": {
        "extraArgs": _ARGS, "extraVolumes": "[]HostPathMount", "extraEnvs": _VALUE,
        "certSANs": _VALUE, "timeoutForControlPlane": _VALUE,
    },
    "ControlPlaneComponent": {"extraArgs": _ARGS, "extraVolumes": "[]HostPathMount",
                              "extraEnvs": _VALUE},
    "DNS": {"imageRepository": _VALUE, "imageTag": _VALUE},
    "HostPathMount": {"name": _VALUE, "hostPath": _VALUE, "mountPath": _VALUE,
                      "readOnly": _VALUE, "pathType": _VALUE},
    "InitConfiguration": {
        "bootstrapTokens": "[]BootstrapToken", "nodeRegistration": "NodeRegistrationOptions",
        "localAPIEndpoint": "APIEndpoint", "skipPhases": _VALUE, "patches": "Patches",
        "timeouts": "Timeouts",
    },
    "BootstrapToken": {"token": _VALUE, "description": _VALUE, "ttl": _VALUE, "expires": _VALUE,
                       "usages": _VALUE, "groups": _VALUE},
    "NodeRegistrationOptions": {
        "name": _VALUE, "criSocket": _VALUE, "taints": _VALUE, "kubeletExtraArgs": _ARGS,
        "ignorePreflightErrors": _VALUE, "imagePullPolicy": _VALUE, "imagePullSerial": _VALUE,
    },
    "APIEndpoint": {"advertiseAddress": _VALUE, "bindPort": _VALUE},
    "Patches": {"directory": _VALUE},
    "Timeouts": {
        "controlPlaneComponentHealthCheck": _VALUE, "kubeletHealthCheck": _VALUE,
        "kubernetesAPICall": _VALUE, "etcdAPICall": _VALUE, "tlsBootstrap": _VALUE,
        "discovery": _VALUE, "upgradeManifests": _VALUE,
    },
    "JoinConfiguration": {
        "nodeRegistration": "NodeRegistrationOptions", "caCertPath": _VALUE,
        "discovery": "Discovery", "controlPlane": "JoinControlPlane", "skipPhases": _VALUE,
        "patches": "Patches", "timeouts": "Timeouts",
    },
    "Discovery": {"bootstrapToken": "BootstrapTokenDiscovery", "file": "FileDiscovery",
                  "tlsBootstrapToken": _VALUE, "timeout": _VALUE},
    "BootstrapTokenDiscovery": {"token": _VALUE, "apiServerEndpoint": _VALUE,
                                "caCertHashes": _VALUE, "unsafeSkipCAVerification": _VALUE},
    "FileDiscovery": {"kubeConfigPath": _VALUE},
    "JoinControlPlane": {"localAPIEndpoint": "APIEndpoint"},
}

# Fields only one of the two kubeadm versions has.
_ONLY_IN: dict[tuple[str, str], str] = {
    ("APIServer", "timeoutForControlPlane"): V1BETA3,
    ("Discovery", "timeout"): V1BETA3,
    ("APIServer", "extraEnvs"): V1BETA4,
    ("ControlPlaneComponent", "extraEnvs"): V1BETA4,
    ("LocalEtcd", "extraEnvs"): V1BETA4,
    ("NodeRegistrationOptions", "imagePullSerial"): V1BETA4,
    ("InitConfiguration", "timeouts"): V1BETA4,
    ("JoinConfiguration", "timeouts"): V1BETA4,
}

# Non-pointer struct fields: Go's omitempty keeps them, so CABPK's output has
# e.g. ``apiServer: {}``. Kept for output that reads like CABPK's.
_ALWAYS: set[tuple[str, str]] = {
    ("ClusterConfiguration", f) for f in
    ("etcd", "networking", "apiServer", "controllerManager", "scheduler", "dns")
} | {
    ("InitConfiguration", "nodeRegistration"), ("InitConfiguration", "localAPIEndpoint"),
    ("JoinConfiguration", "nodeRegistration"), ("JoinConfiguration", "discovery"),
}


def kubeadm_api_version(kubernetes_version: str) -> str:
    """kubeadm's config API for a Kubernetes version: v1beta4 from 1.31, v1beta3 from 1.22."""
    major, minor = _minor_version(kubernetes_version)
    if (major, minor) < (1, 22):
        raise KubeadmConfigError(f"Kubernetes {kubernetes_version} is too old: kubeadm.k8s.io/v1beta3 "
                                 "(Kubernetes 1.22) is the oldest kubeadm API rendered")
    return V1BETA4 if (major, minor) >= (1, 31) else V1BETA3


# -- init ----------------------------------------------------------------


def init_documents(cluster_configuration: Mapping[str, Any] | None,
                   init_configuration: Mapping[str, Any] | None, *,
                   cluster_name: str, kubernetes_version: str, control_plane_endpoint: str,
                   pod_subnets: Sequence[str] = (), service_subnets: Sequence[str] = (),
                   dns_domain: str = "", bootstrap_token: str = "",
                   token_ttl: str = DEFAULT_TOKEN_TTL,
                   node_name: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """The ClusterConfiguration and InitConfiguration for ``kubeadm init``.

    ``bootstrap_token`` (when given) is added to ``bootstrapTokens`` so that
    the first control-plane node creates the token the other machines join with.
    """
    api_version = kubeadm_api_version(kubernetes_version)
    cc = _plain(cluster_configuration)
    cc["controlPlaneEndpoint"] = cc.get("controlPlaneEndpoint") or control_plane_endpoint
    cc["clusterName"] = cc.get("clusterName") or cluster_name
    cc["kubernetesVersion"] = cc.get("kubernetesVersion") or _v_prefixed(kubernetes_version)
    networking = dict(cc.get("networking") or {})
    if not networking.get("dnsDomain") and dns_domain:
        networking["dnsDomain"] = dns_domain
    if not networking.get("serviceSubnet") and service_subnets:
        networking["serviceSubnet"] = ",".join(service_subnets)
    if not networking.get("podSubnet") and pod_subnets:
        networking["podSubnet"] = ",".join(pod_subnets)
    cc["networking"] = networking

    ic = _plain(init_configuration)
    if bootstrap_token:
        _check_token(bootstrap_token)
        tokens = list(ic.get("bootstrapTokens") or [])
        if not any((t or {}).get("token") == bootstrap_token for t in tokens):
            tokens.insert(0, {"token": bootstrap_token, "ttl": token_ttl,
                              "usages": list(TOKEN_USAGES), "groups": list(TOKEN_GROUPS)})
        ic["bootstrapTokens"] = tokens
    ic["nodeRegistration"] = _with_node_name(ic.get("nodeRegistration"), node_name)

    timeout = ((cc.get("apiServer") or {}).get("timeoutForControlPlane"))
    cluster_doc = _document(api_version, "ClusterConfiguration", cc)
    init_doc = _document(api_version, "InitConfiguration", ic)
    if api_version == V1BETA4 and timeout:
        init_doc.setdefault("timeouts", {}).setdefault("controlPlaneComponentHealthCheck", timeout)
    return cluster_doc, init_doc


def render_init_configuration(cluster_configuration: Mapping[str, Any] | None,
                              init_configuration: Mapping[str, Any] | None, *,
                              cluster_name: str, kubernetes_version: str,
                              control_plane_endpoint: str, pod_subnets: Sequence[str] = (),
                              service_subnets: Sequence[str] = (), dns_domain: str = "",
                              bootstrap_token: str = "", token_ttl: str = DEFAULT_TOKEN_TTL,
                              node_name: str = "") -> str:
    """``kubeadm init --config`` YAML: ClusterConfiguration, then InitConfiguration."""
    docs = init_documents(cluster_configuration, init_configuration, cluster_name=cluster_name,
                          kubernetes_version=kubernetes_version,
                          control_plane_endpoint=control_plane_endpoint, pod_subnets=pod_subnets,
                          service_subnets=service_subnets, dns_domain=dns_domain,
                          bootstrap_token=bootstrap_token, token_ttl=token_ttl, node_name=node_name)
    return dump_documents(docs)


# -- join ----------------------------------------------------------------


def join_document(join_configuration: Mapping[str, Any] | None, *, kubernetes_version: str,
                  control_plane_endpoint: str, bootstrap_token: str,
                  ca_cert_hashes: Sequence[str], control_plane: bool,
                  node_name: str = "") -> dict[str, Any]:
    """The JoinConfiguration for ``kubeadm join`` (``controlPlane: {}`` for control-plane joins)."""
    api_version = kubeadm_api_version(kubernetes_version)
    jc = _plain(join_configuration)
    if control_plane:
        jc["controlPlane"] = dict(jc.get("controlPlane") or {})
    elif jc.get("controlPlane") is not None:
        raise KubeadmConfigError("Machine is a worker, but JoinConfiguration.controlPlane is set "
                                 "in the KubeadmConfig")
    jc["nodeRegistration"] = _with_node_name(jc.get("nodeRegistration"), node_name)

    discovery = dict(jc.get("discovery") or {})
    if not discovery.get("file"):
        token_discovery = dict(discovery.get("bootstrapToken") or {})
        token_discovery["apiServerEndpoint"] = (token_discovery.get("apiServerEndpoint")
                                                or control_plane_endpoint)
        token_discovery["token"] = token_discovery.get("token") or bootstrap_token
        if not token_discovery["token"]:
            raise KubeadmConfigError("no bootstrap token for discovery")
        _check_token(token_discovery["token"])
        if not token_discovery.get("caCertHashes") and not token_discovery.get(
                "unsafeSkipCAVerification"):
            if not ca_cert_hashes:
                raise KubeadmConfigError("no CA cert hashes for discovery and "
                                         "unsafeSkipCAVerification is not set")
            token_discovery["caCertHashes"] = list(ca_cert_hashes)
        discovery["bootstrapToken"] = token_discovery
    jc["discovery"] = discovery

    timeout = discovery.get("timeout")
    doc = _document(api_version, "JoinConfiguration", jc)
    if api_version == V1BETA4 and timeout:
        doc.setdefault("timeouts", {}).setdefault("tlsBootstrap", timeout)
    return doc


def render_join_configuration(join_configuration: Mapping[str, Any] | None, *,
                              kubernetes_version: str, control_plane_endpoint: str,
                              bootstrap_token: str, ca_cert_hashes: Sequence[str],
                              control_plane: bool, node_name: str = "") -> str:
    """``kubeadm join --config`` YAML: one JoinConfiguration."""
    return dump_documents([join_document(
        join_configuration, kubernetes_version=kubernetes_version,
        control_plane_endpoint=control_plane_endpoint, bootstrap_token=bootstrap_token,
        ca_cert_hashes=ca_cert_hashes, control_plane=control_plane, node_name=node_name)])


def dump_documents(docs: Sequence[Mapping[str, Any]]) -> str:
    """YAML documents, each starting with ``---``, keys sorted (as kubeadm marshals)."""
    return yaml.safe_dump_all([dict(d) for d in docs], explicit_start=True, sort_keys=True,
                              default_flow_style=False)


# -- conversion ----------------------------------------------------------


def _document(api_version: str, kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    doc = _convert(kind, spec, api_version, kind)
    return {"apiVersion": api_version, "kind": kind, **doc}


def _convert(struct: str, value: Any, api_version: str, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise KubeadmConfigError(f"{path}: expected an object, got {type(value).__name__}")
    fields = _STRUCTS[struct]
    out: dict[str, Any] = {}
    for name, kind in fields.items():
        only = _ONLY_IN.get((struct, name))
        if only is not None and only != api_version:
            continue
        if name not in value or value[name] is None:
            if (struct, name) in _ALWAYS:
                out[name] = {}
            continue
        item = value[name]
        where = f"{path}.{name}"
        if kind == _VALUE:
            converted: Any = copy.deepcopy(item)
        elif kind == _ARGS:
            converted = _args(item, api_version, where)
        elif kind.startswith("[]"):
            if not isinstance(item, list):
                raise KubeadmConfigError(f"{where}: expected a list")
            converted = [_convert(kind[2:], x, api_version, f"{where}[{i}]")
                         for i, x in enumerate(item)]
        else:
            converted = _convert(kind, item, api_version, where)
        # omitempty: empty values and lists are left out, except taints ([]
        # means "no taints" to kubeadm). A struct that is there stays, even
        # empty: ``controlPlane: {}`` is a non-nil pointer to kubeadm.
        is_struct = kind in _STRUCTS
        if _empty(converted) and not is_struct and name != "taints":
            continue
        out[name] = converted
    return out


def _args(value: Any, api_version: str, path: str) -> Any:
    """Flag arguments: a map in v1beta3, a list of ``{name, value}`` in v1beta4."""
    if isinstance(value, Mapping):
        pairs = [(str(k), "" if v is None else str(v)) for k, v in value.items()]
        if api_version == V1BETA3:
            return dict(pairs)
        return [{"name": k, "value": v} for k, v in sorted(pairs)]
    if isinstance(value, list):
        pairs = []
        for i, arg in enumerate(value):
            if not isinstance(arg, Mapping) or "name" not in arg:
                raise KubeadmConfigError(f"{path}[{i}]: expected {{name, value}}")
            pairs.append((str(arg["name"]), "" if arg.get("value") is None else str(arg["value"])))
        if api_version == V1BETA3:
            return dict(pairs)  # a map cannot repeat a flag: the last one wins
        return [{"name": k, "value": v} for k, v in pairs]
    raise KubeadmConfigError(f"{path}: expected a map of flags")


def _with_node_name(node_registration: Any, node_name: str) -> dict[str, Any]:
    reg = dict(node_registration or {})
    # A cloud-init jinja template such as '{{ ds.meta_data.hostname }}' is not
    # rendered here (the cloud-config is plain), so the known name replaces it.
    if node_name and (not reg.get("name") or "{{" in str(reg.get("name"))):
        reg["name"] = node_name
    return reg


def _plain(value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise KubeadmConfigError(f"expected an object, got {type(value).__name__}")
    return copy.deepcopy(dict(value))


def _empty(value: Any) -> bool:
    return value == "" or (isinstance(value, list | dict) and not value)


def _check_token(token: str) -> None:
    if not _TOKEN.match(token):
        raise KubeadmConfigError("the bootstrap token is not of the form [a-z0-9]{6}.[a-z0-9]{16}")


def _minor_version(kubernetes_version: str) -> tuple[int, int]:
    match = _VERSION.match(kubernetes_version.strip())
    if not match:
        raise KubeadmConfigError(f"not a Kubernetes version: {kubernetes_version!r}")
    return int(match.group(1)), int(match.group(2))


def _v_prefixed(kubernetes_version: str) -> str:
    version = kubernetes_version.strip()
    return version if version.startswith("v") else f"v{version}"
