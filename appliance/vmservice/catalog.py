"""The administrator's catalog: VM classes and the content library of images.

vSphere's default VM classes are made on first start in vm-operator's own
namespace (``vmware-system-vmop``), which serves as the catalog. Assigning a
class or an image to a namespace copies it there; a VM may only use what is
in its namespace (and ClusterVirtualMachineImages, as upstream).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance import errors
from appliance.auth.users import UserInfo
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import BOOT_DISK_ANNOTATION, CATALOG_NAMESPACE, GROUP, STORAGE
from appliance.objects import SYSTEM, MERGE_PATCH, ObjectService, Target, WriteOptions
from appliance.util.timefmt import now_rfc3339

LOG = logging.getLogger(__name__)

ASSIGNED_FROM = "pacific.lab/assigned-from"


@dataclass(frozen=True)
class ClassSize:
    name: str
    cpus: int
    memory_gib: int
    boot_disk_gib: int


#: vSphere's default sizes (best-effort-* and guaranteed-* share them).
SIZES = (
    ClassSize("xsmall", 2, 2, 10), ClassSize("small", 2, 4, 20), ClassSize("medium", 2, 8, 40),
    ClassSize("large", 4, 16, 60), ClassSize("xlarge", 4, 32, 80),
    ClassSize("2xlarge", 8, 64, 100), ClassSize("4xlarge", 16, 128, 120),
    ClassSize("8xlarge", 32, 128, 200),
)


def default_classes() -> list[Obj]:
    out = []
    for size in SIZES:
        for policy in ("best-effort", "guaranteed"):
            memory = f"{size.memory_gib}Gi"
            spec: dict[str, Any] = {"hardware": {"cpus": size.cpus, "memory": memory},
                                    "description": f"{policy} {size.name}: {size.cpus} vCPU, "
                                                   f"{memory} memory"}
            if policy == "guaranteed":
                spec["policies"] = {"resources": {"requests": {"cpu": str(size.cpus),
                                                               "memory": memory}}}
            out.append({"apiVersion": f"{GROUP}/{STORAGE}", "kind": "VirtualMachineClass",
                        "metadata": {"name": f"{policy}-{size.name}", "annotations": {
                            BOOT_DISK_ANNOTATION: f"{size.boot_disk_gib}Gi"}},
                        "spec": spec})
    return out


class Catalog:
    def __init__(self, service: ObjectService) -> None:
        self.service = service
        reg = service.registry

        def kind(plural: str):  # type: ignore[no-untyped-def]
            k = reg.by_group_plural(GROUP, plural) or reg.by_group_plural("", plural)
            assert k is not None
            return k
        self.classes = kind("virtualmachineclasses")
        self.images = kind("virtualmachineimages")
        self.cluster_images = kind("clustervirtualmachineimages")
        self.namespaces = kind("namespaces")

    # -- classes -------------------------------------------------------------------------

    def ensure_defaults(self) -> None:
        self._ensure_namespace(CATALOG_NAMESPACE)
        for cls in default_classes():
            self.ensure(SYSTEM, Target(self.classes, STORAGE, CATALOG_NAMESPACE), cls)

    def class_names(self) -> list[str]:
        items = self.service.list(SYSTEM, Target(self.classes, STORAGE, CATALOG_NAMESPACE)).items
        return [c["metadata"]["name"] for c in items]

    def assign_class(self, actor: UserInfo, name: str, namespace: str) -> Obj:
        try:
            source = self.service.get(SYSTEM, Target(self.classes, STORAGE, CATALOG_NAMESPACE,
                                                     name))
        except errors.ApiError as err:
            if err.code == 404:
                raise errors.not_found("virtualmachineclasses", GROUP, name) from err
            raise
        return self._copy_into(actor, self.classes, source, namespace)

    def unassign_class(self, actor: UserInfo, name: str, namespace: str) -> None:
        self.service.delete(actor, Target(self.classes, STORAGE, namespace, name))

    # -- images --------------------------------------------------------------------------

    def publish_image(self, name: str, *, display_name: str, capacity_bytes: int,
                      size_bytes: int, sha256: str, os_name: str, os_version: str,
                      content_version: str) -> Obj:
        """Make (or refresh) the ClusterVirtualMachineImage for a library item."""
        body = {"apiVersion": f"{GROUP}/{STORAGE}", "kind": "ClusterVirtualMachineImage",
                "metadata": {"name": name, "annotations": {"pacific.lab/sha256": sha256}},
                "spec": {"providerRef": {"apiVersion": "pacific.lab/v1",
                                         "kind": "ContentLibraryItem", "name": name},
                         "type": "qcow2"}}
        image = self.ensure(SYSTEM, Target(self.cluster_images, STORAGE), body)
        status = self._image_status(display_name, capacity_bytes, size_bytes, os_name,
                                    os_version, content_version, sha256)
        image = self.service.patch(SYSTEM, Target(self.cluster_images, STORAGE, "", name,
                                                  "status"), MERGE_PATCH,
                                   {"status": status}, WriteOptions()).obj
        for ns in self.namespaces_with_image(name):  # keep assigned copies current
            self.assign_image(SYSTEM, name, ns)
        return image

    @staticmethod
    def _image_status(display: str, capacity: int, size: int, os_name: str, os_version: str,
                      content_version: str, sha256: str) -> dict[str, Any]:
        return {"name": display, "type": "qcow2", "firmware": "bios",
                "providerContentVersion": content_version, "providerItemID": sha256[:16],
                "osInfo": {"type": os_name, "version": os_version, "id": os_name},
                "disks": [{"capacity": str(capacity), "size": str(size)}],
                "capabilities": ["cloud-init"],
                "conditions": [{"type": "Ready", "status": "True", "reason": "Published",
                                "message": "", "lastTransitionTime": now_rfc3339()}]}

    def namespaces_with_image(self, name: str) -> list[str]:
        items = self.service.list(SYSTEM, Target(self.images, STORAGE),
                                  label_selector=f"{ASSIGNED_FROM}={name}").items
        return sorted({i["metadata"]["namespace"] for i in items})

    def assign_image(self, actor: UserInfo, name: str, namespace: str) -> Obj:
        try:
            source = self.service.get(SYSTEM, Target(self.cluster_images, STORAGE, "", name))
        except errors.ApiError as err:
            if err.code == 404:
                raise errors.not_found("clustervirtualmachineimages", GROUP, name) from err
            raise
        copied = self._copy_into(actor, self.images, source, namespace)
        if source.get("status"):
            copied = self.service.patch(SYSTEM, Target(self.images, STORAGE, namespace, name,
                                                       "status"), MERGE_PATCH,
                                        {"status": source["status"]}, WriteOptions()).obj
        return copied

    def unassign_image(self, actor: UserInfo, name: str, namespace: str) -> None:
        self.service.delete(actor, Target(self.images, STORAGE, namespace, name))

    # -- helpers -----------------------------------------------------------------------------

    def _copy_into(self, actor: UserInfo, kind: Any, source: Obj, namespace: str) -> Obj:
        body = {"apiVersion": f"{GROUP}/{STORAGE}", "kind": kind.kind,
                "metadata": {"name": source["metadata"]["name"],
                             "labels": {ASSIGNED_FROM: source["metadata"]["name"]},
                             "annotations": dict(source["metadata"].get("annotations") or {})},
                "spec": copy.deepcopy(source.get("spec") or {})}
        return self.ensure(actor, Target(kind, STORAGE, namespace), body)

    def ensure(self, actor: UserInfo, t: Target, body: Obj) -> Obj:
        """Create ``body``, or patch its spec, labels and annotations to match."""
        name = body["metadata"]["name"]
        named = Target(t.kind, t.version, t.namespace, name)
        try:
            current = self.service.get(actor, named)
        except errors.ApiError as err:
            if err.code != 404:
                raise
            return self.service.create(actor, t, body).obj
        fields = [f for f in ("spec", "data") if f in body] or ["spec"]
        if all(current.get(f) == body.get(f) for f in fields) and all(
                (current["metadata"].get(k) or {}).items() >= (body["metadata"].get(k) or {}
                                                                ).items()
                for k in ("labels", "annotations")):
            return current
        patch = {**{f: body.get(f) for f in fields}, "metadata": {
            k: body["metadata"][k] for k in ("labels", "annotations") if k in body["metadata"]}}
        return self.service.patch(actor, named, MERGE_PATCH, patch, WriteOptions()).obj

    def _ensure_namespace(self, name: str) -> None:
        try:
            self.service.get(SYSTEM, Target(self.namespaces, "v1", "", name))
        except errors.ApiError as err:
            if err.code != 404:
                raise
            self.service.create(SYSTEM, Target(self.namespaces, "v1"), {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {
                    "name": name, "labels": {"pacific.lab/system": "true"}}})


def assigned(items: Iterable[Obj]) -> list[str]:
    return sorted(i["metadata"]["name"] for i in items)
