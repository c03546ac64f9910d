"""Who may reach whom on which ports: the spec's matrix, and the one artifacts enforce."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from castle.plan import Conn, Plan
from castle.spec.findings import INTERNET, is_outside

Cell = frozenset[str]  # "80/tcp", "8000-8010/tcp"


@dataclass
class Matrix:
    """Rows are sources, columns destinations, cells the sets of ports allowed."""

    peers: list[str]
    cells: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # (source, destination) pairs with mutual TLS: castle's TLS is per pair, on all its ports
    tls: set[tuple[str, str]] = field(default_factory=set)

    def allow(self, src: str, dst: str, port: str, tls: bool = False) -> None:
        """Add one allowed port to a cell (the pair runs mutual TLS when `tls`)."""
        self.cells.setdefault((src, dst), set()).add(port)
        if tls:
            self.tls.add((src, dst))

    def get(self, src: str, dst: str) -> set[str]:
        """The ports of a cell (empty when nothing is allowed)."""
        return self.cells.get((src, dst), set())

    def labels(self, src: str, dst: str) -> list[str]:
        """A cell's ports in order, each with " tls" when the pair runs mutual TLS (table)."""
        tls = " tls" if (src, dst) in self.tls else ""
        return [p + tls for p in _sorted_ports(self.get(src, dst))]


def peers_of(plan: Plan) -> list[str]:
    """Row/column order: internet and CIDRs, then services outermost first."""
    outside = sorted({c.src for c in plan.conns if is_outside(c.src)} |
                     {c.dst for c in plan.conns if is_outside(c.dst)},
                     key=lambda p: (p != INTERNET, p))
    return outside + [s.name for s in plan.services]


def port_label(conn: Conn) -> str:
    """80/tcp, 8000-8010/udp."""
    return f"{conn.port_text}/{conn.proto}"


def spec_matrix(plan: Plan) -> Matrix:
    """The matrix the spec asks for, from the Plan's connections."""
    m = Matrix(peers_of(plan))
    for c in plan.conns:
        m.allow(c.src, c.dst, port_label(c), c.tls)
    return m


def _sorted_ports(ports: Iterable[str]) -> list[str]:
    def key(p: str) -> tuple[int, str]:
        head = p.split("/")[0].split("-")[0]
        return (int(head) if head.isdigit() else 0, p)
    return sorted(ports, key=key)


def as_rows(m: Matrix) -> list[dict[str, str | bool]]:
    """One row per allowed (source, destination), for json and csv; `tls` is True when the
    pair runs mutual TLS."""
    rows: list[dict[str, str | bool]] = []
    for src in m.peers:
        for dst in m.peers:
            ports = m.get(src, dst)
            if ports:
                rows.append({"from": src, "to": dst, "ports": " ".join(_sorted_ports(ports)),
                             "tls": (src, dst) in m.tls})
    return rows


def render_table(m: Matrix, marks: dict[tuple[str, str], str] | None = None) -> str:
    """A text grid: sources down, destinations across; '.' means no connection."""
    marks = marks or {}
    dsts = [p for p in m.peers if any(m.get(s, p) or (s, p) in marks for s in m.peers)]
    srcs = [p for p in m.peers if any(m.get(p, d) or (p, d) in marks for d in m.peers)]
    header = ["from \\ to", *dsts]
    body = []
    for s in srcs:
        row = [s]
        for d in dsts:
            text = ",".join(m.labels(s, d)) or "."
            if (s, d) in marks:
                text = f"{text} {marks[(s, d)]}"
            row.append(text)
        body.append(row)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *body]]
    return "\n".join(lines) + "\n"


def render_matrix(m: Matrix, fmt: str) -> str:
    """The matrix as table, json or csv."""
    if fmt == "json":
        return json.dumps({"peers": m.peers, "allowed": as_rows(m)}, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["from", "to", "ports", "tls"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "tls": str(r["tls"]).lower()} for r in as_rows(m))
        return buf.getvalue()
    return render_table(m)
