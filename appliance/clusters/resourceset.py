"""CAPI's ClusterResourceSet controller: addons created in the guest clusters a set selects.

A ClusterResourceSet (CRS) selects Clusters of its namespace by label (an empty
selector selects nothing) and names Secrets and ConfigMaps of that namespace;
every value of their ``data`` holds YAML or JSON documents (a Secret's base64,
and only a Secret of type ``addons.cluster.x-k8s.io/resource-set``), which are
created in each selected guest cluster once its control plane is initialised
and its API answers. Per cluster a ClusterResourceSetBinding, named like the
cluster, owned by it and labelled with it, records per set and per resource
whether it was applied, the hash of its data (``sha256:`` over the values in
key order, as CAPI computes it) and when. ``ApplyOnce`` (the default) applies a
resource once per cluster; ``Reconcile`` applies it again, creating or
replacing its objects, whenever that hash changes.

The ``ResourcesApplied`` condition is True, or False with upstream's reasons:
``ClusterMatchFailed``, ``WrongSecretType`` (nothing of the set is applied
then, as upstream), ``RetrievingResourceFailed``, ``RemoteClusterClientFailed``
(a guest that is not initialised or does not answer: severity Info, retried
after :data:`UNREACHABLE_RETRY` seconds, the binding left untouched) and
``ApplyFailed``. Deletion (finalizer ``addons.cluster.x-k8s.io``) takes the set
out of every binding of its namespace, deletes a binding left empty, then lets
the set go.

Besides its own kind, the controller watches Clusters, ConfigMaps and Secrets
and queues the sets of their namespace (upstream maps each event to the sets
that match it; a namespace's sets are few), so a new cluster, a cluster whose
control plane comes up, a changed resource or a kubeconfig Secret that appears
are seen at once.

Where this differs from upstream: a resource that does not exist leaves the
condition False (upstream marks it True after the other resources applied);
the condition is True only when every selected cluster went well (upstream's
last cluster wins); the guest is contacted only when something is to be
applied, and the binding entry is written only once it answered; deletion
looks at every binding of the namespace, not only those of clusters the
selector still matches; ``Reconcile`` replaces an existing object (PUT) where
upstream merge-patches it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from appliance import errors
from appliance.clusters.guest import GuestCluster, GuestUnreachable, open_guest
from appliance.clusters.objects import (
    ADDONS,
    CLUSTER_NAME,
    CLUSTERS,
    CONFIGMAPS,
    RESOURCESET_BINDINGS,
    SECRETS,
    V1B1,
    delete_quietly,
    deleting,
    is_true,
    listed,
    mark,
    owner_reference,
    record,
    transition,
    write_status,
)
from appliance.controllers.base import Controller, add_finalizer, drop_finalizer
from appliance.kinds.registry import Obj
from appliance.resources import Ref, ResourceApi, get_or_none
from appliance.util.labels import SelectorError, selector_from_label_selector_object
from appliance.util.timefmt import now_rfc3339

LOG = logging.getLogger(__name__)

FINALIZER = "addons.cluster.x-k8s.io"
RESOURCE_SET_SECRET = "addons.cluster.x-k8s.io/resource-set"
APPLIED = "ResourcesApplied"
APPLY_ONCE, RECONCILE = "ApplyOnce", "Reconcile"
#: A guest cluster that is not initialised or does not answer is looked at again after this.
UNREACHABLE_RETRY = 10.0
#: Upstream reads this Service before applying anything (its API answers, and on
#: Kubernetes < 1.25 the Service's IP is taken before an addon could take it).
KUBERNETES_SERVICE = "/api/v1/namespaces/default/services/kubernetes"
#: CAPI's ``util/resource.SortForCreate``: what other objects need is created first.
CREATE_ORDER = ("Namespace", "CustomResourceDefinition", "StorageClass", "PersistentVolume",
                "PersistentVolumeClaim", "Secret", "ConfigMap", "ServiceAccount", "LimitRange",
                "Pod", "ReplicaSet", "Endpoint")


# -- a resource's data --------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """One entry of ``spec.resources``, read: its hash and the objects its data holds
    (or why they cannot be read)."""

    kind: str
    name: str
    hash: str
    objects: tuple[Obj, ...] = ()
    error: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name


def normalized_data(obj: Obj) -> list[bytes]:
    """The values of ``data`` in key order; a Secret's decoded (CAPI's normalizeData)."""
    data = obj.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"failed to get data field from resource {obj['metadata']['name']}")
    out = []
    for key in sorted(data):
        value = str(data[key])
        if obj.get("kind") == "Secret":
            try:
                out.append(base64.b64decode(value, validate=True))
            except binascii.Error as exc:
                raise ValueError(f"value of {key} is not base64: {exc}") from exc
        else:
            out.append(value.encode())
    return out


def data_hash(chunks: list[bytes]) -> str:
    """CAPI's computeHash: sha256 over the normalised values, one after the other."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def sort_for_create(objects: list[Obj]) -> list[Obj]:
    """Namespaces, CRDs, storage, Secrets, ... first; the rest in their given order."""
    def rank(obj: Obj) -> int:
        kind = str(obj.get("kind", ""))
        return CREATE_ORDER.index(kind) if kind in CREATE_ORDER else len(CREATE_ORDER)
    return sorted(objects, key=rank)


def objects_from(chunk: bytes) -> list[Obj]:
    """The objects of one value: a JSON list, or YAML (and so JSON) documents."""
    text = chunk.decode()
    docs = json.loads(text) if text.lstrip().startswith("[") else \
        list(yaml.safe_load_all(text))
    objects = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            raise ValueError("failed converting data to unstructured objects: a document "
                             "is not an object with apiVersion and kind")
        objects.append(doc)
    return sort_for_create(objects)


def read_resource(obj: Obj) -> Resource:
    kind, name = str(obj["kind"]), obj["metadata"]["name"]
    try:
        chunks = normalized_data(obj)
    except ValueError as exc:
        return Resource(kind, name, "", error=str(exc))
    digest = data_hash(chunks)
    try:
        objects = [o for chunk in chunks for o in objects_from(chunk)]
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        return Resource(kind, name, digest, error=f"{kind} {name}: {exc}")
    return Resource(kind, name, digest, tuple(objects))


# -- the binding ----------------------------------------------------------------------------


def entry_of(binding: Obj | None, crs_name: str) -> Obj | None:
    """The binding's entry for the set named ``crs_name``."""
    return next((b for b in ((binding or {}).get("spec") or {}).get("bindings") or []
                 if b.get("clusterResourceSetName") == crs_name), None)


def needs_apply(strategy: str, entry: Obj | None, resource: Resource) -> bool:
    done = next((r for r in (entry or {}).get("resources") or []
                 if (r.get("kind"), r.get("name")) == resource.key), None)
    if done is None or not done.get("applied"):
        return True
    return strategy == RECONCILE and done.get("hash") != resource.hash


def ensure_owner(owners: list[Obj], owner: Obj) -> list[Obj]:
    """``owners`` with a non-controller reference to ``owner`` (util.EnsureOwnerRef)."""
    ref = owner_reference(owner, controller=False)
    kept = [o for o in owners if not (o.get("kind") == ref["kind"] and
                                      o.get("name") == ref["name"] and
                                      str(o.get("apiVersion", "")).split("/")[0] ==
                                      ref["apiVersion"].split("/")[0])]
    return [*kept, ref]


@dataclass
class Verdict:
    """What one pass found: the first failure becomes the condition; delays to look again."""

    failures: list[tuple[str, str, str]] = field(default_factory=list)
    again: float | None = None

    def fail(self, reason: str, message: str, severity: str = "Warning") -> None:
        self.failures.append((reason, message, severity))

    def retry(self, delay: float) -> None:
        self.again = delay if self.again is None else min(self.again, delay)


# -- the controller -------------------------------------------------------------------------


class ClusterResourceSetController(Controller):
    group, version, plural, name = ADDONS, V1B1, "clusterresourcesets", "capi-resourceset"
    resync = 60.0

    def __init__(self, api: ResourceApi, run_dir: Path) -> None:
        super().__init__(api)
        self.run_dir = run_dir

    # -- what else is watched ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        for ref in (CLUSTERS, CONFIGMAPS, SECRETS):
            threading.Thread(target=self._watch_related, args=(ref, stop),
                             name=f"{self.name}-{ref.plural}", daemon=True).start()
        super().run(stop)

    def kick(self, namespace: str) -> None:
        for crs in listed(self.api, self.ref, namespace):
            self.queue.add((namespace, crs["metadata"]["name"]), 0.2)

    def _watch_related(self, ref: Ref, stop: threading.Event) -> None:
        """A Cluster, ConfigMap or Secret that changes queues the sets of its namespace."""
        while not stop.is_set():
            try:
                _, rv = self.api.list(ref)
                for ev in self.api.watch(ref, rv, "", timeout=300):
                    if stop.is_set():
                        return
                    if ev is not None and (ev[1].get("metadata") or {}).get("namespace"):
                        self.kick(ev[1]["metadata"]["namespace"])
            except errors.ApiError as err:
                LOG.info("%s: watch of %s ended (%s)", self.name, ref.plural, err)
                stop.wait(1.0)
            except Exception:
                LOG.exception("%s: watch of %s failed", self.name, ref.plural)
                stop.wait(5.0)

    # -- reconcile -------------------------------------------------------------------------

    def reconcile(self, crs: Obj) -> float | None:
        if deleting(crs):
            return self.delete(crs)
        crs = add_finalizer(self.api, self.ref, crs, FINALIZER)
        meta = crs["metadata"]
        status = copy.deepcopy(crs.get("status") or {})
        conditions = list(status.get("conditions") or [])
        verdict = Verdict()
        clusters: list[Obj] = []
        try:
            try:
                clusters = self.clusters(crs)
            except SelectorError as exc:
                verdict.fail("ClusterMatchFailed", f"unable to convert selector: {exc}")
                return None
            if not clusters:
                return None
            resources = self.resources(crs, verdict)
            if resources is None:
                return None  # a Secret of the wrong type: its change queues the set again
            for cluster in clusters:
                self.apply_to(crs, cluster, resources, verdict)
            return verdict.again
        finally:
            if verdict.failures:
                reason, message, severity = verdict.failures[0]
                conditions = mark(conditions, APPLIED, False, reason, message, severity)
            elif clusters:
                conditions = mark(conditions, APPLIED, True)
            status["conditions"] = conditions
            status["observedGeneration"] = meta.get("generation")
            old = crs
            crs = write_status(self.api, self.ref, crs, status)
            transition(self.api, crs, old, conditions, APPLIED)

    def clusters(self, crs: Obj) -> list[Obj]:
        """The Clusters of the set's namespace its selector matches; empty matches none."""
        selector = selector_from_label_selector_object(
            (crs.get("spec") or {}).get("clusterSelector") or {})
        if selector.is_empty:
            return []
        return [c for c in listed(self.api, CLUSTERS, crs["metadata"]["namespace"])
                if not deleting(c) and selector.matches(c["metadata"].get("labels") or {})]

    def resources(self, crs: Obj, verdict: Verdict) -> list[Resource] | None:
        """The set's resources, read and owned by the set; None if one may not be used."""
        ns = crs["metadata"]["namespace"]
        out: list[Resource] = []
        usable = True
        for entry in (crs.get("spec") or {}).get("resources") or []:
            kind, name = entry.get("kind", ""), entry.get("name", "")
            ref = SECRETS if kind == "Secret" else CONFIGMAPS
            obj = get_or_none(self.api, ref, ns, name)
            if obj is None:
                verdict.fail("RetrievingResourceFailed", f'{ref.plural} "{name}" not found')
                continue
            if kind == "Secret" and obj.get("type") != RESOURCE_SET_SECRET:
                verdict.fail("WrongSecretType", f"unsupported secret type: Secret {name} is "
                                                f"of type {obj.get('type') or 'Opaque'!r}, "
                                                f"not {RESOURCE_SET_SECRET!r}")
                usable = False
                continue
            self.own(crs, ref, obj)
            out.append(read_resource(obj))
        return out if usable else None

    def own(self, crs: Obj, ref: Ref, obj: Obj) -> None:
        """The set as an owner of its resource, so a change of it leads back to the set."""
        meta = obj["metadata"]
        owners = meta.get("ownerReferences") or []
        if any(o.get("uid") == crs["metadata"]["uid"] for o in owners):
            return
        self.api.patch(ref, meta["namespace"], meta["name"], {"metadata": {
            "ownerReferences": ensure_owner(owners, crs),
            "resourceVersion": meta["resourceVersion"]}})

    def apply_to(self, crs: Obj, cluster: Obj, resources: list[Resource],
                 verdict: Verdict) -> None:
        """Apply what the cluster's binding says is not applied (yet, or any more)."""
        ns, name = cluster["metadata"]["namespace"], cluster["metadata"]["name"]
        crs_name = crs["metadata"]["name"]
        strategy = (crs.get("spec") or {}).get("strategy") or APPLY_ONCE
        binding = get_or_none(self.api, RESOURCESET_BINDINGS, ns, name)
        entry = entry_of(binding, crs_name)
        todo = [r for r in resources if needs_apply(strategy, entry, r)]
        if entry is not None and not todo:
            return
        if not is_true(cluster, "ControlPlaneInitialized"):
            verdict.fail("RemoteClusterClientFailed", f"the control plane of Cluster {name} "
                                                      "is not initialized yet", "Info")
            verdict.retry(UNREACHABLE_RETRY)
            return
        try:
            guest = open_guest(self.api, ns, name, self.run_dir)
        except GuestUnreachable as exc:
            verdict.fail("RemoteClusterClientFailed", f"Cluster {name}: {exc}", "Info")
            verdict.retry(UNREACHABLE_RETRY)
            return
        results: list[Obj] = []
        try:
            guest.get(KUBERNETES_SERVICE)
            for resource in todo:
                results.append(self.apply_resource(guest, crs, resource, name, verdict))
        except GuestUnreachable as exc:
            verdict.fail("RemoteClusterClientFailed",
                         f"the API of Cluster {name} does not answer: {exc}", "Info")
            verdict.retry(UNREACHABLE_RETRY)
            if not results:
                return
        except errors.ApiError as err:
            verdict.fail("RemoteClusterClientFailed", "failed to retrieve the Service for "
                         f"Kubernetes API Server of the cluster {ns}/{name}: {err.message}")
            verdict.retry(UNREACHABLE_RETRY)
            return
        finally:
            guest.close()
        self.write_binding(crs, cluster, binding, results)
        applied = [f"{r['kind']}/{r['name']}" for r in results if r["applied"]]
        if applied:
            record(self.api, crs, "Normal", "Applied",
                   f"applied {', '.join(applied)} to Cluster {name} ({strategy})")
            LOG.info("[%s/%s] applied %s to cluster %s", ns, crs_name, ", ".join(applied),
                     name)

    def apply_resource(self, guest: GuestCluster, crs: Obj, resource: Resource,
                       cluster: str, verdict: Verdict) -> Obj:
        """Create (ApplyOnce) or create-or-replace (Reconcile) every object of a resource;
        its entry for the binding. :class:`GuestUnreachable` goes up."""
        strategy = (crs.get("spec") or {}).get("strategy") or APPLY_ONCE
        problems = [resource.error] if resource.error else []
        for obj in resource.objects:
            try:
                if strategy == RECONCILE:
                    guest.replace(obj)
                else:
                    guest.apply(obj)
            except errors.ApiError as err:
                meta = obj.get("metadata") or {}
                problems.append(f"failed to create object {obj.get('apiVersion')}, Kind="
                                f"{obj.get('kind')} {meta.get('namespace') or ''}/"
                                f"{meta.get('name') or ''}: {err.message}")
        if problems:
            message = f"{resource.kind} {resource.name} on Cluster {cluster}: " + \
                "; ".join(problems)
            verdict.fail("ApplyFailed", message)
            verdict.retry(self.resync)
            record(self.api, crs, "Warning", "ApplyFailed", message)
        entry: Obj = {"kind": resource.kind, "name": resource.name, "applied": not problems,
                      "lastAppliedTime": now_rfc3339()}
        if resource.hash:
            entry["hash"] = resource.hash
        return entry

    def write_binding(self, crs: Obj, cluster: Obj, binding: Obj | None,
                      results: list[Obj]) -> None:
        """The set's entry in the cluster's binding, with ``results`` set in it."""
        ns, name = cluster["metadata"]["namespace"], cluster["metadata"]["name"]
        crs_name = crs["metadata"]["name"]
        current: Obj = binding or {"metadata": {}, "spec": {}}
        bindings = copy.deepcopy((current.get("spec") or {}).get("bindings") or [])
        entry = entry_of({"spec": {"bindings": bindings}}, crs_name)
        if entry is None:
            entry = {"clusterResourceSetName": crs_name, "resources": []}
            bindings.append(entry)
        done = {(r["kind"], r["name"]) for r in results}
        entry["resources"] = [r for r in entry.get("resources") or []
                              if (r.get("kind"), r.get("name")) not in done] + results
        owners = ensure_owner(ensure_owner(current["metadata"].get("ownerReferences") or [],
                                           cluster), crs)
        if binding is None:
            self.api.create(RESOURCESET_BINDINGS, ns, {
                "apiVersion": f"{ADDONS}/{V1B1}", "kind": "ClusterResourceSetBinding",
                "metadata": {"name": name, "labels": {CLUSTER_NAME: name},
                             "ownerReferences": owners},
                "spec": {"clusterName": name, "bindings": bindings}})
            return
        self.api.patch(RESOURCESET_BINDINGS, ns, name, {
            "metadata": {"labels": {CLUSTER_NAME: name}, "ownerReferences": owners,
                         "resourceVersion": binding["metadata"]["resourceVersion"]},
            "spec": {"clusterName": name, "bindings": bindings}})

    # -- deletion ---------------------------------------------------------------------------

    def delete(self, crs: Obj) -> float | None:
        """Take the set out of every binding of its namespace, then let it go."""
        meta = crs["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for binding in listed(self.api, RESOURCESET_BINDINGS, ns):
            bmeta = binding["metadata"]
            bindings = (binding.get("spec") or {}).get("bindings") or []
            kept = [b for b in bindings if b.get("clusterResourceSetName") != name]
            owners = bmeta.get("ownerReferences") or []
            kept_owners = [o for o in owners if not (o.get("kind") == "ClusterResourceSet" and
                                                     o.get("name") == name)]
            if kept == bindings and kept_owners == owners:
                continue
            if not kept:
                delete_quietly(self.api, RESOURCESET_BINDINGS, ns, bmeta["name"])
            else:
                self.api.patch(RESOURCESET_BINDINGS, ns, bmeta["name"], {
                    "metadata": {"ownerReferences": kept_owners,
                                 "resourceVersion": bmeta["resourceVersion"]},
                    "spec": {"bindings": kept}})
        drop_finalizer(self.api, self.ref, crs, FINALIZER)
        LOG.info("[%s/%s] cluster resource set deleted", ns, name)
        return None
