"""core/v1 Events from the network controllers (see :mod:`appliance.events`)."""

from __future__ import annotations

from appliance import events
from appliance.events import EVENTS
from appliance.kinds.registry import Obj
from appliance.resources import ResourceApi

COMPONENT = "pacific-lab-network"

__all__ = ["EVENTS", "record"]


def record(api: ResourceApi, involved: Obj, type_: str, reason: str, message: str) -> None:
    events.record(api, involved, type_, reason, message, component=COMPONENT)
