"""`castle draw`: the castle as concentric rings (outermost tier outside), flows as arrows.

Python computes every decision (ring radii, angles, arrow paths, label positions, escaping);
the templates castle.svg.j2, castle.mmd.j2 and castle.dot.j2 only lay the result out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castle.errors import UsageError
from castle.io.render import comment, render, xml_text
from castle.plan import Conn, Plan, compile_plan
from castle.spec.findings import INTERNET, is_outside
from castle.spec.load import load
from castle.words import count

FONT = 13.0  # service labels, px
SMALL = 10.0  # arrow labels, px
CHAR = 0.62  # average glyph width of DejaVu Sans / Helvetica, in em
NODE_H = 26.0
GAP = 26.0  # between neighbouring boxes on a ring
ARROW_ROOM = 64.0  # more between ring-mates joined by an arrow, so that it shows
LABEL_ROOM = 34.0  # between a ring's boxes and its wall, for the tier name
TIER_FILLS = ("#eef2f7", "#e0e7ef", "#d2dce8", "#c5d1e0", "#b8c6d8", "#abbbd0")
COLOURS = {"plain": "#334155", "tls": "#0f766e", "waiver": "#c2410c"}


def xml(value: Any) -> str:
    """Text safe in XML character data and in double-quoted attributes."""
    return xml_text(value)


def xml_comment(value: Any) -> str:
    """Text safe inside an XML comment: no "--" anywhere and no "-" at the end."""
    # A space after every dash that a dash follows splits runs of any length ("---" too).
    text = re.sub("-(?=-)", "- ", xml(value))
    return text + " " if text.endswith("-") else text


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


@dataclass
class Node:
    """A box on the drawing: a service, or a peer outside the walls."""

    name: str
    tier: str  # "" for peers outside
    width: float
    x: float = 0.0
    y: float = 0.0
    angle: float = 0.0


@dataclass(frozen=True)
class Edge:
    """One arrow: every connection from src to dst, with their ports."""

    src: str
    dst: str
    ports: str
    tls: bool
    waivers: tuple[str, ...]
    descriptions: tuple[str, ...]
    flows: tuple[int, ...]

    @property
    def kind(self) -> str:
        """waiver (warning colour) beats tls (dashed) beats plain."""
        return "waiver" if self.waivers else "tls" if self.tls else "plain"


def _width(text: str, size: float = FONT) -> float:
    return len(text) * size * CHAR


def edges_of(plan: Plan) -> list[Edge]:
    """One edge per (src, dst) pair, its ports joined per protocol."""
    grouped: dict[tuple[str, str], list[Conn]] = {}
    for c in plan.conns:
        grouped.setdefault((c.src, c.dst), []).append(c)
    out = []
    for (src, dst), conns in sorted(grouped.items()):
        protos: dict[str, list[str]] = {}
        for c in sorted(conns, key=lambda c: (c.proto, c.lo)):
            protos.setdefault(c.proto, []).append(c.port_text)
        ports = " ".join(f"{','.join(p)}/{proto}" for proto, p in sorted(protos.items()))
        flows = tuple(sorted({f for c in conns for f in c.flows}))
        spec_flows = [plan.spec.flows[f] for f in flows]
        out.append(Edge(src, dst, ports, any(c.tls for c in conns),
                        tuple(sorted({f.waiver for f in spec_flows if f.waiver})),
                        tuple(sorted({f.description for f in spec_flows if f.description})),
                        flows))
    return out


def outside_peers(plan: Plan) -> list[str]:
    """internet first, then CIDRs, as they appear in connections."""
    peers = {c.src for c in plan.conns if is_outside(c.src)}
    peers |= {c.dst for c in plan.conns if is_outside(c.dst)}
    return sorted(peers, key=lambda p: (p != INTERNET, p))


def _circ_mean(angles: Iterable[float]) -> float | None:
    xs = list(angles)
    if not xs:
        return None
    s, c = sum(math.sin(a) for a in xs), sum(math.cos(a) for a in xs)
    if abs(s) < 1e-9 and abs(c) < 1e-9:
        return xs[0]
    return math.atan2(s, c)


def _pack(desired: list[float], half: list[float], extra: list[float]) -> list[float]:
    """Angles closest (least squares) to sorted `desired` ones with neighbours kept apart.

    Neighbours i, i+1 stay `half[i] + half[i+1] + extra[i]` apart: isotonic regression (pool
    adjacent violators) on the angles minus their cumulative separations.
    """
    offs = [0.0]
    for i in range(1, len(desired)):
        offs.append(offs[-1] + half[i - 1] + half[i] + extra[i - 1])
    blocks: list[list[float]] = []  # [sum, count]
    for d, c in zip(desired, offs, strict=True):
        blocks.append([d - c, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    return [y + c for y, c in zip(fitted, offs, strict=True)]


def _place_ring(nodes: list[Node], radius: float, desired: dict[str, float],
                linked: set[frozenset[str]]) -> None:
    """Angles for a ring's boxes near their desired angles, never overlapping; boxes joined
    by an arrow keep room for it between them."""
    tau = 2 * math.pi
    top = -math.pi / 2
    half = {nd.name: (nd.width + GAP) / 2 / max(radius, 1.0) for nd in nodes}
    want = sorted((desired[nd.name] % tau, nd.name) for nd in nodes if nd.name in desired)
    rest = [nd.name for nd in nodes if nd.name not in desired]
    even = sum(2 * h for h in half.values()) > tau * 0.9 or not want
    angle: dict[str, float] = {}
    if not even:
        # Unwrap the circle at the widest gap between desired angles.
        gaps = [((want[(i + 1) % len(want)][0] - want[i][0]) % tau or tau, i)
                for i in range(len(want))]
        cut = max(gaps)[1] + 1
        seq = want[cut:] + want[:cut]
        base = seq[0][0]
        unwrapped = [(a - base) % tau + base for a, _ in seq]
        names = [n for _, n in seq]
        room = ARROW_ROOM / max(radius, 1.0)
        extra = [room if frozenset(pair) in linked else 0.0
                 for pair in zip(names, names[1:], strict=False)]
        placed = _pack(unwrapped, [half[n] for n in names], extra)
        span = placed[-1] - placed[0] + half[names[-1]] + half[names[0]]
        need = sum(2 * half[n] for n in rest)
        if span > tau or (rest and tau - span < need):
            even = True
        else:
            angle.update(zip(names, placed, strict=True))
            if rest:  # the free arc after the last packed box, filled from its middle
                free = tau - span
                at = placed[-1] + half[names[-1]] + (free - need) / 2
                for n in rest:
                    angle[n] = at + half[n]
                    at += 2 * half[n]
    if even:
        order = sorted(nodes, key=lambda nd: ((desired.get(nd.name, top) - top) % tau, nd.name))
        total = sum(2 * half[nd.name] for nd in order)
        pad = max(tau - total, 0.0) / len(order)
        at = top - half[order[0].name]
        for nd in order:
            angle[nd.name] = at + half[nd.name]
            at += 2 * half[nd.name] + pad
    for nd in nodes:
        nd.angle = angle[nd.name]
        nd.x, nd.y = radius * math.cos(nd.angle), radius * math.sin(nd.angle)


def _arc_need(widths: list[float]) -> float:
    """Radius at which boxes of these widths fit around a circle without touching."""
    return sum(w + GAP for w in widths) / (2 * math.pi)


@dataclass
class Layout:
    """Geometry of the whole drawing, centred on (0, 0)."""

    walls: list[float]  # outer radius of each tier, outermost first
    nodes: dict[str, Node]


def layout(plan: Plan, edges: list[Edge]) -> Layout:
    """Ring radii from the inside out, then angles that sit each box near its peers."""
    by_tier: dict[str, list[Node]] = {t: [] for t in plan.tiers}
    for s in plan.services:
        by_tier[s.tier].append(Node(s.name, s.tier, max(60.0, _width(s.name) + 22)))
    bands: list[tuple[float, float]] = []  # (mid, outer), innermost first
    inner = 0.0
    for tier in reversed(plan.tiers):
        nodes = by_tier[tier]
        maxw = max((nd.width for nd in nodes), default=0.0)
        if not nodes:
            mid, outer = inner + 12, inner + LABEL_ROOM + 12
        elif inner == 0.0 and len(nodes) == 1:
            mid, outer = 0.0, max(maxw / 2 + LABEL_ROOM + 8, 72.0)
        else:
            floor = inner + maxw / 2 + 18 if inner else (maxw + GAP) / 2 + 8
            mid = max(floor, 1.15 * _arc_need([nd.width for nd in nodes]))
            outer = mid + maxw / 2 + LABEL_ROOM
        bands.append((mid, outer))
        inner = outer
    bands.reverse()  # outermost first, like plan.tiers

    peer_nodes = [Node(p, "", max(70.0, _width(p) + 22)) for p in outside_peers(plan)]
    out_w = max((nd.width for nd in peer_nodes), default=0.0)
    out_r = max(bands[0][1] + out_w / 2 + 44, 1.15 * _arc_need([nd.width for nd in peer_nodes]))
    neighbours: dict[str, set[str]] = {}
    for e in edges:
        neighbours.setdefault(e.src, set()).add(e.dst)
        neighbours.setdefault(e.dst, set()).add(e.src)

    linked = {frozenset((e.src, e.dst)) for e in edges}
    rings = [(by_tier[t], bands[d][0]) for d, t in enumerate(plan.tiers)] + [(peer_nodes, out_r)]
    angle: dict[str, float] = {}
    for _sweep in range(3):  # a few barycentric sweeps: outer rings first, then inward
        for nodes, radius in rings:
            if not nodes:
                continue
            if radius == 0.0:
                nodes[0].x = nodes[0].y = 0.0
                continue
            mates = {nd.name for nd in nodes}
            desired: dict[str, float] = {}
            for nd in nodes:
                mean = _circ_mean(angle[x] for x in sorted(neighbours.get(nd.name, ()))
                                  if x in angle and x not in mates)
                if mean is not None:
                    desired[nd.name] = mean
            for nd in nodes:  # boxes tied only to ring-mates sit beside them
                if nd.name not in desired:
                    mean = _circ_mean(desired[x] for x in sorted(neighbours.get(nd.name, ()))
                                      if x in desired)
                    if mean is not None:
                        desired[nd.name] = mean
            _place_ring(nodes, radius, desired, linked)
            angle.update({nd.name: nd.angle for nd in nodes})
    nodes_all = {nd.name: nd for t in plan.tiers for nd in by_tier[t]}
    nodes_all.update({nd.name: nd for nd in peer_nodes})
    return Layout([outer for _, outer in bands], nodes_all)


def _clip(cx: float, cy: float, hw: float, hh: float, dx: float, dy: float) -> tuple[float, float]:
    """Where a ray from a box's centre in direction (dx, dy) leaves the box (plus a margin)."""
    length = math.hypot(dx, dy) or 1.0
    ux, uy = dx / length, dy / length
    t = min(hw / abs(ux) if ux else math.inf, hh / abs(uy) if uy else math.inf) + 4
    return cx + ux * t, cy + uy * t


Box = tuple[float, float, float, float]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _node_box(n: Node) -> Box:
    return (n.x - n.width / 2, n.y - NODE_H / 2, n.x + n.width / 2, n.y + NODE_H / 2)


def _bezier(p0: tuple[float, float], c: tuple[float, float], p2: tuple[float, float],
            t: float) -> tuple[float, float]:
    return ((1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * c[0] + t ** 2 * p2[0],
            (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * c[1] + t ** 2 * p2[1])


def _edge_context(lay: Layout, edges: list[Edge]) -> tuple[list[dict[str, Any]], list[Box],
                                                              list[tuple[float, float]]]:
    """Arrow paths and label spots; also the label boxes and points the arrows pass."""
    pairs = {(e.src, e.dst) for e in edges}
    taken: list[Box] = [_node_box(n) for n in lay.nodes.values()]
    labels: list[Box] = []
    trail: list[tuple[float, float]] = []
    out = []
    for e in edges:
        a, b = lay.nodes[e.src], lay.nodes[e.dst]
        dx, dy = b.x - a.x, b.y - a.y
        dist = math.hypot(dx, dy) or 1.0
        # Two arrows of a pair that talks both ways bend apart; others bend slightly so
        # that arrows through the centre do not hide each other.
        bend = 0.16 * dist if (e.dst, e.src) in pairs else 0.06 * dist
        mid = ((a.x + b.x) / 2 - dy / dist * bend, (a.y + b.y) / 2 + dx / dist * bend)
        p0 = _clip(a.x, a.y, a.width / 2, NODE_H / 2, mid[0] - a.x, mid[1] - a.y)
        p2 = _clip(b.x, b.y, b.width / 2, NODE_H / 2, mid[0] - b.x, mid[1] - b.y)
        trail += [_bezier(p0, mid, p2, k / 24) for k in range(25)]
        label = e.ports + (" TLS" if e.tls else "") + (" waiver" if e.waivers else "")
        lw, lh = _width(label, SMALL) + 6, SMALL + 4
        best: tuple[float, float, Box] | None = None
        length = math.hypot(p2[0] - p0[0], p2[1] - p0[1]) or 1.0
        nx, ny = -(p2[1] - p0[1]) / length, (p2[0] - p0[0]) / length
        spots = [(t, 0.0) for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78)]
        if length < lw + 12:  # a short arrow: its label goes beside it, not over it
            side = lh / 2 + 3 + abs(nx) * lw / 2
            spots = [(0.5, side), (0.5, -side), *spots]
        for t, off in spots:
            lx, ly = _bezier(p0, mid, p2, t)
            lx, ly = lx + nx * off, ly + ny * off
            box = (lx - lw / 2, ly - lh / 2, lx + lw / 2, ly + lh / 2)
            if best is None:
                best = (lx, ly, box)
            if not any(_overlaps(box, other) for other in taken):
                best = (lx, ly, box)
                break
        assert best is not None
        taken.append(best[2])
        labels.append(best[2])
        tip = [f"{e.src} -> {e.dst}: {e.ports}", *(f"flows[{f}]" for f in e.flows)]
        tip += ["tls: mutual TLS"] if e.tls else []
        tip += [f"description: {d}" for d in e.descriptions]
        tip += [f"waiver: {w}" for w in e.waivers]
        out.append({
            "src": xml(e.src), "dst": xml(e.dst), "kind": e.kind, "colour": COLOURS[e.kind],
            "dash": "7 4" if e.tls else "", "title": xml("; ".join(tip)),
            "d": f"M{_fmt(p0[0])},{_fmt(p0[1])} Q{_fmt(mid[0])},{_fmt(mid[1])} "
                 f"{_fmt(p2[0])},{_fmt(p2[1])}",
            "label": xml(label), "lx": _fmt(best[0]), "ly": _fmt(best[1] + SMALL / 2 - 1),
        })
    return out, labels, trail


def _tier_labels(plan: Plan, lay: Layout, busy: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Each tier's name along the inside of its wall, where no box or arrow is in the way."""
    out = []
    tau = 2 * math.pi
    for tier, outer in zip(plan.tiers, lay.walls, strict=True):
        r = outer - 14
        span = (_width(tier, 12) + 24) / r  # the label's own angle, with room either side
        near = [math.atan2(y, x) for x, y in busy if abs(math.hypot(x, y) - r) < 22]
        for nd in lay.nodes.values():
            if abs(math.hypot(nd.x, nd.y) - r) < nd.width / 2 + 24:
                near.append(math.atan2(nd.y, nd.x))
        best, score = -math.pi / 2, -1.0
        # Horizontal-ish spots only (within 55 degrees of the top or bottom): rsvg and many
        # viewers do not draw textPath, so the name is rotated along the wall instead.
        for k in range(44):
            step = (k + 1) // 2 * (1 if k % 2 else -1)
            for base in (-math.pi / 2, math.pi / 2):
                theta = base + step * tau / 144
                free = min((abs((theta - a + math.pi) % tau - math.pi) for a in near),
                           default=tau)
                if free > span / 2 + 0.02 and score < span / 2 + 0.02:
                    best, score = theta, free
                if free > score:
                    best, score = theta, free
            if score > span / 2 + 0.02:
                break
        lower = math.sin(best) > 0
        rr = outer - 5 if lower else outer - 12
        turn = math.degrees(best) + (-90 if lower else 90)
        out.append({"label": xml(tier), "x": _fmt(rr * math.cos(best)),
                    "y": _fmt(rr * math.sin(best)), "rotate": _fmt(turn)})
    return out


def svg(plan: Plan) -> str:
    """The castle as an SVG picture."""
    edges = edges_of(plan)
    lay = layout(plan, edges)
    flows, label_boxes, trail = _edge_context(lay, edges)
    boxes = [_node_box(n) for n in lay.nodes.values()] + label_boxes
    wall = lay.walls[0]
    x0 = min([-wall] + [b[0] for b in boxes]) - 24
    y0 = min([-wall] + [b[1] for b in boxes]) - 24
    x1 = max([wall] + [b[2] for b in boxes]) + 24
    y1 = max([wall] + [b[3] for b in boxes]) + 24
    title_h, legend_h = 44.0, 40.0
    width = max(x1 - x0, 720.0)
    height = (y1 - y0) + title_h + legend_h
    nodes = []
    for nd in lay.nodes.values():
        if nd.tier:
            s = plan.service(nd.name)
            listen = ", ".join(str(p) for p in s.spec.listen) or "nothing"
            tip = f"{nd.name} ({s.image}), tier {nd.tier}, listens on {listen}"
            if s.spec.description:
                tip += f": {s.spec.description}"
        else:
            tip = "anything outside the stack" if nd.name == INTERNET else nd.name
        nodes.append({
            "name": xml(nd.name), "cls": "service" if nd.tier else "outside",
            "x": _fmt(nd.x - nd.width / 2), "y": _fmt(nd.y - NODE_H / 2), "w": _fmt(nd.width),
            "h": _fmt(NODE_H), "tx": _fmt(nd.x), "ty": _fmt(nd.y + FONT * 0.36),
            "title": xml(tip),
        })
    rings = [{"r": _fmt(outer), "fill": TIER_FILLS[min(d, len(TIER_FILLS) - 1)],
              "title": xml(plan.spec.tiers[d].description or f"tier {plan.tiers[d]}")}
             for d, outer in enumerate(lay.walls)]
    return render(
        "castle.svg.j2",
        header=xml_comment(f"Generated by castle from {plan.source_name} (sha256 {plan.sha256})"),
        width=_fmt(width), height=_fmt(height),
        tx=_fmt(-x0 + (width - (x1 - x0)) / 2), ty=_fmt(-y0 + title_h),
        title=xml(f"castle {plan.stack}: {count(len(plan.services), 'service')}, "
                  f"{count(len(plan.tiers), 'wall')}, {count(len(edges), 'arrow')}"),
        rings=rings, tier_labels=_tier_labels(plan, lay, trail + [
            (x, y) for b in label_boxes for x in (b[0], (b[0] + b[2]) / 2, b[2])
            for y in (b[1], b[3])]), nodes=nodes, edges=flows,
        colours=COLOURS, font=_fmt(FONT), small=_fmt(SMALL), legend_y=_fmt(height - 18),
    )


def _dot_str(text: str) -> str:
    return '"' + comment(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mermaid_text(text: str) -> str:
    return '"' + comment(text).replace('"', "#quot;") + '"'


def _ids(plan: Plan) -> dict[str, str]:
    """Stable identifiers for mermaid (which reserves words such as `end`)."""
    ids = {s.name: "s_" + s.name.replace("-", "_") for s in plan.services}
    for i, p in enumerate(outside_peers(plan)):
        ids[p] = "internet" if p == INTERNET else f"cidr_{i}"
    return ids


def _nested(plan: Plan, ids: dict[str, str], quote: Any) -> list[dict[str, Any]]:
    return [{"id": f"t{d}_" + t.replace("-", "_"), "label": quote(t), "depth": d,
             "fill": TIER_FILLS[min(d, len(TIER_FILLS) - 1)],
             "services": [{"id": ids[s.name], "label": quote(s.name)}
                          for s in plan.services if s.tier == t]}
            for d, t in enumerate(plan.tiers)]


def _graph_context(plan: Plan, quote: Any) -> dict[str, Any]:
    ids = _ids(plan)
    edges = [{"src": ids[e.src], "dst": ids[e.dst], "kind": e.kind, "colour": COLOURS[e.kind],
              "label": quote(e.ports + (" TLS" if e.tls else "") +
                             (" waiver" if e.waivers else ""))}
             for e in edges_of(plan)]
    return {
        "header": comment(f"Generated by castle from {plan.source_name} (sha256 {plan.sha256})"),
        "stack": quote(plan.stack), "tiers": _nested(plan, ids, quote),
        "outside": [{"id": ids[p], "label": quote(p)} for p in outside_peers(plan)],
        "edges": edges, "colours": COLOURS,
    }


def draw(spec: Path, fmt: str = "svg") -> str:
    """Draw a spec as svg, mermaid or dot text."""
    if fmt not in ("svg", "mermaid", "dot"):
        raise UsageError(f"unknown format {fmt!r}; choose svg, mermaid or dot")
    plan = compile_plan(load(spec))
    if fmt == "svg":
        return svg(plan)
    if fmt == "mermaid":
        return render("castle.mmd.j2", **_graph_context(plan, _mermaid_text))
    return render("castle.dot.j2", **_graph_context(plan, _dot_str))
