"""The addresses both firewalls match: the stack's merged subnets, `cidr:` peers, and the
addresses two services share a network on."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, collapse_addresses, summarize_address_range

from castle.errors import CastleError
from castle.plan import OCTETS, Plan

# int(address) reaches IPv4Address.__int__ through a C slot; called as a plain function it
# costs a third as much (a big stack's firewalls turn ten thousand addresses into numbers)
address_int = IPv4Address.__int__


def cover(addrs: Iterable[IPv4Address]) -> IPv4Network:
    """The smallest prefix holding every address."""
    ints = [int(a) for a in addrs]
    lo, hi = min(ints), max(ints)
    plen = 32 - (lo ^ hi).bit_length()
    return IPv4Network(((lo >> (32 - plen)) << (32 - plen), plen))


def dotted(n: int) -> str:
    """An IPv4 address as text, from its integer."""
    return f"{OCTETS[n >> 24]}.{OCTETS[n >> 16 & 255]}.{OCTETS[n >> 8 & 255]}.{OCTETS[n & 255]}"


def blocks(plan: Plan) -> list[IPv4Network]:
    """The stack's compose subnets, merged into as few prefixes as possible."""
    known: list[IPv4Network] | None = plan.memo.get("blocks")
    if known is None:
        known = plan.memo["blocks"] = _blocks(plan)
    return list(known)


def _blocks(plan: Plan) -> list[IPv4Network]:
    # ipaddress.collapse_addresses is quadratic-ish on thousands of subnets: merge the
    # integer ranges first, then let summarize_address_range cut each into prefixes.
    # (each broadcast address from the netmask: broadcast_address is a locked cached property,
    # prefixlen a property too)
    spans = []
    for n in plan.subnets:
        lo = address_int(n.network_address)
        spans.append((lo, lo | (address_int(n.netmask) ^ 0xFFFFFFFF)))
    if not spans:
        return []
    spans.sort()
    merged: list[tuple[int, int]] = []
    first, last = spans[0]
    for lo, hi in spans:
        if lo > last + 1:
            merged.append((first, last))
            first = lo
        if hi > last:
            last = hi
    merged.append((first, last))
    return list(collapse_addresses(
        net for lo, hi in merged
        for net in summarize_address_range(IPv4Address(lo), IPv4Address(hi))))


def cidr(peer: str) -> IPv4Network | None:
    """The network of a `cidr:` peer; None for `internet`."""
    return IPv4Network(peer[5:]) if peer.startswith("cidr:") else None


def shared(plan: Plan, a: str, b: str) -> list[tuple[IPv4Address, IPv4Address]]:
    """(address of a, address of b) on every network the two share."""
    mine = dict(plan.service(a).networks)
    pairs = [(mine[net], ip) for net, ip in plan.service(b).networks if net in mine]
    if not pairs:
        raise CastleError(f"iptables: {a} and {b} share no network, yet a flow joins them")
    return pairs


def shared_text(plan: Plan, a: str, b: str) -> list[tuple[str, str]]:
    """`shared`, as address text."""
    texts = plan.address_text
    mine, theirs = texts[a], texts[b]
    nets = theirs.keys() & mine.keys()  # most pairs share one: nothing to sort
    # network names sort as each service's networks do
    pairs = [(mine[net], theirs[net]) for net in (sorted(nets) if len(nets) > 1 else nets)]
    if not pairs:
        raise CastleError(f"iptables: {a} and {b} share no network, yet a flow joins them")
    return pairs
