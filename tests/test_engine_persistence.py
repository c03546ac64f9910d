"""The systemd unit's commands and drop logging on a real Docker Engine (tests/engine.py).

Boot order as on a rebooted host: dockerd stopped and its chains gone, the unit's
ExecStartPre/ExecStart run first, then dockerd starts and compose brings the stack up. The
probes (real sockets between real containers, and from the outside namespace) must equal
the spec, written out here from its words; so after a dockerd restart. With the unit
stopped the same probes leak (negative control). Drop logging is read over NFLOG in the
engine's host namespace: each forbidden probe leaves one line naming stack and service.
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

from castle.targets.generate import generate
from tests.engine import HOST_V4, OUTSIDE_V4, Engine, Probe, in_netns
from tests.oracles import nflog
from tests.test_persistence import commands

pytestmark = pytest.mark.engine

GROUP = 9
SPEC = """\
version = 1
[stack]
name = "bootlab"
subnet_pool = "10.203.0.0/16"
[[tiers]]
name = "edge"
[[tiers]]
name = "core"
[services.web]
tier = "edge"
image = "nginx:1.27"
listen = [80]
publish = ["8080:80"]
[services.app]
tier = "core"
image = "myapp:1.0"
listen = [8000]
[[flows]]
from = "internet"
to = "web"
ports = [80]
[[flows]]
from = "web"
to = "app"
ports = [8000]
[[flows]]
from = "app"
to = "internet"
ports = [9443]
waiver = "the app calls a payment API"
[firewall]
log_drops = true
log_group = 9
"""
UNITS = {"iptables": "castle-bootlab-iptables.service",
         "nftables": "castle-bootlab-nftables.service"}
FILES = {"iptables": "iptables.sh", "nftables": "castle.nft"}
# dockerd is stopped: nothing of its or castle's is left, as after a reboot
BARE = ("for t in raw nat filter; do iptables -t $t -F; iptables -t $t -X; done; "
        "iptables -P FORWARD ACCEPT; nft list tables")


def run_unit(eng: Engine, unit: Path, install: Path, *keys: str) -> None:
    """The unit's command lines, run in the engine's host namespace the way systemd would."""
    for key in keys:
        for optional, argv in commands(unit, key, install):
            done = eng.host(*argv, check=False)
            assert optional or done.returncode == 0, (argv, done.stderr)


def addr(compose: dict[str, object], svc: str) -> str:
    nets = compose["services"][svc]["networks"]  # type: ignore[index]
    return str(IPv4Address(next(iter(nets.values()))["ipv4_address"]))


def probes(eng: Engine, compose: dict[str, object]) -> dict[Probe, bool]:
    """Each probe and the spec's answer (compose alone would open the ones marked *)."""
    web, app = eng.container("bootlab", "web"), eng.container("bootlab", "app")
    eng.serve(web, [(80, "tcp")])
    eng.serve(app, [(8000, "tcp")])
    return {
        Probe(eng.outside_ns, HOST_V4, 8080): True,          # internet -> web, published
        Probe(eng.netns(web), addr(compose, "app"), 8000): True,   # web -> app
        Probe(eng.netns(app), addr(compose, "web"), 80): False,    # * no flow app -> web
        Probe(eng.netns(app), OUTSIDE_V4, 9443): True,       # app -> internet 9443
        Probe(eng.netns(app), OUTSIDE_V4, 9444): False,      # * port not in the flow
        Probe(eng.netns(web), OUTSIDE_V4, 9443): False,      # * web has no egress
        # * "internet" is public addresses only: never the metadata address or a private one
        Probe(eng.netns(app), METADATA, 9443): False,
        Probe(eng.netns(app), PRIVATE, 9443): False,
    }


FORBIDDEN_LINES = sorted(["castle/bootlab/web ", "castle/bootlab/app/out ",
                          "castle/bootlab/web/out ", "castle/bootlab/app/out ",
                          "castle/bootlab/app/out "])
METADATA, PRIVATE = "169.254.169.254", "192.168.77.7"  # made in the outside namespace


def extra_outside(eng: Engine, verb: str) -> None:
    """Give the outside namespace the metadata and a private address (verb: replace, del)."""
    for a in (METADATA, PRIVATE):
        eng.outside("ip", "addr", verb, f"{a}/32", "dev", "eth0", check=verb == "replace")
        eng.host("ip", "route", verb, f"{a}/32", "via", OUTSIDE_V4, check=verb == "replace")


@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
def test_boot_order_and_logging_on_a_real_engine(docker_engine: Engine, firewall: str,
                                                 tmp_path: Path) -> None:
    """Unit before dockerd, dockerd restarted, unit stopped: spec, spec, leaks; one log line
    per forbidden probe, none for the allowed ones."""
    eng = docker_engine
    spec = tmp_path / "zones.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    generate(spec, out, targets=["compose", firewall])
    compose = yaml.safe_load((out / "compose.yaml").read_text())
    unit, install = out / "firewall" / UNITS[firewall], out / "firewall" / FILES[firewall]
    eng.tag_probe("nginx:1.27", "myapp:1.0")
    extra_outside(eng, "replace")
    for at, port in ((OUTSIDE_V4, 9443), (OUTSIDE_V4, 9444), (METADATA, 9443),
                     (PRIVATE, 9443)):  # the "internet": echo servers in the outside namespace
        try:
            eng.servers.listen(eng.outside_ns, port, "tcp", at)
        except OSError as exc:  # served already for the other firewall (one engine a session)
            if exc.errno != errno.EADDRINUSE:
                raise
    eng.stop_dockerd()
    try:
        bare = eng.host("sh", "-c", BARE)
        assert "castle" not in bare.stdout
        start = ("ExecStartPre", "ExecStart") if firewall == "nftables" else ("ExecStart",)
        run_unit(eng, unit, install, *start)
        eng.start_daemons()
        eng.up(out, "bootlab")
        want = probes(eng, compose)
        with in_netns(eng.host_ns):
            sock = nflog.open_group(GROUP)
        try:
            # one SYN each: the timeout is below TCP's first retransmission
            assert eng.probe_all(want, timeout=0.6) == want
            lines = nflog.read(sock)
        finally:
            sock.close()
        assert sorted(g.prefix for g in lines) == FORBIDDEN_LINES

        eng.restart_dockerd()  # containers stop with dockerd; castle's rules stay
        eng.up(out, "bootlab")
        want = probes(eng, compose)
        assert eng.probe_all(want) == want

        run_unit(eng, unit, install, "ExecStop")
        leaky = eng.probe_all(want)
        assert {p for p, ok in leaky.items() if ok != want[p]} == {
            p for p, ok in want.items() if not ok}  # control: every forbidden probe opens
    finally:
        eng.down(out, "bootlab")
        run_unit(eng, unit, install, "ExecStop")
        extra_outside(eng, "del")
