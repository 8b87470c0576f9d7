"""Tanzu Kubernetes releases (tanzu-framework's ``run.tanzu.vmware.com``, v1alpha3).

TanzuKubernetesRelease (``tkr``) and OSImage (``osimg``) are cluster-scoped
and, as in vSphere, written by the system (``lab tkr build``), read by
everyone. Fields and printer columns follow upstream's
``apis/run/v1alpha3/tanzukubernetesrelease_types.go`` and
``osimage_types.go``. An OSImage of type ``vmop`` names its node image, a
ClusterVirtualMachineImage, in ``spec.image.ref``; a release names its
OSImages in ``spec.osImages``.

``release_names()`` is the one place that turns a Kubernetes version into
the names of a release, its OSImage and its node image.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.kinds.registry import Kind, PrinterColumn, Version
from appliance.kinds.schema import CONDITION, array, obj, preserve, string, top_level

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

KINDS = (TANZUKUBERNETESRELEASE, OSIMAGE)


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
