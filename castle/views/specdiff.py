"""`castle diff`: the connections a spec change opens, closes and weakens, for review."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from castle.errors import UsageError
from castle.plan import Conn, Plan, compile_plan
from castle.spec.findings import INTERNET, is_outside
from castle.spec.load import load

Key = tuple[str, str, str]  # (src, dst, proto)
Span = tuple[int, int]  # inclusive port range


@dataclass(frozen=True)
class DiffResult:
    """The report and how many connection ranges it opens (or weakens) and closes."""

    report: str
    opened: int
    closed: int


@dataclass(frozen=True)
class Change:
    """One row of the report: a port range of (src, dst, proto) that opened, closed or changed."""

    kind: str  # "opened" | "closed" | "changed"
    src: str
    dst: str
    proto: str
    lo: int
    hi: int
    tls: bool
    src_tier: str
    dst_tier: str
    notes: tuple[str, ...]

    @property
    def ports(self) -> str:
        """80/tcp or 8000-8010/tcp."""
        return (str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}") + f"/{self.proto}"


def subtract(spans: list[Span], minus: list[Span]) -> list[Span]:
    """Ports of `spans` not covered by `minus`, as sorted, merged ranges."""
    out: list[Span] = []
    for lo, hi in merge(spans):
        cur = lo
        for mlo, mhi in merge(minus):
            if mhi < cur or mlo > hi:
                continue
            if mlo > cur:
                out.append((cur, mlo - 1))
            cur = max(cur, mhi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out


def intersect(a: list[Span], b: list[Span]) -> list[Span]:
    """Ports covered by both lists of ranges, as sorted, merged ranges."""
    out: list[Span] = []
    for alo, ahi in merge(a):
        for blo, bhi in merge(b):
            lo, hi = max(alo, blo), min(ahi, bhi)
            if lo <= hi:
                out.append((lo, hi))
    return merge(out)


def merge(spans: list[Span]) -> list[Span]:
    """Sort ranges and join the ones that overlap or touch."""
    out: list[Span] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _by_key(plan: Plan) -> dict[Key, list[Conn]]:
    grouped: dict[Key, list[Conn]] = {}
    for c in plan.conns:
        grouped.setdefault((c.src, c.dst, c.proto), []).append(c)
    return grouped


def _tier(plan: Plan, peer: str) -> str:
    if is_outside(peer):
        return "outside"
    return next((s.tier for s in plan.services if s.name == peer), "?")


def _conns_at(conns: list[Conn], lo: int, hi: int) -> list[Conn]:
    return [c for c in conns if c.lo <= hi and lo <= c.hi]


def _flow_notes(plan: Plan, conns: list[Conn]) -> list[str]:
    """Which flows (and lines) allow these connections, and any waivers they carry."""
    notes: list[str] = []
    flows = sorted({f for c in conns for f in c.flows})
    if flows:
        refs = ", ".join(f"flows[{f}] (line {plan.flow_lines[f]})" if f < len(plan.flow_lines)
                         else f"flows[{f}]" for f in flows)
        notes.append(f"by {refs}")
    for f in flows:
        flow = plan.spec.flows[f]
        if flow.description:
            notes.append(f"description: {flow.description}")
        if flow.waiver:
            notes.append(f"waiver: {flow.waiver}")
    return notes


def _published_note(plan: Plan, dst: str, proto: str, lo: int, hi: int) -> str:
    hosts = []
    for p in plan.published:
        if p.service == dst and p.container.proto == proto and p.container.lo <= hi \
                and lo <= p.container.hi:
            ip = f"{p.host_ip}:" if p.host_ip else ""
            off = p.host.lo - p.container.lo
            hlo, hhi = max(lo, p.container.lo) + off, min(hi, p.container.hi) + off
            hosts.append(f"{ip}{hlo}" if hlo == hhi else f"{ip}{hlo}-{hhi}")
    return f"new published host port {', '.join(sorted(set(hosts)))}" if hosts else ""


def changes(old: Plan, new: Plan) -> list[Change]:
    """Every opened, closed and weakened or strengthened port range between two plans."""
    before, after = _by_key(old), _by_key(new)
    out: list[Change] = []
    for key in sorted(set(before) | set(after)):
        src, dst, proto = key
        o = before.get(key, [])
        n = after.get(key, [])
        ospans = [(c.lo, c.hi) for c in o]
        nspans = [(c.lo, c.hi) for c in n]
        for lo, hi in subtract(nspans, ospans):
            here = _conns_at(n, lo, hi)
            notes = []
            if is_outside(src):
                notes.append(_published_note(new, dst, proto, lo, hi))
            if is_outside(dst):
                notes.append(f"new egress to {dst}" + (" (anywhere)" if dst == INTERNET else ""))
            notes += _flow_notes(new, here)
            out.append(Change("opened", src, dst, proto, lo, hi, any(c.tls for c in here),
                              _tier(new, src), _tier(new, dst), tuple(x for x in notes if x)))
        for lo, hi in subtract(ospans, nspans):
            here = _conns_at(o, lo, hi)
            out.append(Change("closed", src, dst, proto, lo, hi, any(c.tls for c in here),
                              _tier(old, src), _tier(old, dst), tuple(_flow_notes(old, here))))
        for lo, hi in intersect(ospans, nspans):
            was, now = _conns_at(o, lo, hi), _conns_at(n, lo, hi)
            notes = []
            was_tls, now_tls = any(c.tls for c in was), any(c.tls for c in now)
            if was_tls and not now_tls:
                notes.append("TLS dropped")
            elif now_tls and not was_tls:
                notes.append("TLS added")
            old_w = {old.spec.flows[f].waiver for c in was for f in c.flows} - {""}
            new_w = {new.spec.flows[f].waiver for c in now for f in c.flows} - {""}
            notes += [f"waiver added: {w}" for w in sorted(new_w - old_w)]
            notes += [f"waiver removed: {w}" for w in sorted(old_w - new_w)]
            if notes:
                out.append(Change("changed", src, dst, proto, lo, hi, now_tls,
                                  _tier(new, src), _tier(new, dst), tuple(notes)))
    return out


def weakens(change: Change) -> bool:
    """True when a change loosens the walls: opened, TLS dropped, or a new waiver."""
    return change.kind == "opened" or any(
        n == "TLS dropped" or n.startswith("waiver added") for n in change.notes)


def _published_moves(old: Plan, new: Plan) -> list[str]:
    """Host ports that a `publish` rename moved without changing the connection itself."""
    def hosts(plan: Plan) -> set[tuple[str, str, str]]:
        return {(p.service, f"{p.host_ip + ':' if p.host_ip else ''}{p.host}", str(p.container))
                for p in plan.published}
    a, b = hosts(old), hosts(new)
    moved = []
    for svc, host, cont in sorted(b - a):
        if any(s == svc and c == cont for s, _, c in a):
            moved.append(f"{svc} {cont} is now published on host {host}")
    return moved


def _mark(kind: str) -> str:
    return {"opened": "+", "closed": "-", "changed": "~"}[kind]


def _text(old: Path, new: Path, rows: list[Change], moved: list[str], opened: int,
          closed: int) -> str:
    if not rows and not moved:
        return f"castle diff {old} -> {new}: no connection opens, closes or changes\n"
    lines = [f"castle diff {old} -> {new}: {opened} opened, {closed} closed"]
    for kind in ("opened", "closed", "changed"):
        chosen = [r for r in rows if r.kind == kind]
        if not chosen:
            continue
        lines.append(f"{kind}:")
        for r in chosen:
            tls = " tls" if r.tls else ""
            notes = "".join(f"\n      {n}" for n in r.notes)
            lines.append(f"  {_mark(kind)} {r.src} ({r.src_tier}) -> {r.dst} ({r.dst_tier}) "
                         f"{r.ports}{tls}{notes}")
    if moved:
        lines.append("published:")
        lines += [f"  ~ {m}" for m in moved]
    return "\n".join(lines) + "\n"


def md_cell(text: str) -> str:
    """Text safe inside one Markdown table cell (no pipes, HTML or line breaks)."""
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
            .replace(">", "&gt;").replace("`", "'").replace("\n", " "))


def _markdown(old: Path, new: Path, rows: list[Change], moved: list[str], opened: int,
              closed: int) -> str:
    title = f"### castle diff: `{md_cell(old.name)}` → `{md_cell(new.name)}`"
    if not rows and not moved:
        return f"{title}\n\nNo connection opens, closes or changes.\n"
    verdict = ("**This change opens or weakens walls: review it.**" if opened
               else "This change only closes or tightens.")
    lines = [title, "", f"{opened} opened, {closed} closed. {verdict}", "",
             "| | change | from | to | ports | tls | notes |",
             "|---|---|---|---|---|---|---|"]
    icon = {"opened": "🔓", "closed": "🔒", "changed": "⚠️"}
    for r in rows:
        shown = icon[r.kind] if r.kind != "changed" or weakens(r) else "✅"
        lines.append(
            f"| {shown} | {r.kind} | `{r.src}` ({md_cell(r.src_tier)}) | `{r.dst}` "
            f"({md_cell(r.dst_tier)}) | {r.ports} | {'yes' if r.tls else 'no'} | "
            f"{'<br>'.join(md_cell(n) for n in r.notes)} |")
    if moved:
        lines += ["", "Published ports moved:", ""] + [f"- {md_cell(m)}" for m in moved]
    return "\n".join(lines) + "\n"


def diff_specs(old: Path, new: Path, fmt: str = "text") -> DiffResult:
    """Compare two specs' connections; `opened` counts rows that open or weaken a wall."""
    if fmt not in ("text", "markdown"):
        raise UsageError(f"unknown format {fmt!r}; choose text or markdown")
    old_plan = compile_plan(load(old))
    new_plan = compile_plan(load(new))
    order = {"opened": 0, "changed": 1, "closed": 2}
    rows = sorted(changes(old_plan, new_plan),
                  key=lambda r: (order[r.kind], r.src, r.dst, r.proto, r.lo))
    moved = _published_moves(old_plan, new_plan)
    opened = sum(1 for r in rows if weakens(r))
    closed = sum(1 for r in rows if r.kind == "closed")
    render = _markdown if fmt == "markdown" else _text
    return DiffResult(render(Path(old), Path(new), rows, moved, opened, closed), opened, closed)
