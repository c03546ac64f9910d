"""The kernel as the oracle: generated firewalls applied to an emulated Docker host, probed.

Expected answers come from tests/oracles/reference.py (the clean-room expansion of the raw
TOML), never from castle's Plan. Every check has a negative control that shows it can fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml

from castle.generate import generate
from castle.netns import OUTSIDE, Lab, Probe, Topology, docker_proxy, netns_available
from tests.oracles import reference

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
SPECS = [ROOT / "zones.example.toml", *sorted((ROOT / "tests/data/specs").glob("fw-*.toml"))]
IDS = [p.stem for p in SPECS]
FIREWALL = ["compose", "iptables", "nftables"]
EXAMPLE = ROOT / "zones.example.toml"


@pytest.fixture(autouse=True)
def _need_netns() -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    for tool in ("iptables-save", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def built(spec: Path, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Generate the firewall targets; return the raw TOML and compose.yaml as dicts."""
    generate(spec, out, targets=FIREWALL)
    raw = tomllib.loads(spec.read_text())
    return raw, yaml.safe_load((out / "compose.yaml").read_text())


def unnamed(taken: set[int]) -> int:
    """A port no listen or flow names."""
    port = 9
    while port in taken:
        port += 1
    return port


def covers(peer: str, addr: IPv4Address) -> bool:
    """True when an outside peer (internet or cidr:X) includes the address."""
    return peer == "internet" or (peer.startswith("cidr:") and addr in IPv4Network(peer[5:]))


def inside(peer: str) -> IPv4Address:
    """An address inside a cidr: peer to probe from (the lab's own outside address if it is)."""
    net = IPv4Network(peer[5:])
    return OUTSIDE if OUTSIDE in net else net.network_address + (net.prefixlen < 32)


def source(addr: IPv4Address) -> str:
    return "outside" if addr == OUTSIDE else f"outside:{addr}"


def questions(raw: dict[str, Any], compose: dict[str, Any]) -> dict[Probe, bool]:
    """Every probe and the reference's answer, built from the TOML and compose.yaml only."""
    ref = reference.expected(raw)
    services = raw["services"]
    wired = sorted(s for s in services if compose["services"][s].get("networks"))
    out: dict[Probe, bool] = {}
    all_ports = {port for _, _, _, port in ref.conns}
    for b in wired:
        ports = {pp for item in services[b].get("listen", []) for pp in reference.parse_ports(item)}
        for proto in {p for p, _ in ports} | {"tcp"}:
            ports.add((proto, unnamed(all_ports | {n for _, n in ports})))
        for a in wired:
            if a != b:
                for proto, port in sorted(ports):
                    out[Probe(a, b, proto, port)] = (a, b, proto, port) in ref.conns
    for svc, host_port, cport, proto in sorted(ref.published):
        peers = {s for s, d, p, n in ref.ingress_conns if d == svc}
        addrs = {OUTSIDE} | {inside(p) for p in peers if p.startswith("cidr:")}
        for addr in addrs:
            out[Probe(source(addr), "published", proto, host_port)] = any(
                covers(s, addr) for s, d, p, n in ref.ingress_conns
                if (d, p, n) == (svc, proto, cport))
        if docker_proxy() is not None:  # the IPv6 path: docker-proxy on [::]
            out[Probe("outside", "published6", proto, host_port)] = any(
                s == "internet" for s, d, p, n in ref.ingress_conns
                if (d, p, n) == (svc, proto, cport))
    egress = {(p, n) for _, _, p, n in ref.egress_conns} | {("tcp", unnamed(all_ports))}
    for s in wired:
        for proto, port in sorted(egress):
            out[Probe(s, "outside", proto, port)] = any(
                covers(d, OUTSIDE) for a, d, p, n in ref.egress_conns
                if (a, p, n) == (s, proto, port))
    fw = raw.get("firewall", {})
    if fw.get("manage_input", True):
        ssh = fw.get("ssh_port", 22)
        for s in wired:
            out[Probe(s, "host", "tcp", ssh)] = False  # the stack never reaches the host itself
        sources = [IPv4Network(n) for n in fw.get("ssh_sources", ["0.0.0.0/0"])]
        out[Probe("outside", "host", "tcp", ssh)] = any(OUTSIDE in n for n in sources)
        for n in sources:
            if OUTSIDE not in n:
                addr = n.network_address + (n.prefixlen < 32)
                out[Probe(source(addr), "host", "tcp", ssh)] = True
    return out


def apply(lab: Lab, out: Path, firewall: str) -> None:
    """Load a firewall the way its header tells an operator to."""
    argv = (["sh", str(out / "firewall/iptables.sh")] if firewall == "iptables"
            else ["nft", "-f", str(out / "firewall/castle.nft")])
    done = lab.host_exec(argv)
    assert done.returncode == 0, done.stderr


def differences(seen: dict[Probe, bool], want: dict[Probe, bool]) -> list[str]:
    """Readable mismatches."""
    return [f"{p}: spec {'open' if want[p] else 'closed'}, kernel {'OPEN' if got else 'closed'}"
            for p, got in seen.items() if got != want[p]]


@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_kernel_matrix_equals_spec(spec: Path, firewall: str, tmp_path: Path) -> None:
    """The probed matrix equals the reference expansion, probe for probe."""
    raw, compose = built(spec, tmp_path)
    want = questions(raw, compose)
    assert any(want.values()) and not all(want.values())
    with Lab(Topology.from_compose(compose)) as lab:
        apply(lab, tmp_path, firewall)
        seen = lab.probe(list(want))
    assert differences(seen, want) == []


def test_without_firewall_the_matrix_leaks(tmp_path: Path) -> None:
    """Negative control: compose alone lets a pair that shares a network talk on any port."""
    raw, compose = built(EXAMPLE, tmp_path)
    want = questions(raw, compose)
    with Lab(Topology.from_compose(compose)) as lab:
        seen = lab.probe(list(want))
    wrong = differences(seen, want)
    assert any("src='app', dst='web'" in w for w in wrong)
    assert any("dst='host'" in w for w in wrong)


@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
def test_bridge_nf_call_off_bypasses_the_rules(firewall: str, tmp_path: Path) -> None:
    """With bridge-nf-call-iptables=0, same-network traffic never meets the rules."""
    _, compose = built(EXAMPLE, tmp_path)
    nf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    back = Probe("app", "web", "tcp", 80)  # same network (web-app), no flow that way
    with Lab(Topology.from_compose(compose), bridge_nf_call=False) as lab:
        apply(lab, tmp_path, firewall)
        state = lab.host_exec(["cat", nf]).stdout.strip()
        if firewall == "iptables":  # the script turns it on by itself
            assert state == "1"
            assert lab.probe([back])[back] is False
        assert lab.host_exec(["sh", "-c", f"echo 0 > {nf}"]).returncode == 0
        assert lab.probe([back])[back] is True


@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
def test_without_the_conntrack_return_replies_die(firewall: str, tmp_path: Path) -> None:
    """Negative control: drop the established/related rule and allowed connections fail."""
    _, compose = built(EXAMPLE, tmp_path)
    if firewall == "iptables":
        path = tmp_path / "firewall/iptables.sh"
        pattern = r"^-A CASTLE-shop -m conntrack --ctstate RELATED,ESTABLISHED .*\n"
    else:
        path = tmp_path / "firewall/castle.nft"
        pattern = r"^\t\tct state established,related accept comment \"replies of allowed.*\n"
    text, n = re.subn(pattern, "", path.read_text(), count=1, flags=re.M)
    assert n == 1
    path.write_text(text)
    ok = Probe("web", "app", "tcp", 8000)
    with Lab(Topology.from_compose(compose)) as lab:
        apply(lab, tmp_path, firewall)
        assert lab.probe([ok])[ok] is False


@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
def test_loosened_rule_is_caught_as_a_leak(firewall: str, tmp_path: Path) -> None:
    """Negative control: widen db's rule by hand and the comparison reports a leak."""
    raw, compose = built(EXAMPLE, tmp_path)
    if firewall == "iptables":
        path = tmp_path / "firewall/iptables.sh"
        text, n = re.subn(r"(-A CASTLE-shop_db )-s \S+ -d \S+ -p tcp -m tcp --dport 5432",
                          r"\1-p tcp", path.read_text())
    else:
        path = tmp_path / "firewall/castle.nft"
        text, n = re.subn(r"(\. tcp \. )5432 ", r"\g<1>1-65535 ", path.read_text())
    assert n == 1
    path.write_text(text)
    want = questions(raw, compose)
    with Lab(Topology.from_compose(compose)) as lab:
        apply(lab, tmp_path, firewall)
        seen = lab.probe(list(want))
    assert any("src='app', dst='db', proto='tcp', port=9" in w for w in differences(seen, want))


# -- script mechanics ----------------------------------------------------------------------

def save(lab: Lab) -> list[str]:
    """iptables-save without its dated comments and counters."""
    text = lab.host_exec(["iptables-save"]).stdout
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", x) for x in text.splitlines() if not x.startswith("#")]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Lab, Path]]:
    """The example stack in a lab, with its generated files in tmp_path."""
    _, compose = built(EXAMPLE, tmp_path)
    with Lab(Topology.from_compose(compose)) as running:
        yield running, tmp_path


def run(lab: Lab, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.host_exec(["sh", str(script), *args])


def test_apply_is_idempotent_and_remove_restores(lab: tuple[Lab, Path]) -> None:
    """Twice = same ruleset; --remove gives back the prior ruleset exactly; --dry-run is inert."""
    running, out = lab
    script = out / "firewall/iptables.sh"
    before = save(running)
    dry = run(running, script, "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("*filter\n")
    assert save(running) == before
    assert run(running, script).returncode == 0
    once = save(running)
    assert once != before
    assert "-A DOCKER-USER -j CASTLE-shop" in once and "-A INPUT -j CASTLE-shop_IN" in once
    assert run(running, script).returncode == 0
    assert save(running) == once
    assert run(running, script, "--dry-run").returncode == 0
    assert save(running) == once
    removed = run(running, script, "--remove")
    assert removed.returncode == 0, removed.stderr
    assert save(running) == before
    again = run(running, script, "--remove")
    assert again.returncode == 0 and "nothing to remove" in again.stderr


def test_failing_restore_changes_nothing(lab: tuple[Lab, Path]) -> None:
    """A restore that fails half way leaves the prior ruleset, first apply or re-apply."""
    running, out = lab
    script = out / "firewall/iptables.sh"
    broken = out / "firewall/broken.sh"
    broken.write_text(script.read_text().replace(
        "\nCASTLE_RULES\n}", "\n-A CASTLE-shop -p tcp --dport 99999 -j DROP\nCASTLE_RULES\n}"))
    for _ in range(2):
        before = save(running)
        done = run(running, broken)
        assert done.returncode == 1 and "nothing was changed" in done.stderr
        assert save(running) == before
        assert run(running, script).returncode == 0  # second round: over an applied ruleset


def test_stale_chains_go_and_other_stacks_stay(tmp_path: Path) -> None:
    """A service dropped from the spec loses its chain; another stack's chains are untouched."""
    _, compose = built(EXAMPLE, tmp_path / "shop")
    other = ROOT / "tests/data/specs/fw-udp-ranges.toml"
    generate(other, tmp_path / "udp", targets=FIREWALL)
    smaller = tmp_path / "smaller.toml"
    text = EXAMPLE.read_text()
    text = re.sub(r"\[services\.admin\].*?\n\n", "", text, flags=re.S)
    text = re.sub(r"\[\[flows\]\]\nfrom = \"admin\".*?\n\n", "", text, flags=re.S)
    smaller.write_text(text)
    generate(smaller, tmp_path / "small", targets=FIREWALL)
    with Lab(Topology.from_compose(compose)) as running:
        assert run(running, tmp_path / "udp/firewall/iptables.sh").returncode == 0
        udp_only = save(running)
        assert run(running, tmp_path / "shop/firewall/iptables.sh").returncode == 0
        assert any(x.startswith(":CASTLE-shop_admin ") for x in save(running))
        assert run(running, tmp_path / "small/firewall/iptables.sh").returncode == 0
        now = save(running)
        assert not any("CASTLE-shop_admin" in x for x in now)
        assert [x for x in now if "fwudp" in x] == [x for x in udp_only if "fwudp" in x]
        assert run(running, tmp_path / "small/firewall/iptables.sh", "--remove").returncode == 0
        assert save(running) == udp_only


def test_manage_input_false_takes_the_input_hook_out(tmp_path: Path) -> None:
    """Switching manage_input off removes castle's INPUT chain and hook on the next apply."""
    _, compose = built(EXAMPLE, tmp_path / "on")
    off = tmp_path / "off.toml"
    off.write_text(EXAMPLE.read_text() + "\n[firewall]\nmanage_input = false\n")
    generate(off, tmp_path / "off", targets=FIREWALL)
    with Lab(Topology.from_compose(compose)) as running:
        before = save(running)
        assert run(running, tmp_path / "on/firewall/iptables.sh").returncode == 0
        assert any("CASTLE-shop_IN" in x for x in save(running))
        assert run(running, tmp_path / "off/firewall/iptables.sh").returncode == 0
        assert not any("CASTLE-shop_IN" in x for x in save(running))
        assert run(running, tmp_path / "off/firewall/iptables.sh", "--remove").returncode == 0
        assert save(running) == before


def test_creates_docker_user_when_dockerd_has_not(tmp_path: Path) -> None:
    """On a bare namespace the script makes DOCKER-USER and the FORWARD jump to it."""
    generate(EXAMPLE, tmp_path, targets=FIREWALL)
    script = tmp_path / "firewall/iptables.sh"
    done = subprocess.run(["unshare", "--net", "sh", "-c",
                           f"sh {script} && sh {script} && iptables-save -t filter"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines.count("-A FORWARD -j DOCKER-USER") == 1
    assert lines.count("-A DOCKER-USER -j CASTLE-shop") == 1


# -- nftables ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_nft_check_and_reload(spec: Path, tmp_path: Path) -> None:
    """nft -c accepts every file; loading twice keeps one table; a typo is caught (control)."""
    generate(spec, tmp_path, targets=FIREWALL)
    path = tmp_path / "firewall/castle.nft"
    table = re.search(r"^table inet (\S+) \{", path.read_text(), re.M).group(1)  # type: ignore[union-attr]
    done = subprocess.run(["unshare", "--net", "sh", "-c",
                           f"nft -c -f {path} && nft -f {path} && nft -f {path} && "
                           "nft list tables"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n").count(f"table inet {table}") == 1
    bad = tmp_path / "bad.nft"
    bad.write_text(path.read_text().replace("jump to_stack", "jump to_stak"))
    check = subprocess.run(["unshare", "--net", "nft", "-c", "-f", str(bad)],
                           capture_output=True, check=False)
    assert check.returncode != 0


# -- container firewall --------------------------------------------------------------------

def test_container_firewalls_alone_enforce_the_spec(tmp_path: Path) -> None:
    """No host firewall: the per-container scripts alone give the reference matrix."""
    spec = ROOT / "tests/data/specs/fw-container.toml"
    raw, compose = built(spec, tmp_path)
    # docker-proxy's IPv6 path reaches a container from its gateway, inside the stack's own
    # block, which a container firewall drops: stricter, and documented (host-firewall.md)
    want = {p: ok for p, ok in questions(raw, compose).items()
            if p.dst not in ("host", "published6")}
    boxes = sorted(s for s, body in raw["services"].items() if body.get("container_firewall"))
    with Lab(Topology.from_compose(compose)) as running:
        seen = running.probe(list(want))
        assert differences(seen, want) != []  # control: compose alone is looser
        for svc in boxes:
            script = str(tmp_path / f"firewall/container-{svc}.sh")
            assert running.exec_in(svc, ["sh", script]).returncode == 0
            first = running.exec_in(svc, ["iptables-save"]).stdout
            assert running.exec_in(svc, ["sh", script]).returncode == 0
            assert save_text(running.exec_in(svc, ["iptables-save"]).stdout) == save_text(first)
        seen = running.probe(list(want))
        assert differences(seen, want) == []
        script = str(tmp_path / "firewall/container-back.sh")
        assert running.exec_in("back", ["sh", script, "--remove"]).returncode == 0
        assert "CASTLE" not in running.exec_in("back", ["iptables-save"]).stdout


def save_text(text: str) -> list[str]:
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", x) for x in text.splitlines() if not x.startswith("#")]


@pytest.mark.skipif(docker_proxy() is None, reason="docker-proxy (docker.io) is not installed")
@pytest.mark.parametrize("firewall", ["iptables", "nftables"])
def test_unbound_cidr_publish_leaks_over_ipv6(firewall: str, tmp_path: Path) -> None:
    """Negative control: a CIDR-only port published on every address reaches IPv6 clients
    through docker-proxy, whatever the IPv4 rules say."""
    spec = ROOT / "tests/data/specs/fw-cidr-egress.toml"
    raw, _ = built(spec, tmp_path)
    path = tmp_path / "compose.yaml"
    text, n = re.subn(r'"0\.0\.0\.0:', '"', path.read_text())
    assert n > 0
    path.write_text(text)
    compose = yaml.safe_load(text)
    want = questions(raw, compose)
    with Lab(Topology.from_compose(compose)) as lab:
        apply(lab, tmp_path, firewall)
        seen = lab.probe(list(want))
    wrong = differences(seen, want)
    assert wrong and all("dst='published6'" in w and "kernel OPEN" in w for w in wrong), wrong
