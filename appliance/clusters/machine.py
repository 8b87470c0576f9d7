"""CAPI's machine controller: a Machine's bootstrap, infrastructure and node.

A pass: own the bootstrap config and the infrastructure machine; take the
bootstrap data Secret's name once the config is ready; take ``providerID``,
addresses and readiness from the infrastructure machine; find the guest
cluster's Node with that provider ID (``status.nodeRef``, NodeHealthy).
The phase follows CAPI: Pending → Provisioning → Provisioned → Running, and
Deleting. What the guest reported about its kubeadm bootstrap (through the
VM) becomes the ``BootstrapExecSucceeded`` condition, so a bootstrap that
failed says why instead of leaving the machine Provisioned for ever.

Deletion removes the infrastructure machine (and so the VM) and the
bootstrap config, then lets the Machine go.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

from appliance.clusters.guest import GuestUnreachable, open_guest
from appliance.clusters.objects import (
    CAPI,
    CLUSTER_NAME,
    KUBEADMCONFIGS,
    V1B1,
    VSPHEREMACHINES,
    cluster_of,
    delete_quietly,
    mark,
    owner_reference,
    record,
    ref_for,
    summary,
    transition,
    write_status,
)
from appliance.controllers.base import Controller, add_finalizer, drop_finalizer, owners
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import GUEST_BOOTSTRAP
from appliance.resources import Ref, ResourceApi, get_or_none
from appliance.util.timefmt import now_rfc3339

LOG = logging.getLogger(__name__)

FINALIZER = "machine.cluster.x-k8s.io"
BOOTSTRAP_EXEC = "BootstrapExecSucceeded"


class MachineController(Controller):
    group, version, plural, name = CAPI, V1B1, "machines", "capi-machine"
    resync = 10.0
    workers = 2

    def __init__(self, api: ResourceApi, run_dir: Path) -> None:
        super().__init__(api)
        self.run_dir = run_dir

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        return [(VSPHEREMACHINES, owners("Machine")), (KUBEADMCONFIGS, owners("Machine"))]

    def reconcile(self, machine: Obj) -> float | None:
        meta = machine["metadata"]
        if meta.get("deletionTimestamp"):
            return self.delete(machine)
        machine = add_finalizer(self.api, self.ref, machine, FINALIZER)
        ns = meta["namespace"]
        spec = machine.get("spec") or {}
        status = copy.deepcopy(machine.get("status") or {})
        conditions = list(status.get("conditions") or [])
        cluster_name = spec.get("clusterName") or ""
        try:
            cluster = cluster_of(self.api, machine)
            if cluster is None:
                conditions = mark(conditions, "BootstrapReady", False, "WaitingForCluster",
                                  f"Cluster {cluster_name!r} does not exist")
                status["phase"] = "Pending"
                return 10.0
            if (meta.get("labels") or {}).get(CLUSTER_NAME) != cluster_name:
                machine = self.api.patch(self.ref, ns, meta["name"], {"metadata": {
                    "labels": {CLUSTER_NAME: cluster_name}}})
            config = self.adopt(machine, (spec.get("bootstrap") or {}).get("configRef"))
            infra = self.adopt(machine, spec.get("infrastructureRef"))
            # Bootstrap: the config's data Secret (or one given by hand).
            data = (spec.get("bootstrap") or {}).get("dataSecretName")
            config_status = (config or {}).get("status") or {}
            if not data and config_status.get("ready") and config_status.get("dataSecretName"):
                data = config_status["dataSecretName"]
                machine = self.api.patch(self.ref, ns, meta["name"], {"spec": {"bootstrap": {
                    "dataSecretName": data}}})
            status["bootstrapReady"] = bool(data)
            if data:
                conditions = mark(conditions, "BootstrapReady", True)
            else:
                why = next((c for c in config_status.get("conditions") or []
                            if c.get("status") != "True" and c.get("type") != "Ready"), {})
                conditions = mark(conditions, "BootstrapReady", False,
                                  why.get("reason") or "WaitingForDataSecret",
                                  why.get("message") or "waiting for the bootstrap data",
                                  why.get("severity") or "Info")
            # Infrastructure: provider ID, addresses, ready; the guest's bootstrap report.
            infra_spec, infra_status = (infra or {}).get("spec") or {}, \
                (infra or {}).get("status") or {}
            if infra_spec.get("providerID") and not spec.get("providerID"):
                machine = self.api.patch(self.ref, ns, meta["name"], {"spec": {
                    "providerID": infra_spec["providerID"]}})
                spec = machine["spec"]
            if infra_status.get("addresses"):
                status["addresses"] = infra_status["addresses"]
            status["infrastructureReady"] = bool(infra_status.get("ready"))
            if status["infrastructureReady"]:
                conditions = mark(conditions, "InfrastructureReady", True)
            else:
                why = next((c for c in infra_status.get("conditions") or []
                            if c.get("status") != "True" and c.get("type") != "Ready"), {})
                conditions = mark(conditions, "InfrastructureReady", False,
                                  why.get("reason") or "WaitingForInfrastructure",
                                  why.get("message") or "waiting for the infrastructure",
                                  why.get("severity") or "Info")
            guest = next((c for c in infra_status.get("conditions") or []
                          if c.get("type") == GUEST_BOOTSTRAP), None)
            if guest is not None:
                ok = {"True": True, "False": False}.get(guest.get("status"))
                conditions = mark(conditions, BOOTSTRAP_EXEC, ok, guest.get("reason") or "",
                                  guest.get("message") or "",
                                  "Error" if ok is False else "Info")
            conditions = self.node(machine, cluster, status, conditions)
            status["phase"] = self.phase(machine, status)
            if status["phase"] == "Running" and not status.get("lastUpdated"):
                status["lastUpdated"] = now_rfc3339()
            status["observedGeneration"] = meta.get("generation")
            return 10.0 if status.get("nodeRef") else 3.0
        finally:
            status["conditions"] = summary(conditions, ("BootstrapReady", "InfrastructureReady",
                                                        "NodeHealthy"))
            old = machine
            machine = write_status(self.api, self.ref, machine, status)
            for t in ("BootstrapReady", "InfrastructureReady", BOOTSTRAP_EXEC, "NodeHealthy"):
                transition(self.api, machine, old, status["conditions"], t)
            if (old.get("status") or {}).get("phase") != status.get("phase"):
                record(self.api, machine, "Normal", f"Phase{status.get('phase')}",
                       f"Machine {meta['name']} is {status.get('phase')}")

    def adopt(self, machine: Obj, object_ref: Obj | None) -> Obj | None:
        if not object_ref:
            return None
        ref = ref_for(object_ref)
        ns = machine["metadata"]["namespace"]
        obj = get_or_none(self.api, ref, ns, object_ref.get("name", ""))
        if obj is None:
            return None
        uid = machine["metadata"]["uid"]
        owners = obj["metadata"].get("ownerReferences") or []
        cluster = (machine.get("spec") or {}).get("clusterName") or ""
        if not any(o.get("uid") == uid for o in owners) or \
                (obj["metadata"].get("labels") or {}).get(CLUSTER_NAME) != cluster:
            kept = [o for o in owners if not o.get("controller")]
            obj = self.api.patch(ref, ns, obj["metadata"]["name"], {"metadata": {
                "labels": {CLUSTER_NAME: cluster},
                "ownerReferences": [*kept, owner_reference(machine)],
                "resourceVersion": obj["metadata"]["resourceVersion"]}})
        return obj

    def node(self, machine: Obj, cluster: Obj, status: Obj, conditions: list[Obj]
             ) -> list[Obj]:
        """nodeRef and NodeHealthy, from the guest cluster's Nodes by provider ID."""
        provider_id = (machine.get("spec") or {}).get("providerID")
        if not provider_id:
            return mark(conditions, "NodeHealthy", False, "WaitingForNodeRef",
                        "the machine has no provider ID yet")
        ns, name = cluster["metadata"]["namespace"], cluster["metadata"]["name"]
        try:
            guest = open_guest(self.api, ns, name, self.run_dir)
        except GuestUnreachable as exc:
            return mark(conditions, "NodeHealthy", False, "WaitingForNodeRef", str(exc))
        try:
            nodes = guest.nodes()
        except GuestUnreachable as exc:
            return mark(conditions, "NodeHealthy", False, "WaitingForNodeRef",
                        f"the cluster's API does not answer: {exc}")
        except Exception as exc:  # noqa: BLE001 - the guest's answer is input, not ours
            return mark(conditions, "NodeHealthy", False, "NodeProvisioning",
                        f"reading the cluster's Nodes failed: {exc}", "Warning")
        finally:
            guest.close()
        node = next((n for n in nodes if (n.get("spec") or {}).get("providerID") ==
                     provider_id), None)
        if node is None:
            if status.get("nodeRef"):
                return mark(conditions, "NodeHealthy", False, "NodeNotFound",
                            f"node {status['nodeRef'].get('name')} is gone", "Error")
            else:
                return mark(conditions, "NodeHealthy", False, "NodeProvisioning",
                            f"no node with providerID {provider_id} yet")
        nmeta = node["metadata"]
        status["nodeRef"] = {"apiVersion": "v1", "kind": "Node", "name": nmeta["name"],
                             "uid": nmeta.get("uid", "")}
        status["nodeInfo"] = (node.get("status") or {}).get("nodeInfo") or {}
        ready = next((c for c in (node.get("status") or {}).get("conditions") or []
                      if c.get("type") == "Ready"), {})
        if ready.get("status") == "True":
            return mark(conditions, "NodeHealthy", True)
        else:
            return mark(conditions, "NodeHealthy", False, "NodeConditionsFailed",
                        f"node {nmeta['name']} is not Ready: "
                        f"{ready.get('message') or ready.get('status') or 'no Ready condition'}",
                        "Warning")

    @staticmethod
    def phase(machine: Obj, status: Obj) -> str:
        if status.get("failureReason"):
            return "Failed"
        if status.get("nodeRef"):
            return "Running"
        if status.get("infrastructureReady") and status.get("bootstrapReady"):
            return "Provisioned"
        if status.get("bootstrapReady") or (machine.get("spec") or {}).get("providerID"):
            return "Provisioning"
        return "Pending"

    def delete(self, machine: Obj) -> float | None:
        meta, spec = machine["metadata"], machine.get("spec") or {}
        ns = meta["namespace"]
        status = dict(machine.get("status") or {}, phase="Deleting")
        machine = write_status(self.api, self.ref, machine, status)
        infra_ref = spec.get("infrastructureRef")
        if infra_ref:
            ref = ref_for(infra_ref)
            infra = get_or_none(self.api, ref, ns, infra_ref.get("name", ""))
            if infra is not None:
                if not infra["metadata"].get("deletionTimestamp"):
                    delete_quietly(self.api, ref, ns, infra["metadata"]["name"])
                return 2.0
        config_ref = (spec.get("bootstrap") or {}).get("configRef")
        if config_ref:
            delete_quietly(self.api, ref_for(config_ref), ns, config_ref.get("name", ""))
        drop_finalizer(self.api, self.ref, machine, FINALIZER)
        LOG.info("[%s/%s] machine deleted", ns, meta["name"])
        return None
