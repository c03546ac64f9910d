"""Read generated artifacts back and compare the reachability they enforce with the spec."""

from __future__ import annotations

from pathlib import Path

from castle.errors import UsageError
from castle.plan import Plan, Published
from castle.readers.compose import ComposeFile, reach
from castle.readers.compose import read as read_compose
from castle.readers.compose_ports import PortMap
from castle.spec.findings import INTERNET
from castle.spec.values import span
from castle.views.matrix import Matrix, render_matrix, render_table, spec_matrix

Cell = tuple[str, str]
Marks = dict[Cell, set[str]]
LOOSER = "LOOSER(compose)"
STRICTER = "STRICTER(compose)"
_ANY = ("", "0.0.0.0", "::")  # host IPs that mean "every address of the host"


def _planned_ports(p: Published) -> set[PortMap]:
    """The PortMaps compose.yaml should hold for one planned publish entry."""
    ip = "" if p.host_ip in _ANY else p.host_ip
    return {PortMap(c, p.container.proto, ip, p.host.lo + i)
            for i, c in enumerate(range(p.container.lo, p.container.hi + 1))}


def _outside_note(port: PortMap) -> str:
    """Who reaches a published port from outside, by its host bind address."""
    if port.loopback:
        return "bound to the host's loopback, so only the host itself reaches it"
    return "reachable from everyone who reaches the host"


def _compare_pairs(plan: Plan, cf: ComposeFile, marks: Marks, notes: list[str]) -> None:
    """Shared networks against internal flows: a network opens both directions."""
    have = reach(cf).pairs
    want: dict[frozenset[str], set[Cell]] = {}
    for c in plan.internal_conns:
        if c.src != c.dst:
            want.setdefault(frozenset((c.src, c.dst)), set()).add((c.src, c.dst))
    for pair in sorted(set(have) - set(want), key=sorted):
        a, b = sorted(pair)
        marks.setdefault((a, b), set()).add(LOOSER)
        marks.setdefault((b, a), set()).add(LOOSER)
        notes.append(f"compose: {a} and {b} share {', '.join(have[pair])} (both directions) "
                     "but no flow joins them")
    for pair in sorted(set(want) - set(have), key=sorted):
        a, b = sorted(pair)
        for cell in sorted(want[pair]):
            marks.setdefault(cell, set()).add(STRICTER)
        notes.append(f"compose: a flow joins {a} and {b} but they share no network")


def _compare_published(plan: Plan, cf: ComposeFile, marks: Marks, notes: list[str]) -> None:
    """Published ports of compose.yaml against plan.published."""
    # (service, container port, proto) -> planned host bindings, and who they are for
    want: dict[tuple[str, int, str], set[PortMap]] = {}
    sources: dict[tuple[str, int, str], set[str]] = {}
    for p in plan.published:
        for pm in _planned_ports(p):
            key = (p.service, pm.container, pm.proto)
            want.setdefault(key, set()).add(pm)
            sources.setdefault(key, set()).update(p.sources)
    have: dict[tuple[str, int, str], set[PortMap]] = {}
    for name, service in cf.services.items():
        for pm in service.ports:
            if pm.host_ip in _ANY:
                pm = PortMap(pm.container, pm.proto, "", pm.host)
            have.setdefault((name, pm.container, pm.proto), set()).add(pm)
    for key in sorted(set(want) | set(have)):
        svc, container, proto = key
        missing = sorted(want.get(key, set()) - have.get(key, set()))
        extra = sorted(have.get(key, set()) - want.get(key, set()))
        srcs = sorted(sources.get(key, set()))
        for pm in missing:
            for src in srcs:
                marks.setdefault((src, svc), set()).add(STRICTER)
            where = f"; compose.yaml has {', '.join(map(str, extra))} instead" if extra else ""
            notes.append(f"compose: the spec publishes {svc} {pm} for {', '.join(srcs)} "
                         f"but compose.yaml does not{where}")
        wanted_wide = any(not pm.loopback for pm in want.get(key, set()))
        for pm in extra:
            if missing and (pm.loopback or wanted_wide):
                continue  # a planned port moved: the STRICTER note above names both ends
            for src in srcs or [INTERNET]:
                marks.setdefault((src, svc), set()).add(LOOSER)
            notes.append(f"compose: {svc} publishes {pm}, which the spec does not "
                         f"({_outside_note(pm)})")


def _compare_cidr(plan: Plan, cf: ComposeFile, marks: Marks, notes: list[str]) -> None:
    """CIDR sources of published ports: compose cannot narrow a publish to a CIDR."""
    for p in plan.published:
        cidrs = [s for s in p.sources if s.startswith("cidr:")]
        if not cidrs:
            continue
        # What compose.yaml really binds for these container ports, wherever it moved them.
        planned = {(pm.container, pm.proto) for pm in _planned_ports(p)}
        svc = cf.services.get(p.service)
        actual = [pm for pm in (svc.ports if svc else ()) if (pm.container, pm.proto) in planned]
        port = f"{span(p.host.lo, p.host.hi)}/{p.host.proto}"
        if actual and all(pm.loopback for pm in actual):
            for src in cidrs:
                marks.setdefault((src, p.service), set()).add(STRICTER)
            notes.append(f"compose: {p.service} publishes {port} on the host's loopback "
                         f"({p.host_ip}), so {', '.join(cidrs)} cannot reach it from outside "
                         "at all")
        elif actual:
            notes.append(f"compose: {p.service} publishes {port} to everyone; compose cannot "
                         f"restrict it to {', '.join(cidrs)} (the firewall and Kubernetes do)")


def _compare_egress(plan: Plan, cf: ComposeFile, notes: list[str]) -> None:
    """Services compose lets open connections out although no flow leaves the stack from them."""
    wanted = {c.src for c in plan.egress}
    r = reach(cf)
    for name in sorted(r.egress - wanted):
        nets = [n for n in r.networks.get(name, ()) if not (
            n in cf.networks and cf.networks[n].internal)]
        notes.append(f"compose: {name} is on non-internal network {', '.join(nets)}, so compose "
                     "lets it open connections out although no flow asks for that; the "
                     "firewall closes it")


def compare_compose(plan: Plan, out: Path) -> tuple[dict[Cell, str], list[str]]:
    """Marks for cells where compose.yaml lets a pair talk that the spec keeps apart (or not)."""
    path = out / "compose.yaml"
    if not path.is_file():
        return {}, [f"compose: {path} not found (run castle generate)"]
    cf = read_compose(path)
    marks: Marks = {}
    notes = [f"compose: read by {cf.reader} ({cf.reader_note})"] if cf.reader_note else []
    known = {s.name for s in plan.services}
    for name in sorted(set(cf.services) - known):
        notes.append(f"compose: service {name} is not in the spec")
    _compare_pairs(plan, cf, marks, notes)
    _compare_published(plan, cf, marks, notes)
    _compare_cidr(plan, cf, marks, notes)
    _compare_egress(plan, cf, notes)
    return {cell: " ".join(sorted(m)) for cell, m in sorted(marks.items())}, notes


# Each compare_* returns (marks, notes): marks["src", "dst"] is LOOSER(target) or
# STRICTER(target) where the artifact allows more or less than the spec on that cell; notes
# are lines for the report (missing files, what a target cannot express).


def compare_artifacts(plan: Plan, out: Path, fmt: str) -> tuple[str, bool]:
    """A matrix report of the artifacts in `out` against the spec; True when they differ."""
    if not out.is_dir():
        raise UsageError(f"{out}: no such folder")
    from castle.readers.firewall import compare_firewall
    from castle.readers.k8s import compare_k8s

    m: Matrix = spec_matrix(plan)
    marks: dict[tuple[str, str], str] = {}
    notes: list[str] = []
    for compare in (compare_compose, compare_firewall, compare_k8s):
        more_marks, more_notes = compare(plan, out)
        for cell, mark in more_marks.items():
            marks[cell] = f"{marks[cell]} {mark}" if cell in marks else mark
        notes.extend(more_notes)
    differs = bool(marks)
    if fmt == "table":
        text = render_table(m, marks)
    else:
        text = render_matrix(m, fmt)
    text += "".join(f"# {n}\n" for n in notes)
    text += "# artifacts agree with the spec\n" if not differs else "# artifacts DIFFER\n"
    return text, differs
