"""firewall/castle.nft: the host firewall as one nftables table, with sets instead of rule lists.

Every allowed connection is one element of a set keyed by the concatenation
source . destination . protocol . port (ranges and CIDRs as intervals), so a packet costs a
few set lookups however many flows the spec has. The chains hook forward and input at
priority filter - 1: they run just before Docker's iptables(-nft) chains; an accept here only
ends castle's chain (Docker's chains still decide), a drop is final.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import NamedTuple

from castle.io.render import nft_strings, render
from castle.io.write import Output, header
from castle.plan import Plan
from castle.spec.values import span
from castle.targets.fw_addresses import blocks, cidr, shared_text
from castle.targets.iptables import describe
from castle.targets.systemd import unit, unit_path

PATH = "firewall/castle.nft"


# One set element: its key text and the nft-quoted comment naming the flows it comes from.
Element = tuple[str, str]


def table_name(stack: str) -> str:
    """castle_<stack>: one table per stack, so stacks on one host never replace each other."""
    return f"castle_{stack}"


Row = tuple[str, str, IPv4Network, int, int, str]  # address, proto, net, lo, hi, note


def _carve(rows: list[Row]) -> list[Row]:
    """Drop from each row the ports that a row with a wider network, or an earlier row with
    the same network (same address and protocol), already allows: nft interval sets refuse
    overlapping elements, and CIDRs nest or are disjoint, so what is left never overlaps."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row)
    out: list[Row] = []
    for group in groups.values():
        for i, (addr, proto, net, lo, hi, note) in enumerate(group):
            pieces = [(lo, hi)]
            for j, (_, _, wider, wlo, whi, _) in enumerate(group):
                if (wider != net and wider.supernet_of(net)) or (wider == net and j < i):
                    pieces = [(a, b) for plo, phi in pieces
                              for a, b in ((plo, min(phi, wlo - 1)), (max(plo, whi + 1), phi))
                              if a <= b]
            out.extend((addr, proto, net, a, b, note) for a, b in pieces)
    return out


def elements(plan: Plan) -> dict[str, list[Element]]:
    """The sets' elements: internal, published (ingress) and egress connections."""
    internal: list[tuple[str, str]] = []
    add = internal.append
    for c in plan.internal_conns:
        what = describe(plan, c)
        # the port as span() writes it, without a call a connection
        rest = f" . {c.proto} . {c.lo}" if c.lo == c.hi else f" . {c.proto} . {c.lo}-{c.hi}"
        for sa, da in shared_text(plan, c.src, c.dst):
            add((f"{sa} . {da}{rest}", what))
    anywhere = IPv4Network("0.0.0.0/0")
    ingress: list[Row] = [
        (str(ip), c.proto, cidr(c.src) or anywhere, c.lo, c.hi, describe(plan, c))
        for c in plan.ingress for ip in plan.service(c.dst).addresses
    ]
    published = [(f"{net} . {ip} . {proto} . {span(lo, hi)}", note)
                 for ip, proto, net, lo, hi, note in _carve(ingress)]
    # "internet" egress is its own set, looked up only for public destinations: a CIDR flow
    # may open a private or link-local range, "internet" never does.
    outgoing: list[Row] = [
        (str(ip), c.proto, cidr(c.dst) or anywhere, c.lo, c.hi, describe(plan, c))
        for c in plan.egress for ip in plan.service(c.src).addresses
    ]
    egress = [(f"{ip} . {net} . {proto} . {span(lo, hi)}", note)
              for ip, proto, net, lo, hi, note in _carve([r for r in outgoing if r[2] != anywhere])]
    public = [(f"{ip} . {proto} . {span(lo, hi)}", note)
              for ip, proto, _, lo, hi, note in _carve([r for r in outgoing if r[2] == anywhere])]
    return {"internal": _quoted(internal), "published": _quoted(published),
            "egress": _quoted(egress), "internet": _quoted(public)}


def _quoted(pairs: list[tuple[str, str]]) -> list[Element]:
    """(key, note) pairs without repeats, sorted, each note quoted for nft (nft_strings)."""
    # repeats dropped in order, not through a set: the pairs come nearly sorted (by service,
    # then port), and a sort of runs is a fraction of a sort of shuffled pairs
    unique = dict.fromkeys(pairs)
    notes = dict(unique.keys())  # key -> note
    if len(notes) == len(unique):  # one note a key (the rule): sorting the keys is enough
        keys = sorted(notes)
        return list(zip(keys, nft_strings([notes[k] for k in keys]), strict=True))
    ordered = sorted(unique)
    return list(zip([key for key, _ in ordered], nft_strings([note for _, note in ordered]),
                    strict=True))


class LogChain(NamedTuple):
    """A chain that logs (rate-limited) and drops; `addrs` are the service's addresses."""

    name: str
    statement: str
    addrs: tuple[str, ...]


def log_chains(plan: Plan) -> dict[str, list[LogChain]]:
    """With [firewall] log_drops: per service, log-and-drop chains for what may not reach
    it ("to") and what it may not send out ("from"); empty lists without."""
    if not plan.spec.firewall.log_drops:
        return {"to": [], "from": []}
    from castle.targets import droplog  # only specs that log need it

    names = droplog.prefixes(plan)
    out: dict[str, list[LogChain]] = {"to": [], "from": []}
    for i, svc in enumerate(plan.services):
        addrs = tuple(str(a) for a in svc.addresses)
        if not addrs:
            continue
        out["to"].append(LogChain(f"log_to_{i}", droplog.nft_statement(plan, names[svc.name]),
                                  addrs))
        out["from"].append(LogChain(
            f"log_from_{i}", droplog.nft_statement(plan, droplog.prefix(plan.stack, svc.name,
                                                                        True)), addrs))
    return out


class Pin(NamedTuple):
    """A drop rule for traffic DNATed to a published container port from a host address or
    port other than the default of the `${VAR:-VALUE}` the spec wrote for it."""

    addrs: str
    proto: str
    port: str
    match: str
    note: str


def pins(plan: Plan) -> list[Pin]:
    """Where `publish` writes the host address or port as a variable, the default is pinned
    (`ct original ...`): another value at start is dropped, as iptables.sh drops it. Only
    there: a literal side is Docker's DNAT rule alone, which no variable can move."""
    out: list[Pin] = []
    for p in plan.published:
        svc = plan.service(p.service)
        entry = next((e for e in svc.spec.publish if (e.host_ip, e.host, e.container)
                      == (p.host_ip, p.host, p.container)), None)
        if entry is None or not svc.addresses:
            continue
        addrs = "{ " + ", ".join(str(a) for a in svc.addresses) + " }"
        port, proto = span(p.container.lo, p.container.hi), p.container.proto
        if entry.ip_text and p.host_ip not in ("", "0.0.0.0"):
            out.append(Pin(addrs, proto, port, f"ct original ip daddr != {p.host_ip}",
                           f"{p.service} {port}/{proto}: host address {entry.ip_text} other "
                           f"than {p.host_ip}"))
        if entry.host_text:
            out.append(Pin(addrs, proto, port,
                           f"ct original proto-dst != {span(p.host.lo, p.host.hi)}",
                           f"{p.service} {port}/{proto}: host port {entry.host_text} other "
                           f"than {span(p.host.lo, p.host.hi)}"))
    return sorted(out)


def context(plan: Plan) -> dict[str, object]:
    """The template context of castle.nft."""
    fw = plan.spec.firewall
    sources = sorted({str(n) for n in fw.ssh_sources})
    return {
        "header": header(plan.source_name, plan.sha256),
        "stack": plan.stack,
        "table": table_name(plan.stack),
        "nets": [str(b) for b in blocks(plan)],
        "not_internet": [str(n) for n in plan.internet_except],
        "log": log_chains(plan),
        "sets": elements(plan),
        "pins": pins(plan),
        "manage_input": fw.manage_input,
        "ssh_port": fw.ssh_port,
        "ssh_sources": [] if "0.0.0.0/0" in sources else sources,
    }


def paths(plan: Plan) -> list[str]:
    """The files `outputs` writes, without rendering them."""
    return [PATH, unit_path(plan.stack, "nftables")]


def outputs(plan: Plan) -> list[Output]:
    """The nftables target's file."""
    return [Output(PATH, render("castle.nft.j2", **context(plan))),
            unit(plan, "nftables", table_name(plan.stack))]
