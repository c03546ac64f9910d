"""`castle explain`: why one peer can or cannot reach another, port by port, down to the artifacts.

For each allowed connection it names the flow (with its line), the compose network or published
port, and the firewall rule and NetworkPolicy lines of the generated files (rendered in memory).
For each port it cannot reach it names the wall rule, and checks the flow that would be needed
against the wall rules.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from castle.errors import CastleError, UsageError
from castle.io.write import Output
from castle.plan import Conn, Plan, compile_plan
from castle.spec.findings import INTERNET, closest, is_outside
from castle.spec.load import Loaded, load
from castle.spec.model import Flow
from castle.spec.rules import check
from castle.spec.values import PortRange
from castle.views.specdiff import merge, subtract

IPTABLES = "firewall/iptables.sh"
NFTABLES = "firewall/castle.nft"
POLICIES = "k8s/networkpolicies.yaml"


@dataclass(frozen=True)
class Artifacts:
    """The generated files in memory, and why a target has none."""

    files: dict[str, str]
    missing: dict[str, str]  # target -> reason


def build_artifacts(spec: Path) -> tuple[Loaded, Plan, Artifacts]:
    """Render every target in memory; a target that is not built (or fails) is noted, not fatal."""
    try:
        from castle.targets.generate import build

        loaded, plan, outputs = build(spec, None)
        return loaded, plan, Artifacts({o.path: o.content for o in outputs}, {})
    except CastleError:
        raise  # a bad spec is the user's answer, not a missing target
    except Exception:  # noqa: BLE001 - a target missing or failing: render the others alone
        pass
    loaded = load(spec)
    plan = compile_plan(loaded)
    from castle.targets import MODULES

    files: dict[str, str] = {}
    missing: dict[str, str] = {}
    for name in plan.targets:
        try:
            module = importlib.import_module(MODULES[name])
            make: Callable[[Plan], list[Output]] = module.outputs
            files.update({o.path: o.content for o in make(plan)})
        except ImportError:
            missing[name] = "not generated (this castle has no such target yet)"
        except Exception as exc:  # noqa: BLE001 - one broken target must not hide the others
            missing[name] = f"not generated ({type(exc).__name__}: {exc})"
    return loaded, plan, Artifacts(files, missing)


def resolve(plan: Plan, text: str) -> str:
    """A peer name: a service, `internet` or `cidr:A.B.C.D/N` (a bare address or CIDR works)."""
    names = [s.name for s in plan.services]
    if text in names or text == INTERNET:
        return text
    raw = text.removeprefix("cidr:")
    if text.startswith("cidr:") or re.fullmatch(r"[\d./]+", text):
        try:
            return f"cidr:{ipaddress.IPv4Network(raw, strict=False)}"
        except ValueError as exc:
            raise UsageError(f"malformed CIDR {raw!r} ({exc}); write it as cidr:A.B.C.D/N") \
                from None
    if text.startswith("tier:"):
        tier = text[5:]
        members = [s.name for s in plan.services if s.tier == tier]
        raise UsageError(f"explain takes one peer, not a tier; {text} holds "
                         f"{', '.join(members) or 'no service'}")
    hint = closest(text, [*names, INTERNET]) or f"services: {', '.join(names)}"
    raise UsageError(f"unknown service {text!r}; {hint} (or use internet, cidr:A.B.C.D/N)")


def _within(peer: str, conn_peer: str) -> bool:
    """True when traffic from/to `peer` is covered by a connection naming `conn_peer`."""
    if peer == conn_peer:
        return True
    if peer.startswith("cidr:") and (conn_peer == INTERNET or conn_peer.startswith("cidr:")):
        if conn_peer == INTERNET:
            return True
        inner = ipaddress.IPv4Network(peer[5:])
        return inner.subnet_of(ipaddress.IPv4Network(conn_peer[5:]))
    return False


def matching(plan: Plan, src: str, dst: str) -> list[Conn]:
    """The connections that let `src` open connections to `dst`."""
    return [c for c in plan.conns if _within(src, c.src) and _within(dst, c.dst)]


def _ports(spans: Iterable[tuple[int, int]], proto: str) -> str:
    return ", ".join((str(lo) if lo == hi else f"{lo}-{hi}") + f"/{proto}" for lo, hi in spans)


# -- the artifacts ----------------------------------------------------------------------------


def _addresses(plan: Plan, conn: Conn) -> tuple[list[str], list[str]]:
    """Addresses of src and dst as the firewall sees them (on their shared networks if any)."""
    def of(peer: str, other: str) -> list[str]:
        if is_outside(peer):
            return [peer[5:]] if peer.startswith("cidr:") else []
        svc = plan.service(peer)
        if not is_outside(other):
            shared = {n for n, _ in plan.service(other).networks}
            ips = [str(ip) for n, ip in svc.networks if n in shared]
            if ips:
                return ips
        return [str(ip) for ip in svc.addresses]
    return of(conn.src, conn.dst), of(conn.dst, conn.src)


def _has(line: str, token: str) -> bool:
    """`token` (a port or an address, /32 allowed) stands alone in `line`."""
    return re.search(rf"(?<![\w.]){re.escape(token)}(?:/32)?(?![\w.]|/\d)", line) is not None


def _excerpt(line: str, width: int = 200) -> str:
    text = line.strip()
    return text if len(text) <= width else text[:width - 3] + "..."


def _port_tokens(plan: Plan, conn: Conn) -> set[str]:
    """How a rule may write the connection's port: 80, 8000:8010, or the published host port."""
    ports = {str(conn.lo), f"{conn.lo}:{conn.hi}", f"{conn.lo}-{conn.hi}"}
    for p in plan.published:
        if p.service == conn.dst and p.container.covers(conn.ports):
            off = p.host.lo - p.container.lo
            ports |= {str(conn.lo + off), f"{conn.lo + off}:{conn.hi + off}"}
    return ports


def locate(plan: Plan, text: str, conn: Conn, rules: list[str]) -> list[tuple[int, str]]:
    """(line, text) in the generated file of rules a reader module named for the pair, keeping
    those on this connection's ports when any are (a pair may have rules for several ports)."""
    lines = text.splitlines()
    found: list[tuple[int, str]] = []
    for rule in rules:
        n = next((i for i, line in enumerate(lines, start=1) if line.strip() == rule.strip()), 0)
        found.append((n, _excerpt(rule)))
    ports = _port_tokens(plan, conn)
    on_port = [(n, t) for n, t in found if any(_has(t, p) for p in ports)]
    return on_port or found


def firewall_lines(plan: Plan, text: str, conn: Conn) -> list[tuple[int, str]]:
    """(line number, text) of the rules of a firewall file that mention this connection."""
    srcs, dsts = _addresses(plan, conn)
    ports = _port_tokens(plan, conn)
    found: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        if not body.strip():
            continue
        if srcs and not any(_has(body, a) for a in srcs):
            continue
        if dsts and not any(_has(body, a) for a in dsts):
            continue
        if not (srcs or dsts):
            continue
        if not any(_has(body, p) for p in ports):
            continue
        found.append((n, _excerpt(line)))
    if not found:  # a rule in a per-destination chain names no address: look for its comment
        tags = [f"flows[{f}]" for f in conn.flows]
        found = [(n, _excerpt(line)) for n, line in enumerate(text.splitlines(), start=1)
                 if not line.lstrip().startswith("#") and any(t in line for t in tags)
                 and conn.src.removeprefix("cidr:") in line and conn.dst in line
                 and any(_has(line, p) for p in ports)]
    return found


def _from_helper(module: str, func: str, plan: Plan, conn: Conn) -> list[str] | None:
    """Ask an artifact reader another module may export; None when it is not there."""
    try:
        helper: Callable[[Plan, str, str], Iterable[Any]] = getattr(
            importlib.import_module(module), func)
    except (ImportError, AttributeError):
        return None
    try:
        items = list(helper(plan, conn.src, conn.dst))
    except Exception:  # noqa: BLE001 - fall back to searching the text ourselves
        return None
    out = []
    for item in items:
        if isinstance(item, tuple | list) and item and isinstance(item[0], int):
            out.append(f"line {item[0]}: " + " ".join(str(x) for x in item[1:]))
        else:
            out.append(str(item))
    return out


def _selects(selector: Any, labels: dict[str, str]) -> bool:
    if not isinstance(selector, dict):
        return False
    want = selector.get("matchLabels") or {}
    return isinstance(want, dict) and all(labels.get(str(k)) == str(v) for k, v in want.items())


def _peer_matches(plan: Plan, peer: dict[str, Any], name: str) -> bool:
    """True when a NetworkPolicy peer admits the castle peer `name`."""
    if is_outside(name):
        block = peer.get("ipBlock")
        if isinstance(block, dict):
            net = ipaddress.IPv4Network(str(block.get("cidr", "255.255.255.255/32")),
                                        strict=False)
            if name == INTERNET:
                return net.prefixlen == 0 or bool(plan.spec.kubernetes.ingress_namespace)
            return ipaddress.IPv4Network(name[5:]).subnet_of(net)
        ns = plan.spec.kubernetes.ingress_namespace
        return (name == INTERNET and ns is not None and "podSelector" not in peer
                and ns in str(peer.get("namespaceSelector")))
    if "podSelector" not in peer or "ipBlock" in peer:
        return False
    return _selects(peer["podSelector"], dict(plan.service(name).labels))


def _ports_match(rule: dict[str, Any], conn: Conn) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        if str(p.get("protocol", "TCP")).lower() != conn.proto:
            continue
        lo = p.get("port")
        if lo is None:
            return True
        if not isinstance(lo, int):
            continue
        hi = int(p.get("endPort", lo))
        if lo <= conn.hi and conn.lo <= hi:
            return True
    return False


def policy_lines(plan: Plan, text: str, conn: Conn) -> dict[str, tuple[int, str]]:
    """namespace/name -> (line, 'ingress of dst') for every NetworkPolicy admitting `conn`."""
    found: dict[str, tuple[int, str]] = {}
    start = 1
    for chunk in re.split(r"(?m)^---[ \t]*\n", text):
        here = start
        start += chunk.count("\n") + 1
        try:
            doc = yaml.safe_load(chunk)
        except yaml.YAMLError:
            continue
        if not isinstance(doc, dict) or doc.get("kind") != "NetworkPolicy":
            continue
        meta = doc.get("metadata") or {}
        name = str(meta.get("name", "?"))
        full = f"{meta.get('namespace', plan.namespace)}/{name}"
        m = re.search(rf"(?m)^\s*name:\s*['\"]?{re.escape(name)}['\"]?\s*$", chunk)
        line = here + chunk[:m.start()].count("\n") if m else here
        spec = doc.get("spec") or {}
        for side, peer, key, field in (("ingress", conn.dst, "ingress", "from"),
                                       ("egress", conn.src, "egress", "to")):
            if is_outside(peer) or not _selects(spec.get("podSelector"),
                                                 dict(plan.service(peer).labels)):
                continue
            other = conn.src if side == "ingress" else conn.dst
            for rule in spec.get(key) or []:
                peers = rule.get(field)
                ok = not peers or any(_peer_matches(plan, p, other) for p in peers)
                if ok and _ports_match(rule, conn):
                    found.setdefault(full, (line, f"{side} of {peer}"))
                    break
    return found


# -- the explanation --------------------------------------------------------------------------


def _flow_text(loaded: Loaded, plan: Plan, i: int) -> list[str]:
    flow = plan.spec.flows[i]
    line = plan.flow_lines[i] if i < len(plan.flow_lines) else loaded.line_of(("flows", i))
    ports = ", ".join(str(p) for p in flow.ports) if flow.ports else "the destination's listen"
    out = [f"flow      flows[{i}] at {loaded.path}:{line}: from {', '.join(flow.from_)} "
           f"to {', '.join(flow.to)}, ports {ports}" + (", tls" if flow.tls else "")]
    if flow.description:
        out.append(f"          description: {flow.description}")
    if flow.waiver:
        out.append(f"          waiver: {flow.waiver} (crosses the walls by exception)")
    return out


def _compose_text(plan: Plan, conn: Conn) -> list[str]:
    if is_outside(conn.src):
        pubs = [p for p in plan.published if p.service == conn.dst
                and p.container.proto == conn.proto and p.container.lo <= conn.hi
                and conn.lo <= p.container.hi]
        edge = [(n, ip) for n, ip in plan.service(conn.dst).networks
                if not next(x for x in plan.networks if x.name == n).internal]
        out = [f"compose   published: host {p.host_ip + ':' if p.host_ip else ''}{p.host} -> "
               f"{conn.dst}:{p.container}" for p in pubs]
        out += [f"          via network {n} (not internal), {conn.dst} at {ip}" for n, ip in edge]
        if conn.src.startswith("cidr:"):
            out.append("          compose publishes to everyone: the firewall and Kubernetes "
                       f"targets enforce {conn.src}")
        return out or ["compose   no published port found (a bug: run castle matrix --artifacts)"]
    if is_outside(conn.dst):
        edge = [(n, ip) for n, ip in plan.service(conn.src).networks
                if not next(x for x in plan.networks if x.name == n).internal]
        return [f"compose   network {n} (not internal) gives {conn.src} ({ip}) a route out"
                for n, ip in edge] or ["compose   no network with a route out (a bug)"]
    out = []
    for net in plan.networks:
        if conn.src in net.members and conn.dst in net.members:
            addr = dict(net.addresses)
            out.append(f"compose   network {net.name} ({net.subnet}, "
                       f"{'internal' if net.internal else 'not internal'}): "
                       f"{conn.src} {addr[conn.src]} -> {conn.dst} {addr[conn.dst]}")
    return out or ["compose   no shared network (a bug: run castle matrix --artifacts)"]


def _artifact_text(plan: Plan, arts: Artifacts, conn: Conn) -> list[str]:
    out: list[str] = []
    for target, path, label in (("iptables", IPTABLES, "iptables"),
                                ("nftables", NFTABLES, "nftables")):
        if target not in plan.targets:
            continue
        if path not in arts.files:
            out.append(f"{label:<9} {arts.missing.get(target, 'not generated')}")
            continue
        helper = _from_helper("castle.readers.firewall", "rule_lines", plan, conn) \
            if target == "iptables" else None
        if helper:
            hits = locate(plan, arts.files[path], conn, helper)
        else:
            hits = firewall_lines(plan, arts.files[path], conn)
        out += [f"{label:<9} {path}{f':{n}' if n else ''}: {t}" for n, t in hits[:4]]
        if len(hits) > 4:
            out.append(f"          ... and {len(hits) - 4} more lines")
        if not hits:
            out.append(f"{label:<9} {path}: no rule names these addresses and port")
    if "k8s" in plan.targets:
        if POLICIES not in arts.files:
            out.append(f"k8s       {arts.missing.get('k8s', 'not generated')}")
        else:
            seen = policy_lines(plan, arts.files[POLICIES], conn)
            named = _from_helper("castle.readers.k8s", "policy_names", plan, conn) or []
            for name in [*named, *(n for n in seen if n not in named)]:
                if name in seen:
                    line, side = seen[name]
                    out.append(f"k8s       {POLICIES}:{line}: NetworkPolicy {name} ({side})")
                else:
                    out.append(f"k8s       {POLICIES}: NetworkPolicy {name} (named by the "
                               "target, but no rule of it in the file admits this)")
            if not named and not seen:
                out.append(f"k8s       {POLICIES}: no NetworkPolicy admits it")
    return out


def _hypothetical(loaded: Loaded, src: str, dst: str,
                  ports: list[PortRange] | None) -> list[str]:
    """Would a flow src -> dst on `ports` pass the wall rules? (checked with castle.spec.rules)"""
    spec = loaded.spec
    raw: dict[str, Any] = {"from": src, "to": dst}
    if ports:
        raw["ports"] = [str(p) for p in ports]
    i = len(spec.flows)

    def findings(waiver: str) -> list[str]:
        flow = Flow.model_validate({**raw, **({"waiver": waiver} if waiver else {})})
        found, _ = check(spec.model_copy(update={"flows": [*spec.flows, flow]}))
        return [f"{f.severity}: {f.message}" + (f" ({f.hint})" if f.hint else "")
                for f in found if f.loc[:2] == ("flows", i) and
                not f.message.startswith(f"flows[{i}] allows nothing")]

    toml = f'[[flows]] from = "{src}", to = "{dst}"'
    if ports:
        items = [str(p.lo) if p.proto == "tcp" and p.lo == p.hi else f'"{p}"' for p in ports]
        toml += f", ports = [{', '.join(items)}]"
    plain = findings("")
    errors = [f for f in plain if f.startswith("error")]
    if not errors:
        return [f"needed    {toml}", "          that flow passes the wall rules"] + [
            f"          {w}" for w in plain]
    out = [f"needed    {toml}",
           "          that flow breaks the wall rules:"] + [f"          {e}" for e in errors]
    waived = [f for f in findings("why") if f.startswith("error")]
    if not waived:
        out.append('          it would pass only with waiver = "why" (an exception, reviewed)')
    return out


def explain(spec: Path, src: str, dst: str) -> str:
    """Why `src` can or cannot reach `dst` on each port: flows, networks, rules and policies."""
    loaded, plan, arts = build_artifacts(Path(spec))
    a, b = resolve(plan, src), resolve(plan, dst)
    lines = [f"castle explain {a} -> {b} ({loaded.path})"]
    if a == b:
        return "\n".join([*lines, "  the same peer: a container always reaches itself"]) + "\n"
    if is_outside(a) and is_outside(b):
        return "\n".join([*lines, "  neither is a service of the stack: castle governs only "
                          "traffic that enters, leaves or crosses the stack"]) + "\n"
    fwd = matching(plan, a, b)
    rev = matching(plan, b, a)
    for c in fwd:
        lines.append("")
        via = "" if (c.src, c.dst) == (a, b) else f" (through {c.src} -> {c.dst})"
        lines.append(f"ALLOWED   {c.port_text}/{c.proto}{' with mutual TLS' if c.tls else ''}"
                     f"{via}")
        for f in c.flows:
            lines += ["  " + x for x in _flow_text(loaded, plan, f)]
        lines += ["  " + x for x in _compose_text(plan, c)]
        lines += ["  " + x for x in _artifact_text(plan, arts, c)]
        if c.tls:
            lines.append(f"  tls       {a} presents a client certificate and {b} a server "
                         "certificate of the stack's CA (castle certs)")
    closed = _closed_ports(plan, a, b, fwd)
    for proto, spans in closed.items():
        lines.append("")
        lines.append(f"DENIED    {_ports(spans, proto)}")
        lines += ["  " + x for x in _why_not(plan, a, b, fwd)]
        ports = [PortRange(proto, lo, hi) for lo, hi in spans]
        lines += ["  " + x for x in _hypothetical(loaded, a, b, ports)]
    if not fwd and not closed:
        lines.append("")
        if is_outside(b):
            lines.append(f"DENIED    {a} may not open connections out of the stack to {b}")
            lines.append(f"  no egress flow from {a}; egress flows must list their ports")
            lines += ["  " + x for x in _hypothetical(loaded, a, b, [PortRange("tcp", 443, 443)])]
        else:
            lines.append(f"DENIED    {b} listens on no port: nothing can reach it")
            lines.append(f"  add listen = [...] to [services.{b}] and a flow from {a}")
    if rev:
        lines.append("")
        back = ", ".join(f"{c.port_text}/{c.proto}" for c in rev)
        flows = ", ".join(f"flows[{f}]" for f in sorted({f for c in rev for f in c.flows}))
        lines.append(f"REVERSE   {b} opens connections to {a} on {back} ({flows})")
        if fwd:
            lines.append("  both directions are allowed by flows of their own")
        else:
            lines.append(f"  {a} sends replies only: answers on connections {b} opened "
                         f"(stateful), never a connection of its own")
    return "\n".join(lines) + "\n"


def _closed_ports(plan: Plan, a: str, b: str, fwd: list[Conn]) -> dict[str, list[tuple[int, int]]]:
    """Ports `b` listens on that no connection from `a` opens, per protocol."""
    if is_outside(b):
        return {}
    out: dict[str, list[tuple[int, int]]] = {}
    for proto in sorted({r.proto for r in plan.service(b).spec.listen}):
        listen = merge([(r.lo, r.hi) for r in plan.service(b).spec.listen if r.proto == proto])
        left = subtract(listen, [(c.lo, c.hi) for c in fwd if c.proto == proto])
        if left:
            out[proto] = left
    return out


def _why_not(plan: Plan, a: str, b: str, fwd: list[Conn]) -> list[str]:
    if fwd:
        return [f"the flows from {a} to {b} do not list these ports"]
    if a == INTERNET and any(c.src.startswith("cidr:") and c.dst == b for c in plan.conns):
        cidrs = sorted({c.src for c in plan.conns if c.src.startswith("cidr:") and c.dst == b})
        return [f"only {', '.join(cidrs)} may reach {b}, not the whole internet"]
    return [f"no flow lets {a} open connections to {b}"]
