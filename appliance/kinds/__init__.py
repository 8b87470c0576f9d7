"""Kinds served by the supervisor API."""

from collections.abc import Sequence

from appliance.kinds import (
    capi,
    capv,
    coordination,
    core,
    network,
    pods,
    rbac,
    repositories,
    tanzu,
    vmop,
)
from appliance.kinds.registry import Registry


def default_registry(lab_ranges: Sequence[str] = ()) -> Registry:
    """Every kind this build of the supervisor serves.

    ``lab_ranges`` are the lab's own networks ("CIDR" or "CIDR=label"): a guest
    Cluster's or TanzuKubernetesCluster's pod and service ranges may not overlap them.
    """
    registry = Registry()
    registry.extend(core.KINDS)
    registry.extend(pods.KINDS)
    registry.extend(rbac.KINDS)
    registry.extend(vmop.KINDS)
    registry.extend(network.KINDS)
    registry.extend(capi.kinds(lab_ranges))
    registry.extend(capv.KINDS)
    registry.extend(tanzu.kinds(lab_ranges))
    registry.extend(repositories.KINDS)
    registry.extend(coordination.KINDS)
    return registry
