"""Recording core/v1 Events about objects (what `kubectl describe` shows)."""

from __future__ import annotations

import hashlib
import logging
import socket

from appliance import errors
from appliance.kinds.registry import Obj
from appliance.objects import SYSTEM, ObjectService, Target
from appliance.util.timefmt import now_rfc3339

LOG = logging.getLogger(__name__)


def record(service: ObjectService, involved: Obj, type_: str, reason: str, message: str,
           component: str = "pacific-lab") -> None:
    """Create an Event for ``involved``, or bump the count of the same one."""
    meta = involved.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    digest = hashlib.sha1(f"{meta.get('uid')}/{reason}/{message}".encode(),
                          usedforsecurity=False).hexdigest()[:10]
    name = f"{meta.get('name', 'object')}.{digest}"
    kind = service.registry.by_group_plural("", "events")
    assert kind is not None
    now = now_rfc3339()
    try:
        try:
            current = service.get(SYSTEM, Target(kind, "v1", namespace, name))
        except errors.ApiError as err:
            if err.code != 404:
                raise
            service.create(SYSTEM, Target(kind, "v1", namespace), {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {"apiVersion": involved.get("apiVersion", ""),
                                   "kind": involved.get("kind", ""), "name": meta.get("name"),
                                   "namespace": meta.get("namespace", ""),
                                   "uid": meta.get("uid", "")},
                "reason": reason, "message": message, "type": type_, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now,
                "source": {"component": component, "host": socket.gethostname()},
                "reportingComponent": component})
            return
        service.patch(SYSTEM, Target(kind, "v1", namespace, name),
                      "application/merge-patch+json",
                      {"count": int(current.get("count") or 1) + 1, "lastTimestamp": now})
    except errors.ApiError as err:  # events are best effort, never fatal
        LOG.warning("could not record event %s on %s/%s: %s", reason, namespace,
                    meta.get("name"), err)
