"""`castle draw`: the SVG parses, shows every service and tier once in its own ring, one arrow
per connected pair (counted by the reference expansion), renders with rsvg-convert, and its
boxes never overlap, at 4 and at 40 services; mermaid and dot carry every edge."""

from __future__ import annotations

import itertools
import math
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from castle.cli import app
from castle.views.draw import draw, xml_comment
from tests.oracles.reference import expected_from_toml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "zones.example.toml"
NS = {"s": "http://www.w3.org/2000/svg"}


def big_spec(n_pub: int = 6, n_back: int = 16, n_data: int = 12, n_vault: int = 6) -> str:
    """A 40-service, four-wall stack with tls, a waiver, a CIDR and egress."""
    out = ['version = 1', '[stack]', 'name = "big"']
    for t in ("public", "backend", "data", "vault"):
        out += ['[[tiers]]', f'name = "{t}"']
    pub = [f"edge-proxy-{i}" for i in range(n_pub)]
    back = [("api", "worker", "billing-service")[i % 3] + f"-{i}" for i in range(n_back)]
    data = [("redis-cache", "postgres")[i % 2] + f"-{i}" for i in range(n_data)]
    vault = [f"secrets-{i}" for i in range(n_vault)]
    for names, tier, port in ((pub, "public", 443), (back, "backend", 8000),
                              (data, "data", 5432), (vault, "vault", 8200)):
        for i, n in enumerate(names):
            out += [f'[services.{n}]', f'tier = "{tier}"', 'image = "x:1"', f'listen = [{port}]']
            if tier == "public":
                out.append(f'publish = ["{8440 + i}:443"]')
    flows = [('"internet"', f'"{n}"', "") for n in pub]
    for i, n in enumerate(back):
        flows += [(f'"{pub[i % n_pub]}"', f'"{n}"', ""),
                  (f'"{n}"', f'"{data[i % n_data]}"', "tls = true")]
    flows += [(f'"{n}"', f'"{vault[i % n_vault]}"', "") for i, n in enumerate(data)]
    flows += [(f'"{back[0]}"', f'"{back[1]}"', ""),
              (f'"{pub[0]}"', f'"{data[0]}"', 'waiver = "legacy <direct> & \\"quoted\\" path"'),
              ('"cidr:10.8.0.0/24"', f'"{pub[1]}"', ""),
              (f'"{back[2]}"', '"internet"', "ports = [443]")]
    for a, b, extra in flows:
        out += ['[[flows]]', f'from = {a}', f'to = {b}'] + ([extra] if extra else [])
    return "\n".join(out) + "\n"


HOSTILE = EXAMPLE.read_text().replace(
    'description = "admin panel drives the app\'s API"',
    'description = "admin \\"panel\\" <script>&amp; ]]> -- \'x\'"',
).replace('image = "myapp:1.0"', 'image = "myapp:1.0"\ndescription = "<b>&\\"app\\"</b>"')


@pytest.fixture(params=["example", "big", "hostile"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "zones.toml"
    path.write_text({"example": EXAMPLE.read_text(), "big": big_spec(),
                     "hostile": HOSTILE}[request.param], encoding="utf-8")
    return path


def texts(root: ET.Element, cls: str) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{{{NS['s']}}}text")
            if cls in (t.get("class") or "").split()]


def test_svg_parses_and_shows_each_name_once(spec: Path) -> None:
    raw = tomllib.loads(spec.read_text())
    root = ET.fromstring(draw(spec, "svg").encode())
    names = texts(root, "name")
    assert sorted(names) == sorted([*raw["services"], *outside(spec)])
    assert sorted(texts(root, "tier-label")) == sorted(t["name"] for t in raw["tiers"])


def outside(spec: Path) -> set[str]:
    exp = expected_from_toml(spec.read_text())
    return {p for c in exp.conns for p in c[:2] if p not in exp.services}


def test_one_arrow_per_connected_pair(spec: Path) -> None:
    root = ET.fromstring(draw(spec, "svg").encode())
    arrows = {(g.get("data-from"), g.get("data-to")) for g in root.iter(f"{{{NS['s']}}}g")
              if "flow" in (g.get("class") or "").split()}
    count = sum(1 for g in root.iter(f"{{{NS['s']}}}g")
                if "flow" in (g.get("class") or "").split())
    want = {(s, d) for s, d, _, _ in expected_from_toml(spec.read_text()).conns}
    assert arrows == want
    assert count == len(want)


def test_boxes_do_not_overlap_and_sit_in_their_ring(spec: Path) -> None:
    """Legibility as geometry: no two boxes touch; every service box lies inside its tier's
    band (between its wall and the next wall in); peers outside lie beyond the outer wall."""
    raw = tomllib.loads(spec.read_text())
    root = ET.fromstring(draw(spec, "svg").encode())
    walls = [float(c.get("r", "0")) for c in root.iter(f"{{{NS['s']}}}circle")]
    depth = {t["name"]: i for i, t in enumerate(raw["tiers"])}
    boxes = {}
    for g in root.iter(f"{{{NS['s']}}}g"):
        cls = (g.get("class") or "").split()
        if "service" in cls or "outside" in cls:
            rect = g.find("s:rect", NS)
            assert rect is not None
            name = "".join(g.find("s:text", NS).itertext())  # type: ignore[union-attr]
            x, y, w, h = (float(rect.get(k, "0")) for k in ("x", "y", "width", "height"))
            boxes[name] = (x, y, x + w, y + h)
    for (a, ba), (b, bb) in itertools.combinations(boxes.items(), 2):
        assert not (ba[0] < bb[2] and bb[0] < ba[2] and ba[1] < bb[3] and bb[1] < ba[3]), (a, b)
    for name, (x0, y0, x1, y1) in boxes.items():
        corners = [math.hypot(x, y) for x in (x0, x1) for y in (y0, y1)]
        if name in raw["services"]:
            d = depth[raw["services"][name]["tier"]]
            inner = walls[d + 1] if d + 1 < len(walls) else 0.0
            assert max(corners) < walls[d], name
            if inner:
                assert min(corners) > inner, name
        else:
            assert min(corners) > walls[0], name


def test_rsvg_renders_a_png(spec: Path, tmp_path: Path) -> None:
    rsvg = shutil.which("rsvg-convert")
    if rsvg is None:
        pytest.skip("rsvg-convert missing (Debian librsvg2-bin)")
    svg = tmp_path / "castle.svg"
    result = CliRunner().invoke(app, ["draw", str(spec), "-o", str(svg)])
    assert result.exit_code == 0, result.output
    png = tmp_path / "castle.png"
    subprocess.run([rsvg, str(svg), "-o", str(png)], check=True, capture_output=True)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_tls_dashed_and_waiver_coloured(tmp_path: Path) -> None:
    path = tmp_path / "zones.toml"
    path.write_text(big_spec())
    root = ET.fromstring(draw(path, "svg").encode())
    kinds = {}
    for g in root.iter(f"{{{NS['s']}}}g"):
        if "flow" in (g.get("class") or "").split():
            p = g.find("s:path", NS)
            assert p is not None
            kinds[(g.get("data-from"), g.get("data-to"))] = (p.get("stroke-dasharray"),
                                                             p.get("stroke"))
    assert kinds[("api-0", "redis-cache-0")][0]  # tls: dashed
    assert not kinds[("internet", "edge-proxy-0")][0]
    waived = kinds[("edge-proxy-0", "redis-cache-0")][1]
    assert waived not in {v[1] for k, v in kinds.items() if k != ("edge-proxy-0", "redis-cache-0")}


def ids_of(text: str, fmt: str) -> dict[str, str]:
    """node id -> label, read back from mermaid or dot text."""
    pat = (r'^\s*(\w+)(?:\[|\(\()"([^"]+)"' if fmt == "mermaid"
           else r'^\s*(\w+) \[label="([^"]+)"')
    return {m.group(1): m.group(2) for m in re.finditer(pat, text, re.M)}


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_graph_formats_carry_every_edge(spec: Path, fmt: str) -> None:
    text = draw(spec, fmt)
    labels = ids_of(text, fmt)
    arrow = r"-\.->|-->" if fmt == "mermaid" else r"->"
    edges = {(labels[a], labels[b]) for a, b in
             re.findall(rf"^\s*(\w+) (?:{arrow})\s*(?:\|[^|]*\|\s*)?(\w+)", text, re.M)}
    want = {(s, d) for s, d, _, _ in expected_from_toml(spec.read_text()).conns}
    assert edges == want
    tiers = [t["name"] for t in tomllib.loads(spec.read_text())["tiers"]]
    assert text.count("subgraph") == len(tiers)


def test_dot_parses_with_graphviz_when_present(spec: Path) -> None:
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("graphviz `dot` missing")
    subprocess.run([dot, "-Tsvg"], input=draw(spec, "dot").encode(), check=True,
                   capture_output=True)


def test_unknown_format_exits_2() -> None:
    result = CliRunner().invoke(app, ["draw", str(EXAMPLE), "--format", "png"])
    assert result.exit_code == 2


def test_hostile_descriptions_are_escaped_not_dropped(tmp_path: Path) -> None:
    assert HOSTILE != EXAMPLE.read_text()
    path = tmp_path / "zones.toml"
    path.write_text(HOSTILE)
    svg = draw(path, "svg")
    root = ET.fromstring(svg.encode())
    titles = ["".join(t.itertext()) for t in root.iter(f"{{{NS['s']}}}title")]
    assert any('admin "panel" <script>&amp; ]]> -- \'x\'' in t for t in titles)
    assert any('<b>&"app"</b>' in t for t in titles)
    # negative control: the same text unescaped does not parse
    with pytest.raises(ET.ParseError):
        ET.fromstring(svg.replace("&lt;script&gt;", "<script>").encode())


@pytest.mark.parametrize("name", ["a---b<&>.toml", "a--b.toml", "-----.toml"])
def test_spec_file_name_with_dashes_keeps_the_svg_well_formed(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(EXAMPLE.read_text(), encoding="utf-8")
    svg = draw(path, "svg")
    parser = ET.XMLPullParser(events=["comment"])  # the oracle: an XML parser accepts it
    parser.feed(svg.encode())
    parser.close()
    header = [c.text or "" for _, c in parser.read_events()][0]
    # Every dash survives, split by spaces only: the name is still readable in the comment.
    assert re.sub(r"(?<=-) ", "", header).count(name.split(".")[0].split("<")[0]) == 1
    # negative control: the comment's text with its runs of dashes rejoined does not parse
    with pytest.raises(ET.ParseError):
        ET.fromstring(svg.replace(header, re.sub(r"(?<=-) ", "", header)).encode())


@pytest.mark.parametrize("text", ["-", "a-", "--", "a---b", "<&>--->", "x - -- - y"])
def test_xml_comment_text_parses_even_without_spaces_around_it(text: str) -> None:
    ET.fromstring(f"<r><!--{xml_comment(text)}--></r>")
    assert re.sub(r"(?<=-) ", "", xml_comment(text)).rstrip() == re.sub(
        r"(?<=-) ", "", text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
    with pytest.raises(ET.ParseError):  # negative control: the raw text does not parse
        ET.fromstring(f"<r><!--{text}--></r>")
