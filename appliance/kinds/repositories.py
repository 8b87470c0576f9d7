"""Repository (``registry.pacific.lab/v1``): one repository of a namespace's registry project.

The lab registry (``appliance.registry``) keeps one Repository object per
repository it stores, in the namespace that is the repository's project
(``dev-team/hello`` is Repository ``hello`` in ``dev-team``). The objects are a
projection of the registry's storage, written by the registry front only:
users list them (``kubectl get repositories``), the dashboard shows them, and
their ``status.sizeBytes`` counts against the namespace's ``requests.storage``
quota like a VM's disks. Deleting one (an owner may, and deleting the namespace
does) deletes its manifests from the registry; its blobs go at the next garbage
collection once nothing references them.
"""

from __future__ import annotations

from decimal import Decimal

from appliance.errors import Cause
from appliance.kinds.registry import AdmissionContext, Kind, Lookup, Obj, PrinterColumn, Version
from appliance.kinds.schema import array, integer, obj, string, top_level

GROUP = "registry.pacific.lab"
FINALIZER = "registry.pacific.lab/repository"
#: The identity of the registry front, the only writer of Repository objects.
WRITER = "system:pacific-registry"


def _consumes(o: Obj, lookup: Lookup) -> dict[str, Decimal]:
    size = int((o.get("status") or {}).get("sizeBytes") or 0)
    return {"requests.storage": Decimal(size)} if size > 0 else {}


def _validate(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    if ctx.operation == "CREATE" and ctx.user != WRITER:
        return [Cause("metadata.name", "repositories are made by pushing to the lab registry "
                      "(see `lab registry url`), not created by hand", "FieldValueForbidden")]
    return []


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{size}B"


def _tags(o: Obj) -> str:
    tags = [t.get("name", "") for t in (o.get("status") or {}).get("tags") or []]
    return ",".join(tags[:5]) + (f",+{len(tags) - 5}" if len(tags) > 5 else "") or "<none>"


REPOSITORY = Kind(
    group=GROUP, kind="Repository", plural="repositories", singular="repository",
    namespaced=True, short_names=("repo",), consumes=_consumes, validate=_validate,
    default_finalizers=(FINALIZER,), immutable_fields=("spec.name",),
    versions=(Version("v1", top_level(
        spec=obj({"name": string("The repository's full name, PROJECT/PATH.")},
                 required=["name"]),
        status=obj({
            "tags": array(obj({"name": string(), "digest": string()})),
            "manifests": integer("Manifests stored, tagged or not."),
            "sizeBytes": integer("Bytes of the distinct blobs the manifests reference."),
            "lastPushed": string(format="date-time"),
        })),
        storage=True, printer_columns=(
            PrinterColumn("Name", format="name", json_path=".metadata.name"),
            PrinterColumn("Repository", json_path=".spec.name"),
            PrinterColumn("Tags", compute=_tags),
            PrinterColumn("Size", compute=lambda o: human_size(
                int((o.get("status") or {}).get("sizeBytes") or 0))),
            PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp"))),),
)

KINDS = (REPOSITORY,)
