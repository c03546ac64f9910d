"""The walls on a real Docker Engine: every probe equals the spec, round after round.

Two stacks (the example, and a spec with UDP, port ranges, CIDR sources, egress and an SSH
source) run side by side on one dockerd 20.10. Probes go from other containers, from the
outside namespace over IPv4 (three source addresses) and IPv6, and from the Docker host.
The answers come from tests/oracles/reference.py; the negative controls show the same
probes catch the leaks of a stack without the firewall and of IPv6-unaware publishes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine import HOST_V6, Engine, Probe
from tests.engine_stack import (
    EXAMPLE,
    FIREWALLS,
    MIX,
    Stack,
    apply,
    differences,
    prepare,
    remove,
    serve_world,
    up,
)

pytestmark = pytest.mark.engine


@pytest.fixture
def stacks(docker_engine: Engine, tmp_path: Path) -> Iterator[list[Stack]]:
    """Both stacks generated (not yet up); taken down again at the end."""
    made = [prepare(spec, tmp_path / spec.stem) for spec in (EXAMPLE, MIX)]
    serve_world(docker_engine, made)
    yield made
    for st in made:
        docker_engine.down(st.out, st.project)


def reboot(eng: Engine, ip_forward: bool) -> None:
    """What a reboot leaves: no dockerd, no ruleset; ip_forward as the host's sysctl.conf says."""
    eng.stop_dockerd()
    eng.host("nft", "flush", "ruleset")  # iptables-nft's tables are nft tables too
    eng.host("sysctl", "-qw", f"net.ipv4.ip_forward={int(ip_forward)}")


def ruleset(eng: Engine) -> str:
    """The host's whole ruleset, for comparing two loads."""
    return eng.host("nft", "-s", "list", "ruleset").stdout  # -s: no counters


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_every_round_equals_the_spec(docker_engine: Engine, stacks: list[Stack],
                                     firewall: str) -> None:
    """First apply, applied twice, dockerd restart, down + up, boot order, ip_forward preset."""
    eng = docker_engine
    found: dict[str, list[str]] = {}

    def check(round_name: str) -> None:
        found[round_name] = differences(eng, stacks)

    for st in stacks:
        up(eng, st)
        apply(eng, st, firewall)
    check("first apply")

    before = ruleset(eng)
    for st in stacks:
        apply(eng, st, firewall)
    assert ruleset(eng) == before, "a second apply changed the ruleset"
    check("applied twice")

    eng.restart_dockerd()
    for st in stacks:
        up(eng, st)  # no restart policy: compose starts them again
    check("after a dockerd restart")

    for st in stacks:
        eng.down(st.out, st.project)
    for st in stacks:
        up(eng, st)
    check("after compose down + up")

    for preset, name in ((False, "firewall loaded before dockerd"), (True, "ip_forward preset")):
        reboot(eng, ip_forward=preset)
        for st in stacks:
            apply(eng, st, firewall)
        eng.start_daemons()
        for st in stacks:
            up(eng, st)
        policy = eng.host("iptables", "-S", "FORWARD").stdout.splitlines()[0]
        # dockerd sets FORWARD to DROP only when it turned ip_forward on itself
        assert policy == ("-P FORWARD ACCEPT" if preset else "-P FORWARD DROP")
        check(name)

    for st in stacks:
        remove(eng, st, firewall)
    assert found == {name: [] for name in found}


def test_without_the_firewall_the_engine_leaks(docker_engine: Engine,
                                                stacks: list[Stack]) -> None:
    """Negative control: compose alone opens pairs, CIDR-only ports and egress to everyone."""
    eng = docker_engine
    for st in stacks:
        up(eng, st)
    wrong = differences(eng, stacks)
    assert any(w.startswith("shop: app -> web 80/tcp") for w in wrong), wrong
    assert any(w.startswith("mix: 198.51.100.2 -> published 9000/tcp") for w in wrong), wrong
    assert any(w.startswith("shop: web -> 203.0.113.2 9/tcp") for w in wrong), wrong
    assert any(w.startswith("shop: web -> host SSH") for w in wrong), wrong


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_unbound_publish_leaks_over_ipv6(docker_engine: Engine, stacks: list[Stack],
                                         firewall: str) -> None:
    """Negative control: publish CIDR-only ports on every address (castle's old output) and
    docker-proxy takes IPv6 clients past the IPv4 rules; bound to 0.0.0.0 they cannot."""
    eng = docker_engine
    mix = stacks[1]
    compose = mix.out / "compose.yaml"
    text, n = re.subn(r'"0\.0\.0\.0:', '"', compose.read_text())
    assert n == 3
    compose.write_text(text)
    up(eng, mix)
    apply(eng, mix, firewall)
    try:
        leak = Probe(eng.outside_ns, HOST_V6, 9000)
        assert eng.probe_all([leak])[leak] is True
        assert any(w.startswith("mix: IPv6 -> published 9000/tcp") for w in
                   differences(eng, [mix]))
    finally:
        remove(eng, mix, firewall)
