"""core/v1 Events from the network controllers, over a ResourceApi.

Like :func:`appliance.events.record`, but through the same API the
controllers use (in-process or HTTPS), so they work in a host agent too.
The same reason and message on the same object bump ``count``.
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
COMPONENT = "pacific-lab-network"
_MESSAGE_LIMIT = 1024


def record(api: ResourceApi, involved: Obj, type_: str, reason: str, message: str) -> None:
    meta = involved.get("metadata") or {}
    namespace = meta.get("namespace") or (meta.get("name") if involved.get("kind") == "Namespace"
                                           else "") or "default"
    message = message[:_MESSAGE_LIMIT]
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
                "source": {"component": COMPONENT, "host": socket.gethostname()},
                "reportingComponent": COMPONENT})
            return
        api.patch(EVENTS, namespace, name, {"count": int(current.get("count") or 1) + 1,
                                            "lastTimestamp": now})
    except errors.ApiError as err:  # events are best effort
        LOG.warning("[%s/%s] could not record event %s: %s", namespace, meta.get("name"),
                    reason, err)
