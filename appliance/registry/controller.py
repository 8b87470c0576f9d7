"""Keeps Repository objects and the registry's storage in step, and deletes repositories.

A Repository object is made by the front when a manifest is pushed. This
controller looks at each one again now and then (pushes while the service was
down, manifests deleted through the registry API) and, when one is deleted, by
an owner or with its namespace, deletes the repository: every manifest through
the registry API, then, with the registry read-only for a moment, its directory
and the garbage collection of blobs nothing references any more. Then the
finalizer goes, and with the last one the namespace.

At start it also adopts what the storage holds: a repository with no object gets
one, and one whose namespace is gone is deleted in the same way.
"""

from __future__ import annotations

import logging
import threading

from appliance.controllers.base import Controller, TemporaryError, drop_finalizer
from appliance.kinds.registry import Obj
from appliance.kinds.repositories import FINALIZER, GROUP, WRITER
from appliance.registry.daemon import RegistryDaemon
from appliance.registry.front import RegistryFront
from appliance.registry.names import InvalidName, Scope, check_repository, project_of
from appliance.registry.projects import Projects
from appliance.resources import Ref, get_or_none

LOG = logging.getLogger(__name__)
NAMESPACES = Ref("", "v1", "namespaces")
ABANDONED_S = 600.0


class RepositoryController(Controller):
    group = GROUP
    plural = "repositories"
    name = "registry"
    resync = 600.0

    def __init__(self, projects: Projects, daemon: RegistryDaemon, front: RegistryFront) -> None:
        super().__init__(projects.api)
        self.projects = projects
        self.daemon = daemon
        self.front = front

    def run(self, stop: threading.Event) -> None:
        try:
            self.adopt()
        except Exception:  # noqa: BLE001 - the controller must still run
            LOG.exception("registry: adopting the stored repositories failed")
        super().run(stop)

    def adopt(self) -> None:
        orphans = []
        for repository in self.projects.storage.repositories():
            ns = get_or_none(self.api, NAMESPACES, "", project_of(repository))
            if ns is None:
                orphans.append(repository)
            elif not ns["metadata"].get("deletionTimestamp"):
                self.projects.sync(repository)
        if orphans:
            LOG.info("registry: deleting repositories of namespaces that are gone: %s",
                     ", ".join(orphans))
            for repository in orphans:
                self._delete_manifests(repository)
            self._collect(orphans)

    def reconcile(self, obj: Obj) -> float | None:
        try:
            repository = check_repository(str((obj.get("spec") or {}).get("name") or ""))
        except InvalidName:
            repository = ""
        if obj["metadata"].get("deletionTimestamp"):
            if repository and project_of(repository) == obj["metadata"]["namespace"]:
                self._delete_manifests(repository)
                self._collect([repository])
            drop_finalizer(self.api, self.ref, obj, FINALIZER)
            return None
        if repository:
            info = self.projects.sync(repository)
            if info.manifests == 0 and _age(obj) > ABANDONED_S:
                # Reserved by a push that never stored its manifest.
                self.projects.sync(repository, drop_empty=True)
        return None

    def _delete_manifests(self, repository: str) -> None:
        """Every manifest of ``repository``, through the registry API."""
        token, _ = self.front.signer.issue(WRITER, [Scope("repository", repository,
                                                          ("pull", "delete"))], 120)
        info = self.projects.storage.describe(repository)
        conn = self.front.connect(timeout=60.0)
        try:
            for digest in info.revisions:
                conn.request("DELETE", f"/v2/{repository}/manifests/{digest}",
                             headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                body = resp.read(4096)
                if resp.status not in (202, 404):
                    raise TemporaryError(f"deleting {repository}@{digest[:19]}: "
                                         f"{resp.status} {body[:200]!r}", 10.0)
        except OSError as exc:
            raise TemporaryError(f"the registry is not reachable: {exc}", 5.0) from exc
        finally:
            conn.close()

    def _collect(self, repositories: list[str]) -> None:
        """Remove the repositories' directories and collect their unreferenced blobs."""
        try:
            with self.daemon.maintenance():
                for repository in repositories:
                    self.projects.storage.remove(repository)
                result = self.daemon.garbage_collect()
        except (OSError, RuntimeError) as exc:
            raise TemporaryError(f"garbage collection failed: {exc}", 30.0) from exc
        LOG.info("registry: deleted %s; %s", ", ".join(repositories), result)




def _age(obj: Obj) -> float:
    import datetime as dt

    created = obj["metadata"].get("creationTimestamp") or ""
    try:
        when = dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return 0.0
    return (dt.datetime.now(dt.UTC) - when).total_seconds()
