"""Kubernetes releases: build a node image and publish it as a TanzuKubernetesRelease.

``build_release()`` finds the binaries of one Kubernetes version (an offline
directory, else the Kubernetes package repository when this host reaches it;
``hypervisor.nodeimage``), builds the node image into the content library
and publishes it as a ClusterVirtualMachineImage through the catalog (the
same path as ``lab image build``), then publishes the OSImage and the
TanzuKubernetesRelease that name it, with ``Ready=True``.

With no binaries at hand the release is still published, with
``Ready=False``, reason ``BinariesMissing`` and a message that says what is
missing and which command imports it; a release that is already Ready is
left as it is. A refused ``--from`` directory (a checksum, a version, a
hostile archive) or a failed build changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import errors
from appliance.kinds.registry import Obj
from appliance.kinds.tanzu import GROUP, LABEL_OS_IMAGE, VERSION, ReleaseNames, release_names
from appliance.objects import MERGE_PATCH, SYSTEM, ObjectService, Target, WriteOptions
from appliance.settings import Settings
from appliance.util.timefmt import now_rfc3339
from appliance.vmservice.catalog import Catalog
from appliance.vmservice.library import ImageFiles, _from_built, _write_manifest, item_dir
from hypervisor.images import ImageError
from hypervisor.nodeimage import (BinariesMissing, KubeVersion, NodeImageError,
                                  build_node_image, find_source, parse_version)

LOG = logging.getLogger(__name__)

IMAGE_REPOSITORY = "registry.k8s.io"
OS = {"type": "linux", "name": "debian", "version": "12", "arch": "amd64"}
BINARIES_MISSING = "BinariesMissing"


class ReleaseError(ValueError):
    """A release was refused or could not be built; nothing was published (one line)."""


@dataclass(frozen=True)
class ReleaseResult:
    names: ReleaseNames
    ready: bool
    message: str  # why it is not ready; "" when it is
    image: ImageFiles | None = None
    rebuilt: bool = False


def parse(text: str) -> KubeVersion:
    try:
        return parse_version(text)
    except NodeImageError as exc:
        raise ReleaseError(str(exc)) from None


def build_release(settings: Settings, service: ObjectService, version: KubeVersion,
                  from_dir: Path | None = None, force: bool = False,
                  progress: Callable[[Any], None] | None = None) -> ReleaseResult:
    names = release_names(version.tag)
    try:
        source = find_source(version, from_dir)
    except BinariesMissing as exc:
        current = _get(service, "tanzukubernetesreleases", names.release)
        if current is not None and _ready(current) and not force:
            LOG.info("[%s] already ready; no binaries to rebuild it from", names.release)
            return ReleaseResult(names, True, "")
        publish(service, names, ready=False, reason=BINARIES_MISSING, message=str(exc))
        return ReleaseResult(names, False, str(exc))
    except NodeImageError as exc:
        raise ReleaseError(str(exc)) from None
    directory = item_dir(settings, names.node_image)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        built = build_node_image(names.node_image, source, out_dir=directory,
                                 cache_dir=settings.cache_dir / "images", force=force,
                                 progress=progress)
    except ImageError as exc:
        raise ReleaseError(f"building the node image {names.node_image} failed: {exc}") from None
    files = _from_built(names.node_image, directory, built)
    _write_manifest(directory, files)
    Catalog(service).publish_image(
        names.node_image, display_name=names.display_name, capacity_bytes=files.capacity_bytes,
        size_bytes=files.size_bytes, sha256=files.sha256, os_name=files.os_name,
        os_version=files.os_version, content_version=files.sha256[:12])
    publish(service, names, ready=True, reason="", message="")
    return ReleaseResult(names, True, "", files, rebuilt=True)


def import_release(service: ObjectService, version: KubeVersion, image: str) -> ReleaseResult:
    """Publish the release of ``version`` for a node image already in the content library
    (a TKG node image brought with ``lab image import``, say). Its contents are the
    administrator's word: nothing here can look inside it, and a node image without
    kubeadm shows as ``KubeadmNotFound`` on the clusters' machines."""
    names = release_names(version.tag)
    images = service.registry.by_group_plural("vmoperator.vmware.com",
                                              "clustervirtualmachineimages")
    assert images is not None
    try:
        service.get(SYSTEM, Target(images, images.storage_version.name, "", image))
    except errors.ApiError as err:
        if err.code != 404:
            raise
        raise ReleaseError(f"no image {image!r} in the content library (lab image import "
                           f"FILE --name {image} brings one)") from None
    publish(service, names, ready=True, reason="", message="", node_image=image)
    return ReleaseResult(names, True, "")


def publish(service: ObjectService, names: ReleaseNames, *, ready: bool, reason: str,
            message: str, node_image: str | None = None) -> Obj:
    """Create or refresh the OSImage and the release; set their conditions. The OSImage
    names ``node_image`` (default: the release's own built image)."""
    catalog = Catalog(service)
    labels = release_labels(names)
    os_image = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "OSImage",
        "metadata": {"name": names.os_image, "labels": {**labels, LABEL_OS_IMAGE: names.os_image}},
        "spec": {"kubernetesVersion": names.kubernetes, "os": dict(OS),
                 "image": {"type": "vmop", "ref": {
                     "kind": "ClusterVirtualMachineImage",
                     "name": node_image or names.node_image,
                     "version": names.version}}}}
    release = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TanzuKubernetesRelease",
        "metadata": {"name": names.release, "labels": labels},
        "spec": {"version": names.version,
                 "kubernetes": {"version": names.kubernetes, "imageRepository": IMAGE_REPOSITORY},
                 "osImages": [{"name": names.os_image}], "bootstrapPackages": []}}
    for plural, body in (("osimages", os_image), ("tanzukubernetesreleases", release)):
        kind = _kind(service, plural)
        catalog.ensure(SYSTEM, Target(kind, VERSION), body)
        current = service.get(SYSTEM, Target(kind, VERSION, "", body["metadata"]["name"]))
        conditions = _conditions((current.get("status") or {}).get("conditions") or [], ready,
                                 reason, message)
        service.patch(SYSTEM, Target(kind, VERSION, "", body["metadata"]["name"], "status"),
                      MERGE_PATCH, {"status": {"conditions": conditions}}, WriteOptions())
    return service.get(SYSTEM, Target(_kind(service, "tanzukubernetesreleases"), VERSION, "",
                                      names.release))


def release_labels(names: ReleaseNames) -> dict[str, str]:
    """vSphere's labels on a release: the OS, and each prefix of the version (``v1``,
    ``v1.31``, ``v1.31.4``, the release name) for label selectors."""
    major, minor, _patch = names.kubernetes.split(".")
    labels = {f"os-{k}": v for k, v in OS.items()}
    labels["image-type"] = "vmi"
    for prefix in (major, f"{major}.{minor}", names.kubernetes, names.release):
        labels[prefix] = ""
    return labels


def list_releases(service: ObjectService) -> list[Obj]:
    kind = _kind(service, "tanzukubernetesreleases")
    return service.list(SYSTEM, Target(kind, VERSION)).items


def condition(obj: Obj, kind: str) -> Obj:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def _ready(obj: Obj) -> bool:
    return condition(obj, "Ready").get("status") == "True"


def _conditions(old: list[Obj], ready: bool, reason: str, message: str) -> list[Obj]:
    now = now_rfc3339()
    previous = {c.get("type"): c for c in old}

    def cond(kind: str, status: str, why: str, text: str, severity: str = "") -> Obj:
        before = previous.get(kind) or {}
        stamp = before.get("lastTransitionTime") if before.get("status") == status else None
        out = {"type": kind, "status": status, "lastTransitionTime": stamp or now}
        if why:
            out["reason"] = why
        if text:
            out["message"] = text
        if severity:
            out["severity"] = severity
        return out

    return [cond("Ready", "True" if ready else "False", reason, message,
                 "" if ready else "Warning"),
            cond("Compatible", "True", "", "")]


def _kind(service: ObjectService, plural: str) -> Any:
    kind = service.registry.by_group_plural(GROUP, plural)
    assert kind is not None, plural
    return kind


def _get(service: ObjectService, plural: str, name: str) -> Obj | None:
    try:
        return service.get(SYSTEM, Target(_kind(service, plural), VERSION, "", name))
    except errors.ApiError as err:
        if err.code == 404:
            return None
        raise
