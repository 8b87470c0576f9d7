"""The dashboard's way into the supervisor: the object service, as the logged-in user.

Every read and write here goes through ``ObjectService`` with the user's
``UserInfo``, so RBAC, quota and validation are exactly the API's. The only
direct store reads are the ones the API itself makes: which namespaces a
user may ``get`` (``service.can``), and the users table for sessions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import errors
from appliance.agent.vmnames import domain_name, vm_prefix
from appliance.auth.rbac import Attributes
from appliance.auth.users import UserInfo
from appliance.kinds.registry import Kind, Obj
from appliance.kinds.vmop import GROUP as VMOP
from appliance.objects import MERGE_PATCH, ListResult, ObjectService, Target, WriteOptions
from appliance.vmservice.catalog import Catalog

LogFn = Callable[[Obj], "Path | None"]
QUOTA_NAME = "pacific-limits"


class LogPaths:
    """Where the log of an object's log subresource is (a VM's serial console, ...)."""

    def __init__(self, settings: Any, logs: Mapping[tuple[str, str, str], LogFn] | None) -> None:
        self.settings = settings
        self._map: dict[tuple[str, str, str], LogFn] = dict(logs or {})
        self._map.setdefault((VMOP, "virtualmachines", "console"), self._console)

    def _console(self, vm: Obj) -> Path:
        name = domain_name(vm, vm_prefix(self.settings.state_dir))
        return Path(self.settings.state_dir) / "consoles" / f"{name}.log"

    def find(self, group: str, plural: str, subresource: str) -> LogFn | None:
        return self._map.get((group, plural, subresource))

    def subresources(self, group: str, plural: str) -> list[str]:
        return sorted(s for g, p, s in self._map if (g, p) == (group, plural))


@dataclass(frozen=True)
class LogTail:
    text: str
    size: int  # bytes in the whole file
    truncated: bool  # the start of the file is not shown
    exists: bool


def read_tail(path: Path | None, max_bytes: int) -> LogTail:
    """The last ``max_bytes`` of a log file, whole lines only (cheap: one seek)."""
    if path is None:
        return LogTail("", 0, False, False)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return LogTail("", 0, False, False)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        start = max(0, size - max_bytes)
        fh.seek(start)
        data = fh.read(max_bytes)
    return _whole_lines(data, size, start > 0, True)


def tail_of(data: bytes, max_bytes: int) -> LogTail:
    """The last ``max_bytes`` of a log read whole (from the host), whole lines only."""
    cut = len(data) > max_bytes
    return _whole_lines(data[-max_bytes:] if cut else data, len(data), cut, bool(data))


def _whole_lines(data: bytes, size: int, truncated: bool, exists: bool) -> LogTail:
    """A tail that starts mid-file drops its first, partial line."""
    if truncated:
        newline = data.find(b"\n")
        data = data[newline + 1:] if newline >= 0 else data
    return LogTail(data.decode("utf-8", errors="replace"), size, truncated, exists)


class Lab:
    def __init__(self, supervisor: Any, logs: LogPaths,
                 readers: Mapping[tuple[str, str, str], Callable[..., Any]] | None = None
                 ) -> None:
        self.supervisor = supervisor
        self.readers = dict(readers or {})  # logs read from the host (control-plane VMs)
        self.service: ObjectService = supervisor.service
        self.store = supervisor.store
        self.settings = supervisor.settings
        self.registry = self.service.registry
        self.logs = logs
        self.catalog = Catalog(self.service)

    # -- kinds -----------------------------------------------------------------------------

    def kind(self, group: str, plural: str) -> Kind | None:
        return self.registry.by_group_plural(group, plural)

    def must_kind(self, group: str, plural: str) -> Kind:
        kind = self.kind(group, plural)
        if kind is None:
            raise errors.not_found(plural, group, "")
        return kind

    @staticmethod
    def version(kind: Kind) -> str:
        storage = kind.storage_version
        return storage.name if storage.served else kind.preferred_version.name

    def target(self, group: str, plural: str, namespace: str = "", name: str = "",
               subresource: str = "") -> Target:
        kind = self.must_kind(group, plural)
        return Target(kind, self.version(kind), namespace if kind.namespaced else "", name,
                      subresource)

    def namespaced_kinds(self) -> list[Kind]:
        return [k for k in self.registry.kinds if k.namespaced and k.storable]

    def cluster_kinds(self) -> list[Kind]:
        return [k for k in self.registry.kinds if not k.namespaced and k.storable]

    # -- permissions -----------------------------------------------------------------------

    def can(self, user: UserInfo, verb: str, group: str, plural: str, namespace: str = "",
            name: str = "", subresource: str = "") -> bool:
        with self.store.read() as txn:
            return self.service.can(txn, Attributes(user, verb, group, plural, subresource,
                                                    namespace, name))

    def allowed(self, user: UserInfo, namespace: str,
                checks: Iterable[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """Which of (verb, group, plural) the user may do in ``namespace`` (one read)."""
        with self.store.read() as txn:
            return {c for c in checks if self.service.can(
                txn, Attributes(user, c[0], c[1], c[2], "", namespace, ""))}

    def visible_namespaces(self, user: UserInfo) -> list[Obj]:
        """The namespaces ``user`` may get (as the API's login answer computes them)."""
        with self.store.read() as txn:
            out = []
            for ns in txn.iterate("", "namespaces"):
                name = ns["metadata"]["name"]
                if self.service.can(txn, Attributes(user, "get", "", "namespaces", "", name,
                                                    name)):
                    out.append(ns)
            return out

    # -- objects ---------------------------------------------------------------------------

    def list(self, user: UserInfo, group: str, plural: str, namespace: str = "",
             label_selector: str = "", limit: int = 0) -> ListResult:
        return self.service.list(user, self.target(group, plural, namespace),
                                 label_selector=label_selector, limit=limit)

    def list_or_empty(self, user: UserInfo, group: str, plural: str, namespace: str = "",
                      label_selector: str = "") -> list[Obj]:
        """Items, or none when the kind does not exist or the user may not list it."""
        if self.kind(group, plural) is None:
            return []
        try:
            return self.list(user, group, plural, namespace, label_selector).items
        except errors.ApiError as err:
            if err.code in (403, 404):
                return []
            raise

    def get(self, user: UserInfo, group: str, plural: str, namespace: str, name: str,
            subresource: str = "") -> Obj:
        return self.service.get(user, self.target(group, plural, namespace, name, subresource))

    def get_or_none(self, user: UserInfo, group: str, plural: str, namespace: str,
                    name: str) -> Obj | None:
        try:
            return self.get(user, group, plural, namespace, name)
        except errors.ApiError as err:
            if err.code == 404:
                return None
            raise

    def create(self, user: UserInfo, group: str, plural: str, namespace: str, body: Obj,
               dry_run: bool = False) -> Obj:
        t = self.target(group, plural, namespace)
        body = dict(body, apiVersion=t.kind.api_version(t.version), kind=t.kind.kind)
        if t.kind.namespaced:
            # Admission hooks read the namespace from the body (kubectl always sends it).
            body["metadata"] = dict(body.get("metadata") or {}, namespace=namespace)
        return self.service.create(user, t, body, WriteOptions(dry_run=dry_run)).obj

    def update(self, user: UserInfo, group: str, plural: str, namespace: str, body: Obj) -> Obj:
        t = self.target(group, plural, namespace, body["metadata"]["name"])
        return self.service.update(user, t, body).obj

    def patch(self, user: UserInfo, group: str, plural: str, namespace: str, name: str,
              patch: Obj) -> Obj:
        t = self.target(group, plural, namespace, name)
        return self.service.patch(user, t, MERGE_PATCH, patch, WriteOptions()).obj

    def delete(self, user: UserInfo, group: str, plural: str, namespace: str, name: str,
               uid: str = "") -> Obj:
        options = {"preconditions": {"uid": uid}} if uid else None
        return self.service.delete(user, self.target(group, plural, namespace, name), options)

    def events_for(self, user: UserInfo, namespace: str, involved: Obj | None = None,
                   limit: int = 50) -> list[Obj]:
        items = self.list_or_empty(user, "", "events", namespace)
        if involved is not None:
            meta = involved["metadata"]
            items = [e for e in items
                     if (e.get("involvedObject") or {}).get("name") == meta["name"]
                     and (e.get("involvedObject") or {}).get("kind") == involved.get("kind")]
        items.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime")
                   or e["metadata"].get("creationTimestamp") or "", reverse=True)
        return items[:limit]

    # -- logs ------------------------------------------------------------------------------

    def pod_logs(self, user: UserInfo, pod: Obj, tail_lines: int = 200
                 ) -> list[tuple[str, str]] | None:
        """The last lines of each container of ``pod`` (what ``kubectl logs --tail``
        shows), or None when the user may not read pods/log."""
        from appliance.pods.logs import PodLogs

        meta = pod["metadata"]
        if not self.can(user, "get", "", "pods", meta["namespace"], meta["name"], "log"):
            return None
        read = self.readers.get(("", "pods", "log")) or PodLogs(
            Path(self.settings.state_dir) / "pods").read
        out = []
        for c in (pod.get("spec") or {}).get("containers") or []:
            try:
                text = b"".join(read(pod, {"container": c["name"],
                                           "tailLines": str(tail_lines)}, 0))
                out.append((c["name"], text.decode(errors="replace")))
            except errors.ApiError as err:
                out.append((c["name"], err.message))
        return out

    def read_log(self, user: UserInfo, group: str, plural: str, namespace: str, name: str,
                 subresource: str, max_bytes: int) -> tuple[Obj, LogTail]:
        """Authorise ``get`` on the log subresource (the role check), then read its tail."""
        find = self.logs.find(group, plural, subresource)
        if find is None:
            raise errors.not_found(f"{plural}/{subresource}", group, name)
        obj = self.get(user, group, plural, namespace, name, subresource)
        read = self.readers.get((group, plural, subresource))
        if read is not None:  # on the host: its last lines, cut to max_bytes here
            lines = str(max(1, max_bytes // 80))
            return obj, tail_of(b"".join(read(obj, {"tailLines": lines}, 0)), max_bytes)
        return obj, read_tail(find(obj), max_bytes)
