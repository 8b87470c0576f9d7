"""IPAM planning: subnets from the pool, addresses, VLANs, VIPs, overlaps.

Property checks run as seeded random loops (no hypothesis): every answer is
checked against a brute-force search over the same input.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from appliance.network import ipam

POOL = ipam.parse_network("198.19.0.0/16")


def net(text: str) -> ipam.Network:
    return ipam.parse_network(text)


def brute_free(pool: ipam.Network, prefix: int, taken: list[ipam.Network]) -> ipam.Network | None:
    for cand in pool.subnets(new_prefix=prefix):
        if not any(cand.overlaps(t) for t in taken):
            return cand
    return None


# -- subnets -----------------------------------------------------------------------------


def test_first_subnets_are_consecutive_28s() -> None:
    taken: list[ipam.Network] = []
    for expected in ("198.19.0.0/28", "198.19.0.16/28", "198.19.0.32/28"):
        got = ipam.free_subnet(POOL, 28, taken)
        assert got == net(expected)
        taken.append(got)


def test_released_subnet_is_reused() -> None:
    taken = [net("198.19.0.0/28"), net("198.19.0.32/28")]
    assert ipam.free_subnet(POOL, 28, taken) == net("198.19.0.16/28")


def test_bigger_prefix_skips_to_alignment() -> None:
    taken = [net("198.19.0.0/28")]
    assert ipam.free_subnet(POOL, 24, taken) == net("198.19.1.0/24")


def test_taken_outside_the_pool_is_ignored() -> None:
    assert ipam.free_subnet(POOL, 28, [net("198.18.128.0/24")]) == net("198.19.0.0/28")


def test_exhausted_pool_says_so() -> None:
    pool = net("198.19.0.0/26")
    taken = list(pool.subnets(new_prefix=28))
    with pytest.raises(ipam.PoolExhausted, match=r"198\.19\.0\.0/26 has no free /28"):
        ipam.free_subnet(pool, 28, taken)


def test_prefix_must_fit_the_pool() -> None:
    with pytest.raises(ipam.InvalidCidr, match="/8 does not fit"):
        ipam.free_subnet(POOL, 8, [])
    with pytest.raises(ipam.InvalidCidr):
        ipam.free_subnet(POOL, 30, [])


def test_free_subnet_matches_brute_force() -> None:
    rng = random.Random(20240611)
    pool = net("198.19.0.0/22")
    for _ in range(400):
        taken = []
        for _ in range(rng.randint(0, 40)):
            prefix = rng.choice([24, 25, 26, 27, 28, 28, 28, 29])
            start = rng.randrange(0, 1 << 10) >> (32 - prefix) << (32 - prefix)
            taken.append(ipaddress.IPv4Network((int(pool.network_address) + start, prefix)))
        if rng.random() < 0.2:  # something outside the pool, overlapping its edge
            taken.append(net("198.18.252.0/22"))
        prefix = rng.choice([26, 27, 28, 29])
        expected = brute_free(pool, prefix, taken)
        if expected is None:
            with pytest.raises(ipam.PoolExhausted):
                ipam.free_subnet(pool, prefix, taken)
            continue
        got = ipam.free_subnet(pool, prefix, taken)
        assert got == expected, (taken, prefix)
        assert got.subnet_of(pool) and got.prefixlen == prefix
        assert not any(got.overlaps(t) for t in taken)


def test_allocating_until_exhausted_never_overlaps() -> None:
    rng = random.Random(7)
    pool = net("198.19.0.0/24")
    for _ in range(50):
        taken: list[ipam.Network] = []
        while True:
            prefix = rng.choice([26, 27, 28, 29])
            try:
                got = ipam.free_subnet(pool, prefix, taken)
            except ipam.PoolExhausted:
                assert brute_free(pool, prefix, taken) is None
                break
            assert not any(got.overlaps(t) for t in taken)
            taken.append(got)
            if rng.random() < 0.15 and taken:  # a namespace goes away
                taken.pop(rng.randrange(len(taken)))


# -- requested CIDRs ----------------------------------------------------------------------


def test_overlapping_request_names_the_owner() -> None:
    taken = {net("198.19.0.0/28"): "namespace team-a"}
    with pytest.raises(ipam.CidrOverlap) as caught:
        ipam.check_requested(net("198.19.0.0/24"), taken)
    assert "198.19.0.0/24 overlaps 198.19.0.0/28 (namespace team-a)" in caught.value.message
    assert caught.value.reason == "CIDROverlap"


def test_request_overlapping_a_reserved_range() -> None:
    reserved = {net("198.18.128.0/24"): "the load-balancer ingress range"}
    with pytest.raises(ipam.CidrOverlap, match="ingress range"):
        ipam.check_requested(net("198.18.128.64/28"), {}, reserved)


def test_disjoint_request_is_fine() -> None:
    ipam.check_requested(net("198.19.1.0/28"), {net("198.19.0.0/28"): "namespace a"})


def test_request_too_small() -> None:
    with pytest.raises(ipam.InvalidCidr, match="/29"):
        ipam.check_requested(net("198.19.1.0/30"), {})


def test_parse_network_errors_are_clear() -> None:
    with pytest.raises(ipam.InvalidCidr, match="has host bits set"):
        ipam.parse_network("198.19.0.1/24")
    with pytest.raises(ipam.InvalidCidr, match="not IPv4"):
        ipam.parse_network("2001:db8::/64")
    with pytest.raises(ipam.InvalidCidr, match="not a valid"):
        ipam.parse_network("banana")


def test_subnet_names_round_trip() -> None:
    rng = random.Random(3)
    for _ in range(200):
        prefix = rng.randint(16, 29)
        n = ipaddress.IPv4Network((rng.getrandbits(32) >> (32 - prefix) << (32 - prefix), prefix))
        assert ipam.subnet_from_name(ipam.subnet_name(n)) == n


# -- addresses ------------------------------------------------------------------------------


def test_gateway_is_the_first_host() -> None:
    assert str(ipam.gateway_of(net("198.19.0.16/28"))) == "198.19.0.17"


def test_workload_addresses_skip_network_gateway_broadcast() -> None:
    got = [str(a) for a in ipam.workload_addresses(net("198.19.0.16/28"))]
    assert got[0] == "198.19.0.18" and got[-1] == "198.19.0.30" and len(got) == 13
    assert ipam.capacity([net("198.19.0.16/28"), net("198.19.0.32/28")]) == 26


def test_addresses_are_unique_until_exhausted_then_a_clear_error() -> None:
    subnets = [net("198.19.0.0/28"), net("198.19.0.64/29")]
    taken: list[ipam.Address] = []
    for _ in range(ipam.capacity(subnets)):
        addr = ipam.free_address(subnets, taken)
        assert addr not in taken
        assert any(addr in s for s in subnets)
        assert addr not in [ipam.gateway_of(s) for s in subnets]
        taken.append(addr)
    with pytest.raises(ipam.SubnetExhausted, match=r"no free address in 198\.19\.0\.0/28, "
                                                   r"198\.19\.0\.64/29"):
        ipam.free_address(subnets, taken)


def test_released_address_comes_back_first() -> None:
    rng = random.Random(11)
    subnets = [net("198.19.0.0/27")]
    for _ in range(100):
        taken = set(rng.sample(list(ipam.workload_addresses(subnets[0])), 10))
        expected = min(a for a in ipam.workload_addresses(subnets[0]) if a not in taken)
        assert ipam.free_address(subnets, taken) == expected


def test_vips_and_vlans() -> None:
    ingress = net("198.18.128.0/30")
    assert str(ipam.free_in_range(ingress, [])) == "198.18.128.1"
    assert str(ipam.free_in_range(ingress, [ipaddress.IPv4Address("198.18.128.1")])) == \
        "198.18.128.2"
    with pytest.raises(ipam.PoolExhausted, match="198.18.128.0/30"):
        ipam.free_in_range(ingress, list(ingress.hosts()))
    assert ipam.free_vlan([]) == ipam.VLAN_MIN
    assert ipam.free_vlan([100, 101, 103]) == 102
    with pytest.raises(ipam.PoolExhausted, match="no free VLAN"):
        ipam.free_vlan(range(100, 4000))


def test_layout_problems() -> None:
    good = ipam.PoolLayout(POOL, net("198.18.128.0/24"), net("198.18.129.0/24"))
    assert good.problems() == []
    bad = ipam.PoolLayout(net("198.18.0.0/15"), net("198.18.128.0/24"), net("198.18.129.0/24"))
    assert any("overlaps the ingress range" in p for p in bad.problems())
