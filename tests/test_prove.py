"""castle prove: its questions, its answers checked against the reference, and real runs."""

from __future__ import annotations

import tomllib
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

import castle.lab.netns
from castle.errors import UsageError
from castle.lab import prove as prove_mod
from castle.plan import compile_plan
from castle.spec.load import load
from castle.targets import iptables
from tests.oracles import reference

ROOT = Path(__file__).resolve().parent.parent
SPECS = [ROOT / "zones.example.toml", *sorted((ROOT / "tests/data/specs").glob("fw-*.toml"))]
IDS = [p.stem for p in SPECS]


def covers(peer: str, addr: IPv4Address) -> bool:
    return peer == "internet" or (peer.startswith("cidr:") and addr in IPv4Network(peer[5:]))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_cases_answers_agree_with_reference(spec: Path) -> None:
    """Every answer prove expects is the reference's answer; every reference pair is asked."""
    plan = compile_plan(load(spec))
    items, _ = prove_mod.cases(plan)
    ref = reference.expected(tomllib.loads(spec.read_text()))
    published = {(h, p): (s, c) for s, h, c, p in ref.published}
    asked: set[tuple[str, str]] = set()
    for c in items:
        if c.dst in ref.services:
            want = (c.src, c.dst, c.proto, c.port) in ref.conns
            asked.add((c.src, c.dst))
        elif c.dst == "published":
            addr = prove_mod.OUTSIDE if c.src == "outside" else IPv4Address(c.src[8:])
            svc, cport = published[(c.port, c.proto)]
            want = any(covers(s, addr) for s, d, p, n in ref.ingress_conns
                       if (d, p, n) == (svc, c.proto, cport))
        elif c.dst == "published6":  # IPv6 clients: internet, inside no IPv4 CIDR
            svc, cport = published[(c.port, c.proto)]
            want = any(s == "internet" for s, d, p, n in ref.ingress_conns
                       if (d, p, n) == (svc, c.proto, cport))
        elif c.dst == "outside":
            want = any(covers(d, prove_mod.OUTSIDE) for s, d, p, n in ref.egress_conns
                       if (s, p, n) == (c.src, c.proto, c.port))
        elif c.dst.startswith("outside:"):  # the metadata address: only a CIDR flow names it
            addr = IPv4Address(c.dst[8:])
            assert addr == IPv4Address("169.254.169.254")
            want = any(d.startswith("cidr:") and addr in IPv4Network(d[5:])
                       for s, d, p, n in ref.egress_conns
                       if (s, p, n) == (c.src, c.proto, c.port))
        else:
            want = False  # the host itself
        assert c.want == want, c
    pairs = {(s, d) for s, d, _, _ in ref.conns if s in ref.services and d in ref.services}
    assert pairs <= asked
    assert any(not c.want for c in items if c.dst in ref.services)  # unnamed ports are asked


def test_prove_needs_root_and_namespaces(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without namespaces: a clear usage error (exit 2), and nothing is written."""
    monkeypatch.setattr(castle.lab.netns, "netns_available", lambda: "network namespaces need root")
    with pytest.raises(UsageError, match="need root") as err:
        prove_mod.prove(ROOT / "zones.example.toml", tmp_path, ["iptables"])
    assert err.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_prove_rejects_unknown_firewall(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(castle.lab.netns, "netns_available", lambda: None)
    with pytest.raises(UsageError, match="unknown firewall"):
        prove_mod.prove(ROOT / "zones.example.toml", None, ["pf"])


def _skip_without_netns() -> None:
    reason = castle.lab.netns.netns_available()
    if reason:
        pytest.skip(reason)


@pytest.mark.netns
def test_prove_example_holds(tmp_path: Path) -> None:
    """The example proves clean with both firewalls, into -o and into a temporary folder."""
    _skip_without_netns()
    result = prove_mod.prove(ROOT / "zones.example.toml", tmp_path, ["iptables", "nftables"])
    assert result.ok, result.report
    assert "iptables: 63 probes, 0 differences" in result.report
    assert "nftables: 63 probes, 0 differences" in result.report
    assert (tmp_path / "firewall/iptables.sh").is_file()
    assert prove_mod.prove(ROOT / "zones.example.toml", None, ["nftables"]).ok


@pytest.mark.netns
def test_prove_reports_a_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: a generator that lets everything into db is caught, cell by cell."""
    _skip_without_netns()
    real = iptables._destination

    def leaky(plan, rs, svc, chain, *rest):  # type: ignore[no-untyped-def]
        if svc.name == "db":
            rs.add(chain, "-j RETURN")
        real(plan, rs, svc, chain, *rest)

    monkeypatch.setattr(iptables, "_destination", leaky)
    result = prove_mod.prove(ROOT / "zones.example.toml", None, ["iptables"])
    assert not result.ok
    assert "OPEN (leak)" in result.report and "proof FAILED" in result.report
    rows = [x.split() for x in result.report.splitlines() if "OPEN (leak)" in x]
    # app shares a network with db: the leak shows on the port no flow names. web and admin
    # share none, and castle's RETURN hands them to Docker's isolation, which still drops.
    assert {(r[0], r[1]) for r in rows} == {("app", "db")}


@pytest.mark.netns
@pytest.mark.skipif(castle.lab.netns.docker_proxy() is None, reason="docker-proxy (docker.io) "
                    "is not installed")
def test_prove_catches_the_ipv6_docker_proxy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: CIDR-only ports published on every address (castle's old output)
    reach IPv6 clients through docker-proxy; bound to 0.0.0.0 they prove clean."""
    _skip_without_netns()
    from castle.targets import compose

    mix = ROOT / "tests/data/specs/engine-mix.toml"
    assert prove_mod.prove(mix, None, ["iptables", "nftables"]).ok
    monkeypatch.setattr(compose, "bind_ip", lambda p: p.host_ip)
    result = prove_mod.prove(mix, None, ["nftables"])
    assert not result.ok
    rows = {tuple(x.split()[2:4]) for x in result.report.splitlines() if "OPEN (leak)" in x}
    assert rows == {("office", "9000->9000/tcp"), ("office", "5000->5000/udp"),
                    ("gate", "8000->8000/tcp"), ("gate", "8002->8002/tcp")}
    assert all(x.split()[:2] == ["internet", "IPv6"]
               for x in result.report.splitlines() if "OPEN (leak)" in x)


def test_lab_fills_publish_variables_with_their_defaults() -> None:
    """compose.yaml keeps `${VAR:-DEFAULT}` in published ports; the lab builds what castle
    walls, the defaults (a plain entry is read as before: the control)."""
    from castle.lab.topology import _parse_port

    assert _parse_port("web", "${BIND:-127.0.0.1}:${TLS_PORT-8443}:443/tcp") == [
        (IPv4Address("127.0.0.1"), 8443, 443, "tcp", False)]
    assert _parse_port("web", {"published": "${P:-8080}", "target": "${T:-80}"}) == [
        (None, 8080, 80, "tcp", True)]
    assert _parse_port("web", "8080:80") == [(None, 8080, 80, "tcp", True)]


@pytest.mark.netns
def test_prove_holds_with_variables_in_publish(tmp_path: Path) -> None:
    """A spec whose publish entries are variables proves clean with both firewalls."""
    _skip_without_netns()
    text = (ROOT / "zones.example.toml").read_text()
    spec = tmp_path / "zones.toml"
    spec.write_text(text.replace(
        "[services.web]\n",
        '[services.web]\npublish = ["${WEB_PORT:-8080}:80", "${TLS_PORT:-8443}:443"]\n', 1))
    result = prove_mod.prove(spec, tmp_path / "out", ["iptables", "nftables"])
    assert result.ok, result.report
    assert "iptables: " in result.report and "nftables: " in result.report
