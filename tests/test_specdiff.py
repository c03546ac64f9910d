"""`castle diff`: what a spec change opens and closes, checked port by port against the
clean-room reference expansion (tests/oracles/reference.py), not against castle's own plan."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from castle.cli import app
from castle.views.specdiff import diff_specs, intersect, subtract
from tests.oracles.reference import expected_from_toml

BASE = """\
version = 1
[stack]
name = "shop"
[[tiers]]
name = "public"
[[tiers]]
name = "backend"
[[tiers]]
name = "data"
[services.web]
tier = "public"
image = "nginx:1.27"
listen = [80, 443]
[services.app]
tier = "backend"
image = "myapp:1.0"
listen = ["8000-8010/tcp", "53/udp"]
[services.admin]
tier = "backend"
image = "admin:1"
listen = [8080]
[services.db]
tier = "data"
image = "postgres:16"
listen = [5432]
[[flows]]
from = "internet"
to = "web"
ports = [80, 443]
[[flows]]
from = "web"
to = "app"
ports = ["8000-8010/tcp"]
[[flows]]
from = "app"
to = "db"
ports = [5432]
tls = true
"""

ADMIN = """
[[flows]]
from = "admin"
to = "app"
ports = [8000]
description = "admin | <b>panel</b> & `tick`"
"""


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def ports_of(report: str, kind: str) -> set[tuple[str, str, str, int]]:
    """(src, dst, proto, port) of every text-report row of one kind, ranges expanded."""
    out = set()
    section = None
    for line in report.splitlines():
        if re.match(r"^\w+:$", line):
            section = line[:-1]
            continue
        m = re.match(r"^  [+~-] (\S+) \(\S+\) -> (\S+) \(\S+\) (\d+)(?:-(\d+))?/(\w+)", line)
        if m and section == kind:
            lo, hi = int(m.group(3)), int(m.group(4) or m.group(3))
            out |= {(m.group(1), m.group(2), m.group(5), p) for p in range(lo, hi + 1)}
    return out


def oracle(old: str, new: str) -> tuple[set[tuple[str, str, str, int]], ...]:
    a, b = expected_from_toml(old).conns, expected_from_toml(new).conns
    return set(b - a), set(a - b)


def run(old: Path, new: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["diff", str(old), str(new), *args])
    return result.exit_code, result.output


def test_identical_specs_report_nothing(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", BASE)
    code, out = run(a, a)
    assert code == 0
    assert "no connection opens, closes or changes" in out
    result = diff_specs(a, a, "markdown")
    assert (result.opened, result.closed) == (0, 0)


def test_added_flow_opens_and_exits_1(tmp_path: Path) -> None:
    old, new = BASE, BASE + ADMIN
    code, out = run(write(tmp_path, "a.toml", old), write(tmp_path, "b.toml", new))
    assert code == 1
    opened, closed = oracle(old, new)
    assert opened == {("admin", "app", "tcp", 8000)}
    assert ports_of(out, "opened") == opened
    assert ports_of(out, "closed") == closed == set()
    headers = [i for i, line in enumerate(new.splitlines(), start=1) if line == "[[flows]]"]
    assert f"flows[3] (line {headers[3]})" in out  # the line of the new [[flows]] header


def test_removed_flow_closes_and_exits_0(tmp_path: Path) -> None:
    old, new = BASE + ADMIN, BASE
    code, out = run(write(tmp_path, "a.toml", old), write(tmp_path, "b.toml", new))
    assert code == 0
    opened, closed = oracle(old, new)
    assert ports_of(out, "closed") == closed == {("admin", "app", "tcp", 8000)}
    assert ports_of(out, "opened") == opened == set()


def test_narrowing_a_range_splits_it(tmp_path: Path) -> None:
    old = BASE
    new = BASE.replace('to = "app"\nports = ["8000-8010/tcp"]',
                       'to = "app"\nports = ["8000-8002/tcp", "8006/tcp", "8009-8010/tcp"]')
    assert new != old
    code, out = run(write(tmp_path, "a.toml", old), write(tmp_path, "b.toml", new))
    assert code == 0
    opened, closed = oracle(old, new)
    assert ports_of(out, "closed") == closed
    assert {p for _, _, _, p in closed} == {8003, 8004, 8005, 8007, 8008}
    assert "8003-8005/tcp" in out and "8007-8008/tcp" in out  # presented as ranges
    # widening back opens exactly those ports, and fails the check
    code, out = run(write(tmp_path, "b.toml", new), write(tmp_path, "a.toml", old))
    assert code == 1
    assert ports_of(out, "opened") == closed


def test_random_looking_changes_match_the_oracle(tmp_path: Path) -> None:
    old = BASE + ADMIN
    new = BASE.replace('ports = ["8000-8010/tcp"]', 'ports = ["8004-8010/tcp"]') + """
[[flows]]
from = "app"
to = "internet"
ports = [443, "53/udp"]
[[flows]]
from = "cidr:10.8.0.0/24"
to = "web"
ports = [443]
"""
    code, out = run(write(tmp_path, "a.toml", old), write(tmp_path, "b.toml", new))
    assert code == 1
    opened, closed = oracle(old, new)
    assert ports_of(out, "opened") == opened
    assert ports_of(out, "closed") == closed
    assert "new egress to internet" in out
    assert "new published host port 443" in out


def test_tls_dropped_and_waiver_added_are_flagged(tmp_path: Path) -> None:
    old = BASE
    new = BASE.replace("tls = true\n", "") + """
[[flows]]
from = "web"
to = "db"
ports = [5432]
waiver = "legacy reports | quarterly"
"""
    code, out = run(write(tmp_path, "a.toml", old), write(tmp_path, "b.toml", new))
    assert code == 1
    assert re.search(r"~ app \(backend\) -> db \(data\) 5432/tcp\n\s+TLS dropped", out)
    assert "waiver: legacy reports | quarterly" in out
    result = diff_specs(tmp_path / "a.toml", tmp_path / "b.toml", "text")
    assert result.opened == 2  # web -> db opened, app -> db weakened
    code, out = run(tmp_path / "b.toml", tmp_path / "a.toml")
    assert "TLS added" in out


def test_markdown_is_a_table_with_escaped_cells(tmp_path: Path) -> None:
    a, b = write(tmp_path, "a.toml", BASE), write(tmp_path, "b.toml", BASE + ADMIN.replace(
        "description", 'waiver = "ok | <script>"\ndescription'))
    code, out = run(a, b, "--format", "markdown")
    assert code == 1
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| | change | from | to | ports |")
    assert set(rows[1].replace("|", "").strip()) == {"-"}
    assert len(rows) == 3
    cells = re.split(r"(?<!\\)\|", rows[2])
    assert len(cells) == 9  # 7 cells: the waiver's pipe is escaped, not a new column
    assert "<script>" not in out and "&lt;script&gt;" in out


@pytest.mark.parametrize(("spans", "minus", "left", "both"), [
    ([(1, 10)], [(3, 4), (8, 20)], [(1, 2), (5, 7)], [(3, 4), (8, 10)]),
    ([(1, 5), (6, 9)], [], [(1, 9)], []),
    ([(5, 5)], [(1, 65535)], [], [(5, 5)]),
])
def test_range_arithmetic(spans: list[tuple[int, int]], minus: list[tuple[int, int]],
                          left: list[tuple[int, int]], both: list[tuple[int, int]]) -> None:
    def expand(xs: list[tuple[int, int]]) -> set[int]:
        return {p for lo, hi in xs for p in range(lo, hi + 1)}
    assert subtract(spans, minus) == left
    assert expand(left) == expand(spans) - expand(minus)
    assert intersect(spans, minus) == both


def test_bad_spec_exits_2(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", BASE)
    b = write(tmp_path, "b.toml", BASE.replace('to = "db"', 'to = "dbb"'))
    code, out = run(a, b)
    assert code == 2
    assert "did you mean 'db'" in out
