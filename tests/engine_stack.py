"""castle stacks on the real engine lab: generate, bring up, load a firewall, ask every probe.

Expected answers come from tests/oracles/reference.py (the clean-room reading of the raw
TOML) and the addresses written in compose.yaml, never from castle's Plan.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from castle.targets.generate import generate
from castle.tls.certs import certs
from tests.engine import HOST_V4, HOST_V6, OUTSIDE_EXTRA, OUTSIDE_V4, Engine, Probe
from tests.oracles import reference

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "zones.example.toml"
MIX = ROOT / "tests/data/specs/engine-mix.toml"
FIREWALLS = ("iptables", "nftables")
EXTRA_PORT = 9  # served everywhere, allowed by no flow: the control that catches "all open"
OUTSIDE_ADDRS = (OUTSIDE_V4, *OUTSIDE_EXTRA)


@dataclass
class Stack:
    """One generated stack: its spec (raw TOML), compose.yaml, output folder, project name."""

    spec: Path
    out: Path
    raw: dict[str, Any]
    compose: dict[str, Any]
    files: list[Path] = field(default_factory=list)  # override files up() merges (the probe's)

    @property
    def project(self) -> str:
        """The compose project name (the stack name)."""
        return str(self.raw["stack"]["name"])

    @property
    def wired(self) -> list[str]:
        """Services that have networks (network_mode none ones have no address)."""
        return sorted(s for s, body in self.compose["services"].items() if body.get("networks"))

    def addresses(self, svc: str) -> dict[str, str]:
        """network -> the service's fixed address, as compose.yaml writes it."""
        nets = self.compose["services"][svc]["networks"]
        return {n: str(body["ipv4_address"]) for n, body in nets.items()}

    def gateway(self, net: str) -> str:
        """A network's gateway (the host's address on its bridge)."""
        return str(self.compose["networks"][net]["ipam"]["config"][0]["gateway"])

    def listens(self, svc: str) -> list[tuple[int, str]]:
        """(port, proto) of every port the service listens on, plus the unnamed EXTRA_PORT."""
        items = self.raw["services"][svc].get("listen", [])
        ports = {(port, proto) for item in items for proto, port in reference.parse_ports(item)}
        return sorted(ports | {(EXTRA_PORT, "tcp")})

    def nft_table(self) -> str:
        """The table castle.nft defines."""
        m = re.search(r"^table inet (\S+) \{", (self.out / "firewall/castle.nft").read_text(),
                      re.M)
        assert m is not None
        return m.group(1)


def prepare(spec: Path, out: Path) -> Stack:
    """Generate compose and both firewalls (and TLS material when flows ask for it)."""
    generate(spec, out, targets=["compose", "iptables", "nftables"])
    doc = yaml.safe_load((out / "compose.yaml").read_text())
    if doc.get("secrets"):
        certs(spec, out)
    return Stack(spec, out, tomllib.loads(spec.read_text()), doc)


def up(eng: Engine, stack: Stack) -> None:
    """Bring the stack up on the probe image and start echo servers on every listen port.

    Every service runs the probe's sleep in place of its own entrypoint and command (a TLS
    recipe's entrypoint needs the real server image); all else is castle's compose.yaml.
    """
    eng.tag_probe(*sorted({str(b["image"]) for b in stack.compose["services"].values()}))
    if not stack.files:
        stack.files = [eng.probe_override(stack.out, stack.project)]
    eng.up(stack.out, stack.project, files=stack.files)
    serve(eng, stack)


def serve(eng: Engine, stack: Stack) -> None:
    """Echo servers in each container (again after a restart: its namespace is new)."""
    for svc in stack.wired:
        eng.serve(eng.container(stack.project, svc), stack.listens(svc))


def serve_world(eng: Engine, stacks: list[Stack]) -> None:
    """Echo servers in the outside namespace (egress targets) and on the host (SSH)."""
    ports: set[tuple[int, str]] = {(EXTRA_PORT, "tcp")}
    for st in stacks:
        ref = reference.expected(st.raw)
        ports |= {(port, proto) for _, _, proto, port in ref.egress_conns}
        ports.add((ssh_port(st), "tcp"))
    for port, proto in sorted(ports):
        # UDP replies leave from the address the socket is bound to: one socket per address
        for addr in (OUTSIDE_ADDRS if proto == "udp" else ("0.0.0.0",)):
            eng.servers.listen(eng.outside_ns, port, proto, addr)
    for port in sorted({ssh_port(st) for st in stacks}):
        eng.servers.listen(eng.host_ns, port, "tcp")
        eng.servers.listen(eng.host_ns, port, "tcp", "::")


def ssh_port(stack: Stack) -> int:
    """The SSH port the spec's [firewall] keeps open."""
    return int(stack.raw.get("firewall", {}).get("ssh_port", 22))


def apply(eng: Engine, stack: Stack, firewall: str) -> None:
    """Load a firewall the way its header tells an operator to."""
    if firewall == "iptables":
        eng.host("sh", str(stack.out / "firewall/iptables.sh"))
    else:
        eng.host("nft", "-f", str(stack.out / "firewall/castle.nft"))


def remove(eng: Engine, stack: Stack, firewall: str) -> None:
    """Take a firewall out again."""
    if firewall == "iptables":
        eng.host("sh", str(stack.out / "firewall/iptables.sh"), "--remove")
    else:
        eng.host("nft", "delete", "table", "inet", stack.nft_table(), check=False)


def _covers(peer: str, addr: str) -> bool:
    if peer == reference.INTERNET:
        return True
    return ":" not in addr and IPv4Address(addr) in IPv4Network(peer.removeprefix("cidr:"))


def questions(eng: Engine, stack: Stack) -> dict[Probe, tuple[str, bool]]:
    """Every probe with a readable name and the reference's answer."""
    ref = reference.expected(stack.raw)
    out: dict[Probe, tuple[str, bool]] = {}
    ns = {s: eng.netns(eng.container(stack.project, s)) for s in stack.wired}
    for b in stack.wired:
        addrs = stack.addresses(b)
        for a in stack.wired:
            if a == b:
                continue
            shared = [n for n in stack.addresses(a) if n in addrs]
            dst = addrs[shared[0]] if shared else next(iter(addrs.values()))
            for port, proto in stack.listens(b):
                out[Probe(ns[a], dst, port, proto)] = (
                    f"{a} -> {b} {port}/{proto}", (a, b, proto, port) in ref.conns)
        for port, proto in stack.listens(b):  # the Docker host itself reaches its containers
            out[Probe(eng.host_ns, next(iter(addrs.values())), port, proto)] = (
                f"host -> {b} {port}/{proto}", True)
    for svc, host_port, cport, proto in sorted(ref.published):
        peers = [s for s, d, p, n in ref.ingress_conns if (d, p, n) == (svc, proto, cport)]
        for src in OUTSIDE_ADDRS:
            bind = "" if src == OUTSIDE_V4 else src
            out[Probe(eng.outside_ns, HOST_V4, host_port, proto, bind)] = (
                f"{src} -> published {host_port}/{proto} ({svc})",
                any(_covers(p, src) for p in peers))
        out[Probe(eng.outside_ns, HOST_V6, host_port, proto)] = (
            f"IPv6 -> published {host_port}/{proto} ({svc})", reference.INTERNET in peers)
    egress = {(port, proto) for _, _, proto, port in ref.egress_conns} | {(EXTRA_PORT, "tcp")}
    for s in stack.wired:
        for port, proto in sorted(egress):
            for dst in (OUTSIDE_V4, OUTSIDE_EXTRA[1]):
                out[Probe(ns[s], dst, port, proto)] = (
                    f"{s} -> {dst} {port}/{proto}",
                    any(_covers(d, dst) for a, d, p, n in ref.egress_conns
                        if (a, p, n) == (s, proto, port)))
    fw = stack.raw.get("firewall", {})
    if fw.get("manage_input", True):
        ssh = ssh_port(stack)
        for s in stack.wired:
            gw = stack.gateway(next(iter(stack.addresses(s))))
            out[Probe(ns[s], gw, ssh)] = (f"{s} -> host SSH {ssh}", False)
        sources = [IPv4Network(n) for n in fw.get("ssh_sources", ["0.0.0.0/0"])]
        for src in OUTSIDE_ADDRS:
            bind = "" if src == OUTSIDE_V4 else src
            out[Probe(eng.outside_ns, HOST_V4, ssh, "tcp", bind)] = (
                f"{src} -> host SSH {ssh}", any(IPv4Address(src) in n for n in sources))
    return out


def differences(eng: Engine, stacks: list[Stack]) -> list[str]:
    """Probe every question of every stack at once; the mismatches, readable."""
    asked: dict[Probe, tuple[str, bool]] = {}
    for st in stacks:
        asked |= {p: (f"{st.project}: {name}", want)
                  for p, (name, want) in questions(eng, st).items()}
    seen = eng.probe_all(asked)
    return sorted(f"{name}: spec {'open' if want else 'closed'}, engine "
                  f"{'OPEN' if seen[p] else 'closed'}"
                  for p, (name, want) in asked.items() if seen[p] != want)
