"""Static addresses on the appliance network (vm-operator's interfaces[].addresses)."""

from __future__ import annotations

import ipaddress

import pytest

from appliance.controllers.scheduler import (RESERVED_HOSTS, SYSTEM_NAMESPACE,
                                             free_appliance_address, requested_address)

NET = ipaddress.ip_network("10.77.0.0/24")


def vm(*addresses: str, namespace: str = "team-a", interfaces: int = 1) -> dict:
    ifaces = [{"name": f"eth{i}", "addresses": list(addresses) if i == 0 else []}
              for i in range(interfaces)]
    return {"metadata": {"name": "v", "namespace": namespace},
            "spec": {"network": {"interfaces": ifaces}}}


def test_no_static_address_means_the_pool() -> None:
    assert requested_address({"metadata": {"namespace": "a"}, "spec": {}}, NET) == (None, "")
    assert requested_address(vm(), NET) == (None, "")
    assert free_appliance_address(NET, set()) == f"10.77.0.{RESERVED_HOSTS + 1}"


def test_a_free_host_address_with_the_networks_prefix() -> None:
    assert requested_address(vm("10.77.0.42/24"), NET) == ("10.77.0.42", "")


@pytest.mark.parametrize(("address", "why"), [
    ("10.77.0.42", "must have the network's prefix /24"),
    ("10.77.0.42/16", "must have the network's prefix /24"),
    ("10.78.0.42/24", "is not a host address of 10.77.0.0/24"),
    ("10.77.0.255/24", "is not a host address"),
    ("10.77.0.0/24", "is not a host address"),
    ("bogus/24", "is not ADDRESS/PREFIX"),
    ("10.77.0.1/24", "is reserved for the host and the supervisor"),
    ("10.77.0.6/24", "is reserved for the host and the supervisor"),
])
def test_refused_addresses_say_why(address: str, why: str) -> None:
    got, problem = requested_address(vm(address), NET)
    assert got is None and why in problem


def test_only_the_supervisors_namespace_takes_reserved_addresses() -> None:
    assert requested_address(vm("10.77.0.6/24", namespace=SYSTEM_NAMESPACE), NET) == (
        "10.77.0.6", "")
    # not even the supervisor takes the gateway
    assert requested_address(vm("10.77.0.1/24", namespace=SYSTEM_NAMESPACE), NET)[0] is None


def test_one_address_on_one_interface() -> None:
    assert "only one static address" in requested_address(
        vm("10.77.0.42/24", "10.77.0.43/24"), NET)[1]
    assert "only one static address" in requested_address(
        vm("10.77.0.42/24", interfaces=2), NET)[1]
