"""The namespace controller: empties a terminating namespace, then lets it go."""

from __future__ import annotations

import logging

from appliance import errors
from appliance.controllers.base import Controller
from appliance.kinds.core import NAMESPACE_FINALIZER
from appliance.kinds.registry import Obj
from appliance.objects import SYSTEM, ObjectService, Target
from appliance.resources import LocalApi

LOG = logging.getLogger(__name__)


class NamespaceController(Controller):
    group, plural, name = "", "namespaces", "namespace-controller"
    resync = 300.0

    def __init__(self, service: ObjectService) -> None:
        super().__init__(LocalApi(service))
        self.service = service

    def reconcile(self, obj: Obj) -> float | None:
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp"):
            return None
        ns = meta["name"]
        remaining = 0
        for kind in self.service.registry.kinds:
            if not kind.namespaced or not kind.storable:
                continue
            version = kind.storage_version.name
            for item in self.service.list(SYSTEM, Target(kind, version, ns)).items:
                remaining += 1
                if item["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    self.service.delete(SYSTEM, Target(kind, version, ns,
                                                       item["metadata"]["name"]))
                except errors.ApiError as err:
                    if err.code != 404:
                        raise
        if remaining:
            LOG.info("[%s] namespace terminating: %d objects still being deleted", ns, remaining)
            return 1.0
        finalizers = [f for f in (obj.get("spec") or {}).get("finalizers") or []
                      if f != NAMESPACE_FINALIZER]
        body = dict(obj, spec={**(obj.get("spec") or {}), "finalizers": finalizers})
        self.api.update(self.ref, "", body, subresource="finalize")
        LOG.info("[%s] namespace emptied and finalized", ns)
        return None
