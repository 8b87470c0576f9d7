"""Tanzu Kubernetes releases (tanzu-framework's ``run.tanzu.vmware.com``, v1alpha3).

TanzuKubernetesRelease (``tkr``) and OSImage (``osimg``) are cluster-scoped
and, as in vSphere, written by the system (``lab tkr build``), read by
everyone. Fields and printer columns follow upstream's
``apis/run/v1alpha3/tanzukubernetesrelease_types.go`` and
``osimage_types.go``. An OSImage of type ``vmop`` names its node image, a
ClusterVirtualMachineImage, in ``spec.image.ref``; a release names its
OSImages in ``spec.osImages``.

TanzuKubernetesCluster (``tkc``) is namespaced, served as v1alpha3 (stored)
and v1alpha2. Its fields and printer columns follow upstream's v1alpha2
``tanzukubernetescluster_types.go`` (tanzu-framework) and vSphere 8's
v1alpha3, which drops v1alpha2's deprecated ``spec.distribution`` and adds a
node pool's ``failureDomain``. Fields only one version has survive a round
trip through the other in upstream's ``run.tanzu.vmware.com/conversion-data``
annotation. Admission mirrors the TKG service's webhook: VM classes assigned
to the namespace, releases that exist, valid and disjoint pod and service
ranges, a control plane of 1 or 3 that never shrinks, one minor version per
upgrade.

``release_names()`` is the one place that turns a Kubernetes version into
the names of a release, its OSImage and its node image.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from appliance.errors import Cause
from appliance.kinds import vmop
from appliance.kinds.capi import (Network, _lab_networks, _network_causes, forbidden, invalid,
                                  parse_duration, parse_semver, required)
from appliance.kinds.registry import (ADMISSION_WARNING, AdmissionContext, Kind, Lookup, Obj, PrinterColumn,
                                      Validator, Version)
from appliance.kinds.schema import (CONDITION, Schema, array, integer, map_of, obj, preserve,
                                    quantity, string, string_map, top_level)
from appliance.util.names import dns1123_label, dns1123_subdomain

GROUP = "run.tanzu.vmware.com"
VERSION = "v1alpha3"
#: The build suffix of this appliance's releases, where vSphere has ``vmware.1-tkg.1``.
DISTRIBUTION = "pacific.1"
#: Labels vSphere puts on releases and OS images (a TKC's ``osImage`` resolution reads them).
LABEL_OS_IMAGE = "run.tanzu.vmware.com/os-image"
LABEL_TKR = "run.tanzu.vmware.com/tkr"

REF = obj({"name": string()})
IMAGE_INFO = obj({"imageRepository": string(), "imageTag": string()}, nullable=True)
CONDITIONS = array(CONDITION, merge_key="type")

TKR_SPEC = obj({
    "version": string(),
    "kubernetes": obj({
        "version": string(), "imageRepository": string(),
        "etcd": IMAGE_INFO, "pause": IMAGE_INFO, "coredns": IMAGE_INFO, "kube-vip": IMAGE_INFO,
    }, required=["version"]),
    "osImages": array(REF),
    "bootstrapPackages": array(REF),
}, required=["version", "kubernetes"])

OSIMAGE_SPEC = obj({
    "kubernetesVersion": string(),
    "os": obj({"type": string(), "name": string(), "version": string(), "arch": string()},
              required=["type", "name", "version", "arch"]),
    "image": obj({"type": string(), "ref": preserve(type="object")}, required=["type", "ref"]),
}, required=["kubernetesVersion", "os", "image"])


def _condition_column(name: str, condition: str) -> PrinterColumn:
    return PrinterColumn(name, json_path=f".status.conditions[?(@.type=='{condition}')].status")


CREATED = PrinterColumn("Created", type="date", json_path=".metadata.creationTimestamp")

TANZUKUBERNETESRELEASE = Kind(
    group=GROUP, kind="TanzuKubernetesRelease", plural="tanzukubernetesreleases",
    singular="tanzukubernetesrelease", namespaced=False, short_names=("tkr",),
    versions=(Version(VERSION, top_level(spec=TKR_SPEC, status=obj({"conditions": CONDITIONS})),
                      storage=True, printer_columns=(
                          PrinterColumn("Version", json_path=".spec.version"),
                          _condition_column("Ready", "Ready"),
                          _condition_column("Compatible", "Compatible"),
                          CREATED)),),
)

OSIMAGE = Kind(
    group=GROUP, kind="OSImage", plural="osimages", singular="osimage", namespaced=False,
    short_names=("osimg",),
    versions=(Version(VERSION, top_level(spec=OSIMAGE_SPEC,
                                         status=obj({"conditions": CONDITIONS})),
                      storage=True, printer_columns=(
                          PrinterColumn("K8S Version", json_path=".spec.kubernetesVersion"),
                          PrinterColumn("OS Name", json_path=".spec.os.name"),
                          PrinterColumn("OS Version", json_path=".spec.os.version"),
                          PrinterColumn("Arch", json_path=".spec.os.arch"),
                          PrinterColumn("Type", json_path=".spec.image.type"),
                          _condition_column("Compatible", "Compatible"),
                          CREATED)),),
)



@dataclass(frozen=True)
class ReleaseNames:
    kubernetes: str  # v1.31.4
    release: str  # the TanzuKubernetesRelease: v1.31.4---pacific.1
    version: str  # its spec.version: v1.31.4+pacific.1
    os_image: str  # the OSImage: v1.31.4---pacific.1-debian-12-amd64
    node_image: str  # the ClusterVirtualMachineImage (a DNS label): ob-v1-31-4-pacific-1
    display_name: str  # the node image's display name: ob-v1.31.4-pacific.1-debian-12-amd64


def release_names(kubernetes: str) -> ReleaseNames:
    """Names for Kubernetes ``kubernetes`` (``v1.31.4``), as vSphere names its releases.

    vSphere calls the release of v1.31.4 ``v1.31.4---vmware.1-tkg.1`` (``+``
    in the version becomes ``---`` in the name); here it is
    ``v1.31.4---pacific.1``. The node image's name must be a DNS label (it
    names a directory of the content library), so its dots become dashes."""
    tag = "v" + kubernetes.removeprefix("v")
    release = f"{tag}---{DISTRIBUTION}"
    dashed = f"{tag}-{DISTRIBUTION}"
    return ReleaseNames(kubernetes=tag, release=release, version=f"{tag}+{DISTRIBUTION}",
                        os_image=f"{release}-debian-12-amd64",
                        node_image="ob-" + dashed.replace(".", "-"),
                        display_name=f"ob-{dashed}-debian-12-amd64")


# -- TanzuKubernetesCluster ---------------------------------------------------------------------

TKC_STORAGE = "v1alpha3"
#: The finalizer the TKC controller puts on a cluster it has started to build.
TKC_FINALIZER = "tanzukubernetescluster.run.tanzu.vmware.com"
#: Upstream's conversion annotation (tanzu-framework ``apis/run/util/conversion``). Here it
#: holds, as JSON, only the fields the version an object is read in cannot express: on a
#: v1alpha2 object, v1alpha3's node pool failure domains; on the stored v1alpha3 object,
#: v1alpha2's ``spec.distribution``.
CONVERSION_ANNOTATION = "run.tanzu.vmware.com/conversion-data"
#: vSphere's defaults (its TkgServiceConfiguration's default CNI is antrea).
DEFAULT_CNI = "antrea"
DEFAULT_SERVICES_CIDR = "10.96.0.0/12"
DEFAULT_PODS_CIDR = "192.168.0.0/16"
DEFAULT_SERVICE_DOMAIN = "cluster.local"
#: With NSX-routed pods the pod ranges come from NSX, and upstream leaves them empty.
NSX_ROUTED_CNI = "antrea-nsx-routed"
CONTROL_PLANE_REPLICAS = (1, 3)
#: Condition types behind the READY, TKR COMPATIBLE and UPDATES AVAILABLE columns.
READY = "Ready"
TKR_COMPATIBLE = "TanzuKubernetesReleaseCompatible"
UPDATES_AVAILABLE = "UpdatesAvailable"

OBJECT_REFERENCE = obj({
    "apiVersion": string(), "kind": string(), "name": string(), "namespace": string(),
    "uid": string(), "resourceVersion": string(), "fieldPath": string(),
}, **{"x-kubernetes-map-type": "atomic"})
TKR_REFERENCE = obj({"reference": OBJECT_REFERENCE})
TKC_VOLUME = obj({"name": string(), "mountPath": string(), "capacity": map_of(quantity()),
                  "storageClass": string()}, required=["capacity", "mountPath", "name"])
TAINT = obj({"key": string(), "value": string(),
             "effect": string(enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
             "timeAdded": string(nullable=True)}, required=["effect", "key"])


def _topology_settings(**extra: Schema) -> dict[str, Schema]:
    """Upstream's TopologySettings: one homogeneous pool of nodes."""
    return {"replicas": integer(minimum=0), "vmClass": string(), "storageClass": string(),
            "volumes": array(TKC_VOLUME), "tkr": TKR_REFERENCE, "nodeDrainTimeout": string(),
            **extra}


TKC_SETTINGS = obj({
    "network": obj({
        "cni": obj({"name": string()}, required=["name"], default={"name": DEFAULT_CNI}),
        # Pod ranges default in _prepare_tkc: they depend on the CNI.
        "pods": obj({"cidrBlocks": array(string())}),
        "services": obj({"cidrBlocks": array(string(), default=[DEFAULT_SERVICES_CIDR])},
                        default={}),
        "serviceDomain": string(default=DEFAULT_SERVICE_DOMAIN),
        "proxy": obj({"httpProxy": string(), "httpsProxy": string(),
                      "noProxy": array(string())}),
        "trust": obj({"additionalTrustedCAs": array(obj({"name": string(), "data": string()},
                                                        required=["data", "name"]))}),
    }, default={}),
    "storage": obj({"classes": array(string()), "defaultClass": string()}),
}, default={})

TKC_STATUS = obj({
    "apiEndpoints": array(obj({"host": string(), "port": integer()}, required=["host", "port"])),
    "version": string(),
    "addons": array(obj({"name": string(), "type": string(), "version": string(),
                         "conditions": CONDITIONS}, required=["name", "type"])),
    "phase": string(),
    "conditions": CONDITIONS,
    "totalWorkerReplicas": integer(),
})


def _tkc_spec(version: str) -> Schema:
    pool = {"name": string(), "labels": string_map(), "taints": array(TAINT),
            **_topology_settings()}
    if version == "v1alpha3":
        pool["failureDomain"] = string()
    spec: dict[str, Schema] = {
        "topology": obj({
            "controlPlane": obj(_topology_settings(replicas=integer(minimum=0, default=1)),
                                required=["storageClass", "vmClass"]),
            "nodePools": array(obj(pool, required=["name", "storageClass", "vmClass"])),
        }, required=["controlPlane", "nodePools"]),
        "settings": TKC_SETTINGS,
    }
    if version == "v1alpha2":  # deprecated there, gone in v1alpha3
        spec["distribution"] = obj({"fullVersion": string(), "version": string()})
    return obj(spec, required=["topology"])


TKC_COLUMNS = (
    PrinterColumn("Control Plane", type="integer",
                  json_path=".spec.topology.controlPlane.replicas"),
    PrinterColumn("Worker", type="integer", json_path=".status.totalWorkerReplicas"),
    PrinterColumn("TKR Name", json_path=".spec.topology.controlPlane.tkr.reference.name"),
    PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp"),
    _condition_column("Ready", READY),
    _condition_column("TKR Compatible", TKR_COMPATIBLE),
    PrinterColumn("Updates Available",
                  json_path=f".status.conditions[?(@.type=='{UPDATES_AVAILABLE}')].message"),
)


# -- conversion ------------------------------------------------------------------------------


def tkr_name(node: Obj | None) -> str:
    """The release a control plane or node pool names (``tkr.reference.name``), or ""."""
    return (((node or {}).get("tkr") or {}).get("reference") or {}).get("name") or ""


def tkr_name_for_version(version: str) -> str:
    """vSphere's name of the release of ``version``: ``v1.31.4+vmware.1-tkg.1`` is
    ``v1.31.4---vmware.1-tkg.1``."""
    return "v" + version.removeprefix("v").replace("+", "---")


def _node_pools(o: Obj) -> list[Any]:
    return (((o.get("spec") or {}).get("topology") or {}).get("nodePools")) or []


def _conversion_data(o: Obj) -> dict[str, Any]:
    raw = ((o.get("metadata") or {}).get("annotations") or {}).get(CONVERSION_ANNOTATION)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _take_conversion_data(o: Obj) -> dict[str, Any]:
    data = _conversion_data(o)
    meta = o.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    annotations.pop(CONVERSION_ANNOTATION, None)
    if not annotations:
        meta.pop("annotations", None)
    return data


def _put_conversion_data(o: Obj, data: dict[str, Any]) -> None:
    if data:
        meta = o.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}),
                               CONVERSION_ANNOTATION: json.dumps(data, sort_keys=True)}


def tkc_v1alpha2_to_storage(o: Obj) -> Obj:
    out = copy.deepcopy(o)
    kept = _take_conversion_data(out)  # v1alpha3's fields, from a read as v1alpha2
    spec = out.get("spec")
    if not isinstance(spec, dict):
        return out
    domains = kept.get("failureDomains") or {}
    for pool in _node_pools(out):
        if isinstance(pool, dict) and pool.get("name") in domains:
            pool.setdefault("failureDomain", domains[pool["name"]])
    distribution = spec.pop("distribution", None)
    if distribution:
        _put_conversion_data(out, {"distribution": distribution})
        # As vSphere's webhook does: a full version names the release the cluster uses.
        cp = (spec.get("topology") or {}).get("controlPlane")
        full = distribution.get("fullVersion") or ""
        if isinstance(cp, dict) and full and not tkr_name(cp):
            cp["tkr"] = {**(cp.get("tkr") or {}),
                         "reference": {"name": tkr_name_for_version(full)}}
    return out


def tkc_storage_to_v1alpha2(o: Obj) -> Obj:
    out = copy.deepcopy(o)
    kept = _take_conversion_data(out)  # v1alpha2's fields, kept when it was stored
    spec = out.get("spec")
    if not isinstance(spec, dict):
        return out
    domains = {pool.get("name", ""): pool.pop("failureDomain")
               for pool in _node_pools(out) if isinstance(pool, dict) and "failureDomain" in pool}
    if kept.get("distribution"):
        spec["distribution"] = kept["distribution"]
    _put_conversion_data(out, {"failureDomains": domains} if domains else {})
    return out


def _prepare_tkc(o: Obj) -> None:
    """Upstream's pod range default, which depends on the CNI."""
    network = ((o.get("spec") or {}).get("settings") or {}).get("network")
    if not isinstance(network, dict) or (network.get("cni") or {}).get("name") == NSX_ROUTED_CNI:
        return
    pods = network.get("pods") or {}
    if not pods.get("cidrBlocks"):
        network["pods"] = {**pods, "cidrBlocks": [DEFAULT_PODS_CIDR]}


# -- admission -------------------------------------------------------------------------------


def _kube_version(lookup: Lookup, name: str) -> tuple[int, int, int] | None:
    """The Kubernetes version of release ``name``: its ``spec.kubernetes.version``, else
    what its name says (``v1.31.4---pacific.1``)."""
    release = lookup(GROUP, "tanzukubernetesreleases", "", name)
    text = (((release or {}).get("spec") or {}).get("kubernetes") or {}).get("version")
    return parse_semver(text or name.split("---")[0])


def _release_causes(path: str, name: str, old_name: str, ctx: AdmissionContext) -> list[Cause]:
    """The release must exist (Ready or not: the controller reports why it cannot use it),
    and an upgrade goes one minor version at a time, never down."""
    release = ctx.lookup(GROUP, "tanzukubernetesreleases", "", name)
    if release is None:
        return [invalid(path, name, f'TanzuKubernetesRelease "{name}" not found')]
    ready = next((c for c in (release.get("status") or {}).get("conditions") or []
                  if c.get("type") == READY), {})
    warnings = [] if ready.get("status") == "True" else [Cause(
        path, f"TanzuKubernetesRelease {name} is not Ready, so the cluster's nodes cannot "
              f"bootstrap until it is: {ready.get('message') or 'no Ready condition'}",
        ADMISSION_WARNING)]
    if not old_name or old_name == name:
        return warnings
    before, after = _kube_version(ctx.lookup, old_name), _kube_version(ctx.lookup, name)
    if before is None or after is None or after == before:
        return warnings
    was, now = "v" + ".".join(map(str, before)), "v" + ".".join(map(str, after))
    if after[0] != before[0]:
        why = f"the major version cannot change (Kubernetes {was} to {now})"
    elif after < before:
        why = f"Kubernetes {was} cannot be downgraded to {now}"
    elif after[1] > before[1] + 1:
        why = (f"Kubernetes {was} cannot be upgraded to {now}: upgrade one minor version at a "
               f"time (to v{before[0]}.{before[1] + 1} first)")
    else:
        return warnings
    return [invalid(path, name, why)]


def _vm_class_cause(path: str, cls: str, ns: str, ctx: AdmissionContext) -> list[Cause]:
    """As the VM Service admits a VM's class: it must be assigned to the namespace."""
    if not cls:
        return [required(path)]
    if ctx.lookup(vmop.GROUP, "virtualmachineclasses", ns, cls) is not None:
        return []
    in_catalog = ctx.lookup(vmop.GROUP, "virtualmachineclasses", vmop.CATALOG_NAMESPACE,
                            cls) is not None
    why = (f'VirtualMachineClass "{cls}" is not assigned to namespace "{ns}"' if in_catalog
           else f'VirtualMachineClass "{cls}" not found')
    return [invalid(path, cls, why)]


def _node_causes(node: Obj, path: str, ns: str, ctx: AdmissionContext) -> list[Cause]:
    causes = _vm_class_cause(f"{path}.vmClass", node.get("vmClass") or "", ns, ctx)
    drain = node.get("nodeDrainTimeout")
    if drain is not None and parse_duration(drain) is None:
        causes.append(invalid(f"{path}.nodeDrainTimeout", drain,
                              "must be a duration such as 5m0s"))
    names: set[str] = set()
    for j, volume in enumerate(node.get("volumes") or []):
        vpath = f"{path}.volumes[{j}]"
        if volume.get("name") in names:
            causes.append(Cause(f"{vpath}.name", f'Duplicate value: "{volume.get("name")}"',
                                "FieldValueDuplicate"))
        names.add(volume.get("name"))
        if "storage" not in (volume.get("capacity") or {}):
            causes.append(required(f"{vpath}.capacity.storage"))
    return causes


def _settings_causes(network: Obj, lab: list[tuple[Network, str]]) -> list[Cause]:
    """Pod and service ranges as a CAPI Cluster's (capi's check, with the TKC's paths),
    the service domain, the proxy URLs and the additional CAs."""
    prefix = "spec.settings.network."
    causes = [Cause(c.field.replace("spec.clusterNetwork.", prefix, 1),
                    c.message.replace("spec.clusterNetwork.", prefix), c.reason)
              for c in _network_causes(network, lab)]
    domain = network.get("serviceDomain")
    if domain:
        causes += [invalid(prefix + "serviceDomain", domain, e) for e in dns1123_subdomain(domain)]
    for key in ("httpProxy", "httpsProxy"):
        url = (network.get("proxy") or {}).get(key)
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                causes.append(invalid(f"{prefix}proxy.{key}", url,
                                      "must be an http:// or https:// URL"))
    cas = (network.get("trust") or {}).get("additionalTrustedCAs") or []
    for i, ca in enumerate(cas):
        try:
            base64.b64decode(ca.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            causes.append(Cause(f"{prefix}trust.additionalTrustedCAs[{i}].data",
                                "Invalid value: must be base64-encoded PEM certificate data"))
    return causes


def _tkc_validator(lab_ranges: Sequence[str]) -> Validator:
    lab = _lab_networks(lab_ranges)

    def validate(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
        ns = new["metadata"].get("namespace", "")
        spec = new.get("spec") or {}
        topology = spec.get("topology") or {}
        old_topology = ((old or {}).get("spec") or {}).get("topology") or {}
        cp = topology.get("controlPlane") or {}
        old_cp = old_topology.get("controlPlane") or {}
        base = "spec.topology.controlPlane"
        causes: list[Cause] = []
        replicas = cp.get("replicas", 1)
        if replicas not in CONTROL_PLANE_REPLICAS:
            causes.append(Cause(f"{base}.replicas", f'Unsupported value: {replicas}: supported '
                                                    'values: "1", "3"', "FieldValueNotSupported"))
        before = old_cp.get("replicas", 1) if old is not None else None
        if isinstance(before, int) and isinstance(replicas, int) and replicas < before:
            causes.append(forbidden(f"{base}.replicas", f"the control plane cannot be scaled "
                                                        f"down (from {before} to {replicas})"))
        causes += _node_causes(cp, base, ns, ctx)
        cp_tkr, old_cp_tkr = tkr_name(cp), tkr_name(old_cp)
        if cp_tkr:
            causes += _release_causes(f"{base}.tkr.reference.name", cp_tkr, old_cp_tkr, ctx)
        else:
            hint = (" (a spec.distribution version hint is not resolved here)"
                    if "distribution" in _conversion_data(new) else "")
            causes.append(required(f"{base}.tkr.reference.name",
                                   "name a TanzuKubernetesRelease (kubectl get tkr)" + hint))
        old_pools = {p.get("name"): p for p in old_topology.get("nodePools") or []}
        seen: set[str] = set()
        for i, pool in enumerate(topology.get("nodePools") or []):
            path = f"spec.topology.nodePools[{i}]"
            name = pool.get("name") or ""
            causes += [invalid(f"{path}.name", name, e) for e in dns1123_label(name)]
            if name in seen:
                causes.append(Cause(f"{path}.name", f'Duplicate value: "{name}"',
                                    "FieldValueDuplicate"))
            seen.add(name)
            causes += _node_causes(pool, path, ns, ctx)
            # A pool without a release runs its control plane's, checked above.
            old_pool = old_pools.get(name)
            release = tkr_name(pool) or cp_tkr
            if release and (tkr_name(pool) or (old_pool is not None and tkr_name(old_pool))):
                causes += _release_causes(
                    f"{path}.tkr.reference.name", release,
                    (tkr_name(old_pool) or old_cp_tkr) if old_pool is not None else "", ctx)
        network = (spec.get("settings") or {}).get("network") or {}
        return causes + _settings_causes(network, lab)

    return validate


def tanzukubernetescluster(lab_ranges: Sequence[str] = ()) -> Kind:
    """The TanzuKubernetesCluster kind; its pod and service ranges may not overlap
    ``lab_ranges`` ("CIDR" or "CIDR=label")."""
    return Kind(
        group=GROUP, kind="TanzuKubernetesCluster", plural="tanzukubernetesclusters",
        singular="tanzukubernetescluster", namespaced=True, short_names=("tkc",),
        # It names a CAPI Cluster, its nodes and their host names.
        name_rule="label",
        validate=_tkc_validator(lab_ranges), prepare_create=_prepare_tkc,
        versions=(
            Version("v1alpha3", top_level(spec=_tkc_spec("v1alpha3"), status=TKC_STATUS),
                    storage=True, printer_columns=TKC_COLUMNS),
            Version("v1alpha2", top_level(spec=_tkc_spec("v1alpha2"), status=TKC_STATUS),
                    printer_columns=TKC_COLUMNS, to_storage=tkc_v1alpha2_to_storage,
                    from_storage=tkc_storage_to_v1alpha2),
        ))


def kinds(lab_ranges: Sequence[str] = ()) -> tuple[Kind, ...]:
    """The ``run.tanzu.vmware.com`` kinds; a TanzuKubernetesCluster's pod and service ranges
    may not overlap ``lab_ranges``."""
    return (TANZUKUBERNETESRELEASE, OSIMAGE, tanzukubernetescluster(lab_ranges))


#: Without the lab's ranges (tests, tools); the supervisor registers ``kinds(lab_ranges)``.
KINDS = kinds()
