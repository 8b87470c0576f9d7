"""CABPK: a KubeadmConfig becomes its machine's bootstrap data, a cloud-config.

Which document a machine gets:

- a control-plane machine whose config has no JoinConfiguration initialises
  the cluster (``kubeadm init``), with the cluster's certificates written to
  ``/etc/kubernetes/pki`` and the cluster's bootstrap token created at init;
- a control-plane machine with a JoinConfiguration joins (``kubeadm join
  --control-plane``), once the control plane is initialised, as CABPK waits;
- a worker joins with the cluster's bootstrap token and the CA's hash. It is
  rendered as soon as the endpoint is known, without waiting for the control
  plane (CABPK waits for ``ControlPlaneInitialized``): the token exists from
  the moment ``kubeadm init`` runs, ``kubeadm join`` retries until the API
  answers, and so every node boots at once (under TCG that is minutes saved).

The data is rendered once, into Secret ``<config>`` (``value``, ``format``),
and never re-rendered: a running node must not get other data on a reboot.
"""

from __future__ import annotations

import base64
import copy
import logging

from appliance.clusters import certs
from appliance.clusters.bootstrap import BootstrapInput, render_cloud_config
from appliance.clusters.credentials import ensure_certificates, join_token
from appliance.clusters.objects import (
    BOOTSTRAP,
    CLUSTER_NAME,
    CONTROL_PLANE,
    MACHINES,
    SECRET_TYPE,
    SECRETS,
    SSH_SUFFIX,
    V1B1,
    cluster_of,
    controller_of,
    create_or_get,
    is_true,
    mark,
    owner_reference,
    secret_value,
    summary,
    transition,
    write_status,
)
from appliance.controllers.base import Controller
from appliance.kinds.registry import Obj
from appliance.resources import ResourceApi, get_or_none

LOG = logging.getLogger(__name__)


class KubeadmConfigController(Controller):
    group, version, plural, name = BOOTSTRAP, V1B1, "kubeadmconfigs", "cabpk"
    resync = 15.0
    workers = 2

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def reconcile(self, config: Obj) -> float | None:
        meta = config["metadata"]
        if meta.get("deletionTimestamp"):
            return None
        status = copy.deepcopy(config.get("status") or {})
        if status.get("ready") and status.get("dataSecretName"):
            return None  # rendered once, never again
        conditions = list(status.get("conditions") or [])
        try:
            owner = controller_of(config, "Machine")
            machine = get_or_none(self.api, MACHINES, meta["namespace"], owner["name"]) \
                if owner else None
            if machine is None:
                conditions = mark(conditions, "DataSecretAvailable", False, "WaitingForMachine",
                                  "waiting for a Machine to own this KubeadmConfig")
                return 5.0
            cluster = cluster_of(self.api, machine)
            if cluster is None:
                conditions = mark(conditions, "DataSecretAvailable", False, "WaitingForCluster",
                                  "the machine's Cluster does not exist")
                return 10.0
            cspec = cluster.get("spec") or {}
            endpoint = cspec.get("controlPlaneEndpoint") or {}
            if not (cluster.get("status") or {}).get("infrastructureReady") or \
                    not endpoint.get("host"):
                conditions = mark(conditions, "DataSecretAvailable", False,
                                  "WaitingForClusterInfrastructure",
                                  "waiting for the cluster's infrastructure and endpoint")
                return 3.0
            role = self.role(config, machine)
            if role == "join-control-plane" and not is_true(cluster, "ControlPlaneInitialized"):
                conditions = mark(conditions, "DataSecretAvailable", False,
                                  "WaitingForControlPlaneAvailable",
                                  "a control-plane join waits for the control plane to be "
                                  "initialised")
                return 5.0
            inp = self.inputs(config, machine, cluster, role)
            if inp is None:
                conditions = mark(conditions, "DataSecretAvailable", False,
                                  "WaitingForClusterCredentials",
                                  "waiting for the cluster's SSH key and certificates")
                return 3.0
            conditions = mark(conditions, "CertificatesAvailable", True)
            text = render_cloud_config(inp)
            name = meta["name"]
            create_or_get(self.api, SECRETS, meta["namespace"], {
                "apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
                "metadata": {"name": name, "labels": {CLUSTER_NAME: cluster["metadata"]["name"]},
                             "ownerReferences": [owner_reference(config)]},
                "data": {"value": base64.b64encode(text.encode()).decode(),
                         "format": base64.b64encode(b"cloud-config").decode()}})
            status.update(ready=True, dataSecretName=name)
            conditions = mark(conditions, "DataSecretAvailable", True, "",
                              f"{role} data in Secret {name}")
            LOG.info("[%s/%s] bootstrap data rendered (%s)", meta["namespace"], name, role)
            return None
        finally:
            status["observedGeneration"] = meta.get("generation")
            status["conditions"] = summary(conditions, ("DataSecretAvailable",))
            old = config
            config = write_status(self.api, self.ref, config, status)
            transition(self.api, config, old, status["conditions"], "DataSecretAvailable")

    @staticmethod
    def role(config: Obj, machine: Obj) -> str:
        spec = config.get("spec") or {}
        if CONTROL_PLANE not in (machine["metadata"].get("labels") or {}):
            return "join-worker"
        return "join-control-plane" if spec.get("joinConfiguration") and \
            not spec.get("initConfiguration") else "init"

    def inputs(self, config: Obj, machine: Obj, cluster: Obj, role: str
               ) -> BootstrapInput | None:
        ns = cluster["metadata"]["namespace"]
        cname = cluster["metadata"]["name"]
        cspec = cluster.get("spec") or {}
        ssh = get_or_none(self.api, SECRETS, ns, cname + SSH_SUFFIX)
        if ssh is None:
            return None
        if role == "join-worker":
            ca_secret = get_or_none(self.api, SECRETS, ns, f"{cname}-ca")
            if ca_secret is None:
                return None
            pairs = {"ca": certs.keypair_from_secret(ca_secret)}
            given: dict[str, certs.KeyPair] = {}
        else:
            pairs = ensure_certificates(self.api, cluster, cluster)
            given = pairs
        network = cspec.get("clusterNetwork") or {}
        endpoint = cspec["controlPlaneEndpoint"]
        spec = config.get("spec") or {}
        return BootstrapInput(
            role=role, cluster_name=cname,
            kubernetes_version=str((machine.get("spec") or {}).get("version") or ""),
            endpoint_host=str(endpoint["host"]), endpoint_port=int(endpoint.get("port") or 6443),
            pod_cidrs=tuple((network.get("pods") or {}).get("cidrBlocks") or ()),
            service_cidrs=tuple((network.get("services") or {}).get("cidrBlocks") or ()),
            service_domain=str(network.get("serviceDomain") or "cluster.local"),
            spec=spec, certificates=given, bootstrap_token=join_token(self.api, cluster),
            ca_cert_hashes=(certs.ca_cert_hash(pairs["ca"].cert),),
            ssh_public_key=(secret_value(ssh, "ssh-publickey") or "").strip(),
            files_from_secrets=self.file_contents(ns, spec))

    def file_contents(self, ns: str, spec: Obj) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        for f in spec.get("files") or []:
            source = ((f.get("contentFrom") or {}).get("secret")) or {}
            if not source:
                continue
            secret = get_or_none(self.api, SECRETS, ns, source.get("name", ""))
            value = secret_value(secret, source.get("key", "")) if secret else None
            if value is None:
                from appliance.controllers.base import TemporaryError

                raise TemporaryError(f"file {f.get('path')}: Secret {source.get('name')!r} "
                                     f"key {source.get('key')!r} not found", 10.0)
            out[(source["name"], source["key"])] = value
        return out
