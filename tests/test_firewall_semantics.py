"""What the host firewall's words mean, checked on the real kernel in throwaway namespaces.

"internet" egress is public addresses only (the cloud metadata address is reached only by a
flow naming it), in iptables.sh, castle.nft and the Kubernetes policies alike; SSH sources
inside the subnet pool stay reachable; IPv6 SSH is guarded the same way by both firewalls;
stacks with long names, or applied at the same time, never touch each other's rules.
Expected answers are written here from the spec's words, never computed by castle.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml

from castle.lab.netns import Lab, Probe, Topology, netns_available
from castle.lab.probe import SEQ, delete_namespaces, in_netns, ip_batches
from castle.targets.generate import generate
from tests.test_firewall_kernel import apply

pytestmark = pytest.mark.netns

FIREWALLS = ["iptables", "nftables"]
# Kubernetes' usual except list for "the internet", plus link-local (cloud metadata).
NOT_INTERNET = ["10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"]


@pytest.fixture(autouse=True)
def _need_netns() -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    for tool in ("iptables-save", "ip6tables-save", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


EGRESS = """\
version = 1
[stack]
name = "egress"
subnet_pool = "10.89.0.0/16"
[[tiers]]
name = "front"
[services.api]
tier = "front"
image = "api:1"
listen = [8000]
[services.probe]
tier = "front"
image = "probe:1"
listen = [8001]
[[flows]]
from = "api"
to = "internet"
ports = [443]
[[flows]]
from = "probe"
to = "cidr:169.254.169.254/32"
ports = [80]
[[flows]]
from = "probe"
to = "cidr:10.200.0.0/16"
ports = [443]
"""


def build(tmp_path: Path, text: str, name: str = "spec") -> tuple[Path, dict[str, object]]:
    """Write a spec, generate every target into tmp_path/name; return out and compose.yaml."""
    spec = tmp_path / f"{name}.toml"
    spec.write_text(text)
    out = tmp_path / name
    generate(spec, out)
    return out, yaml.safe_load((out / "compose.yaml").read_text())



# (source service, destination address, port) -> open?  From the spec's words: "internet" is
# public addresses only; a cidr flow opens what it names, private or link-local.
EGRESS_WANT = {
    ("api", "203.0.113.2", 443): True,       # public (the lab's internet)
    ("api", "100.64.0.9", 443): True,        # shared address space is not excepted
    ("api", "10.200.0.5", 443): False,       # private
    ("api", "172.16.3.4", 443): False,
    ("api", "192.168.1.5", 443): False,
    ("api", "169.254.169.254", 443): False,  # cloud metadata
    ("api", "169.254.169.254", 80): False,
    ("probe", "169.254.169.254", 80): True,  # named by a cidr flow
    ("probe", "10.200.0.5", 443): True,
    ("probe", "203.0.113.2", 443): False,    # probe has no internet flow
}


def egress_probes() -> dict[Probe, bool]:
    return {Probe(src, f"outside:{addr}", "tcp", port): ok
            for (src, addr, port), ok in EGRESS_WANT.items()}


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_internet_egress_is_public_addresses_only(firewall: str, tmp_path: Path) -> None:
    """Private, link-local and metadata destinations are closed to an "internet" flow."""
    out, compose = build(tmp_path, EGRESS)
    want = egress_probes()
    with Lab(Topology.from_compose(compose)) as lab:
        bare = lab.probe(list(want))
        assert all(bare.values()), bare  # control: without a firewall every address answers
        apply(lab, out, firewall)
        seen = lab.probe(list(want))
    assert {p: ok for p, ok in seen.items() if ok != want[p]} == {}


def _excepts_k8s(out: Path) -> set[str]:
    """The except list of every egress ipBlock 0.0.0.0/0 in the generated policies."""
    found: set[str] = set()
    for doc in yaml.safe_load_all((out / "k8s/networkpolicies.yaml").read_text()):
        for rule in (doc or {}).get("spec", {}).get("egress", []) or []:
            for peer in rule.get("to", []) or []:
                block = peer.get("ipBlock")
                if block and block["cidr"] == "0.0.0.0/0":
                    found.add(",".join(sorted(block.get("except", []))))
    assert len(found) == 1, found
    return set(found.pop().split(","))


def _excepts_nft(out: Path) -> set[str]:
    text = (out / "firewall/castle.nft").read_text()
    body = re.search(r"set not_internet \{.*?elements = \{ (.*?) \}", text, re.S)
    assert body is not None
    return {e.strip() for e in body.group(1).split(",")}


def _excepts_iptables(out: Path) -> set[str]:
    text = (out / "firewall/iptables.sh").read_text()
    return set(re.findall(r"^-A \S+_O-api -d (\S+) .*-j DROP$", text, re.M))


@pytest.mark.parametrize("configured, want", [
    (None, set(NOT_INTERNET)),
    (["10.0.0.0/8"], {"10.0.0.0/8", "169.254.169.254/32"}),  # metadata stays out regardless
    ([], {"169.254.169.254/32"}),
])
def test_three_targets_agree_on_what_internet_is(
        configured: list[str] | None, want: set[str], tmp_path: Path) -> None:
    """k8s ipBlock excepts, the nft set and the iptables drops are one and the same list."""
    text = EGRESS
    if configured is not None:
        text += f"[kubernetes]\negress_except = {configured!r}\n".replace("'", '"')
    out, _ = build(tmp_path, text)
    assert _excepts_k8s(out) == want
    assert _excepts_nft(out) == want
    assert _excepts_iptables(out) == want
    meta = IPv4Network("169.254.169.254/32")
    assert any(meta.subnet_of(IPv4Network(n)) for n in want)


# -- SSH -----------------------------------------------------------------------------------

SSH_POOL = """\
version = 1
[stack]
name = "sshpool"
subnet_pool = "10.89.0.0/16"
[[tiers]]
name = "front"
[services.web]
tier = "front"
image = "web:1"
listen = [80]
[services.app]
tier = "front"
image = "app:1"
listen = [8000]
[[flows]]
from = "internet"
to = "web"
ports = [80]
[[flows]]
from = "web"
to = "app"
[firewall]
ssh_port = 2222
ssh_sources = ["10.89.0.0/24", "10.89.7.7/32"]
"""


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_ssh_sources_inside_the_subnet_pool_stay_allowed(firewall: str, tmp_path: Path) -> None:
    """An operator network inside subnet_pool is never handed to a bridge, and SSH from it
    passes; containers and other outside addresses are still kept off SSH."""
    out, compose = build(tmp_path, SSH_POOL)
    nets = compose["networks"]
    assert isinstance(nets, dict)
    subnets = [IPv4Network(n["ipam"]["config"][0]["subnet"]) for n in nets.values()]
    operator = [IPv4Network("10.89.0.0/24"), IPv4Network("10.89.7.7/32")]
    assert subnets and not any(s.overlaps(o) for s in subnets for o in operator)
    want = {
        Probe("outside:10.89.0.7", "host", "tcp", 2222): True,
        Probe("outside:10.89.7.7", "host", "tcp", 2222): True,
        Probe("outside", "host", "tcp", 2222): False,
        Probe("app", "host", "tcp", 2222): False,
        Probe("web", "app", "tcp", 8000): True,
    }
    with Lab(Topology.from_compose(compose)) as lab:
        apply(lab, out, firewall)
        seen = lab.probe(list(want))
    assert seen == want


V6_SPEC = """\
version = 1
[stack]
name = "six"
subnet_pool = "10.89.0.0/16"
[[tiers]]
name = "front"
[services.web]
tier = "front"
image = "web:1"
listen = [80]
[[flows]]
from = "internet"
to = "web"
ports = [80]
"""

HOST6, PEER6 = "2001:db8:6::1", "2001:db8:6::2"


@pytest.fixture
def v6_pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth with IPv6 addresses: (host, peer)."""
    if not os.path.isdir("/proc/sys/net/ipv6"):
        pytest.skip("the kernel has no IPv6")
    base = f"cst{os.getpid()}-{next(SEQ)}-"
    host, peer = base + "h6", base + "p6"
    try:
        ip_batches([(None, [f"netns add {host}", f"netns add {peer}"])])
        ip_batches([(host, ["link set lo up",
                            f"link add v6h type veth peer name v6p netns {peer}",
                            "link set v6h up", f"addr add {HOST6}/64 dev v6h nodad"])])
        ip_batches([(peer, ["link set lo up", "link set v6p up",
                            f"addr add {PEER6}/64 dev v6p nodad"])])
        yield host, peer
    finally:
        delete_namespaces([host, peer])


def _v6_open(host: str, peer: str, port: int) -> bool:
    """Does a TCP connect from peer to [HOST6]:port complete (a listener waits in host)?"""
    def listen() -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST6, port))
        s.listen(4)
        return s

    def connect() -> bool:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as c:
            c.settimeout(1.0)
            try:
                c.connect((HOST6, port))
            except OSError:
                return False
            return True

    server = in_netns(host, listen)
    try:
        return in_netns(peer, connect)
    finally:
        server.close()


def _load(host: str, out: Path, firewall: str, *args: str) -> None:
    if firewall == "iptables":
        argv = ["sh", str(out / "firewall/iptables.sh"), *args]
    else:
        argv = ["nft", "-f", str(out / "firewall/castle.nft")]
    done = subprocess.run(["ip", "netns", "exec", host, *argv], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("firewall", FIREWALLS)
@pytest.mark.parametrize("narrowed", [True, False])
def test_ipv6_ssh_is_guarded_alike(firewall: str, narrowed: bool, v6_pair: tuple[str, str],
                                   tmp_path: Path) -> None:
    """ssh_sources (IPv4 networks) narrow SSH: then SSH over IPv6 is closed under both
    firewalls; without narrowing both leave it open. Other host ports stay untouched."""
    host, peer = v6_pair
    text = V6_SPEC + ('[firewall]\nssh_sources = ["192.0.2.0/24"]\n' if narrowed else "")
    out, _ = build(tmp_path, text)
    assert _v6_open(host, peer, 22) and _v6_open(host, peer, 8080)  # control: open before
    _load(host, out, firewall)
    assert _v6_open(host, peer, 22) is not narrowed
    assert _v6_open(host, peer, 8080)
    if firewall == "iptables":
        _load(host, out, firewall)  # twice: one hook, same answer
        saved = subprocess.run(["ip", "netns", "exec", host, "ip6tables-save", "-t", "filter"],
                               capture_output=True, text=True, check=True).stdout
        assert saved.count("-A INPUT -j CASTLE-six_IN") == (1 if narrowed else 0)
        _load(host, out, firewall, "--remove")
        assert _v6_open(host, peer, 22)
        saved = subprocess.run(["ip", "netns", "exec", host, "ip6tables-save", "-t", "filter"],
                               capture_output=True, text=True, check=True).stdout
        assert "CASTLE" not in saved


# -- several stacks on one host ------------------------------------------------------------

def _stack(name: str, pool: str) -> str:
    return V6_SPEC.replace('name = "six"', f'name = "{name}"').replace("10.89.0.0/16", pool)


def _in_fresh_netns(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a new, empty network namespace (gone when it ends)."""
    return subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True,
                          text=True, check=False)


def _chains(saved: str, tag: str) -> list[str]:
    return sorted(x for x in saved.splitlines()
                  if re.match(rf"^(:|-A ){re.escape(tag)}(_| |$)", x) or x.endswith(f"-j {tag}"))


def test_long_names_sharing_a_prefix_keep_their_own_chains(tmp_path: Path) -> None:
    """Two long stack names (their old 4-hex hashes collide) get distinct chains <= 28 chars;
    applying and removing one leaves the other's rules as they were."""
    a_out, _ = build(tmp_path, _stack("customer-portal-310", "10.81.0.0/16"), "a")
    b_out, _ = build(tmp_path, _stack("customer-portal-454", "10.82.0.0/16"), "b")
    a, b = a_out / "firewall/iptables.sh", b_out / "firewall/iptables.sh"
    tags = [re.search(r"^TAG='?([^'\n]+)'?$", p.read_text(), re.M).group(1)  # type: ignore[union-attr]
            for p in (a, b)]
    assert tags[0] != tags[1]
    names = re.findall(r"^CHAINS='([^']*)'", a.read_text() + b.read_text(), re.M)
    assert all(len(c) <= 28 for line in names for c in line.split())
    done = _in_fresh_netns(
        f"sh {a} && iptables-save -t filter && echo ==== && sh {b} && sh {b} --remove && "
        f"iptables-save -t filter && echo ==== && sh {b} && nft -f {a_out}/firewall/castle.nft"
        f" && nft -f {b_out}/firewall/castle.nft && nft list tables")
    assert done.returncode == 0, done.stderr
    first, after, tables = done.stdout.split("====\n")
    assert _chains(first, tags[0]) and _chains(first, tags[0]) == _chains(after, tags[0])
    assert "table inet castle_customer-portal-310" in tables
    assert "table inet castle_customer-portal-454" in tables


def test_a_colliding_chain_of_another_stack_is_refused(tmp_path: Path) -> None:
    """Control for a collision no hash can rule out: a chain of this name whose first rule
    names another stack is never flushed; the script exits 1 and changes nothing."""
    out, _ = build(tmp_path, _stack("alpha", "10.81.0.0/16"), "a")
    script = out / "firewall/iptables.sh"
    impostor = tmp_path / "impostor.sh"
    impostor.write_text(script.read_text().replace("STACK=alpha", "STACK=bravo")
                        .replace("castle stack alpha:", "castle stack bravo:"))
    done = _in_fresh_netns(f"sh {script} && iptables-save -t filter > {tmp_path}/before && "
                           f"sh {impostor}; echo rc=$?; sh {impostor} --remove; echo rc=$?; "
                           f"iptables-save -t filter > {tmp_path}/after")
    assert "rc=1\n" in done.stdout and done.stdout.count("rc=1") == 2, done.stdout + done.stderr
    assert "belongs to stack alpha" in done.stderr

    def rules(name: str) -> list[str]:
        return [x for x in (tmp_path / name).read_text().splitlines() if not x.startswith("#")]
    assert rules("before") == rules("after")


def test_stacks_applied_at_once_on_a_host_without_docker_user(tmp_path: Path) -> None:
    """Two scripts started together on a bare host: one FORWARD jump, both stacks hooked
    (without the lock the second restore flushed the DOCKER-USER the first had made)."""
    a_out, _ = build(tmp_path, _stack("alpha", "10.81.0.0/16"), "a")
    b_out, _ = build(tmp_path, _stack("bravo", "10.82.0.0/16"), "b")
    a, b = a_out / "firewall/iptables.sh", b_out / "firewall/iptables.sh"
    lock = tmp_path / "lock"
    bad = []
    for _ in range(8):
        done = _in_fresh_netns(f"export CASTLE_LOCK={lock}; sh {a} & sh {b} & wait; "
                               "iptables-save -t filter")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        if (lines.count("-A FORWARD -j DOCKER-USER") != 1
                or "-A DOCKER-USER -j CASTLE-alpha" not in lines
                or "-A DOCKER-USER -j CASTLE-bravo" not in lines):
            bad.append(done.stdout)
    assert bad == []
