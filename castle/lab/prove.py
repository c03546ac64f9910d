"""castle prove: apply the generated firewall to an emulated Docker host and probe it for real.

The questions come from the Plan (every service pair on every listened port plus one no
flow names, every published port from outside and from inside and outside each CIDR, and
over IPv6 through Docker's userland proxy (docker-proxy on [::], when installed),
egress on the egress ports and one other, and the host itself); the answers come from the
kernel, through real TCP and UDP sockets in throwaway network namespaces.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import yaml

from castle.errors import CastleError, UsageError
from castle.plan import Plan
from castle.spec.findings import INTERNET
from castle.words import count

Progress = Callable[[int, int], None]
FIREWALLS = ("iptables", "nftables")
OUTSIDE = IPv4Address("203.0.113.2")  # the lab's default outside address (castle.lab.netns)
METADATA = IPv4Address("169.254.169.254")  # the cloud metadata endpoint
SPARE_SOURCES = ("198.51.100.7", "192.0.2.7", "100.64.0.7", "172.31.255.7")


@dataclass(frozen=True)
class Case:
    """One question: a probe, what the spec says, and how to name it in the report."""

    src: str  # probe source: a service, "outside" or "outside:A.B.C.D"
    dst: str  # probe destination: a service, "published", "outside[:A.B.C.D]" or "host:<net>"
    proto: str
    port: int
    want: bool
    label: tuple[str, str, str]  # (from, to, port) as the report shows them


@dataclass(frozen=True)
class ProveResult:
    """The report and whether every probe matched the spec."""

    report: str
    ok: bool


def _unnamed(taken: Iterable[tuple[int, int]]) -> int:
    """A port no range in `taken` covers, close to 9 (discard) so it reads as 'none'."""
    ranges = sorted(taken)
    port = 9
    for lo, hi in ranges:
        if lo <= port <= hi:
            port = hi + 1
    while any(lo <= port <= hi for lo, hi in ranges):
        port += 1
    return port


def _pair_ports(plan: Plan, dst: str) -> list[tuple[str, int]]:
    """The ports probed towards a service: listen and flow range edges, one unnamed per proto."""
    svc = plan.service(dst)
    found: set[tuple[str, int]] = set()
    taken: dict[str, list[tuple[int, int]]] = {"tcp": []}
    for r in svc.spec.listen:
        found |= {(r.proto, r.lo), (r.proto, r.hi)}
        taken.setdefault(r.proto, []).append((r.lo, r.hi))
    for c in plan.conns:
        if c.dst == dst:
            for p in (c.lo - 1, c.lo, c.hi, c.hi + 1):
                if 0 < p < 65536:
                    found.add((c.proto, p))
            taken.setdefault(c.proto, []).append((c.lo, c.hi))
    for proto, ranges in taken.items():
        found.add((proto, _unnamed(ranges)))
    return sorted(found)


def _allows(plan: Plan, src: str, dst: str, proto: str, port: int,
            addr: IPv4Address = OUTSIDE) -> bool:
    """The Plan's answer; "outside" as src or dst is the peer at `addr` (internet or a CIDR)."""
    def match(peer: str, side: str, out: bool) -> bool:
        if side != "outside":
            return peer == side
        if peer == INTERNET:  # as a destination: public addresses only
            return not out or not any(addr in n for n in plan.internet_except)
        return peer.startswith("cidr:") and addr in IPv4Network(peer[5:])

    return any(c.proto == proto and c.lo <= port <= c.hi and match(c.src, src, False)
               and match(c.dst, dst, True) for c in plan.conns)


def _inside(net: IPv4Network, avoid: list[IPv4Network]) -> IPv4Address | None:
    """An address of `net` usable as a lab source: not the stack's, not special."""
    if OUTSIDE in net:
        return OUTSIDE
    hosts = [net.network_address] if net.prefixlen == 32 else [
        net.network_address + 1, net.broadcast_address - 1, net.network_address + 7]
    for a in hosts:
        if not (a.is_loopback or a.is_multicast or a.is_reserved or a.is_unspecified
                or any(a in n for n in avoid) or a in IPv4Network("203.0.113.0/24")):
            return a
    return None


def _source(addr: IPv4Address) -> str:
    return "outside" if addr == OUTSIDE else f"outside:{addr}"


def cases(plan: Plan) -> tuple[list[Case], list[str]]:
    """Every probe castle prove makes, with the Plan's answers; plus notes on what it skips."""
    out: list[Case] = []
    notes: list[str] = []
    wired = [s for s in plan.services if s.networks]
    for b in wired:
        ports = _pair_ports(plan, b.name)
        for a in wired:
            if a.name != b.name:
                for proto, port in ports:
                    out.append(Case(a.name, b.name, proto, port,
                                    _allows(plan, a.name, b.name, proto, port),
                                    (a.name, b.name, f"{port}/{proto}")))
    own = list(plan.subnets)
    for p in plan.published:
        local = bool(p.host_ip) and p.host_ip != "0.0.0.0"
        nets = [IPv4Network(s[5:]) for s in p.sources if s.startswith("cidr:")]
        addrs = {OUTSIDE}
        for net in nets:
            inside = _inside(net, own)
            if inside is None:
                notes.append(f"no usable lab address inside {net}: not probed from inside it")
            else:
                addrs.add(inside)
        if any(OUTSIDE in n for n in nets):
            spare = next((IPv4Address(s) for s in SPARE_SOURCES
                          if not any(IPv4Address(s) in n for n in nets)), None)
            if spare is not None:
                addrs.add(spare)
        for host_port in sorted({p.host.lo, p.host.hi}):
            cport = p.container.lo + host_port - p.host.lo
            for addr in sorted(addrs):
                want = not local and _allows(plan, "outside", p.service, p.container.proto,
                                             cport, addr)
                who = "internet" if addr == OUTSIDE else f"outside {addr}"
                out.append(Case(_source(addr), "published", p.container.proto, host_port, want,
                                (who, p.service, f"{host_port}->{cport}/{p.container.proto}")))
            # IPv6 clients are internet, inside no (IPv4) CIDR: docker-proxy's [::] path
            want6 = not local and any(
                c.src == INTERNET and c.dst == p.service and c.proto == p.container.proto
                and c.lo <= cport <= c.hi for c in plan.conns)
            out.append(Case("outside", "published6", p.container.proto, host_port, want6,
                            ("internet IPv6", p.service,
                             f"{host_port}->{cport}/{p.container.proto}")))
    egress_ports: set[tuple[str, int]] = set()
    for c in plan.egress:
        egress_ports |= {(c.proto, c.lo), (c.proto, c.hi)}
    egress_ports.add(("tcp", _unnamed([(c.lo, c.hi) for c in plan.egress if c.proto == "tcp"])))
    senders = {c.src for c in plan.egress}
    for s in wired:
        for proto, port in sorted(egress_ports):
            out.append(Case(s.name, "outside", proto, port,
                            _allows(plan, s.name, "outside", proto, port, OUTSIDE),
                            (s.name, f"internet {OUTSIDE}", f"{port}/{proto}")))
            if s.name in senders:  # "internet" never includes the cloud metadata address
                out.append(Case(s.name, f"outside:{METADATA}", proto, port,
                                _allows(plan, s.name, "outside", proto, port, METADATA),
                                (s.name, f"metadata {METADATA}", f"{port}/{proto}")))
    if plan.spec.firewall.manage_input:
        port = plan.spec.firewall.ssh_port
        for s in wired:
            out.append(Case(s.name, f"host:{s.networks[0][0]}", "tcp", port, False,
                            (s.name, "host", f"{port}/tcp")))
    return out, notes


def apply_firewall(lab: object, out: Path, firewall: str) -> None:
    """Load the generated iptables.sh or castle.nft into the lab's host namespace."""
    if firewall == "iptables":
        argv = ["sh", str(out / "firewall" / "iptables.sh")]
    elif firewall == "nftables":
        argv = ["nft", "-f", str(out / "firewall" / "castle.nft")]
    else:
        raise UsageError(f"unknown firewall {firewall!r}; choose iptables or nftables")
    done = lab.host_exec(argv)  # type: ignore[attr-defined]
    if done.returncode:
        raise CastleError(f"{firewall}: loading failed: {done.stderr.strip()}")


def run(out: Path, firewall: str, items: list[Case], progress: Progress | None = None,
        **lab_options: bool) -> dict[Case, bool]:
    """Build a fresh lab from out/compose.yaml, apply one firewall, and probe every case."""
    from castle.lab.netns import Lab, LabError, Probe, Topology

    doc = yaml.safe_load((out / "compose.yaml").read_text(encoding="utf-8"))
    try:
        topo = Topology.from_compose(doc)
        with Lab(topo, progress=progress, **lab_options) as lab:
            apply_firewall(lab, out, firewall)
            probes = {c: Probe(c.src, c.dst, c.proto, c.port) for c in items}
            seen = lab.probe(list(probes.values()))
    except LabError as exc:
        raise CastleError(f"prove: the lab failed: {exc}") from None
    return {c: seen[p] for c, p in probes.items()}


def mismatch_table(firewall: str, results: dict[Case, bool]) -> list[str]:
    """The report lines of one firewall: a summary and a table of every difference."""
    wrong = [c for c, got in results.items() if got != c.want]
    lines = [f"{firewall}: {count(len(results), 'probe')}, {count(len(wrong), 'difference')}"]
    if not wrong:
        return lines
    rows = [("from", "to", "port", "spec", "kernel")]
    for c in sorted(wrong, key=lambda c: c.label):
        rows.append((*c.label, "open" if c.want else "closed",
                     "OPEN (leak)" if results[c] else "CLOSED (blocked)"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return lines


def prove(spec: Path, out: Path | None, firewalls: list[str],
          progress: Progress | None = None) -> ProveResult:
    """Generate, apply each firewall in a fresh emulated Docker host, probe, compare."""
    from castle.lab.netns import netns_available
    from castle.targets.generate import generate

    reason = netns_available()
    if reason is not None:
        raise UsageError(f"castle prove needs Linux, root and network namespaces: {reason}")
    for fw in firewalls:
        if fw not in FIREWALLS:
            raise UsageError(f"unknown firewall {fw!r}; choose iptables or nftables")
    if "nftables" in firewalls and shutil.which("nft") is None:
        raise UsageError("castle prove --firewall nftables needs the nft command")
    with tempfile.TemporaryDirectory(prefix="castle-prove-") as tmp:
        root = Path(out) if out is not None else Path(tmp)
        plan = generate(spec, root, targets=["compose", "iptables", "nftables"]).plan
        items, notes = cases(plan)
        lines = [f"castle prove {spec}: {count(len(plan.services), 'service')}, "
                 f"{count(len(items), 'probe')} per firewall"]
        ok = True
        for fw in firewalls:
            try:
                results = run(root, fw, items, progress)
            except CastleError as exc:
                if isinstance(exc, UsageError):
                    raise
                lines.append(f"{fw}: {exc}")
                ok = False
                continue
            lines += mismatch_table(fw, results)
            ok = ok and all(got == c.want for c, got in results.items())
        lines += [f"note: {n}" for n in notes]
        lines.append("proof holds: the kernel enforces exactly the spec" if ok
                     else "proof FAILED: the kernel differs from the spec")
    return ProveResult("\n".join(lines) + "\n", ok)
