"""Repository objects: the registry's storage as objects of its namespaces (projects).

``sync()`` writes what the storage holds; ``reserve()`` is the storage quota's
commit point: before a manifest is stored, its repository's new size goes
into the object, and the quota admission that guards every write refuses it
when the namespace would go over ``requests.storage`` (the manifest is then not
stored, so nothing is left referencing the pushed blobs, and garbage collection
takes them). ``room()`` answers the early question a blob upload asks, with the
figures of the refusal.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal

from appliance import errors
from appliance.admission import quota
from appliance.auth.users import MASTERS, UserInfo
from appliance.kinds.registry import Obj
from appliance.kinds.repositories import GROUP, WRITER, human_size
from appliance.objects import ObjectService
from appliance.registry.names import object_name, project_of
from appliance.registry.storage import RepositoryInfo, Storage
from appliance.resources import LocalApi, Ref, get_or_none
from appliance.util.quantity import parse_quantity

LOG = logging.getLogger(__name__)
REPOSITORIES = Ref(GROUP, "v1", "repositories")
STORAGE = "requests.storage"


@dataclass(frozen=True)
class Room:
    """A namespace's storage limit (None: no limit) and what it uses."""

    limit: Decimal | None
    limit_text: str
    used: Decimal

    def refusal(self, namespace: str, repository: str, size: int) -> str | None:
        """The message refusing ``size`` more bytes, or None if they fit."""
        if self.limit is None or self.used + size <= self.limit:
            return None
        return (f"storage quota of namespace {namespace} exceeded: pushing "
                f"{human_size(size)} to {repository} would use "
                f"{human_size(int(self.used) + size)} of the {self.limit_text} limit "
                f"(limit {self.limit_text}, used {human_size(int(self.used))}, "
                f"requested {human_size(size)})")


class Projects:
    def __init__(self, service: ObjectService, storage: Storage) -> None:
        self.service = service
        self.storage = storage
        self.api = LocalApi(service, UserInfo(WRITER, (MASTERS,)))

    def room(self, namespace: str) -> Room:
        with self.service.store.read() as txn:
            quotas = list(txn.iterate("", "resourcequotas", namespace))
            limits = [(parse_quantity(h[STORAGE]), str(h[STORAGE])) for q in quotas
                      if STORAGE in (h := (q.get("spec") or {}).get("hard") or {})]
            used = quota.usage(txn, self.service.registry, namespace,  # type: ignore[arg-type]
                               {STORAGE})[STORAGE]
        if not limits:
            return Room(None, "", used)
        limit, text = min(limits)
        return Room(limit, text, used)

    def _object(self, repository: str) -> Obj | None:
        obj = get_or_none(self.api, REPOSITORIES, project_of(repository),
                          object_name(repository))
        if obj is not None and (obj.get("spec") or {}).get("name") != repository:
            raise errors.conflict("repositories", GROUP, object_name(repository),
                                  f"the name is taken by repository "
                                  f"{(obj.get('spec') or {}).get('name')}")
        return obj

    def _ensure(self, repository: str) -> Obj:
        obj = self._object(repository)
        if obj is not None:
            return obj
        return self._create(repository)

    def _create(self, repository: str) -> Obj:
        body = {"apiVersion": f"{GROUP}/v1", "kind": "Repository",
                "metadata": {"name": object_name(repository),
                             "namespace": project_of(repository)},
                "spec": {"name": repository}}
        try:
            return self.api.create(REPOSITORIES, project_of(repository), body)
        except errors.ApiError as err:
            if err.code != 409:
                raise
        obj = self._object(repository)
        if obj is None:
            raise errors.conflict("repositories", GROUP, object_name(repository),
                                  "the repository changed; try again")
        return obj

    def prepare(self, repository: str) -> None:
        """Make the repository's object ahead of its first manifest (a push has begun)."""
        if self._object(repository) is None:
            self._create(repository)

    def reserve(self, repository: str, size: int) -> None:
        """Record that ``repository`` will hold ``size`` bytes; the quota may refuse (and a
        repository with nothing stored is then not left behind)."""
        obj = self._object(repository)
        if obj is None:
            obj = self._create(repository)
        status = dict(obj.get("status") or {})
        if int(status.get("sizeBytes") or 0) >= size:
            return
        status["sizeBytes"] = size
        obj["status"] = status
        try:
            self.api.update(REPOSITORIES, project_of(repository), obj, "status")
        except errors.ApiError:
            if self.storage.describe(repository).manifests == 0:
                try:
                    self.api.delete(REPOSITORIES, project_of(repository),
                                    obj["metadata"]["name"])
                except errors.ApiError as err:
                    LOG.warning("registry: could not drop %s: %s", repository, err.message)
            raise

    def sync(self, repository: str, drop_empty: bool = False) -> RepositoryInfo:
        """Write what the storage holds for ``repository``.

        With ``drop_empty`` (its last manifest was just deleted) an empty repository
        loses its object, whose finalizer then removes the directory. Otherwise an
        empty one keeps it: a push may have reserved it and not stored its manifest yet."""
        for attempt in range(5):
            try:
                return self._sync(repository, drop_empty)
            except errors.ApiError as err:
                if err.code != 409 or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _sync(self, repository: str, drop_empty: bool) -> RepositoryInfo:
        info = self.storage.describe(repository)
        obj = self._object(repository)
        if info.manifests == 0:
            if drop_empty and obj is not None and not obj["metadata"].get("deletionTimestamp"):
                try:
                    self.api.delete(REPOSITORIES, project_of(repository), obj["metadata"]["name"])
                except errors.ApiError as err:
                    if err.code != 404:
                        raise
            return info
        if obj is None:
            obj = self._ensure(repository)
        if obj["metadata"].get("deletionTimestamp"):
            return info
        status = {"tags": [{"name": t, "digest": d} for t, d in info.tags],
                  "manifests": info.manifests, "sizeBytes": info.size}
        if info.last_modified:
            status["lastPushed"] = dt.datetime.fromtimestamp(
                int(info.last_modified), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if obj.get("status") != status:
            obj["status"] = status
            try:
                self.api.update(REPOSITORIES, project_of(repository), obj, "status")
            except errors.ApiError as err:
                if err.code == 409:
                    raise
                # Over quota after the fact (two pushes raced past the early check): the
                # object keeps its reserved size; the manifest that landed stays. Logged.
                LOG.warning("registry: could not record %s: %s", repository, err.message)
        return info
