"""What the lab builds: networks, containers and published ports, read from a compose file."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import Any

from castle.spec.values import publish_defaults

EXT_NET = IPv4Network("203.0.113.0/24")
class LabError(Exception):
    """The lab cannot be built, used or torn down as asked."""


_BRIDGE_OPT = "com.docker.network.bridge.name"
_RESERVED = frozenset({"outside", "published"})  # probe syntax


@dataclass(frozen=True)
class LabNet:
    """A compose network: one Linux bridge in the host namespace."""

    name: str
    subnet: IPv4Network
    internal: bool
    gateway: IPv4Address | None = None  # None: the subnet's first address, as Docker picks
    bridge: str | None = None  # None: a short generated name (b0, b1...)

    @property
    def gw(self) -> IPv4Address:
        """The host's own address on this network (the containers' gateway)."""
        return self.gateway if self.gateway is not None else self.subnet.network_address + 1


@dataclass(frozen=True)
class LabContainer:
    """A service: one namespace with an interface per network (empty for network_mode none)."""

    name: str
    addrs: dict[str, IPv4Address]  # network name -> address, in the service's network order


@dataclass(frozen=True)
class Published:
    """A published port: host_port on the host's address DNATed to container:container_port."""

    host_port: int
    container: str
    container_port: int
    proto: str
    host_ip: IPv4Address | None = None  # None: every host address (compose's default)
    ipv6: bool = False  # published on every address, IPv6 too (no host IP given)


@dataclass(frozen=True)
class Topology:
    """Networks, containers and published ports: all the lab needs from a compose file."""

    nets: tuple[LabNet, ...]
    containers: tuple[LabContainer, ...]
    published: tuple[Published, ...]

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_compose(cls, doc: Mapping[str, Any]) -> Topology:
        """Read networks, static addresses and published ports from a compose document."""
        nets = tuple(_parse_net(name, body) for name, body in _mapping(doc, "networks").items())
        byname = {n.name: n for n in nets}
        joins: dict[str, list[tuple[str, IPv4Address | None]]] = {}
        published: list[Published] = []
        for svc, body in _mapping(doc, "services").items():
            body = body or {}
            mode = body.get("network_mode")
            if mode == "none":
                joins[svc] = []
            elif mode is not None:
                raise LabError(f"service {svc}: network_mode {mode!r} cannot be emulated")
            elif not body.get("networks"):
                raise LabError(f"service {svc} is on compose's default network (no fixed subnet)")
            else:
                joins[svc] = _parse_joins(svc, body["networks"], byname)
            for entry in body.get("ports") or []:
                for host_ip, hport, cport, proto, dual in _parse_port(svc, entry):
                    published.append(Published(hport, svc, cport, proto, host_ip, dual))
        used = {n.name: {n.gw} | {a for js in joins.values() for m, a in js if m == n.name and a}
                for n in nets}
        containers = []
        for svc, js in joins.items():
            addrs: dict[str, IPv4Address] = {}
            for net, addr in js:
                if addr is None:  # dockerd would pick the lowest free address
                    subnet = byname[net].subnet
                    addr = next((a for a in subnet.hosts() if a not in used[net]), None)
                    if addr is None:
                        raise LabError(f"network {net}: no free address for service {svc}")
                    used[net].add(addr)
                addrs[net] = addr
            containers.append(LabContainer(svc, addrs))
        return cls(nets, tuple(containers), tuple(published))


def _mapping(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, Mapping):
        raise LabError(f"compose: {key} must be a mapping")
    return value


def _parse_net(name: str, body: Any) -> LabNet:
    body = body or {}
    try:
        cfg = body["ipam"]["config"][0]
        subnet = ip_network(str(cfg["subnet"]))
        gateway = ip_address(str(cfg["gateway"])) if cfg.get("gateway") else None
    except (KeyError, IndexError, TypeError) as exc:
        raise LabError(f"network {name}: no ipam.config[0].subnet") from exc
    except ValueError as exc:
        raise LabError(f"network {name}: {exc}") from exc
    if not isinstance(subnet, IPv4Network) or not isinstance(gateway, IPv4Address | None):
        raise LabError(f"network {name}: only IPv4 subnets can be emulated")
    internal = body.get("internal", False)
    if not isinstance(internal, bool):
        raise LabError(f"network {name}: internal must be true or false, not {internal!r}")
    bridge = (body.get("driver_opts") or {}).get(_BRIDGE_OPT)
    return LabNet(name, subnet, internal, gateway, str(bridge) if bridge else None)


def _parse_joins(svc: str, nets: Any, byname: Mapping[str, LabNet]
                 ) -> list[tuple[str, IPv4Address | None]]:
    items = [(n, None) for n in nets] if isinstance(nets, list) else list(nets.items())
    out: list[tuple[int, str, IPv4Address | None]] = []
    for net, opts in items:
        if net not in byname:
            raise LabError(f"service {svc}: undefined network {net!r}")
        opts = opts or {}
        addr = None
        if opts.get("ipv4_address"):
            try:
                addr = IPv4Address(str(opts["ipv4_address"]))
            except ValueError as exc:
                raise LabError(f"service {svc}: network {net}: {exc}") from exc
        out.append((-int(opts.get("gw_priority") or 0), net, addr))
    out.sort(key=lambda t: t[0])  # stable: the compose order, unless gw_priority says otherwise
    return [(net, addr) for _, net, addr in out]


def _ports(svc: str, text: str) -> list[int]:
    try:
        lo, _, hi = text.partition("-")
        ports = list(range(int(lo), int(hi or lo) + 1))
    except ValueError as exc:
        raise LabError(f"service {svc}: bad port {text!r}") from exc
    if not ports or not all(0 < p < 65536 for p in ports):
        raise LabError(f"service {svc}: bad port {text!r}")
    return ports


def _defaults(value: Any) -> Any:
    """A port entry's variables filled with their defaults: what castle's firewalls wall
    (and pin), so what the lab builds and probes."""
    if isinstance(value, str):
        return publish_defaults(value)
    if isinstance(value, Mapping):
        return {k: _defaults(v) for k, v in value.items()}
    return value


def _parse_port(svc: str, entry: Any) -> list[tuple[IPv4Address | None, int, int, str, bool]]:
    entry = _defaults(entry)
    if isinstance(entry, Mapping):
        if entry.get("published") in (None, ""):
            return []  # dockerd would pick a random host port
        host_ip, proto = entry.get("host_ip"), str(entry.get("protocol") or "tcp")
        hosts, conts = _ports(svc, str(entry["published"])), _ports(svc, str(entry.get("target")))
    elif isinstance(entry, str | int) and not isinstance(entry, bool):
        text, _, proto = str(entry).partition("/")
        proto = proto or "tcp"
        if text.startswith("["):
            return []  # bound to an IPv6 host address: not reachable over the IPv4 lab
        parts = text.split(":")
        if len(parts) == 1 or parts[-2] == "":
            return []  # container port only: random host port
        if len(parts) > 3:
            raise LabError(f"service {svc}: bad port {entry!r}")
        host_ip = parts[0] if len(parts) == 3 else None
        hosts, conts = _ports(svc, parts[-2]), _ports(svc, parts[-1])
    else:
        raise LabError(f"service {svc}: bad port {entry!r}")
    if proto not in ("tcp", "udp"):
        raise LabError(f"service {svc}: protocol {proto!r} cannot be probed")
    hip: IPv4Address | None = None
    if host_ip not in (None, "", "0.0.0.0"):
        try:
            hip = IPv4Address(str(host_ip))
        except ValueError:
            if ":" in str(host_ip):
                return []
            raise LabError(f"service {svc}: bad host address {host_ip!r}") from None
    dual = host_ip in (None, "")  # unbound: docker-proxy listens on [::] too
    if len(conts) == 1:
        return [(hip, hosts[0], conts[0], proto, dual)]
    if len(hosts) != len(conts):
        raise LabError(f"service {svc}: port ranges of different lengths in {entry!r}")
    return [(hip, h, c, proto, dual) for h, c in zip(hosts, conts, strict=True)]


def _validate(topo: Topology) -> None:
    names = [n.name for n in topo.nets]
    if len(set(names)) != len(names):
        raise LabError("duplicate network names")
    byname = {n.name: n for n in topo.nets}
    nets = sorted(topo.nets, key=lambda n: n.subnet)
    for a, b in itertools.combinations(nets, 2):
        if a.subnet.overlaps(b.subnet):
            raise LabError(f"networks {a.name} and {b.name} overlap")
    for n in nets:
        if n.subnet.overlaps(EXT_NET) or n.subnet.prefixlen > 30 or n.gw not in n.subnet:
            raise LabError(f"network {n.name}: subnet {n.subnet} cannot be emulated")
    seen: set[IPv4Address] = set()
    cnames = [c.name for c in topo.containers]
    if len(set(cnames)) != len(cnames):
        raise LabError("duplicate container names")
    for c in topo.containers:
        if c.name in _RESERVED:
            raise LabError(f"service name {c.name!r} is reserved by the lab's probe syntax")
        for net, addr in c.addrs.items():
            on = byname.get(net)
            if on is None:
                raise LabError(f"container {c.name}: unknown network {net!r}")
            bad = (on.gw, on.subnet.network_address, on.subnet.broadcast_address)
            if addr not in on.subnet or addr in bad or addr in seen:
                raise LabError(f"container {c.name}: address {addr} unusable on {net}")
            seen.add(addr)
    for p in topo.published:
        if p.container not in cnames or p.proto not in ("tcp", "udp"):
            raise LabError(f"bad published port {p}")
