"""Static addresses of an imported compose file: the ones the stack's own configuration names
are kept (`[services.NAME] address`), the others give way to castle's own."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from castle.errors import SpecError
from castle.plan import compile_plan
from castle.readers.compose import ComposeFile
from castle.spec.load import Loaded, parse
from castle.views import import_flows
from castle.views.evidence import Evidence, _mounted_texts, _read_env_file
from castle.views.import_draft import DraftService


@dataclass
class Static:
    """One static address of a service in the file, and who names it."""

    service: str
    network: str
    address: str
    family: int  # 4 or 6
    named: dict[str, str] = field(default_factory=dict)  # caller -> where it is named
    ports: dict[str, set[int]] = field(default_factory=dict)  # caller -> ports named with it


def statics(interpolated: Mapping[str, Any]) -> list[Static]:
    """Every ipv4_address / ipv6_address under a service's networks (as containers get them),
    sorted by service and network."""
    found: list[Static] = []
    for name, svc in sorted((interpolated.get("services") or {}).items()):
        nets = svc.get("networks") if isinstance(svc, Mapping) else None
        if not isinstance(nets, Mapping):
            continue
        for net, cfg in sorted(nets.items()):
            for key, family in (("ipv4_address", 4), ("ipv6_address", 6)):
                value = cfg.get(key) if isinstance(cfg, Mapping) else None
                if isinstance(value, str) and value:
                    found.append(Static(str(name), str(net), value, family))
    return found


def _strings(value: Any) -> Iterable[str]:
    """Every string in a compose value, keys of mappings included (`labels` and
    `extra_hosts` written as mappings carry values both ways)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)


def _texts(svc: Mapping[str, Any], written: Mapping[str, Any], root: Path | None,
           config_files: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    """(where, text) of everything a service's configuration says: environment, command,
    labels and every other key but its own networks, its env files and mounted files."""
    for key, value in sorted(svc.items()):
        if key == "environment" and isinstance(value, Mapping):
            for k, v in sorted(value.items()):
                yield f"environment {k}", str(v)
        elif key != "networks":
            for text in _strings(value):
                yield key, text
    for item in written.get("env_file") or []:
        path = item.get("path") if isinstance(item, Mapping) else item
        if isinstance(path, str):
            for k, v in _read_env_file(Path(path)):
                yield f"env_file {Path(path).name} {k}", v
    for fname, text in _mounted_texts(written, root, config_files):
        yield f"mounted file {fname}", text


def _pattern(address: str) -> re.Pattern[str]:
    """The address as a whole token (not inside a longer number or name), maybe :PORT."""
    body = re.escape(address)
    if ":" in address:  # IPv6: in brackets when a port follows
        body = rf"\[?{body}\]?"
    return re.compile(rf"(?<![0-9A-Za-z.:]){body}(?::([0-9]{{1,5}}))?(?![0-9A-Za-z]|\.[0-9])")


def find_named(found: list[Static], interpolated: Mapping[str, Any],
               written: Mapping[str, Any], root: Path | None = None,
               config_files: Mapping[str, str] | None = None) -> None:
    """Fill each address's `named`: the other services whose configuration names it
    (mounted files count inside `root`, the project's folder, only)."""
    services = interpolated.get("services") or {}
    raw = written.get("services") or {}
    texts = {name: list(_texts(svc, raw.get(name) or {}, root, config_files or {}))
             for name, svc in services.items() if isinstance(svc, Mapping)} if found else {}
    for st in found:
        pat = _pattern(st.address)
        for caller, items in sorted(texts.items()):
            if caller == st.service:
                continue
            for where, text in items:
                for m in pat.finditer(text):
                    st.named.setdefault(caller, where)
                    if m.group(1) and 1 <= int(m.group(1)) <= 65535:
                        st.ports.setdefault(caller, set()).add(int(m.group(1)))
                    st.ports.setdefault(caller, set())


def keep(found: list[Static]) -> tuple[dict[str, Static], list[str], dict[str, list[str]]]:
    """(service -> the address it keeps, lines for the draft's "cannot" block, service ->
    notes). A service keeps one IPv4 address that others name (castle's networks are IPv4 and
    a service keeps an address on one network)."""
    kept: dict[str, Static] = {}
    cannot: list[str] = []
    notes: dict[str, list[str]] = {}
    for st in found:
        who = ", ".join(f"{c!r} ({w})" for c, w in sorted(st.named.items()))
        if st.family == 6 or not _usable(st.address):
            if st.named:
                why = ("castle's networks are IPv4 only" if st.family == 6
                       else "it is not a private unicast address")
                cannot.append(f"{st.service!r} had the static address {st.address} on "
                              f"{st.network!r}, named by {who}: not kept ({why}); call the "
                              "service by name instead")
            else:
                notes.setdefault(st.service, []).append(
                    f"static address {st.address} on {st.network!r} dropped: no other service "
                    "names it")
        elif not st.named:
            notes.setdefault(st.service, []).append(
                f"static address {st.address} on {st.network!r}: nothing else names it, so "
                "castle assigns its own from subnet_pool")
        elif st.service in kept:
            cannot.append(f"{st.service!r} had a second named address {st.address} (on "
                          f"{st.network!r}, named by {who}): castle keeps one per service "
                          f"({kept[st.service].address}); call the service by name instead")
        else:
            kept[st.service] = st
            notes.setdefault(st.service, []).append(
                f"address {st.address} kept from {st.network!r}: named by {who}")
    return kept, cannot, notes


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_multicast or ip.is_link_local or ip.is_reserved
                or ip.is_unspecified or ip in ipaddress.IPv4Network("0.0.0.0/8"))


def take(cf: ComposeFile, evidence: dict[str, Evidence], services: dict[str, DraftService],
         cannot: list[str]) -> dict[str, Static]:
    """Keep the static addresses that other services name (compose name -> address); a
    service that names another's address calls it, which the evidence records."""
    found = statics(cf.interpolated)
    find_named(found, cf.interpolated, cf.verbatim, cf.path.resolve().parent,
               import_flows.config_files(cf))
    for st in found:
        for caller, where in sorted(st.named.items()):
            ev = evidence.setdefault(caller, Evidence())
            for port in sorted(st.ports.get(caller) or {0}):
                ev.add(st.service, port or None, f"names its address {st.address} in {where}")
    kept, lines, notes = keep(found)
    cannot += lines
    for name, more in notes.items():
        services[name].notes += more
    for name, st in kept.items():
        services[name].address = st.address
    return kept


def placed(text: str, kept: dict[str, Static], names: dict[str, str],
           services: dict[str, DraftService], cannot: list[str]) -> bool:
    """Check the kept addresses in the draft's own plan: an address the plan cannot place is
    dropped, and a caller off the network that holds the address is named. True when the
    draft must be written again."""
    if not kept:
        return False
    try:
        spec, source, _, edges = parse(text, "the draft")
        plan = compile_plan(Loaded(spec, Path("the draft"), text, "", source, (), tuple(edges)))
    except SpecError as exc:
        for name in kept:
            services[name].address = ""
        cannot.append(f"static addresses {', '.join(st.address for st in kept.values())} not "
                      f"kept, castle cannot place them ({str(exc).splitlines()[0]}): call the "
                      "services by name instead")
        return True
    lines = []
    for name, st in sorted(kept.items()):
        ip = ipaddress.IPv4Address(st.address)
        net = next(n for n in plan.networks if (names[name], ip) in n.addresses)
        off = sorted(c for c in st.named if names[c] not in net.members)
        if off:
            lines.append(f"{name!r} keeps {st.address} on castle's network {net.name!r} only "
                         f"(a container has one address per network); {', '.join(off)} "
                         f"name{'s' if len(off) == 1 else ''} it from another network and "
                         f"reach{'es' if len(off) == 1 else ''} {name!r} by name only")
    cannot += lines
    return bool(lines)
