"""The subnets of a plan's networks, allocated from the pool, and the addresses on them: those
a spec keeps (`[services.NAME] address`), the network that holds each one, the subnet around
it, and every member's address on that network."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pydantic_core import PydanticCustomError

from castle.spec.record import plain
from castle.words import count

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
    if not kept:
        return tuple(zip(members, map(address, range(base, base + len(members))), strict=True))
    taken = {int(ip) for ip in kept.values()}
    free = (address(n) for n in itertools.count(base) if n not in taken)
    return tuple((m, kept[m] if m in kept else next(free)) for m in members)


def allocate(pool: IPv4Network, sizes: list[int],
             avoid: Iterable[IPv4Network] = ()) -> list[IPv4Network]:
    """One equal-sized subnet per network from `pool`: /24 when they fit, smaller when not.

    `sizes` are member counts; each subnet also needs the network, gateway and broadcast
    addresses. Subnets skip the `avoid` ranges that lie inside the pool (the SSH sources:
    an operator network handed to a bridge could no longer reach the host). Raises
    ValueError when the pool is too small.
    """
    starts, prefix = allocate_starts(pool, sizes, avoid)
    return [network(lo, prefix) for lo in starts]


def allocate_starts(pool: IPv4Network, sizes: list[int],
                    avoid: Iterable[IPv4Network] = ()) -> tuple[list[int], int]:
    """allocate()'s subnets as their first addresses, with the prefix length they share."""
    if not sizes:
        return [], 32
    holes = [(int(n.network_address), int(n.broadcast_address)) for n in avoid
             if n.overlaps(pool) and not n.supernet_of(pool)]
    need = max(sizes) + 3
    smallest = 32 - (need - 1).bit_length()  # longest prefix that still holds the largest
    for prefix in range(min(24, smallest), smallest + 1):
        if prefix < pool.prefixlen:
            continue
        if 2 ** (prefix - pool.prefixlen) >= len(sizes):
            got = list(itertools.islice(_take(pool, prefix, holes), len(sizes)))
            if len(got) == len(sizes):
                return got, prefix
    raise ValueError(
        f"cannot fit {count(len(sizes), 'network')} of up to {count(max(sizes), 'service')} "
        f"in {pool}" + (" outside [firewall] ssh_sources" if holes else "")
    )


def _take(pool: IPv4Network, prefix: int, holes: list[tuple[int, int]]) -> Iterator[int]:
    base = int(pool.network_address)
    step = 2 ** (32 - prefix)
    starts = range(base, base + (2 ** (prefix - pool.prefixlen)) * step, step)
    if not holes:
        return iter(starts)
    return (lo for lo in starts
            if not any(lo <= h_hi and h_lo <= lo + step - 1 for h_lo, h_hi in holes))


def around_kept(pool: IPv4Network, ssh_sources: list[IPv4Network], sizes: list[int],
                prefix: int, kept: dict[int, dict[str, IPv4Address]]) -> list[IPv4Network]:
    """The subnets with the networks that hold kept addresses on theirs (fixed_subnets), the
    others allocated from the pool around them; `prefix` is the one of allocate_starts()."""
    fixed = fixed_subnets(kept, sizes, prefix)
    rest = [i for i in range(len(sizes)) if i not in fixed]
    moved = allocate(pool, [sizes[i] for i in rest], [*ssh_sources, *fixed.values()])
    out = dict(fixed) | dict(zip(rest, moved, strict=True))
    for i, net in sorted(fixed.items()):
        name = sorted(kept[i])[0]
        # as allocate() does: only an SSH source that covers the whole pool may hold subnets
        for ssh in ssh_sources:
            if ssh.overlaps(net) and not ssh.supernet_of(pool):
                raise AddressError(name, f"{kept[i][name]} needs {net}, which overlaps "
                                   f"[firewall] ssh_sources {ssh} (a bridge there would take "
                                   "the host's route to it)", "pick an address outside "
                                   "ssh_sources")
        if any(out[j].overlaps(net) for j in rest):  # it covers the whole pool
            raise AddressError(name, f"{kept[i][name]} needs {net}, which covers "
                               f"subnet_pool {pool}, where the other networks go",
                               "pick an address outside subnet_pool, or another pool")
    return [out[i] for i in range(len(sizes))]


# A big stack's plan builds thousands of networks and addresses; their constructors parse
# and check what castle computed in range, at several times the cost of setting the
# attributes they set (so every method, equality and hash work as on any other).
_new = object.__new__


def address(n: int) -> IPv4Address:
    """IPv4Address(n) for an int already in 0 .. 2**32 - 1."""
    ip: Any = _new(IPv4Address)
    ip._ip = n
    made: IPv4Address = ip
    return made


def network(lo: int, prefix: int) -> IPv4Network:
    """IPv4Network((lo, prefix)) for lo on a /prefix boundary."""
    if prefix > 30:  # /31 and /32 get their own hosts() from the constructor
        return IPv4Network((lo, prefix))
    net: Any = _new(IPv4Network)
    net.network_address = address(lo)
    net.netmask = netmask(prefix)
    net._prefixlen = prefix
    made: IPv4Network = net
    return made


@functools.cache
def netmask(prefix: int) -> IPv4Address:
    """The netmask of a /prefix, the one object every IPv4Network of that length shares."""
    return IPv4Network((0, prefix)).netmask
