"""The kernel as the oracle for publish entries written as variables: compose (compose-go)
fills the generated compose.yaml, the lab emulates Docker's DNAT for what it filled, and
both firewalls admit the defaults only: another value at start is published but closed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from castle.lab.netns import Lab, Probe, Topology, netns_available
from castle.targets.generate import generate
from tests.oracles import compose_go

pytestmark = pytest.mark.netns

SPEC = """\
version = 1
[stack]
name = "vars"
[[tiers]]
name = "public"
[services.web]
tier = "public"
image = "nginx:1.27"
listen = [80, 3000]
publish = ["${WEB_PORT:-8080}:80", "${PORT:-3000}:${PORT:-3000}"]
[[flows]]
from = "internet"
to = "web"
ports = [80, 3000]
"""


@pytest.fixture(autouse=True)
def _need_tools() -> None:
    reason = netns_available() or compose_go.skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")


def _filled(out: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """compose.yaml with its ports as compose fills them under `env`."""
    for var in ("WEB_PORT", "PORT"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    project = compose_go.config_json(out / "compose.yaml", env_file=out / "none.env")
    doc = yaml.safe_load((out / "compose.yaml").read_text())
    for name, body in doc["services"].items():
        body["ports"] = [{k: v for k, v in p.items() if k in ("host_ip", "published", "target",
                                                                "protocol")}
                         for p in project["services"][name].get("ports", [])]
    return doc


def _probe(out: Path, doc: dict[str, Any], firewall: str | None, ports: list[int]
           ) -> dict[int, bool]:
    probes = {p: Probe("outside", "published", "tcp", p) for p in ports}
    with Lab(Topology.from_compose(doc)) as lab:
        if firewall is not None:
            argv = (["sh", str(out / "firewall/iptables.sh")] if firewall == "iptables"
                    else ["nft", "-f", str(out / "firewall/castle.nft")])
            done = lab.host_exec(argv)
            assert done.returncode == 0, done.stderr
        seen = lab.probe(list(probes.values()))
    return {p: seen[probe] for p, probe in probes.items()}


@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
def test_defaults_open_other_values_closed(firewall: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "zones.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    generate(spec, out, targets=["compose", "iptables", "nftables"])
    (out / "none.env").write_text("")
    defaults = _filled(out, {}, monkeypatch)
    assert _probe(out, defaults, firewall, [8080, 3000]) == {8080: True, 3000: True}
    moved = _filled(out, {"WEB_PORT": "9999", "PORT": "4000"}, monkeypatch)
    # negative control: without a firewall the lab publishes what compose filled
    assert _probe(out, moved, None, [9999, 4000]) == {9999: True, 4000: True}
    assert _probe(out, moved, firewall, [9999, 4000]) == {9999: False, 4000: False}
