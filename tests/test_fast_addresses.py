"""castle.spec.addresses builds the plan's addresses and networks without their constructors
(for speed): what it makes must be indistinguishable from what ipaddress makes."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from castle.spec.addresses import address, network

EDGES = [0, 1, 255, 256, 2**24, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]


@pytest.mark.parametrize("n", EDGES + random.Random(5).sample(range(2**32), 200))
def test_an_address_is_ipaddress_own(n: int) -> None:
    """Equal, same hash, text, order and attributes as IPv4Address(n)."""
    fast, real = address(n), IPv4Address(n)
    assert type(fast) is IPv4Address
    assert fast == real and hash(fast) == hash(real) and str(fast) == str(real)
    assert int(fast) == n and fast.packed == real.packed and repr(fast) == repr(real)
    above = IPv4Address(min(n + 1, 2**32 - 1))
    assert (fast < above) == (real < above)
    assert fast.is_private == real.is_private and fast + 0 == real


def _networks() -> list[tuple[int, int]]:
    rng = random.Random(9)
    out = []
    for prefix in range(0, 33):
        size = 2 ** (32 - prefix)
        for _ in range(6):
            out.append((rng.randrange(0, 2**32, size), prefix))
    return out


@pytest.mark.parametrize(("lo", "prefix"), _networks())
def test_a_network_is_ipaddress_own(lo: int, prefix: int) -> None:
    """Equal, same hash, text, members, broadcast and state as IPv4Network((lo, prefix))."""
    fast, real = network(lo, prefix), IPv4Network((lo, prefix))
    assert type(fast) is IPv4Network
    assert fast == real and hash(fast) == hash(real) and str(fast) == str(real)
    assert fast.network_address == real.network_address and fast.netmask == real.netmask
    assert fast.prefixlen == real.prefixlen and fast.hostmask == real.hostmask
    assert fast.broadcast_address == real.broadcast_address
    assert fast.num_addresses == real.num_addresses
    assert fast.overlaps(real) and fast.subnet_of(real) and fast.supernet_of(real)
    if prefix >= 24:
        assert list(fast.hosts()) == list(real.hosts())
    else:
        assert next(iter(fast.hosts())) == next(iter(real.hosts()))
    # the attributes a constructor sets, no more and no fewer (a new Python that sets
    # others would fail here, not in a firewall)
    assert set(vars(network(lo, prefix))) == set(vars(IPv4Network((lo, prefix))))


def test_a_plans_networks_are_ipaddress_own() -> None:
    """compile_plan's networks, built with address() and network(): each equal to, and
    holding the same attributes as, what ipaddress parses from its text."""
    from castle.plan import compile_plan
    from castle.spec.load import load

    plan = compile_plan(load(Path(__file__).parent.parent / "zones.example.toml"))
    for net in plan.networks:
        real = IPv4Network(str(net.subnet))
        assert net.subnet == real and set(vars(net.subnet)) == set(vars(IPv4Network(real)))
        assert net.gateway == IPv4Address(str(net.gateway)) == next(real.hosts())
        for _, ip in net.addresses:
            assert type(ip) is IPv4Address and ip == IPv4Address(str(ip)) and ip in real
