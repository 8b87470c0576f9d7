"""The kind registry: what the API serves, declared as data.

A kind is declared once, with its group, versions, plural, short names,
scope, OpenAPI v3 schema (with defaults), printer columns and what it
consumes from a namespace's quota. Discovery, ``/openapi/v3``, validation,
Table output and quota all read from here, so a later feature adds a kind by
declaring it and registering it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

Obj = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class PrinterColumn:
    """One Table column; ``json_path`` as in a CRD's additionalPrinterColumns.

    ``compute`` replaces ``json_path`` for columns no JSONPath can express
    (for example the number of keys in a ConfigMap).
    """

    name: str
    type: str = "string"
    json_path: str = ""
    description: str = ""
    priority: int = 0
    format: str = ""
    compute: Callable[[Obj], Any] | None = None


@dataclass(frozen=True)
class Version:
    name: str
    schema: Obj
    served: bool = True
    storage: bool = False
    deprecated: bool = False
    deprecation_warning: str | None = None
    printer_columns: tuple[PrinterColumn, ...] = ()
    # Conversion between this version and the storage version. Both take and
    # return whole objects; ``None`` means the shapes are identical.
    to_storage: Callable[[Obj], Obj] | None = None
    from_storage: Callable[[Obj], Obj] | None = None


#: Reads another object during admission: (group, plural, namespace, name).
Lookup = Callable[[str, str, str, str], "Obj | None"]


@dataclass(frozen=True)
class AdmissionContext:
    """What a kind's validation hook may look at besides the object."""

    operation: str  # CREATE, UPDATE, DELETE
    user: str
    lookup: Lookup


#: A kind's validation may return Causes with this reason: they do not refuse the
#: object, they come back to the client as warnings (kubectl prints "Warning: ...").
ADMISSION_WARNING = "AdmissionWarning"

Validator = Callable[[Obj, Obj | None, AdmissionContext], list[Any]]


@dataclass(frozen=True)
class Kind:
    group: str  # "" is the core group
    kind: str
    plural: str
    singular: str
    namespaced: bool
    versions: tuple[Version, ...]
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_status: bool = True  # a /status subresource that alone may change .status
    builtin: bool = False  # compiled into kubectl: it sends strategic merge patches
    verbs: tuple[str, ...] = ALL_VERBS
    name_rule: str = "subdomain"  # subdomain | label | path
    # Quota: what one object of this kind takes from its namespace
    # (e.g. {"requests.cpu": Decimal(2)}); counts are added by the quota code.
    # It may read other objects (a VM reads its class) through the lookup.
    consumes: Callable[[Obj, Lookup], Mapping[str, Decimal]] | None = None
    validate: Validator | None = None
    immutable_fields: tuple[str, ...] = ()  # dotted paths in the storage version
    default_finalizers: tuple[str, ...] = ()
    storable: bool = True  # False: a virtual kind (reviews) that is never stored
    extra_subresources: tuple[str, ...] = ()
    # Called on a new object (storage version) before admission, like
    # kube-apiserver's PrepareForCreate strategies.
    prepare_create: Callable[[Obj], None] | None = None
    # Namespaces: ``spec.finalizers`` also hold the object while it is deleted.
    spec_finalizers: bool = False
    # Seconds a deleted object's finalizers get when DeleteOptions name none.
    grace_period: Callable[[Obj], int] | None = None
    # Field selectors beyond metadata.name and metadata.namespace (dotted paths).
    field_selectors: tuple[str, ...] = ()

    @property
    def storage_version(self) -> Version:
        return next(v for v in self.versions if v.storage)

    @property
    def preferred_version(self) -> Version:
        return next(v for v in self.versions if v.served)

    def version(self, name: str) -> Version | None:
        return next((v for v in self.versions if v.name == name and v.served), None)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def qualified_plural(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def convert_to_storage(self, obj: Obj, version: str) -> Obj:
        v = self.version(version) or next(x for x in self.versions if x.name == version)
        out = v.to_storage(obj) if v.to_storage else dict(obj)
        out["apiVersion"] = self.api_version(self.storage_version.name)
        return out

    def convert_from_storage(self, obj: Obj, version: str) -> Obj:
        v = next(x for x in self.versions if x.name == version)
        out = v.from_storage(obj) if v.from_storage else dict(obj)
        out["apiVersion"] = self.api_version(version)
        out["kind"] = self.kind
        return out


@dataclass
class Registry:
    kinds: list[Kind] = field(default_factory=list)

    def register(self, kind: Kind) -> None:
        if sum(1 for v in kind.versions if v.storage) != 1:
            raise ValueError(f"{kind.kind}: exactly one storage version is required")
        for existing in self.kinds:
            if existing.group == kind.group and existing.plural == kind.plural:
                raise ValueError(f"{kind.qualified_plural} is already registered")
        self.kinds.append(kind)

    def extend(self, kinds: Iterable[Kind]) -> None:
        for kind in kinds:
            self.register(kind)

    def groups(self) -> list[str]:
        seen: list[str] = []
        for k in self.kinds:
            if k.group not in seen:
                seen.append(k.group)
        return seen

    def group_versions(self, group: str) -> list[str]:
        """Versions served in ``group``, preferred first (the preferred version of
        the group's first kind leads)."""
        versions: list[str] = []
        for k in self.kinds:
            if k.group != group:
                continue
            for v in k.versions:
                if v.served and v.name not in versions:
                    versions.append(v.name)
        preferred = self.preferred_group_version(group)
        if preferred in versions:
            versions.remove(preferred)
            versions.insert(0, preferred)
        return versions

    def preferred_group_version(self, group: str) -> str:
        for k in self.kinds:
            if k.group == group:
                return k.storage_version.name if k.storage_version.served else \
                    k.preferred_version.name
        raise KeyError(group)

    def kinds_in(self, group: str, version: str) -> list[Kind]:
        return [k for k in self.kinds if k.group == group and k.version(version) is not None]

    def by_plural(self, group: str, version: str, plural: str) -> Kind | None:
        return next((k for k in self.kinds_in(group, version) if k.plural == plural), None)

    def by_group_plural(self, group: str, plural: str) -> Kind | None:
        return next((k for k in self.kinds if k.group == group and k.plural == plural), None)

    def by_kind(self, group: str, kind: str) -> Kind | None:
        return next((k for k in self.kinds if k.group == group and k.kind == kind), None)
