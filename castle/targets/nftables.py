"""firewall/castle.nft: the host firewall as one nftables table, with sets instead of rule lists.

Every allowed connection is one element of a set keyed by the concatenation
source . destination . protocol . port (ranges and CIDRs as intervals), so a packet costs a
few set lookups however many flows the spec has. The chains hook forward and input at
priority filter - 1: they run just before Docker's iptables(-nft) chains; an accept here only
ends castle's chain (Docker's chains still decide), a drop is final.
"""

from __future__ import annotations

from dataclasses import dataclass

from castle.plan import Conn, Plan
from castle.render import render
from castle.targets.iptables import blocks, cidr, describe, shared
from castle.write import Output, header

PATH = "firewall/castle.nft"


@dataclass(frozen=True, order=True)
class Element:
    """One set element: its key text and the comment that says which flow it comes from."""

    key: str
    note: str = ""


def table_name(stack: str) -> str:
    """castle_<stack>: one table per stack, so stacks on one host never replace each other."""
    return f"castle_{stack}"


def _port(c: Conn) -> str:
    return c.port_text


def elements(plan: Plan) -> dict[str, list[Element]]:
    """The sets' elements: internal, published (ingress) and egress connections."""
    internal: list[Element] = []
    for c in plan.internal_conns:
        for sa, da in shared(plan, c.src, c.dst):
            internal.append(Element(f"{sa} . {da} . {c.proto} . {_port(c)}", describe(plan, c)))
    published: list[Element] = []
    for c in plan.ingress:
        src = cidr(c.src) or "0.0.0.0/0"
        for ip in plan.service(c.dst).addresses:
            published.append(Element(f"{src} . {ip} . {c.proto} . {_port(c)}", describe(plan, c)))
    egress: list[Element] = []
    for c in plan.egress:
        dst = cidr(c.dst) or "0.0.0.0/0"
        for ip in plan.service(c.src).addresses:
            egress.append(Element(f"{ip} . {dst} . {c.proto} . {_port(c)}", describe(plan, c)))
    return {"internal": sorted(set(internal)), "published": sorted(set(published)),
            "egress": sorted(set(egress))}


def context(plan: Plan) -> dict[str, object]:
    """The template context of castle.nft."""
    fw = plan.spec.firewall
    sources = sorted({str(n) for n in fw.ssh_sources})
    return {
        "header": header(plan.source_name, plan.sha256),
        "stack": plan.stack,
        "table": table_name(plan.stack),
        "nets": [str(b) for b in blocks(plan)],
        "sets": elements(plan),
        "manage_input": fw.manage_input,
        "ssh_port": fw.ssh_port,
        "ssh_sources": [] if "0.0.0.0/0" in sources else sources,
    }


def outputs(plan: Plan) -> list[Output]:
    """The nftables target's file."""
    return [Output(PATH, render("castle.nft.j2", **context(plan)))]
