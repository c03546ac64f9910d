"""[firewall] log_drops: one rate-limited line per forbidden probe, naming stack and service.

The kernel is the oracle: the firewalls run in the emulated host's namespace and the lines
are read back from the kernel over NFLOG (tests/oracles/nflog.py, raw netlink, in that same
namespace: the plain kernel log of a non-initial namespace stays empty while the machine's
net.netfilter.nf_log_all_netns is 0, so the LOG variant is checked by loading it for real).
"""

from __future__ import annotations

import re
import shutil
import socket
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from castle.cli import app
from castle.lab.netns import Lab, Probe, Topology, netns_available
from castle.lab.probe import in_netns
from castle.targets import droplog
from castle.targets.generate import generate
from tests.oracles import nflog
from tests.test_firewall_kernel import EXAMPLE, FIREWALL, apply

GROUP = 7
LOGGED = f"\n[firewall]\nlog_drops = true\nlog_group = {GROUP}\n"


@pytest.fixture
def _lab_ok() -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    for tool in ("iptables-save", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def build(tmp_path: Path, extra: str) -> tuple[Path, dict[str, object]]:
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text() + extra)
    out = tmp_path / "out"
    generate(spec, out, targets=FIREWALL)
    return out, yaml.safe_load((out / "compose.yaml").read_text())



def addresses(compose: dict[str, object], svc: str) -> set[IPv4Address]:
    nets = compose["services"][svc]["networks"]  # type: ignore[index]
    return {IPv4Address(n["ipv4_address"]) for n in nets.values()}


def one_probe(lab: Lab, sock: socket.socket, probe: Probe, want_open: bool
              ) -> list[nflog.Logged]:
    """Run one probe (a single SYN: the timeout is below TCP's first retransmission)."""
    assert lab.probe([probe], timeout=0.5)[probe] is want_open
    return nflog.read(sock)


@pytest.mark.netns
@pytest.mark.usefixtures("_lab_ok")
@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
def test_a_forbidden_probe_leaves_one_line(firewall: str, tmp_path: Path) -> None:
    """app -> web:80 (no flow) logs once as castle/shop/web, with app's and web's addresses;
    web -> internet logs once as castle/shop/web/out; an allowed probe logs nothing."""
    out, compose = build(tmp_path, LOGGED)
    with Lab(Topology.from_compose(compose)) as lab:
        apply(lab, out, firewall)
        sock = in_netns(lab.host_ns, lambda: nflog.open_group(GROUP))
        try:
            assert nflog.read(sock, quiet=0.3) == []
            got = one_probe(lab, sock, Probe("app", "web", "tcp", 80), False)
            assert [g.prefix for g in got] == ["castle/shop/web "]
            assert got[0].src in addresses(compose, "app")
            assert got[0].dst in addresses(compose, "web")
            assert one_probe(lab, sock, Probe("web", "app", "tcp", 8000), True) == []
            got = one_probe(lab, sock, Probe("web", "outside", "tcp", 443), False)
            assert [g.prefix for g in got] == ["castle/shop/web/out "]
            assert got[0].src in addresses(compose, "web")
            got = one_probe(lab, sock, Probe("outside", "published", "tcp", 8080), False)
            assert got == []  # nothing published there: the host itself refused, no service
        finally:
            sock.close()


@pytest.mark.netns
@pytest.mark.usefixtures("_lab_ok")
@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
def test_off_by_default_logs_nothing(firewall: str, tmp_path: Path) -> None:
    """Control: the same forbidden probe without log_drops leaves no line in the group."""
    out, compose = build(tmp_path, "")
    with Lab(Topology.from_compose(compose)) as lab:
        apply(lab, out, firewall)
        sock = in_netns(lab.host_ns, lambda: nflog.open_group(GROUP))
        try:
            assert one_probe(lab, sock, Probe("app", "web", "tcp", 80), False) == []
        finally:
            sock.close()


@pytest.mark.netns
@pytest.mark.usefixtures("_lab_ok")
def test_kernel_log_variant_loads_with_rate_and_prefix(tmp_path: Path) -> None:
    """Without log_group the rules are LOG / nft log with the limit: the kernel takes both."""
    out, compose = build(tmp_path, '\n[firewall]\nlog_drops = true\nlog_rate = "3/second"\n')
    with Lab(Topology.from_compose(compose)) as lab:
        apply(lab, out, "iptables")
        apply(lab, out, "nftables")
        saved = lab.host_exec(["iptables-save", "-t", "filter"]).stdout
        listed = lab.host_exec(["nft", "list", "table", "inet", "castle_shop"]).stdout
    assert re.search(r'-m limit --limit 3/sec -j LOG --log-prefix "castle/shop/web "', saved)
    # nft and iptables-save leave out the burst when it is the default 5
    assert re.search(r'limit rate 3/second (burst 5 packets )?log prefix "castle/shop/web "',
                     listed)


def test_prefixes_fit_and_stay_distinct() -> None:
    """<= 29 characters for 63-character names; names sharing a long prefix stay apart."""
    long = "a" * 60
    names = [long + "bcd", long + "bce", "web", "payment-gateway", "payment-gateways"]
    seen = set()
    for stack in ("shop", "x" * 63):
        for svc in names:
            for out in (False, True):
                text = droplog.prefix(stack, svc, out)
                assert len(text) <= 29 and text.startswith("castle/") and text.endswith(" ")
                seen.add(text)
    assert len(seen) == 2 * len(names) * 2
    assert droplog.prefix("shop", "web") == "castle/shop/web "


def test_off_changes_no_byte(tmp_path: Path) -> None:
    """log_drops = false writes exactly what a spec without the key writes (header aside)."""
    def body(extra: str, name: str) -> dict[str, str]:
        spec = tmp_path / f"{name}.toml"
        spec.write_text(EXAMPLE.read_text() + extra)
        generate(spec, tmp_path / name, targets=FIREWALL)
        return {p.name: "\n".join(x for x in p.read_text().splitlines()
                                  if "Generated by castle" not in x)
                for p in sorted((tmp_path / name / "firewall").iterdir())}
    assert body("", "plain") == body("\n[firewall]\nlog_drops = false\n", "off")
    on = body(LOGGED, "on")
    assert "NFLOG" in on["iptables.sh"] and "log prefix" in on["castle.nft"]


@pytest.mark.parametrize("extra, message", [
    ('log_rate = "fast"', "firewall.log_rate: 'fast' is not a rate: write N/second"),
    ('log_rate = "0/minute"', "firewall.log_rate: '0/minute' is not a rate"),
    ("log_group = 70000", "firewall.log_group: Input should be less than or equal to 65535"),
    ('log_drops = "yes"', "firewall.log_drops: Input should be a valid boolean"),
])
def test_bad_log_settings_are_spec_errors(extra: str, message: str, tmp_path: Path) -> None:
    """A bad log key is FILE:LINE: error, exit 2, nothing written."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text() + f"\n[firewall]\n{extra}\n")
    lines = spec.read_text().splitlines()
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{spec}:{len(lines)}: error: {message}" in result.output
    assert not (tmp_path / "out").exists()
