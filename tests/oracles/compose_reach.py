"""Oracle: who can reach whom in a compose file, recomputed from the YAML dict alone.

Docker's model, as this oracle applies it:
- a service without `networks` (and without `network_mode`) joins the implicit `default`
  network, which is not internal unless the file's top-level `networks.default` says so;
- two services can talk when they share a network (any port: compose has no port filter);
- `network_mode: service:X` shares X's network namespace (same networks, plus localhost);
- `network_mode: host` puts the container on the host: it reaches every published port
  and is reported as a finding; `none` reaches nothing; `bridge` is Docker's default
  bridge, shared by every service in that mode;
- a service has egress when at least one of its networks is not `internal: true`;
- `findings` are reachability surprises (host or foreign network namespaces, undefined
  networks); services that may rewrite their own firewall are listed in `net_admin`;
- a published port is reachable from outside whatever its host IP (this oracle records
  host ports, not bind addresses); a container-only port gets an ephemeral host port,
  recorded as None; a host range mapped to one container port yields every host port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

Published = tuple[str, int | None, int, str]

HOST = "host"  # pseudo network of `network_mode: host`
BRIDGE = "bridge"  # Docker's default bridge, `network_mode: bridge`


@dataclass
class ComposeReach:
    """Reachability facts of one compose document."""

    services: set[str] = field(default_factory=set)
    networks: dict[str, set[str]] = field(default_factory=dict)  # service -> its networks
    pairs: set[frozenset[str]] = field(default_factory=set)
    published: set[Published] = field(default_factory=set)
    egress: set[str] = field(default_factory=set)
    host_network: set[str] = field(default_factory=set)
    net_admin: set[str] = field(default_factory=set)  # cap_add NET_ADMIN/ALL or privileged
    addresses: dict[tuple[str, str], str] = field(default_factory=dict)
    subnets: dict[str, str] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def can_talk(self, a: str, b: str) -> bool:
        """True when services a and b share a network (in either direction)."""
        return frozenset((a, b)) in self.pairs


def _range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def _expand(service: str, host: str | None, container: str, proto: str) -> set[Published]:
    targets = _range(container)
    if not host:
        return {(service, None, c, proto) for c in targets}
    hosts = _range(host)
    if len(targets) == 1:
        return {(service, h, targets[0], proto) for h in hosts}
    if len(hosts) == 1:
        hosts = [hosts[0] + i for i in range(len(targets))]
    return {(service, h, c, proto) for h, c in zip(hosts, targets, strict=False)}


def parse_port(service: str, item: Any) -> set[Published]:
    """Every (service, host_port, container_port, proto) of one `ports` entry."""
    if isinstance(item, Mapping):
        published = item.get("published")
        host = None if published in (None, "") else str(published)
        proto = str(item.get("protocol") or "tcp").lower()
        return _expand(service, host, str(item["target"]), proto)
    if isinstance(item, int):
        return {(service, None, item, "tcp")}
    text, _, proto = str(item).partition("/")
    if text.startswith("["):  # [IPv6]:host:container
        text = text[text.index("]") + 2 :]
        parts = text.split(":")
    else:
        parts = text.split(":")
        if len(parts) > 3:  # unbracketed IPv6 host address
            parts = parts[-2:]
        elif len(parts) == 3:
            parts = parts[1:]
    host = parts[0] if len(parts) == 2 else None
    return _expand(service, host, parts[-1], (proto or "tcp").lower())


def _service_networks(svc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    nets = svc.get("networks")
    if nets is None:
        return {"default": {}}
    if isinstance(nets, Mapping):
        return {str(k): (v or {}) for k, v in nets.items()}
    return {str(n): {} for n in nets}


def _network_root(name: str, services: Mapping[str, Any], findings: list[str]) -> str | None:
    """The service whose network namespace `name` runs in, or None when it is not in one."""
    seen = [name]
    current = name
    while True:
        mode = str((services[current] or {}).get("network_mode") or "")
        if not mode.startswith("service:"):
            return current
        current = mode.removeprefix("service:")
        if current not in services:
            findings.append(f"service {name!r}: network_mode names unknown service {current!r}")
            return None
        if current in seen:
            findings.append(f"service {name!r}: network_mode cycle {' -> '.join(seen)}")
            return None
        seen.append(current)


def reach(doc: Mapping[str, Any]) -> ComposeReach:
    """Recompute reachability of a compose document (a dict from yaml.safe_load)."""
    services: Mapping[str, Any] = doc.get("services") or {}
    top_nets: Mapping[str, Any] = doc.get("networks") or {}
    out = ComposeReach(services=set(services))
    internal = {str(n): bool((cfg or {}).get("internal") is True) for n, cfg in top_nets.items()}
    for net, cfg in top_nets.items():
        configs = ((cfg or {}).get("ipam") or {}).get("config") or []
        for conf in configs:
            if conf.get("subnet") and ":" not in str(conf["subnet"]):
                out.subnets[str(net)] = str(conf["subnet"])
                break

    own: dict[str, set[str]] = {}
    for name, svc in services.items():
        svc = svc or {}
        mode = str(svc.get("network_mode") or "")
        for port in svc.get("ports") or []:
            out.published |= parse_port(name, port)
        caps = {str(c).upper().removeprefix("CAP_") for c in svc.get("cap_add") or []}
        if caps & {"NET_ADMIN", "ALL"} or svc.get("privileged") is True:
            out.net_admin.add(name)  # can rewrite its own firewall, not its networks
        if mode == "host":
            own[name] = {HOST}
            out.findings.append(f"service {name!r}: network_mode host")
        elif mode == "none":
            own[name] = set()
        elif mode == BRIDGE:
            own[name] = {BRIDGE}
        elif mode.startswith("container:"):
            own[name] = set()
            out.findings.append(f"service {name!r}: network_mode {mode} (outside the file)")
        elif mode.startswith("service:"):
            continue
        elif mode:
            own[name] = {mode}
        else:
            nets = _service_networks(svc)
            own[name] = set(nets)
            for net, cfg in nets.items():
                if net != "default" and net not in top_nets:
                    out.findings.append(f"service {name!r}: undefined network {net!r}")
                if isinstance(cfg, Mapping) and cfg.get("ipv4_address"):
                    out.addresses[(name, net)] = str(cfg["ipv4_address"])

    root_of: dict[str, str | None] = {
        name: _network_root(name, services, out.findings) for name in services
    }
    for name in services:
        root = root_of[name]
        out.networks[name] = set(own.get(root, set())) if root else set()
    out.host_network = {s for s, nets in out.networks.items() if HOST in nets}
    out.egress = {
        s for s, nets in out.networks.items() if any(not internal.get(n, False) for n in nets)
    }

    members: dict[str, set[str]] = {}
    for name, joined in out.networks.items():
        for net in joined:
            members.setdefault(net, set()).add(name)
    for group in members.values():
        out.pairs |= {frozenset(p) for p in combinations(sorted(group), 2)}
    for a, b in combinations(sorted(services), 2):
        if root_of[a] is not None and root_of[a] == root_of[b]:
            out.pairs.add(frozenset((a, b)))  # same network namespace: localhost
    publishers = {p[0] for p in out.published}
    for host_svc in out.host_network:
        out.pairs |= {frozenset((host_svc, s)) for s in publishers if s != host_svc}
    return out


def _first_host(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return net.network_address + 1


def check_addresses(doc: Mapping[str, Any]) -> list[str]:
    """Problems with static addresses: outside the subnet, repeated, reserved, overlapping."""
    problems: list[str] = []
    top_nets: Mapping[str, Any] = doc.get("networks") or {}
    subnets: dict[str, ipaddress.IPv4Network] = {}
    gateways: dict[str, ipaddress.IPv4Address] = {}
    for net, cfg in top_nets.items():
        configs = ((cfg or {}).get("ipam") or {}).get("config") or []
        for conf in configs:
            if not conf.get("subnet") or ":" in str(conf["subnet"]):
                continue
            try:
                subnet = ipaddress.IPv4Network(str(conf["subnet"]))
            except ValueError as exc:
                problems.append(f"network {net!r}: bad subnet {conf['subnet']!r}: {exc}")
                break
            subnets[net] = subnet
            try:
                gateways[net] = ipaddress.IPv4Address(
                    str(conf.get("gateway") or _first_host(subnet))
                )
            except ValueError as exc:
                problems.append(f"network {net!r}: bad gateway {conf.get('gateway')!r}: {exc}")
            break
    for (a, na), (b, nb) in combinations(sorted(subnets.items()), 2):
        if na.overlaps(nb):
            problems.append(f"networks {a!r} ({na}) and {b!r} ({nb}) overlap")

    seen: dict[tuple[str, ipaddress.IPv4Address], str] = {}
    for (svc, net), text in sorted(reach(doc).addresses.items()):
        where = f"service {svc!r} on network {net!r}"
        try:
            addr = ipaddress.IPv4Address(text)
        except ValueError:
            problems.append(f"{where}: {text!r} is not an IPv4 address")
            continue
        cidr = subnets.get(net)
        if cidr is None:
            problems.append(f"{where}: static address {addr} but the network has no subnet")
            continue
        if addr not in cidr:
            problems.append(f"{where}: {addr} is outside the subnet {cidr}")
            continue
        if addr in (cidr.network_address, cidr.broadcast_address):
            problems.append(f"{where}: {addr} is the network or broadcast address of {cidr}")
        if addr == gateways.get(net):
            problems.append(f"{where}: {addr} is the gateway of {cidr}")
        if (net, addr) in seen:
            problems.append(f"{where}: {addr} is also used by service {seen[(net, addr)]!r}")
        seen.setdefault((net, addr), svc)
    return problems
