"""MachineDeployment → MachineSet → Machine, as CAPI (and Deployments) do it.

A MachineSet keeps ``replicas`` machines made from its template, deleting by
its ``deletePolicy`` (machines without a healthy node go first). A
MachineDeployment owns one MachineSet per template (named by the template's
hash); a new template is rolled out within ``maxSurge`` and
``maxUnavailable``, and MachineSets scaled to zero are removed.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime

from appliance.clusters.machines import (
    MachineRecipe,
    TemplateNotFound,
    ensure_children,
    new_machine,
)
from appliance.clusters.objects import (
    CAPI,
    CLUSTER_NAME,
    DEPLOYMENT_NAME,
    MACHINES,
    MACHINESETS,
    SET_NAME,
    V1B1,
    delete_quietly,
    listed,
    machine_ready,
    mark,
    owned_by,
    owner_reference,
    record,
    spec_hash,
    summary,
    transition,
    write_status,
)
from appliance.controllers.base import Controller, add_finalizer, drop_finalizer, owners
from appliance.kinds.registry import Obj
from appliance.resources import Ref, ResourceApi
from appliance.util.timefmt import parse_rfc3339

LOG = logging.getLogger(__name__)

SET_FINALIZER = "machineset.cluster.x-k8s.io"
DEPLOYMENT_FINALIZER = "machinedeployment.cluster.x-k8s.io"
TEMPLATE_HASH = "machine-template-hash"
DELETE_ANNOTATION = "cluster.x-k8s.io/delete-machine"


def available(machine: Obj, min_ready_seconds: int) -> bool:
    if not machine_ready(machine):
        return False
    if not min_ready_seconds:
        return True
    since = next((c.get("lastTransitionTime") for c in (machine.get("status") or {}).get(
        "conditions") or [] if c.get("type") == "NodeHealthy"), None)
    if not since:
        return False
    return (datetime.now(UTC) - parse_rfc3339(since)).total_seconds() >= min_ready_seconds


def int_or_percent(value: object, total: int, round_up: bool) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value.endswith("%"):
        exact = float(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(str(value))


def deletion_order(machines: list[Obj], policy: str) -> list[Obj]:
    """Which machines a scale down removes first: marked ones, then unhealthy ones,
    then by policy (Oldest, Newest, Random: CAPI's Random is "not ready first")."""
    def rank(m: Obj) -> tuple[int, int]:
        annotations = m["metadata"].get("annotations") or {}
        if DELETE_ANNOTATION in annotations or m["metadata"].get("deletionTimestamp"):
            return (0, 0)
        return (1, 0) if not machine_ready(m) else (2, 0)

    by_age = sorted(machines, key=lambda m: m["metadata"].get("creationTimestamp") or "")
    if policy == "Newest":
        by_age.reverse()
    return sorted(by_age, key=rank)


class MachineSetController(Controller):
    group, version, plural, name = CAPI, V1B1, "machinesets", "capi-machineset"
    resync = 10.0

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        return [(MACHINES, owners("MachineSet"))]

    def machines(self, ms: Obj) -> list[Obj]:
        ns = ms["metadata"]["namespace"]
        return [m for m in listed(self.api, MACHINES, ns, f"{SET_NAME}={ms['metadata']['name']}")
                if owned_by(m, ms)]

    def reconcile(self, ms: Obj) -> float | None:
        meta, spec = ms["metadata"], ms.get("spec") or {}
        ns = meta["namespace"]
        machines = self.machines(ms)
        if meta.get("deletionTimestamp"):
            for m in machines:
                if not m["metadata"].get("deletionTimestamp"):
                    delete_quietly(self.api, MACHINES, ns, m["metadata"]["name"])
            if machines:
                return 2.0
            drop_finalizer(self.api, self.ref, ms, SET_FINALIZER)
            return None
        ms = add_finalizer(self.api, self.ref, ms, SET_FINALIZER)
        status = copy.deepcopy(ms.get("status") or {})
        conditions = list(status.get("conditions") or [])
        recipe = self.recipe(ms)
        again: float | None = None
        try:
            live = [m for m in machines if not m["metadata"].get("deletionTimestamp")]
            for m in live:
                ensure_children(self.api, m, recipe)
            desired = int(spec.get("replicas") if spec.get("replicas") is not None else 1)
            if len(live) < desired:
                for _ in range(desired - len(live)):
                    made = new_machine(self.api, ns, meta["name"], recipe, ms)
                    record(self.api, ms, "Normal", "SuccessfulCreate",
                           f"Created machine {made['metadata']['name']}")
                again = 2.0
            elif len(live) > desired:
                for victim in deletion_order(live, spec.get("deletePolicy") or "Random")[
                        :len(live) - desired]:
                    delete_quietly(self.api, MACHINES, ns, victim["metadata"]["name"])
                    record(self.api, ms, "Normal", "SuccessfulDelete",
                           f"Deleted machine {victim['metadata']['name']}")
                again = 2.0
            conditions = mark(conditions, "Resized", len(live) == desired,
                              "" if len(live) == desired else
                              ("ScalingUp" if len(live) < desired else "ScalingDown"),
                              f"{len(live)} of {desired} machines")
            conditions = mark(conditions, "MachinesCreated", True)
            return again or (3.0 if any(not machine_ready(m) for m in live) else None)
        except TemplateNotFound as exc:
            conditions = mark(conditions, "MachinesCreated", False, "TemplateNotFound",
                              str(exc), "Error")
            return exc.delay
        finally:
            ready = [m for m in machines if machine_ready(m)]
            min_ready = int(spec.get("minReadySeconds") or 0)
            selector = ",".join(f"{k}={v}" for k, v in sorted(
                ((spec.get("selector") or {}).get("matchLabels") or {}).items()))
            status.update(
                replicas=len(machines), fullyLabeledReplicas=len(machines),
                readyReplicas=len(ready),
                availableReplicas=len([m for m in machines if available(m, min_ready)]),
                observedGeneration=meta.get("generation"), selector=selector)
            not_ready = [m for m in machines if not machine_ready(m)]
            if not_ready:
                worst = not_ready[0]
                why = next((c for c in (worst.get("status") or {}).get("conditions") or []
                            if c.get("type") == "Ready"), {})
                conditions = mark(conditions, "MachinesReady", False,
                                  why.get("reason") or "WaitingForNode",
                                  f"machine {worst['metadata']['name']}: "
                                  f"{why.get('message') or 'not ready'}",
                                  why.get("severity") or "Info")
            else:
                conditions = mark(conditions, "MachinesReady", True)
            status["conditions"] = summary(conditions, ("MachinesCreated", "Resized",
                                                        "MachinesReady"))
            old = ms
            ms = write_status(self.api, self.ref, ms, status)
            transition(self.api, ms, old, status["conditions"], "MachinesCreated")

    @staticmethod
    def recipe(ms: Obj) -> MachineRecipe:
        spec = ms.get("spec") or {}
        template = spec.get("template") or {}
        tmeta, tspec = template.get("metadata") or {}, template.get("spec") or {}
        return MachineRecipe(
            cluster=str(spec.get("clusterName") or ""), version=str(tspec.get("version") or ""),
            infrastructure_template=tspec.get("infrastructureRef") or {},
            labels={**(tmeta.get("labels") or {}), SET_NAME: ms["metadata"]["name"]},
            annotations=dict(tmeta.get("annotations") or {}),
            bootstrap_template=(tspec.get("bootstrap") or {}).get("configRef"),
            node_drain_timeout=tspec.get("nodeDrainTimeout"),
            failure_domain=tspec.get("failureDomain"))


class MachineDeploymentController(Controller):
    group, version, plural, name = CAPI, V1B1, "machinedeployments", "capi-machinedeployment"
    resync = 10.0

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        return [(MACHINESETS, owners("MachineDeployment"))]

    def sets(self, md: Obj) -> list[Obj]:
        ns = md["metadata"]["namespace"]
        return sorted((s for s in listed(self.api, MACHINESETS, ns) if owned_by(s, md)),
                      key=lambda s: s["metadata"].get("creationTimestamp") or "")

    def reconcile(self, md: Obj) -> float | None:
        meta, spec = md["metadata"], md.get("spec") or {}
        ns = meta["namespace"]
        sets = self.sets(md)
        if meta.get("deletionTimestamp"):
            for s in sets:
                if not s["metadata"].get("deletionTimestamp"):
                    delete_quietly(self.api, MACHINESETS, ns, s["metadata"]["name"])
            if sets:
                return 2.0
            drop_finalizer(self.api, self.ref, md, DEPLOYMENT_FINALIZER)
            return None
        md = add_finalizer(self.api, self.ref, md, DEPLOYMENT_FINALIZER)
        desired = int(spec.get("replicas") if spec.get("replicas") is not None else 1)
        template = spec.get("template") or {}
        digest = spec_hash(template)
        new = next((s for s in sets if (s["metadata"].get("labels") or {}).get(TEMPLATE_HASH)
                    == digest and not s["metadata"].get("deletionTimestamp")), None)
        old = [s for s in sets if s is not new]
        strategy = spec.get("strategy") or {}
        rolling = strategy.get("rollingUpdate") or {}
        surge = int_or_percent(rolling.get("maxSurge", 1), desired, True)
        unavailable = int_or_percent(rolling.get("maxUnavailable", 0), desired, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1  # as Deployments: both zero would never progress
        if strategy.get("type") == "OnDelete":
            surge, unavailable = 0, desired
        total = sum(int((s.get("spec") or {}).get("replicas") or 0) for s in sets)
        if new is None:
            replicas = desired if not old else max(0, min(desired, desired + surge - total))
            new = self.create_set(md, digest, replicas)
            record(self.api, md, "Normal", "SuccessfulCreate",
                   f"Created MachineSet {new['metadata']['name']} with {replicas} replicas")
            return 2.0
        new_replicas = int((new.get("spec") or {}).get("replicas") or 0)
        if not old:
            if new_replicas != desired:
                self.scale(new, desired, md)
        else:
            if new_replicas < desired and total < desired + surge:
                self.scale(new, min(desired, new_replicas + desired + surge - total), md)
            self.scale_down_old(md, new, old, desired, unavailable)
        for s in old:
            if int((s.get("spec") or {}).get("replicas") or 0) == 0 and \
                    int((s.get("status") or {}).get("replicas") or 0) == 0 and \
                    not s["metadata"].get("deletionTimestamp"):
                delete_quietly(self.api, MACHINESETS, ns, s["metadata"]["name"])
        self.fill_status(md, self.sets(md), digest, desired)
        return 3.0

    def create_set(self, md: Obj, digest: str, replicas: int) -> Obj:
        meta, spec = md["metadata"], md.get("spec") or {}
        template = copy.deepcopy(spec.get("template") or {})
        cluster = str(spec.get("clusterName") or "")
        labels = {CLUSTER_NAME: cluster, DEPLOYMENT_NAME: meta["name"], TEMPLATE_HASH: digest}
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), **labels}
        selector = copy.deepcopy(spec.get("selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}),
                                   TEMPLATE_HASH: digest}
        body = {"apiVersion": f"{CAPI}/{V1B1}", "kind": "MachineSet",
                "metadata": {"name": f"{meta['name']}-{digest[:8]}", "labels": labels,
                             "ownerReferences": [owner_reference(md)]},
                "spec": {"clusterName": cluster, "replicas": replicas, "selector": selector,
                         "template": template,
                         "minReadySeconds": int(spec.get("minReadySeconds") or 0),
                         "deletePolicy": ((spec.get("strategy") or {}).get("rollingUpdate")
                                          or {}).get("deletePolicy") or "Random"}}
        return self.api.create(MACHINESETS, meta["namespace"], body)

    def scale(self, ms: Obj, replicas: int, md: Obj) -> None:
        current = int((ms.get("spec") or {}).get("replicas") or 0)
        if current == replicas:
            return
        self.api.patch(MACHINESETS, ms["metadata"]["namespace"], ms["metadata"]["name"],
                       {"spec": {"replicas": replicas}})
        record(self.api, md, "Normal", "SuccessfulScale" if replicas > current else
               "SuccessfulScaleDown",
               f"Scaled MachineSet {ms['metadata']['name']} from {current} to {replicas}")

    def scale_down_old(self, md: Obj, new: Obj, old: list[Obj], desired: int,
                       max_unavailable: int) -> None:
        """CAPI's reconcileOldMachineSets: unhealthy old machines first, then as many
        as keep ``desired - maxUnavailable`` available."""
        every = [new, *old]
        total = sum(int((s.get("spec") or {}).get("replicas") or 0) for s in every)
        min_available = desired - max_unavailable
        new_unavailable = int((new.get("spec") or {}).get("replicas") or 0) - int(
            (new.get("status") or {}).get("availableReplicas") or 0)
        room = total - min_available - new_unavailable
        if room <= 0:
            return
        for s in old:  # unhealthy replicas of old sets go first
            replicas = int((s.get("spec") or {}).get("replicas") or 0)
            bad = replicas - int((s.get("status") or {}).get("availableReplicas") or 0)
            cut = min(max(bad, 0), room)
            if cut:
                self.scale(s, replicas - cut, md)
                s.setdefault("spec", {})["replicas"] = replicas - cut
                room -= cut
        available_now = sum(int((s.get("status") or {}).get("availableReplicas") or 0)
                            for s in every)
        budget = available_now - min_available
        for s in old:
            if budget <= 0:
                break
            replicas = int((s.get("spec") or {}).get("replicas") or 0)
            cut = min(replicas, budget)
            if cut:
                self.scale(s, replicas - cut, md)
                budget -= cut

    def fill_status(self, md: Obj, sets: list[Obj], digest: str, desired: int) -> None:
        meta = md["metadata"]
        def total(key: str) -> int:
            return sum(int((s.get("status") or {}).get(key) or 0) for s in sets)

        updated = sum(int((s.get("status") or {}).get("replicas") or 0) for s in sets
                      if (s["metadata"].get("labels") or {}).get(TEMPLATE_HASH) == digest)
        replicas, ready, avail = total("replicas"), total("readyReplicas"), \
            total("availableReplicas")
        status = copy.deepcopy(md.get("status") or {})
        phase = "ScalingUp" if replicas < desired else "ScalingDown" if replicas > desired \
            else "Running" if avail >= desired else "ScalingUp"
        status.update(replicas=replicas, updatedReplicas=updated, readyReplicas=ready,
                      availableReplicas=avail,
                      unavailableReplicas=max(0, replicas - avail),
                      observedGeneration=meta.get("generation"), phase=phase,
                      selector=f"{CLUSTER_NAME}={(md.get('spec') or {}).get('clusterName')},"
                               f"{DEPLOYMENT_NAME}={meta['name']}")
        conditions = list(status.get("conditions") or [])
        need = desired - int_or_percent(((md.get("spec") or {}).get("strategy") or {}).get(
            "rollingUpdate", {}).get("maxUnavailable", 0), desired, False)
        conditions = mark(conditions, "Available", avail >= need,
                          "" if avail >= need else "WaitingForAvailableMachines",
                          f"{avail} of {desired} machines available (minimum {need})")
        status["conditions"] = summary(conditions, ("Available",))
        write_status(self.api, self.ref, md, status)
