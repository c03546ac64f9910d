"""dockerd as the lab emulates it: bridges, MAC addresses, published ports, iptables rules."""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from castle.lab.probe import EXT_IF
from castle.lab.topology import LabError

if TYPE_CHECKING:
    from castle.lab.topology import LabNet, Published, Topology

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def docker_proxy() -> str | None:
    """Docker's userland proxy binary, when installed (Debian: docker.io)."""
    found = shutil.which("docker-proxy")
    for path in (found, "/usr/sbin/docker-proxy", "/usr/libexec/docker/docker-proxy",
                 "/usr/bin/docker-proxy"):
        if path and os.access(path, os.X_OK):
            return path
    return None


def mac(addr: IPv4Address) -> str:
    """Docker's classic scheme: 02:42 then the IPv4 address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in addr.packed)


def bridge_names(nets: Sequence[LabNet]) -> dict[str, str]:
    """Network name -> bridge interface name in the host namespace."""
    taken = {n.bridge for n in nets if n.bridge}
    out, counter = {}, itertools.count()
    for n in nets:
        if n.bridge:
            if (not _IFNAME.fullmatch(n.bridge) or n.bridge in {EXT_IF, "lo"}
                    or n.bridge[:4] == "veth"):
                raise LabError(f"network {n.name}: bridge name {n.bridge!r} unusable")
            out[n.name] = n.bridge
        else:
            out[n.name] = next(b for i in counter if (b := f"b{i}") not in taken)
    if len(set(out.values())) != len(out):
        raise LabError("two networks share a bridge name")
    return out


def gateway_net(topo: Topology, container: str) -> str | None:
    """The network that carries a container's default route and published ports, if any."""
    nets = {n.name: n for n in topo.nets}
    c = next(c for c in topo.containers if c.name == container)
    return next((net for net in c.addrs if not nets[net].internal), None)


def published_targets(topo: Topology) -> list[tuple[Published, str, IPv4Address]]:
    """Each published port dockerd would map: (port, its network, container address)."""
    byname = {c.name: c for c in topo.containers}
    out = []
    for p in topo.published:
        net = gateway_net(topo, p.container)
        if net is not None:  # Docker publishes nothing for a container on internal networks only
            out.append((p, net, byname[p.container].addrs[net]))
    return out


def docker_iptables(topo: Topology, bridges: Mapping[str, str], *, conntrack: bool = True) -> str:
    """dockerd's own rules (Engine 28 layout) for this topology, as iptables-restore input."""
    f = ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-FORWARD",
         "-A DOCKER-FORWARD -j DOCKER-CT", "-A DOCKER-FORWARD -j DOCKER-INTERNAL",
         "-A DOCKER-FORWARD -j DOCKER-BRIDGE"]
    accept, drop, raw = [], [], []
    nat = ["-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
           "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER"]
    for n in topo.nets:
        b = bridges[n.name]
        if n.internal:
            f += [f"-A DOCKER-INTERNAL ! -s {n.subnet} -o {b} -j DROP",
                  f"-A DOCKER-INTERNAL ! -d {n.subnet} -i {b} -j DROP",
                  f"-A DOCKER-FORWARD -i {b} -o {b} -j ACCEPT"]
            continue
        if conntrack:
            f.append(f"-A DOCKER-CT -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        f += [f"-A DOCKER-BRIDGE -o {b} -j DOCKER", f"-A DOCKER-FORWARD -i {b} -j ACCEPT"]
        drop.append(f"-A DOCKER ! -i {b} -o {b} -j DROP")
        nat += [f"-A POSTROUTING -s {n.subnet} ! -o {b} -j MASQUERADE",
                f"-A DOCKER -i {b} -j RETURN"]
    for p, net, addr in published_targets(topo):
        b, pr = bridges[net], p.proto
        rule = f"-A DOCKER -d {addr}/32 ! -i {b} -o {b} -p {pr} -m {pr} --dport {p.container_port}"
        if rule + " -j ACCEPT" not in accept:
            accept.append(rule + " -j ACCEPT")
        if f"-A PREROUTING -d {addr}/32 ! -i {b} -j DROP" not in raw:
            raw.append(f"-A PREROUTING -d {addr}/32 ! -i {b} -j DROP")
        dst = f"-d {p.host_ip}/32 " if p.host_ip is not None else ""
        nat.append(f"-A DOCKER {dst}! -i {b} -p {pr} -m {pr} --dport {p.host_port}"
                   f" -j DNAT --to-destination {addr}:{p.container_port}")
    chains = ["DOCKER", "DOCKER-BRIDGE", "DOCKER-CT", "DOCKER-FORWARD", "DOCKER-INTERNAL",
              "DOCKER-USER"]
    return "\n".join([
        "*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", *raw, "COMMIT",
        "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]", ":DOCKER - [0:0]", *nat, "COMMIT",
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
        *[f":{c} - [0:0]" for c in chains], *f, *accept, *drop, "COMMIT", ""])
