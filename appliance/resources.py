"""One way for controllers to read and write objects, in-process or over HTTPS.

Controllers in the supervisor use :class:`LocalApi` (the object service,
as the system user); host agents use :class:`RemoteApi` (the HTTPS API with
their node credentials), so an agent on a second host runs the same code.
Both raise :class:`appliance.errors.ApiError` with the server's Status.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from appliance import errors
from appliance.auth.users import UserInfo
from appliance.client import ApiClient
from appliance.kinds.registry import Obj
from appliance.objects import MERGE_PATCH, SYSTEM, ObjectService, Target, WriteOptions

#: A remote watch that has read nothing for this long is given up and listed again: the
#: supervisor writes a bookmark after every ``appliance.api.app.KEEPALIVE_SECONDS`` (20 s)
#: of quiet, so three missing ones mean the server is gone (a control-plane VM
#: destroyed without closing its connections).
WATCH_IDLE_TIMEOUT = 65.0


@dataclass(frozen=True)
class Ref:
    """A kind in one version: what a controller asks for."""

    group: str
    version: str
    plural: str


class ResourceApi(Protocol):
    def get(self, ref: Ref, namespace: str, name: str) -> Obj: ...

    def list(self, ref: Ref, namespace: str = "", label_selector: str = ""
             ) -> tuple[list[Obj], str]: ...

    def watch(self, ref: Ref, resource_version: str, namespace: str = "",
              timeout: float = 300) -> Iterator[tuple[str, Obj] | None]: ...

    def create(self, ref: Ref, namespace: str, body: Obj) -> Obj: ...

    def update(self, ref: Ref, namespace: str, body: Obj, subresource: str = "") -> Obj: ...

    def patch(self, ref: Ref, namespace: str, name: str, patch: Obj,
              subresource: str = "") -> Obj: ...

    def delete(self, ref: Ref, namespace: str, name: str) -> Obj: ...


def get_or_none(api: ResourceApi, ref: Ref, namespace: str, name: str) -> Obj | None:
    try:
        return api.get(ref, namespace, name)
    except errors.ApiError as err:
        if err.code == 404:
            return None
        raise


class LocalApi:
    def __init__(self, service: ObjectService, user: UserInfo = SYSTEM) -> None:
        self.service = service
        self.user = user

    def _target(self, ref: Ref, namespace: str = "", name: str = "", sub: str = "") -> Target:
        kind = self.service.registry.by_plural(ref.group, ref.version, ref.plural)
        if kind is None:
            raise errors.ApiError(404, "NotFound", f"{ref.plural}.{ref.group} is not served")
        return Target(kind, ref.version, namespace, name, sub)

    def get(self, ref: Ref, namespace: str, name: str) -> Obj:
        return self.service.get(self.user, self._target(ref, namespace, name))

    def list(self, ref: Ref, namespace: str = "", label_selector: str = ""
             ) -> tuple[list[Obj], str]:
        result = self.service.list(self.user, self._target(ref, namespace),
                                   label_selector=label_selector)
        return result.items, result.resource_version

    def watch(self, ref: Ref, resource_version: str, namespace: str = "",
              timeout: float = 300) -> Iterator[tuple[str, Obj] | None]:
        for ev in self.service.watch(self.user, self._target(ref, namespace), resource_version,
                                     timeout=timeout, heartbeat=1.0):
            yield None if ev is None else (ev.type, ev.obj)

    def create(self, ref: Ref, namespace: str, body: Obj) -> Obj:
        return self.service.create(self.user, self._target(ref, namespace), body).obj

    def update(self, ref: Ref, namespace: str, body: Obj, subresource: str = "") -> Obj:
        name = body["metadata"]["name"]
        return self.service.update(self.user, self._target(ref, namespace, name, subresource),
                                   body).obj

    def patch(self, ref: Ref, namespace: str, name: str, patch: Obj,
              subresource: str = "") -> Obj:
        return self.service.patch(self.user, self._target(ref, namespace, name, subresource),
                                  MERGE_PATCH, patch, WriteOptions()).obj

    def delete(self, ref: Ref, namespace: str, name: str) -> Obj:
        return self.service.delete(self.user, self._target(ref, namespace, name))


class RemoteApi:
    def __init__(self, client: ApiClient) -> None:
        self.client = client

    @staticmethod
    def _path(ref: Ref, namespace: str = "", name: str = "", sub: str = "") -> str:
        return ApiClient.path(ref.group, ref.version, ref.plural, namespace, name, sub)

    def get(self, ref: Ref, namespace: str, name: str) -> Obj:
        return dict(self.client.get(self._path(ref, namespace, name)))

    def list(self, ref: Ref, namespace: str = "", label_selector: str = ""
             ) -> tuple[list[Obj], str]:
        params: dict[str, Any] = {"labelSelector": label_selector} if label_selector else {}
        data = self.client.get(self._path(ref, namespace), **params)
        return list(data["items"]), str(data["metadata"]["resourceVersion"])

    def watch(self, ref: Ref, resource_version: str, namespace: str = "",
              timeout: float = 300) -> Iterator[tuple[str, Obj] | None]:
        for ev in self.client.watch(self._path(ref, namespace), resource_version,
                                    timeout=int(timeout), idle_timeout=WATCH_IDLE_TIMEOUT,
                                    allowWatchBookmarks="true"):
            if ev.get("type") == "ERROR":
                status = ev.get("object") or {}
                raise errors.ApiError(int(status.get("code", 500)), status.get("reason", ""),
                                      status.get("message", "watch failed"))
            if ev.get("type") == "BOOKMARK":
                yield None
                continue
            yield ev["type"], ev["object"]

    def create(self, ref: Ref, namespace: str, body: Obj) -> Obj:
        return dict(self.client.create(self._path(ref, namespace), body))

    def update(self, ref: Ref, namespace: str, body: Obj, subresource: str = "") -> Obj:
        name = body["metadata"]["name"]
        return dict(self.client.replace(self._path(ref, namespace, name, subresource), body))

    def patch(self, ref: Ref, namespace: str, name: str, patch: Obj,
              subresource: str = "") -> Obj:
        return dict(self.client.merge_patch(self._path(ref, namespace, name, subresource), patch))

    def delete(self, ref: Ref, namespace: str, name: str) -> Obj:
        return dict(self.client.delete(self._path(ref, namespace, name)))
