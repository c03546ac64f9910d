"""Addresses a spec keeps (`[services.NAME] address`): the network that holds each one, the
subnet around it, and every member's address on that network."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pydantic_core import PydanticCustomError

from castle.spec.record import plain

# Ranges no subnet_pool and no container address may use.
UNUSABLE_POOLS = tuple(
    (IPv4Network(net), why)
    for net, why in (("0.0.0.0/8", "this network"), ("127.0.0.0/8", "loopback"),
                     ("169.254.0.0/16", "link-local"), ("224.0.0.0/4", "multicast"),
                     ("240.0.0.0/4", "reserved"))
)


def _usable(ip: IPv4Address) -> IPv4Address:
    for bad, why in UNUSABLE_POOLS:
        if ip in bad:
            raise ValueError(f"{ip} is in {bad} ({why}); a container address is a private "
                             "unicast one such as 172.20.0.5")
    return ip


def _address(value: Any) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return _usable(value)
    try:
        ip = IPv4Address(value)
    except ValueError:
        raise PydanticCustomError("ip_v4_address", "Input is not a valid IPv4 address") from None
    return _usable(ip)


# `[services.NAME] address`: an IPv4 address a container may have
ADDRESS = plain(_address, {"type": "string", "format": "ipv4"})


class AddressError(Exception):
    """A service's `address` that castle cannot place; `service` is where to point."""

    def __init__(self, service: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.service, self.hint = service, hint


def kept_addresses(wanted: Mapping[str, IPv4Address | None], groups: list[tuple[str, ...]],
                   callers: Mapping[str, set[str]]) -> dict[int, dict[str, IPv4Address]]:
    """group index -> {service: address}: each service with an address keeps it on the
    network it shares with the most of its `callers` (then the largest, then the first); a
    container has one address per network and networks may not overlap, so it cannot keep
    it on more than one."""
    kept: dict[int, dict[str, IPv4Address]] = {}
    owner: dict[IPv4Address, str] = {}
    for name in sorted(wanted):
        ip = wanted[name]
        if ip is None:
            continue
        if ip in owner:
            raise AddressError(name, f"{ip} is also the address of {owner[ip]!r}",
                               "give each service its own address")
        owner[ip] = name
        mine = [i for i, g in enumerate(groups) if name in g]
        if not mine:
            raise AddressError(name, f"{name!r} is on no network (no flow joins it to another "
                               "service or to outside), so its address has none to sit on",
                               "add the flows its callers use, or drop `address`")
        calls = callers.get(name, set())
        best = max(mine, key=lambda i: (len(calls & set(groups[i])), len(groups[i]), -i))
        kept.setdefault(best, {})[name] = ip
    return kept


def fixed_subnets(kept: dict[int, dict[str, IPv4Address]], sizes: list[int],
                  prefix: int) -> dict[int, IPv4Network]:
    """group index -> the subnet of each network that holds kept addresses: the /`prefix`
    (the size castle gives every network) around them, widened up to a /16 to hold them all."""
    fixed: dict[int, IPv4Network] = {}
    for i, ips in sorted(kept.items()):
        first = min(ips, key=lambda s: ips[s])
        net = IPv4Network(f"{ips[first]}/{prefix}", strict=False)
        while not all(ip in net for ip in ips.values()) and net.prefixlen > 16:
            net = net.supernet()
        stray = next((s for s in sorted(ips) if ips[s] not in net), None)
        if stray is not None:
            raise AddressError(stray, f"{ips[stray]} and {ips[first]} ({first!r}) share a "
                               "network but not a /16", "pick addresses of one subnet")
        for s, ip in sorted(ips.items()):
            if ip in (net.network_address, net.network_address + 1, net.broadcast_address):
                what = "gateway" if ip == net.network_address + 1 else "network or broadcast"
                raise AddressError(s, f"{ip} is the {what} address of its network {net}",
                                   "pick another address of the same subnet")
        name = sorted(ips)[0]
        if net.num_addresses - 3 < sizes[i]:
            raise AddressError(name, f"{net} cannot hold the {sizes[i]} services of its "
                               "network", "pick addresses of a larger subnet")
        for j, other in sorted(fixed.items()):
            if other.overlaps(net):
                a = sorted(kept[j])[0]
                raise AddressError(name, f"{ips[name]} is on another network than {a!r} "
                                   f"({kept[j][a]}), yet their subnets {other} and {net} "
                                   "overlap", "pick addresses of different subnets")
        fixed[i] = net
    return fixed


def member_addresses(members: tuple[str, ...], subnet: IPv4Network,
                     kept: dict[str, IPv4Address]) -> tuple[tuple[str, IPv4Address], ...]:
    """Each member's address on a network: the kept ones, the others from .2 up around them."""
    base = int(subnet.network_address) + 2
    if not kept:  # the usual case, in int arithmetic (IPv4Address + n builds two objects)
        return tuple(zip(members, map(IPv4Address, range(base, base + len(members))), strict=True))
    free = (IPv4Address(n) for n in itertools.count(base)
            if IPv4Address(n) not in kept.values())
    return tuple((m, kept[m] if m in kept else next(free)) for m in members)
