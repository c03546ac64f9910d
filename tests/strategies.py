"""Hypothesis strategies: random VALID zones.toml specs, as TOML text and as the dict it parses to.

Use: `from tests.strategies import specs` then `@given(specs(max_services=6))`; each example
is `(toml_text, data)` with `tomllib.loads(toml_text) == data`. The specs obey every wall
rule of DESIGN.md section 2 (a flow that would break one carries a waiver), so castle must
accept them; the generator does not import castle.

Profiles (one per process, chosen by $CASTLE_HYPOTHESIS_PROFILE): "ci" (the default; fixed
seed, bounded example counts) and "nightly" (random seeds, `examples(n)` times 20):

    CASTLE_HYPOTHESIS_PROFILE=nightly python -m pytest tests/test_properties.py tests/test_fuzz.py
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

# -- profiles ------------------------------------------------------------------------------

PROFILE = os.environ.get("CASTLE_HYPOTHESIS_PROFILE", "ci")
_SCALE = {"ci": 1, "quick": 1, "nightly": 20}
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW, database=None)
settings.register_profile("nightly", derandomize=False, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW)
# "quick": like ci but without shrinking, to iterate fast on a failure (examples stay large)
settings.register_profile("quick", parent=settings.get_profile("ci"),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(PROFILE if PROFILE in _SCALE else "ci")


def examples(n: int) -> int:
    """An example count: n in CI, 20 n in the nightly profile."""
    return n * _SCALE.get(PROFILE, 1)


# -- TOML text -----------------------------------------------------------------------------

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_str(value: str) -> str:
    """A TOML basic string reading back as exactly `value` (control characters escaped)."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """A TOML key: bare when it can be, quoted otherwise."""
    return key if _BARE.match(key) else toml_str(key)


def toml_value(value: Any) -> str:
    """An inline TOML value (strings, ints, bools, floats, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _table(lines: list[str], header: str, body: Mapping[str, Any]) -> None:
    lines.append(header)
    nested = []
    for key, value in body.items():
        if isinstance(value, Mapping) and key == "compose":
            nested.append((key, value))  # as its own table, the way people write it
        else:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    for key, value in nested:
        lines.append("")
        lines.append(header[:-1] + "." + toml_key(key) + "]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
    lines.append("")


def dump_toml(data: Mapping[str, Any], *, service_order: Iterable[str] | None = None,
              flow_order: Iterable[int] | None = None) -> str:
    """zones.toml text of a spec dict; the orders rearrange [services.*] and [[flows]]."""
    lines = ["# random spec made by tests/strategies.py", ""]
    for key, value in data.items():
        if not isinstance(value, Mapping | list):
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    lines.append("")
    for key in ("stack", "firewall", "kubernetes", "mesh", "tls"):
        if key in data:
            _table(lines, f"[{key}]", data[key])
    for tier in data.get("tiers", []):
        _table(lines, "[[tiers]]", tier)
    services = data.get("services", {})
    for name in service_order if service_order is not None else services:
        _table(lines, f"[services.{toml_key(name)}]", services[name])
    flows = data.get("flows", [])
    for i in flow_order if flow_order is not None else range(len(flows)):
        _table(lines, "[[flows]]", flows[i])
    return "\n".join(lines)


def reorder(data: Mapping[str, Any], service_order: list[str], flow_order: list[int]) -> dict[
        str, Any]:
    """The same spec with services and flows in another order (tiers keep theirs: depth)."""
    out = dict(data)
    out["services"] = {n: data["services"][n] for n in service_order}
    if "flows" in data:
        out["flows"] = [data["flows"][i] for i in flow_order]
    return out


# -- the random spec ------------------------------------------------------------------------

_WORDS = ["web", "app", "api", "db", "cache", "queue", "edge", "proxy", "auth", "admin",
          "mail", "dns", "log", "metrics", "search", "pay", "front", "back", "core", "vault"]
_COMMON_PORTS = [22, 53, 80, 443, 5432, 6379, 8000, 8080, 8443, 9000, 9090, 11211]


@st.composite
def dns_labels(draw: st.DrawFn, long: bool = True) -> str:
    """A DNS-1123 label: a readable word with a suffix, sometimes long (up to 63)."""
    word = draw(st.sampled_from(_WORDS))
    kind = draw(st.integers(0, 9))
    if kind < 6:
        return word
    if kind < 9 or not long:
        return f"{word}-{draw(st.integers(0, 99))}"
    pad = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=40, max_size=55))
    return (word + "-" + pad).rstrip("-")[:62] + "z"


def _unique_labels(draw: st.DrawFn, n: int, avoid: Iterable[str] = ()) -> list[str]:
    out: list[str] = []
    banned = {"internet", *avoid}
    while len(out) < n:
        name = draw(dns_labels())
        if name in banned or name in out:
            name = f"{name[:55]}-{len(out)}x"
        out.append(name)
    return out


def _port_item(proto: str, lo: int, hi: int) -> int | str:
    if proto == "tcp" and lo == hi:
        return lo
    text = str(lo) if lo == hi else f"{lo}-{hi}"
    return f"{text}/{proto}"


def _parse(item: int | str) -> tuple[str, int, int]:
    if isinstance(item, int):
        return "tcp", item, item
    text, _, proto = item.partition("/")
    lo, _, hi = text.partition("-")
    return proto or "tcp", int(lo), int(hi or lo)


@st.composite
def _listen(draw: st.DrawFn, udp: bool, ranges: bool) -> list[int | str]:
    """1-3 non-overlapping listen items."""
    taken: list[tuple[str, int, int]] = []
    items: list[int | str] = []
    for _ in range(draw(st.integers(1, 3))):
        proto = "udp" if udp and draw(st.integers(0, 4)) == 0 else "tcp"
        pick = draw(st.integers(0, 5))
        if taken and pick == 0:
            lo = min(65535, taken[-1][2] + 1)  # adjacent to the previous item: 8080, 8081
        elif pick < 3:
            lo = draw(st.sampled_from(_COMMON_PORTS))
        else:
            lo = draw(st.integers(1, 65000))
        hi = lo
        if ranges and draw(st.integers(0, 3)) == 0:
            hi = min(65535, lo + draw(st.integers(1, 5)))
        if any(p == proto and not (hi < a or b < lo) for p, a, b in taken):
            continue
        taken.append((proto, lo, hi))
        items.append(_port_item(proto, lo, hi))
    return items


def _covers(listen: list[int | str], proto: str, lo: int, hi: int) -> bool:
    return any(p == proto and a <= lo and hi <= b for p, a, b in map(_parse, listen))


def _flow_ports(draw: st.DrawFn, listens: list[list[int | str]]) -> list[int | str] | None:
    """None (each destination's own listen) or items every destination listens on."""
    if draw(st.booleans()):
        return None
    options: list[tuple[str, int, int]] = []
    for proto, lo, hi in map(_parse, listens[0]):
        options.append((proto, lo, hi))
        if hi > lo:
            p = draw(st.integers(lo, hi))
            options.append((proto, p, p))
    options = [o for o in options if all(_covers(li, *o) for li in listens)]
    if not options:
        return None
    chosen = draw(st.lists(st.sampled_from(options), min_size=1, max_size=3, unique=True))
    return [_port_item(*o) for o in chosen]


@st.composite
def _egress_ports(draw: st.DrawFn, udp: bool, ranges: bool) -> list[int | str]:
    items: list[int | str] = []
    for _ in range(draw(st.integers(1, 2))):
        proto = "udp" if udp and draw(st.integers(0, 3)) == 0 else "tcp"
        lo = draw(st.sampled_from([53, 443, 25, 123, 587, draw(st.integers(1, 65000))]))
        hi = lo + (draw(st.integers(1, 10)) if ranges and draw(st.integers(0, 4)) == 0 else 0)
        items.append(_port_item(proto, lo, hi))
    return items


@st.composite
def cidrs(draw: st.DrawFn) -> str:
    """A `cidr:` endpoint with a strict network address."""
    prefix = draw(st.sampled_from([8, 16, 24, 28, 32]))
    addr = draw(st.sampled_from(["10.8.0.0", "192.0.2.0", "198.51.100.0", "172.20.0.0",
                                 "100.64.0.0", "203.0.113.0"]))
    net = ipaddress.IPv4Network(f"{addr}/{prefix}", strict=False)
    return f"cidr:{net}"


_WAIVERS = ["legacy monitoring agent, ticket OPS-12", "vendor appliance talks back",
            "batch job reads the db directly", "approved by security review 2024-03"]


@st.composite
def specs(
    draw: st.DrawFn,
    *,
    max_services: int = 6,
    max_tiers: int = 4,
    max_flows: int = 10,
    udp: bool = True,
    ranges: bool = True,
    cidr: bool = True,
    egress: bool = True,
    waivers: bool = True,
    tls: bool = True,
    publish: bool = True,
    multi: bool = True,
) -> tuple[str, dict[str, Any]]:
    """A random valid spec: (zones.toml text, the dict tomllib reads from it)."""
    n_tiers = draw(st.integers(1, max_tiers))
    tier_names = _unique_labels(draw, n_tiers)
    depth = {t: i for i, t in enumerate(tier_names)}
    n_services = draw(st.integers(1, max_services))
    names = _unique_labels(draw, n_services)
    services: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        # the first service always sits in the outermost tier so ingress has a target
        tier = tier_names[0] if i == 0 else draw(st.sampled_from(tier_names))
        listen = draw(_listen(udp, ranges)) if i == 0 or draw(st.integers(0, 7)) else []
        svc: dict[str, Any] = {"tier": tier, "image": f"registry.local/{name[:40]}:1.0"}
        if listen:
            svc["listen"] = listen
        services[name] = svc
    by_tier = {t: [n for n in names if services[n]["tier"] == t] for t in tier_names}
    listening = [n for n in names if services[n].get("listen")]

    def endpoint_group(pool: list[str]) -> tuple[list[str], Any]:
        """Services of one tier, written as a name, a list of names or tier:NAME."""
        first = draw(st.sampled_from(pool))
        tier = services[first]["tier"]
        peers = [n for n in pool if services[n]["tier"] == tier]
        style = draw(st.integers(0, 5)) if multi else 0
        if style == 4 and sorted(peers) == sorted(by_tier[tier]):
            return list(by_tier[tier]), f"tier:{tier}"
        if style == 5 and len(peers) > 1:
            chosen = draw(st.lists(st.sampled_from(peers), min_size=2, max_size=3, unique=True))
            return chosen, chosen
        return [first], first

    def wall_ok(srcs: list[str], dsts: list[str]) -> bool:
        for s in srcs:
            for d in dsts:
                ds, dd = depth[services[s]["tier"]], depth[services[d]["tier"]]
                if s != d and not (ds <= dd <= ds + 1):
                    return False
        return True

    flows: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, max_flows))):
        kinds = ["internal", "internal", "ingress"] + (["egress"] if egress else [])
        kind = draw(st.sampled_from(kinds))
        flow: dict[str, Any] = {}
        if kind == "ingress":
            outer = [n for n in listening if depth[services[n]["tier"]] == 0]
            pool = outer if not (waivers and draw(st.integers(0, 5)) == 0) else listening
            dsts, to = endpoint_group(pool)
            sources: list[str] = ["internet"]
            if cidr:
                sources = draw(st.lists(st.one_of(st.just("internet"), cidrs()), min_size=1,
                                        max_size=2, unique=True))
            flow["from"] = sources[0] if len(sources) == 1 else sources
            flow["to"] = to
            ports = _flow_ports(draw, [services[d]["listen"] for d in dsts])
            if ports is not None:
                flow["ports"] = ports
            if any(depth[services[d]["tier"]] > 0 for d in dsts):
                flow["waiver"] = draw(st.sampled_from(_WAIVERS))
        elif kind == "egress":
            srcs, frm = endpoint_group(names)
            dest = draw(cidrs()) if cidr and draw(st.booleans()) else "internet"
            flow.update({"from": frm, "to": dest, "ports": draw(_egress_ports(udp, ranges))})
            innermost = n_tiers - 1
            if any(depth[services[s]["tier"]] == innermost > 0 for s in srcs) and draw(
                    st.booleans()):
                flow["waiver"] = draw(st.sampled_from(_WAIVERS))
        else:
            if not listening:
                continue
            srcs, frm = endpoint_group(names)
            if waivers and draw(st.integers(0, 4)) == 0:
                dst_pool = listening
            else:
                lo = min(depth[services[s]["tier"]] for s in srcs)
                dst_pool = [n for n in listening if lo <= depth[services[n]["tier"]] <= lo + 1]
                if not dst_pool:
                    continue
            dsts, to = endpoint_group(dst_pool)
            if set(srcs) == set(dsts) and len(srcs) == 1:
                continue  # a flow to itself: castle warns, and it allows nothing
            if not any(s != d for s in srcs for d in dsts):
                continue
            flow.update({"from": frm, "to": to})
            ports = _flow_ports(draw, [services[d]["listen"] for d in dsts])
            if ports is not None:
                flow["ports"] = ports
            if tls and draw(st.integers(0, 3)) == 0:
                flow["tls"] = True
            if not wall_ok(srcs, dsts):
                if not waivers:
                    continue
                flow["waiver"] = draw(st.sampled_from(_WAIVERS))
        if draw(st.integers(0, 4)) == 0:
            flow["description"] = draw(st.sampled_from(
                ["the shop's front door", "API calls", "nightly backup", "metrics scrape"]))
        flows.append(flow)

    if publish:
        _add_publish(draw, services, flows)
    data: dict[str, Any] = {"version": 1, "stack": {"name": draw(dns_labels(long=False))}}
    if draw(st.integers(0, 4)) == 0:
        data["stack"]["subnet_pool"] = f"10.{draw(st.integers(0, 255))}.0.0/16"
    data["tiers"] = [{"name": t} for t in tier_names]
    data["services"] = services
    if flows:
        data["flows"] = flows
    text = dump_toml(data)
    assert tomllib.loads(text) == data, "strategies.dump_toml does not round-trip"
    return text, data


def _expand(endpoint: Any, services: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for item in [endpoint] if isinstance(endpoint, str) else endpoint:
        if item.startswith("tier:"):
            out += [n for n, s in services.items() if s["tier"] == item[5:]]
        else:
            out.append(item)
    return out


def _add_publish(draw: st.DrawFn, services: dict[str, dict[str, Any]],
                 flows: list[dict[str, Any]]) -> None:
    """Map ingress ports to other host ports: always where two services would collide on a
    host port, sometimes just because (`publish` only renames)."""
    items: dict[str, list[tuple[str, int, int]]] = {}
    for flow in flows:
        srcs = _expand(flow["from"], services)
        if not any(s == "internet" or s.startswith("cidr:") for s in srcs):
            continue
        for dst in _expand(flow["to"], services):
            ports = flow.get("ports", services[dst].get("listen", []))
            for item in map(_parse, ports):
                if item not in items.setdefault(dst, []):
                    items[dst].append(item)
    claimed: dict[tuple[str, int], str] = {}
    fresh = 20000
    for name in sorted(items):
        entries: list[tuple[str, int, int, int]] = []  # proto, container lo, hi, host lo
        # widest first: a single port inside a range then reuses the range's entry
        for proto, lo, hi in sorted(items[name], key=lambda t: (t[1] - t[2], t)):
            covering = [e for e in entries if e[0] == proto and e[1] <= lo and hi <= e[2]]
            if covering:
                e = covering[0]
                host_lo = e[3] + lo - e[1]
            else:
                host_lo = lo
            host = [(proto, p) for p in range(host_lo, host_lo + hi - lo + 1)]
            clash = any(claimed.get(h, name) != name for h in host)
            if not covering and (clash or draw(st.integers(0, 5)) == 0):
                while any((proto, p) in claimed for p in range(fresh, fresh + hi - lo + 1)):
                    fresh += 1
                host_lo = fresh
                fresh += hi - lo + 1
                entries.append((proto, lo, hi, host_lo))
                host = [(proto, p) for p in range(host_lo, host_lo + hi - lo + 1)]
            if not covering and host_lo == lo:
                entries.append((proto, lo, hi, lo))  # same number: no entry written
            for h in host:
                claimed.setdefault(h, name)
        written = [e for e in entries if e[1] != e[3]]
        if written:
            publish = []
            for proto, lo, hi, host_lo in written:
                hp = str(host_lo) if lo == hi else f"{host_lo}-{host_lo + hi - lo}"
                cp = str(lo) if lo == hi else f"{lo}-{hi}"
                ip = "127.0.0.1:" if draw(st.integers(0, 5)) == 0 else ""
                publish.append(f"{ip}{hp}:{cp}" + ("/udp" if proto == "udp" else ""))
            services[name]["publish"] = publish
