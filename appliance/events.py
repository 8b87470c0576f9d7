"""core/v1 Events about objects (what `kubectl describe` and the dashboard show).

Written through a ResourceApi, so controllers in the supervisor and in host
agents record them alike. The same reason and message on the same object
bump ``count`` instead of piling up. Events are best effort: failing to
record one is logged, never raised.
"""

from __future__ import annotations

import hashlib
import logging
import socket

from appliance import errors
from appliance.kinds.registry import Obj
from appliance.resources import Ref, ResourceApi
from appliance.util.timefmt import now_rfc3339

LOG = logging.getLogger(__name__)

EVENTS = Ref("", "v1", "events")
MESSAGE_LIMIT = 1024


def record(api: ResourceApi, involved: Obj, type_: str, reason: str, message: str,
           component: str = "pacific-lab") -> None:
    meta = involved.get("metadata") or {}
    namespace = meta.get("namespace") or (meta.get("name") if involved.get("kind") == "Namespace"
                                           else "") or "default"
    message = message[:MESSAGE_LIMIT]
    digest = hashlib.sha1(f"{meta.get('uid')}/{reason}/{message}".encode(),
                          usedforsecurity=False).hexdigest()[:10]
    name = f"{meta.get('name', 'object')}.{digest}"
    now = now_rfc3339()
    try:
        try:
            current = api.get(EVENTS, namespace, name)
        except errors.ApiError as err:
            if err.code != 404:
                raise
            api.create(EVENTS, namespace, {
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
        api.patch(EVENTS, namespace, name, {"count": int(current.get("count") or 1) + 1,
                                            "lastTimestamp": now})
    except errors.ApiError as err:
        LOG.warning("[%s/%s] could not record event %s: %s", namespace, meta.get("name"),
                    reason, err)
