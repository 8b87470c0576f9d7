"""Kinds served by the supervisor API."""

from appliance.kinds import core, network, pods, rbac, vmop
from appliance.kinds.registry import Registry


def default_registry() -> Registry:
    """Every kind this build of the supervisor serves."""
    registry = Registry()
    registry.extend(core.KINDS)
    registry.extend(pods.KINDS)
    registry.extend(rbac.KINDS)
    registry.extend(vmop.KINDS)
    registry.extend(network.KINDS)
    return registry
