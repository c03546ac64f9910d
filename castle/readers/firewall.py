"""Read OUT/firewall/iptables.sh back: which connections do its rules really let through?

The restore payload is parsed and every candidate packet (each service address pair, the
outside as internet and as each CIDR, each port interval between the rules' own port
boundaries) is walked through the chains with iptables' jump, goto and return semantics.
The result is compared cell by cell with the Plan for `castle matrix --artifacts`.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from castle.errors import UsageError
from castle.plan import Plan
from castle.spec.findings import INTERNET
from castle.targets.fw_addresses import blocks
from castle.targets.iptables import PATH, host_ruleset, main_chain

ALLOWED = ("RETURN", "ACCEPT")
SPARE = ("203.0.113.2", "198.51.100.7", "192.0.2.7", "100.64.0.7", "172.31.255.7")
MARK = "iptables"


@dataclass
class Rule:
    """One parsed rule: its matches and where it sends a packet."""

    src: tuple[IPv4Network, bool] | None = None  # (network, negated)
    dst: tuple[IPv4Network, bool] | None = None
    proto: str | None = None
    dport: tuple[int, int] | None = None
    ctstate: frozenset[str] | None = None
    origdst: IPv4Address | None = None
    origport: tuple[int, int] | None = None
    iface: str | None = None
    target: str = ""
    goto: bool = False
    unknown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Packet:
    """A new connection's first packet, as the forward chain sees it."""

    src: IPv4Address
    dst: IPv4Address
    proto: str
    port: int
    dnat: bool = False
    origport: int = 0


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    return int(lo), int(hi or lo)


def parse_rule(words: list[str]) -> Rule:
    """Parse the words after `-A CHAIN`."""
    r = Rule()
    neg = False
    it = iter(words)
    for w in it:
        if w == "!":
            neg = True
            continue
        if w in ("-s", "-d"):
            net = (IPv4Network(next(it), strict=False), neg)
            r.src, r.dst = (net, r.dst) if w == "-s" else (r.src, net)
        elif w == "-p":
            r.proto = next(it)
        elif w == "--dport":
            r.dport = _range(next(it))
        elif w == "--ctstate":
            r.ctstate = frozenset(next(it).split(","))
        elif w == "--ctorigdst":
            r.origdst = IPv4Address(next(it).split("/")[0])
        elif w == "--ctorigdstport":
            r.origport = _range(next(it))
        elif w == "-i":
            r.iface = next(it)
        elif w in ("-j", "-g"):
            r.target, r.goto = next(it), w == "-g"
        elif w == "-m":
            next(it)
        elif w == "--comment":
            next(it)
        else:
            r.unknown.append(w)
        neg = False
    return r


def parse_payload(text: str) -> tuple[str, dict[str, list[Rule]]]:
    """The script's TAG and its chains, from the restore input between the heredoc markers."""
    tag = ""
    chains: dict[str, list[Rule]] = {}
    inside = False
    for line in text.splitlines():
        if line.startswith("TAG="):
            tag = shlex.split(line[4:])[0] if line[4:].strip() else ""
        elif line.strip() == "cat <<'CASTLE_RULES'":
            inside = True
        elif line == "CASTLE_RULES":
            inside = False
        elif inside and line.startswith("-A "):
            words = shlex.split(line)
            chains.setdefault(words[1], []).append(parse_rule(words[2:]))
    if not chains:
        raise UsageError("not a castle iptables script (no CASTLE_RULES payload)")
    return tag, chains


def _hit(r: Rule, p: Packet) -> bool:
    for net, addr in ((r.src, p.src), (r.dst, p.dst)):
        if net is not None and (addr in net[0]) == net[1]:
            return False
    if r.proto is not None and r.proto != p.proto:
        return False
    if r.dport is not None and not r.dport[0] <= p.port <= r.dport[1]:
        return False
    if r.ctstate is not None:
        states = {"NEW"} | ({"DNAT"} if p.dnat else set())
        if not r.ctstate & states:
            return False
        if "DNAT" in r.ctstate and not p.dnat and "NEW" not in r.ctstate:
            return False
    if r.origport is not None:
        port = p.origport if p.dnat else p.port
        if not r.origport[0] <= port <= r.origport[1]:
            return False
    if r.origdst is not None and not p.dnat:
        return False
    return not (r.iface == "lo" or r.unknown)


def walk(chains: dict[str, list[Rule]], start: str, p: Packet) -> str:
    """The verdict of chain `start` for a packet: RETURN (to DOCKER-USER), ACCEPT or DROP."""
    stack: list[tuple[str, int]] = []
    cur, i = start, 0
    for _ in range(100_000):  # a loop in the chains is a broken script, not a hang
        rules = chains.get(cur, [])
        if i >= len(rules):
            if not stack:
                return "RETURN"
            cur, i = stack.pop()
            continue
        r = rules[i]
        i += 1
        if not _hit(r, p):
            continue
        if r.target == "RETURN":
            i = len(rules)
        elif r.target in chains:
            if not r.goto:
                stack.append((cur, i))
            cur, i = r.target, 0
        elif r.target:
            return r.target
    return "DROP"


def _intervals(bounds: Iterable[int]) -> list[tuple[int, int]]:
    cuts = sorted({b for b in bounds if 1 <= b <= 65535} | {1})
    return [(lo, (cuts[k + 1] - 1) if k + 1 < len(cuts) else 65535) for k, lo in enumerate(cuts)]


def _probe_addr(net: IPv4Network) -> IPv4Address:
    return net.network_address + (1 if net.prefixlen < 32 else 0)


def compare_firewall(plan: Plan, out: Path) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Marks for cells where iptables.sh allows more (LOOSER) or less (STRICTER) than the spec."""
    path = out / PATH
    if not path.is_file():
        return {}, [f"iptables: {path} not found (run castle generate)"]
    try:
        tag, chains = parse_payload(path.read_text(encoding="utf-8"))
    except (ValueError, StopIteration) as exc:
        raise UsageError(f"{path}: cannot read the rules ({exc})") from None
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    start = tag or main_chain(plan.stack)
    rules = [r for rs in chains.values() for r in rs]
    bounds: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for r in rules:
        if r.dport is not None:
            for proto in ([r.proto] if r.proto in bounds else list(bounds)):
                bounds[str(proto)] |= {r.dport[0], r.dport[1] + 1}
    for c in plan.conns:
        bounds.setdefault(c.proto, set()).update({c.lo, c.hi + 1})
    cidrs = sorted({IPv4Network(p[5:]) for c in plan.conns for p in (c.src, c.dst)
                    if p.startswith("cidr:")} |
                   {n[0] for r in rules for n in (r.src, r.dst) if n and n[0].prefixlen < 32
                    and not any(n[0].overlaps(b) for b in blocks(plan))}
                   - {IPv4Network("0.0.0.0/0")})
    own = blocks(plan)
    free = next((IPv4Address(a) for a in SPARE
                 if not any(IPv4Address(a) in n for n in [*cidrs, *own])), IPv4Address(SPARE[0]))
    outside = [(INTERNET, free)] + [(f"cidr:{n}", _probe_addr(n)) for n in cidrs]

    def spec_allows(src: str, dst: str, proto: str, port: int, addr: IPv4Address) -> bool:
        def match(peer: str, side: str, out: bool) -> bool:
            if side != "outside":
                return peer == side
            if peer == INTERNET:  # egress to "internet" means public addresses only
                return not out or not any(addr in n for n in plan.internet_except)
            return peer.startswith("cidr:") and addr in IPv4Network(peer[5:])
        return any(c.proto == proto and c.lo <= port <= c.hi and match(c.src, src, False)
                   and match(c.dst, dst, True) for c in plan.conns)

    diffs: dict[tuple[str, str], dict[str, list[str]]] = {}

    def check(cell: tuple[str, str], want: bool, got: bool, what: str) -> None:
        if want != got:
            kind = "LOOSER" if got else "STRICTER"
            diffs.setdefault(cell, {}).setdefault(kind, []).append(what)

    for proto, cuts in bounds.items():
        for lo, hi in _intervals(cuts):
            ports = f"{lo}/{proto}" if lo == hi else f"{lo}-{hi}/{proto}"
            for b in plan.services:
                for a in plan.services:
                    if a.name == b.name:
                        continue
                    got = any(walk(chains, start, Packet(sa, da, proto, lo)) in ALLOWED
                              for sa in a.addresses for da in b.addresses)
                    want = spec_allows(a.name, b.name, proto, lo, free)
                    check((a.name, b.name), want, got, ports)
                for peer, addr in outside:
                    # Routed straight at a container, not through a published port: never
                    # in the spec (Docker drops it too, but the firewall should not rely on it).
                    got = any(walk(chains, start, Packet(addr, da, proto, lo)) in ALLOWED
                              for da in b.addresses)
                    check((peer, b.name), False, got, f"{ports} without Docker's DNAT")
                    got = any(walk(chains, start, Packet(sa, addr, proto, lo)) in ALLOWED
                              for sa in b.addresses)
                    want = spec_allows(b.name, "outside", proto, lo, addr)
                    check((b.name, peer), want, got, ports)
    for pub in plan.published:
        proto = pub.container.proto
        for lo, _hi in _intervals(bounds.get(proto, set())):
            if not pub.container.lo <= lo <= pub.container.hi:
                continue
            origport = pub.host.lo + lo - pub.container.lo
            for peer, addr in outside:
                got = any(walk(chains, start, Packet(addr, da, proto, lo, True, origport))
                          in ALLOWED for da in plan.service(pub.service).addresses)
                want = spec_allows("outside", pub.service, proto, lo, addr)
                check((peer, pub.service), want, got, f"{origport}->{lo}/{proto}")
    marks: dict[tuple[str, str], str] = {}
    notes: list[str] = []
    for cell, kinds in sorted(diffs.items()):
        marks[cell] = " ".join(f"{k}({MARK})" for k in sorted(kinds))
        for kind, what in sorted(kinds.items()):
            verb = "lets through" if kind == "LOOSER" else "blocks"
            notes.append(f"iptables: {path.name} {verb} {cell[0]} -> {cell[1]} on "
                         f"{', '.join(what[:6])}{' ...' if len(what) > 6 else ''} "
                         f"({'not in' if kind == 'LOOSER' else 'allowed by'} the spec)")
    return marks, notes


def rule_lines(plan: Plan, src: str, dst: str) -> list[str]:
    """The iptables rules (restore syntax) that let `src` open connections to `dst`."""
    return [r.line for r in host_ruleset(plan).rules if r.src == src and r.dst == dst]
