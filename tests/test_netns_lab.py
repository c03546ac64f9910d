"""The netns lab itself: an emulated Docker host whose verdicts come from the real kernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from castle.netns import (
    Lab,
    LabError,
    Probe,
    Published,
    Topology,
    docker_iptables,
    netns_available,
)

ROOT = Path(__file__).resolve().parents[1]

# Written by hand, not by castle: the lab is tested on its own.
COMPOSE: dict[str, Any] = {
    "networks": {
        "front": {"ipam": {"config": [{"subnet": "10.99.1.0/24"}]}},
        "back": {"internal": True, "ipam": {"config": [{"subnet": "10.99.2.0/24"}]}},
    },
    "services": {
        "web": {
            "image": "nginx",
            "networks": {"front": {"ipv4_address": "10.99.1.10"}},
            "ports": ["8080:80", "5353:53/udp"],
        },
        "api": {
            "networks": {
                "front": {"ipv4_address": "10.99.1.11"},
                "back": {"ipv4_address": "10.99.2.11"},
            },
        },
        "db": {
            "networks": {"back": {"ipv4_address": "10.99.2.12"}},
            "ports": [{"target": 5432, "published": 15432}],  # internal only: never published
        },
        "lone": {"network_mode": "none"},
    },
}

WEB_TO_API_80 = """*filter
:DOCKER-USER - [0:0]
-A DOCKER-USER -s 10.99.1.10/32 -d 10.99.1.11/32 -p tcp -m tcp --dport 80 -j DROP
COMMIT
"""

needs_netns = pytest.mark.skipif(
    netns_available() is not None, reason=f"netns lab unavailable: {netns_available()}"
)


def lab_names() -> set[str]:
    """The names `ip netns list` shows."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def reach(lab: Lab, *probes: Probe) -> list[bool]:
    """Probe results in the order asked."""
    got = lab.probe(probes)
    return [got[p] for p in probes]


def tcp(src: str, dst: str, port: int) -> Probe:
    """A TCP probe."""
    return Probe(src, dst, "tcp", port)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One lab with dockerd's rules only, shared by the read-only tests."""
    if netns_available() is not None:
        pytest.skip(f"netns lab unavailable: {netns_available()}")
    with Lab(Topology.from_compose(COMPOSE)) as running:
        yield running


# --- reading compose (no root needed) --------------------------------------------------------


def test_from_compose_reads_networks_addresses_and_ports() -> None:
    topo = Topology.from_compose(COMPOSE)
    assert [(n.name, str(n.subnet), n.internal) for n in topo.nets] == [
        ("front", "10.99.1.0/24", False), ("back", "10.99.2.0/24", True)]
    addrs = {c.name: {k: str(v) for k, v in c.addrs.items()} for c in topo.containers}
    assert addrs == {"web": {"front": "10.99.1.10"},
                     "api": {"front": "10.99.1.11", "back": "10.99.2.11"},
                     "db": {"back": "10.99.2.12"}, "lone": {}}
    assert topo.published == (Published(8080, "web", 80, "tcp", None, True),
                              Published(5353, "web", 53, "udp", None, True),
                              Published(15432, "db", 5432, "tcp", None, True))


def test_port_syntaxes() -> None:
    doc = {"networks": COMPOSE["networks"], "services": {"s": {
        "networks": ["front"],
        "ports": ["127.0.0.1:9000:9001", "8000-8001:80-81/udp", 7000, "7001", "[::1]:81:81",
                  {"target": 443, "published": "9443", "protocol": "udp", "host_ip": "0.0.0.0"},
                  {"target": 444}]}}}
    got = {(p.host_port, p.container_port, p.proto, str(p.host_ip), p.ipv6)
           for p in Topology.from_compose(doc).published}
    # only ports published without a host address get docker-proxy's [::] path
    assert got == {(9000, 9001, "tcp", "127.0.0.1", False), (8000, 80, "udp", "None", True),
                   (8001, 81, "udp", "None", True), (9443, 443, "udp", "None", False)}


def test_addresses_are_allocated_when_missing_and_gw_priority_orders_networks() -> None:
    doc = {"networks": COMPOSE["networks"], "services": {
        "a": {"networks": {"front": {"ipv4_address": "10.99.1.2"}}},
        "b": {"networks": {"back": None, "front": {"gw_priority": 1}}}}}
    b = Topology.from_compose(doc).containers[1]
    assert list(b.addrs) == ["front", "back"]
    assert {k: str(v) for k, v in b.addrs.items()} == {"front": "10.99.1.3", "back": "10.99.2.2"}


@pytest.mark.parametrize(("services", "networks", "message"), [
    ({"s": {"image": "x"}}, None, "default network"),
    ({"s": {"networks": ["nope"]}}, None, "undefined network 'nope'"),
    ({"s": {"network_mode": "host"}}, None, "network_mode 'host'"),
    ({"s": {"networks": {"front": {"ipv4_address": "10.99.9.9"}}}}, None, "unusable on front"),
    ({"s": {"networks": {"front": {"ipv4_address": "10.99.1.1"}}}}, None, "unusable on front"),
    ({"s": {"networks": ["front"], "ports": ["80:80/sctp"]}}, None, "protocol 'sctp'"),
    ({"s": {"networks": ["front"], "ports": ["${PORT}:80"]}}, None, "bad port"),
    ({"outside": {"networks": ["front"]}}, None, "reserved"),
    ({}, {"n": {"driver": "bridge"}}, "no ipam.config"),
    ({}, {"n": {"internal": "yes", "ipam": {"config": [{"subnet": "10.1.0.0/24"}]}}}, "internal"),
    ({}, {"a": {"ipam": {"config": [{"subnet": "10.1.0.0/16"}]}},
          "b": {"ipam": {"config": [{"subnet": "10.1.2.0/24"}]}}}, "overlap"),
])
def test_compose_that_cannot_be_emulated_is_refused(
    services: dict[str, Any], networks: dict[str, Any] | None, message: str
) -> None:
    doc = {"networks": networks or COMPOSE["networks"], "services": services}
    with pytest.raises(LabError, match=message):
        Topology.from_compose(doc)


def test_dockerd_rules_follow_engine_28_layout() -> None:
    rules = docker_iptables(Topology.from_compose(COMPOSE), {"front": "b0", "back": "b1"})
    lines = rules.splitlines()
    forward = [line for line in lines if line.startswith("-A FORWARD ")]
    assert forward == ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-FORWARD"]
    assert not [line for line in lines if line.startswith("-A DOCKER-USER")]
    assert ":FORWARD DROP [0:0]" in lines
    assert "-A POSTROUTING -s 10.99.1.0/24 ! -o b0 -j MASQUERADE" in lines
    assert not [line for line in lines if "MASQUERADE" in line and "10.99.2." in line]
    assert "-A DOCKER-INTERNAL ! -d 10.99.2.0/24 -i b1 -j DROP" in lines
    assert [line for line in lines if "DNAT" in line] == [
        "-A DOCKER ! -i b0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.99.1.10:80",
        "-A DOCKER ! -i b0 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.99.1.10:53"]


# --- the lab on the real kernel ---------------------------------------------------------------


@pytest.mark.netns
@needs_netns
def test_same_network_containers_reach_each_other(lab: Lab) -> None:
    assert reach(lab, tcp("web", "api", 80), tcp("api", "web", 80), Probe("web", "api", "udp", 53),
                 tcp("api", "db", 5432), tcp("db", "api", 9000)) == [True] * 5


@pytest.mark.netns
@needs_netns
def test_different_networks_are_isolated(lab: Lab) -> None:
    assert reach(lab, tcp("web", "db", 5432), tcp("db", "web", 80), tcp("lone", "web", 80),
                 tcp("web", "lone", 80), Probe("web", "db", "udp", 53)) == [False] * 5


@pytest.mark.netns
@needs_netns
def test_internal_network_has_no_egress_while_others_do(lab: Lab) -> None:
    assert reach(lab, tcp("web", "outside", 443), tcp("api", "outside", 443),
                 Probe("web", "outside", "udp", 53), tcp("db", "outside", 443),
                 tcp("lone", "outside", 443)) == [True, True, True, False, False]


@pytest.mark.netns
@needs_netns
def test_published_ports_and_only_those_are_reachable_from_outside(lab: Lab) -> None:
    assert reach(
        lab,
        tcp("outside", "published", 8080),
        Probe("outside", "published", "udp", 5353),
        tcp("outside:198.51.100.7", "published", 8080),
        tcp("outside", "published", 15432),  # db is on an internal network: not published
        tcp("outside", "published", 80),  # not a published host port
        tcp("outside", "web", 80),  # straight to the container address: dockerd drops it
        tcp("outside", "api", 80),
    ) == [True, True, True, False, False, False, False]


@pytest.mark.netns
@needs_netns
def test_the_host_itself_is_reachable(lab: Lab) -> None:
    assert reach(lab, tcp("db", "host:back", 22), tcp("web", "host:front", 22),
                 tcp("outside", "host", 22), tcp("lone", "host:front", 22)) == [True] * 3 + [False]


@pytest.mark.netns
@needs_netns
def test_a_host_listener_never_answers_for_a_published_probe(lab: Lab) -> None:
    assert reach(lab, tcp("outside", "host", 8081), tcp("outside", "published", 8081),
                 tcp("outside", "host", 8080), tcp("outside", "published", 8080)
                 ) == [True, False, False, True]


@pytest.mark.netns
@needs_netns
def test_progress_reports_every_probe() -> None:
    seen: list[tuple[int, int]] = []
    with Lab(Topology.from_compose(COMPOSE), progress=lambda d, t: seen.append((d, t))) as lab:
        lab.probe([tcp("web", "api", 80), tcp("web", "db", 80)], timeout=0.3)
    assert seen[-1] == (2, 2)


@pytest.mark.netns
@needs_netns
def test_docker_user_rule_blocks_a_same_bridge_pair() -> None:
    with Lab(Topology.from_compose(COMPOSE)) as lab:
        before = reach(lab, tcp("web", "api", 80))
        loaded = lab.host_exec(["iptables-restore", "--noflush"], input=WEB_TO_API_80)
        assert loaded.returncode == 0, loaded.stderr
        after = reach(lab, tcp("web", "api", 80), tcp("api", "web", 80),
                      Probe("web", "api", "udp", 80))
    assert before == [True]
    assert after == [False, True, True]


@pytest.mark.netns
@needs_netns
def test_without_bridge_nf_call_the_same_rule_does_not_block() -> None:
    """Negative control: a bridged pair bypasses iptables unless br_netfilter calls it."""
    with Lab(Topology.from_compose(COMPOSE), bridge_nf_call=False) as lab:
        loaded = lab.host_exec(["iptables-restore", "--noflush"], input=WEB_TO_API_80)
        assert loaded.returncode == 0, loaded.stderr
        assert reach(lab, tcp("web", "api", 80)) == [True]


@pytest.mark.netns
@needs_netns
@pytest.mark.skipif(subprocess.run(["which", "nft"], capture_output=True).returncode != 0,
                    reason="nft is not installed")
def test_nft_forward_drop_blocks(tmp_path: Path) -> None:
    ruleset = tmp_path / "test.nft"
    ruleset.write_text(
        "table inet labtest {\n"
        "  chain labfwd {\n"
        "    type filter hook forward priority filter - 1; policy accept;\n"
        "    ip saddr 10.99.1.10 ip daddr 10.99.1.11 tcp dport 80 drop\n"
        "  }\n"
        "}\n")
    with Lab(Topology.from_compose(COMPOSE)) as lab:
        loaded = lab.host_exec(["nft", "-f", str(ruleset)])
        assert loaded.returncode == 0, loaded.stderr
        assert reach(lab, tcp("web", "api", 80), tcp("api", "web", 80)) == [False, True]


@pytest.mark.netns
@needs_netns
def test_replies_need_conntrack_and_docker_user_can_supply_it() -> None:
    """Negative control: without an ESTABLISHED rule, replies to egress are dropped."""
    with Lab(Topology.from_compose(COMPOSE), conntrack_docker=False) as lab:
        assert reach(lab, tcp("web", "outside", 443)) == [False]
        rule = ("*filter\n:DOCKER-USER - [0:0]\n"
                "-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n")
        assert lab.host_exec(["iptables-restore", "--noflush"], input=rule).returncode == 0
        assert reach(lab, tcp("web", "outside", 443)) == [True]


@pytest.mark.netns
@needs_netns
def test_published_port_restricted_to_a_cidr_by_original_port() -> None:
    rule = ("*filter\n:DOCKER-USER - [0:0]\n"
            "-A DOCKER-USER -i eth0 ! -s 198.51.100.0/24 -p tcp -m conntrack"
            " --ctorigdstport 8080 -j DROP\nCOMMIT\n")
    with Lab(Topology.from_compose(COMPOSE)) as lab:
        assert lab.host_exec(["iptables-restore", "--noflush"], input=rule).returncode == 0
        assert reach(lab, tcp("outside", "published", 8080),
                     tcp("outside:198.51.100.7", "published", 8080)) == [False, True]


@pytest.mark.netns
@needs_netns
def test_nothing_is_left_behind_after_exit() -> None:
    with Lab(Topology.from_compose(COMPOSE)) as lab:
        names = set(lab.namespaces)
        assert names <= lab_names()
    assert not names & lab_names()


@pytest.mark.netns
@needs_netns
def test_nothing_is_left_behind_after_an_exception() -> None:
    names: set[str] = set()
    with pytest.raises(RuntimeError, match="boom"), Lab(Topology.from_compose(COMPOSE)) as lab:
        names = set(lab.namespaces)
        raise RuntimeError("boom")
    assert names
    assert not names & lab_names()


@pytest.mark.netns
@needs_netns
def test_leftovers_of_dead_processes_are_removed() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"cst{dead.pid}-0-host"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Lab(Topology.from_compose(COMPOSE)):
            assert stale not in lab_names()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


@pytest.mark.netns
@needs_netns
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_tears_the_lab_down(tmp_path: Path, signum: int) -> None:
    script = tmp_path / "hold.py"
    script.write_text(
        "import json, sys, time\n"
        "from castle.netns import Lab, Topology\n"
        "with Lab(Topology.from_compose(json.loads(sys.argv[1]))) as lab:\n"
        "    print(' '.join(lab.namespaces), flush=True)\n"
        "    time.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(COMPOSE)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        names = set(proc.stdout.readline().split())
        assert names and names <= lab_names()
        proc.send_signal(signum)
        proc.wait(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signum  # SIGINT: KeyboardInterrupt, then re-raised
    assert not names & lab_names()


@pytest.mark.netns
@needs_netns
def test_thirty_containers_full_matrix_matches_shared_networks() -> None:
    nets = {f"n{i}": {"internal": i == 3, "ipam": {"config": [{"subnet": f"10.97.{i}.0/24"}]}}
            for i in range(4)}
    services: dict[str, Any] = {}
    for c in range(30):
        joins = {f"n{c % 4}": {"ipv4_address": f"10.97.{c % 4}.{10 + c}"}}
        if c % 3 == 0:
            joins[f"n{(c + 1) % 4}"] = {"ipv4_address": f"10.97.{(c + 1) % 4}.{10 + c}"}
        services[f"s{c}"] = {"networks": joins}
    topo = Topology.from_compose({"networks": nets, "services": services})
    expected = {(a, b): bool(set(services[a]["networks"]) & set(services[b]["networks"]))
                for a in services for b in services if a != b}
    with Lab(topo) as lab:
        got = lab.probe([tcp(a, b, 8080) for a, b in expected])
    assert {(p.src, p.dst): ok for p, ok in got.items()} == expected
