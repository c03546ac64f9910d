"""Read generated artifacts back and compare the reachability they enforce with the spec."""

from __future__ import annotations

from pathlib import Path

import yaml

from castle.errors import UsageError
from castle.matrix import Matrix, render_matrix, render_table, spec_matrix
from castle.plan import Plan


def compose_pairs(doc: dict[str, object]) -> set[frozenset[str]]:
    """Unordered service pairs that share a compose network (the default one included)."""
    members: dict[str, set[str]] = {}
    services = doc.get("services") or {}
    if not isinstance(services, dict):
        return set()
    for name, svc in services.items():
        if not isinstance(svc, dict):
            continue
        if svc.get("network_mode") == "none":
            continue
        nets = svc.get("networks")
        names = list(nets) if nets else ["default"]
        for net in names:
            members.setdefault(str(net), set()).add(str(name))
    pairs: set[frozenset[str]] = set()
    for group in members.values():
        for a in group:
            for b in group:
                if a < b:
                    pairs.add(frozenset((a, b)))
    return pairs


def compare_compose(plan: Plan, out: Path) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Marks for cells where compose.yaml lets a pair talk that the spec keeps apart (or not)."""
    path = out / "compose.yaml"
    if not path.is_file():
        return {}, [f"compose: {path} not found (run castle generate)"]
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: not a compose file")
    have = compose_pairs(doc)
    want = {frozenset((c.src, c.dst)) for c in plan.internal_conns}
    marks: dict[tuple[str, str], str] = {}
    notes: list[str] = []
    for pair in sorted(have - want, key=sorted):
        a, b = sorted(pair)
        marks[(a, b)] = "LOOSER(compose)"
        notes.append(f"compose: {a} and {b} share a network but no flow joins them")
    for pair in sorted(want - have, key=sorted):
        a, b = sorted(pair)
        marks[(a, b)] = "STRICTER(compose)"
        notes.append(f"compose: a flow joins {a} and {b} but they share no network")
    cidr_pub = [p for p in plan.published if any(s.startswith("cidr:") for s in p.sources)]
    for p in cidr_pub:
        notes.append(f"compose: {p.service} publishes {p.host} to everyone; compose cannot "
                     f"restrict it to {', '.join(p.sources)} (the firewall and Kubernetes do)")
    return marks, notes


# Each compare_* returns (marks, notes): marks["src", "dst"] is LOOSER(target) or
# STRICTER(target) where the artifact allows more or less than the spec on that cell; notes
# are lines for the report (missing files, what a target cannot express).


def compare_artifacts(plan: Plan, out: Path, fmt: str) -> tuple[str, bool]:
    """A matrix report of the artifacts in `out` against the spec; True when they differ."""
    if not out.is_dir():
        raise UsageError(f"{out}: no such folder")
    from castle.firewall_read import compare_firewall
    from castle.k8s_read import compare_k8s

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
