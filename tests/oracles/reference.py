"""Oracle: a clean-room reading of DESIGN.md section 2's flow semantics, from the raw TOML dict.

It does not validate (castle does that); it only says which connections a VALID spec allows.
Decisions where DESIGN.md is silent:
- a flow from a service to itself (after `tier:` expansion) is dropped: every artifact allows
  a container to talk to itself, and network-config-analyzer never lists self-loops;
- a port range ("8000-8010/tcp", in `listen` or in a flow's `ports`) means every port in it;
- a `publish` entry may map one container port to several host ports: each is published.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Conn = tuple[str, str, str, int]  # (src, dst, proto, port); src/dst: service, internet, cidr:X
Published = tuple[str, int, int, str]  # (service, host_port, container_port, proto)

INTERNET = "internet"


def is_outside(endpoint: str) -> bool:
    """True for endpoints outside the stack: `internet` and `cidr:X`."""
    return endpoint == INTERNET or endpoint.startswith("cidr:")


def parse_ports(item: int | str) -> list[tuple[str, int]]:
    """(proto, port) for every port of one `listen`/`ports` item: 80, "53/udp", "8000-8010/tcp"."""
    if isinstance(item, bool):
        raise ValueError(f"not a port: {item!r}")
    if isinstance(item, int):
        return [("tcp", item)]
    text, _, proto = item.partition("/")
    lo, _, hi = text.partition("-")
    return [((proto or "tcp").lower(), p) for p in range(int(lo), int(hi or lo) + 1)]


def endpoints(value: str | Iterable[str], services: Mapping[str, Any]) -> list[str]:
    """A flow's `from`/`to` as a list of endpoints, each `tier:NAME` expanded to its services."""
    out: list[str] = []
    for item in [value] if isinstance(value, str) else value:
        if item.startswith("tier:"):
            tier = item.removeprefix("tier:")
            names = sorted(n for n, s in services.items() if s.get("tier") == tier)
        else:
            names = [item]
        out += [n for n in names if n not in out]
    return out


@dataclass(frozen=True)
class Expected:
    """What a spec allows, in terms every artifact can be compared with."""

    services: frozenset[str]
    conns: frozenset[Conn]
    pairs: frozenset[frozenset[str]]
    published: frozenset[Published]
    egress: frozenset[str]
    egress_conns: frozenset[Conn]
    ingress_conns: frozenset[Conn]
    tls: frozenset[tuple[str, str]]  # (client, server) service pairs of `tls = true` flows


def _publish_map(service: Mapping[str, Any]) -> dict[tuple[str, int], set[int]]:
    """(proto, container_port) -> host ports, from a service's `publish` list."""
    mapping: dict[tuple[str, int], set[int]] = {}
    for entry in service.get("publish", []):
        text, _, proto = str(entry).partition("/")
        host, container = text.split(":")[-2:]
        pairs = zip(
            parse_ports(f"{host}/{proto}"), parse_ports(f"{container}/{proto}"), strict=True
        )
        for (_, h), (p, c) in pairs:
            mapping.setdefault((p, c), set()).add(h)
    return mapping


def expected(spec: Mapping[str, Any]) -> Expected:
    """Expand a spec dict (tomllib.loads of zones.toml) into its allowed connections."""
    services: Mapping[str, Any] = spec.get("services", {})
    conns: set[Conn] = set()
    tls: set[tuple[str, str]] = set()
    for i, flow in enumerate(spec.get("flows", [])):
        for dst in endpoints(flow["to"], services):
            if "ports" in flow:
                items = flow["ports"]
            elif dst in services:
                items = services[dst].get("listen", [])
            else:
                raise ValueError(f"flows[{i}]: no ports for destination {dst!r}")
            ports = [pp for item in items for pp in parse_ports(item)]
            for src in endpoints(flow["from"], services):
                if src == dst:
                    continue
                conns |= {(src, dst, proto, port) for proto, port in ports}
                if flow.get("tls") and src in services and dst in services:
                    tls.add((src, dst))

    published: set[Published] = set()
    maps = {name: _publish_map(svc) for name, svc in services.items()}
    for src, dst, proto, port in conns:
        if is_outside(src) and dst in services:
            hosts = maps[dst].get((proto, port), {port})
            published |= {(dst, h, port, proto) for h in hosts}
    egress_conns = {c for c in conns if is_outside(c[1]) and c[0] in services}
    return Expected(
        services=frozenset(services),
        conns=frozenset(conns),
        pairs=frozenset(
            frozenset((s, d)) for s, d, _, _ in conns if s in services and d in services
        ),
        published=frozenset(published),
        egress=frozenset(c[0] for c in egress_conns),
        egress_conns=frozenset(egress_conns),
        ingress_conns=frozenset(c for c in conns if is_outside(c[0]) and c[1] in services),
        tls=frozenset(tls),
    )


def expected_from_toml(text: str) -> Expected:
    """`expected()` of a zones.toml given as text."""
    return expected(tomllib.loads(text))
