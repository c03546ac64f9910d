"""Read networkpolicies.yaml back and evaluate it pod by pod: what it allows against the spec.

Plain YAML and castle's own NetworkPolicy semantics (not the generator's code): a connection
needs the source's egress AND the destination's ingress; a pod no policy of a direction
selects is open in that direction; ipBlocks match addresses, never pods.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from castle.errors import UsageError
from castle.plan import Plan
from castle.spec.findings import INTERNET, is_outside
from castle.targets.k8s import policy_names
from castle.targets.k8s_names import NS_LABEL, namespace_of

__all__ = ["compare_k8s", "evaluate", "policy_names", "Pod"]

Ranges = tuple[tuple[int, int], ...]
PortSet = dict[str, Ranges]  # protocol (tcp, udp, sctp) -> merged port ranges
PROTOS = ("tcp", "udp", "sctp")
FULL = ((1, 65535),)
TOP = (1 << 32) - 1
STRANGER_NS = "castle-elsewhere"


def _merge(items: Iterable[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(items):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _minus(a: Ranges, b: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in a:
        start = lo
        for blo, bhi in b:
            if bhi < start or blo > hi:
                continue
            if blo > start:
                out.append((start, blo - 1))
            start = max(start, bhi + 1)
        if start <= hi:
            out.append((start, hi))
    return tuple(out)


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    return _minus(a, _minus(a, b))


def union(*sets: PortSet) -> PortSet:
    """The union of port sets."""
    out: dict[str, list[tuple[int, int]]] = {}
    for s in sets:
        for proto, ranges in s.items():
            out.setdefault(proto, []).extend(ranges)
    return {p: _merge(r) for p, r in out.items() if r}


def minus(a: PortSet, b: PortSet) -> PortSet:
    """Ports of a that b lacks."""
    out = {p: _minus(r, b.get(p, ())) for p, r in a.items()}
    return {p: r for p, r in out.items() if r}


def intersect(a: PortSet, b: PortSet) -> PortSet:
    """Ports in both."""
    out = {p: _intersect(r, b.get(p, ())) for p, r in a.items()}
    return {p: r for p, r in out.items() if r}


def everything() -> PortSet:
    """Every port of every protocol."""
    return {p: FULL for p in PROTOS}


def port_text(ports: PortSet) -> str:
    """80/tcp, 8000-8010/tcp, ... for notes."""
    items = [f"{lo}/{p}" if lo == hi else f"{lo}-{hi}/{p}"
             for p, ranges in sorted(ports.items()) for lo, hi in ranges]
    return ", ".join(items)


@dataclass(frozen=True)
class Pod:
    """A pod as NetworkPolicies see it: namespace and labels."""

    namespace: str
    labels: tuple[tuple[str, str], ...]


Endpoint = Pod | tuple[int, int]  # a pod, or an address range that no policy boundary cuts


def _selects(selector: Any, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return True
    if not isinstance(selector, dict):
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(str(k)) != str(v):
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op = str(expr.get("key")), expr.get("operator")
        values = [str(v) for v in expr.get("values") or []]
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _span(cidr: str) -> tuple[int, int] | None:
    net = ipaddress.ip_network(str(cidr), strict=False)
    if net.version != 4:
        return None
    return int(net.network_address), int(net.broadcast_address)


def _peer_matches(peer: Any, home: str, ep: Endpoint) -> bool:
    if not isinstance(peer, dict):
        return False
    block = peer.get("ipBlock")
    if block is not None:
        if isinstance(ep, Pod):
            return False
        span = _span(block.get("cidr", ""))
        if span is None or not (span[0] <= ep[0] and ep[1] <= span[1]):
            return False
        for exc in block.get("except") or []:
            hole = _span(exc)
            if hole and hole[0] <= ep[0] and ep[1] <= hole[1]:
                return False
        return True
    if not isinstance(ep, Pod):
        return False
    if "namespaceSelector" in peer:
        ns_labels = {NS_LABEL: ep.namespace}
        if not _selects(peer.get("namespaceSelector") or {}, ns_labels):
            return False
    elif ep.namespace != home:
        return False
    return _selects(peer.get("podSelector") or {}, dict(ep.labels))


def _rule_ports(rule: Mapping[str, Any]) -> PortSet:
    entries = rule.get("ports")
    if not entries:
        return everything()
    out: list[PortSet] = []
    for e in entries:
        proto = str(e.get("protocol", "TCP")).lower()
        port = e.get("port")
        if port is None or isinstance(port, str):  # named ports: assume the worst
            out.append({proto: FULL})
        else:
            out.append({proto: ((int(port), int(e.get("endPort") or port)),)})
    return union(*out)


@dataclass(frozen=True)
class Policies:
    """The NetworkPolicies of a file, read back."""

    docs: tuple[dict[str, Any], ...]
    _selecting: dict[tuple[Pod, str], list[dict[str, Any]]] = field(
        default_factory=dict, compare=False, repr=False)
    _index: dict[tuple[str, str, str], list[int]] = field(
        default_factory=dict, compare=False, repr=False)

    def _by_label(self) -> dict[tuple[str, str, str], list[int]]:
        """(namespace, label key, value) of each policy's first matchLabels entry, or
        (namespace, "", "") for selectors without one: which policies may pick a pod."""
        index = self._index
        if index or not self.docs:
            return index
        for i, doc in enumerate(self.docs):
            ns = str((doc.get("metadata") or {}).get("namespace", "default"))
            selector = (doc.get("spec") or {}).get("podSelector") or {}
            labels = selector.get("matchLabels") if isinstance(selector, dict) else None
            first = next(iter(labels.items())) if isinstance(labels, dict) and labels else None
            key = (ns, str(first[0]), str(first[1])) if first else (ns, "", "")
            index.setdefault(key, []).append(i)
        return index

    def selecting(self, target: Pod, direction: str) -> list[dict[str, Any]]:
        """The policies of one direction whose podSelector picks `target` (cached)."""
        key = (target, direction)
        if key not in self._selecting:
            index = self._by_label()
            ns = target.namespace
            found = list(index.get((ns, "", ""), []))
            for k, v in target.labels:
                found += index.get((ns, k, v), [])
            self._selecting[key] = [
                self.docs[i] for i in sorted(set(found))
                if direction in self._types(self.docs[i])
                and _selects((self.docs[i].get("spec") or {}).get("podSelector") or {},
                             dict(target.labels))
            ]
        return self._selecting[key]

    def _types(self, doc: Mapping[str, Any]) -> list[str]:
        spec = doc.get("spec") or {}
        types = spec.get("policyTypes")
        if types:
            return [str(t) for t in types]
        return ["Ingress", *(["Egress"] if "egress" in spec else [])]

    def allowed(self, target: Pod, peer: Endpoint, direction: str) -> PortSet:
        """Ports `target` accepts from (Ingress) or opens to (Egress) `peer`, by policy."""
        key, side = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        docs = self.selecting(target, direction)
        found: list[PortSet] = []
        for doc in docs:
            spec = doc.get("spec") or {}
            home = target.namespace
            for rule in spec.get(key) or []:
                peers = rule.get(side)
                if not peers or any(_peer_matches(p, home, peer) for p in peers):
                    found.append(_rule_ports(rule))
        return union(*found) if docs else everything()

    def pod_rules(self, target: Pod, direction: str, pods: list[Pod],
                  index: dict[tuple[str, str], set[int]]) -> tuple[dict[Pod, PortSet],
                                                                      PortSet, bool]:
        """(ports per peer pod among `pods`, ports open to anyone, selected at all)."""
        key, side = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        docs = self.selecting(target, direction)
        per: dict[Pod, list[PortSet]] = {}
        anyone: list[PortSet] = []
        for doc in docs:
            for rule in (doc.get("spec") or {}).get(key) or []:
                peers, ports = rule.get(side), _rule_ports(rule)
                if not peers:
                    anyone.append(ports)
                    continue
                for peer in peers:
                    for pod in _candidates(peer, pods, index):
                        if _peer_matches(peer, target.namespace, pod):
                            per.setdefault(pod, []).append(ports)
        return {p: union(*v) for p, v in per.items()}, union(*anyone), bool(docs)

    def blocks(self) -> list[tuple[int, int]]:
        """Every IPv4 range some ipBlock names (cidr and except)."""
        spans = []
        for doc in self.docs:
            spec = doc.get("spec") or {}
            for key, side in (("ingress", "from"), ("egress", "to")):
                for rule in spec.get(key) or []:
                    for peer in rule.get(side) or []:
                        block = (peer or {}).get("ipBlock") if isinstance(peer, dict) else None
                        if block:
                            for c in [block.get("cidr", ""), *(block.get("except") or [])]:
                                span = _span(c)
                                if span:
                                    spans.append(span)
        return spans


def _candidates(peer: Any, pods: list[Pod],
                index: dict[tuple[str, str], set[int]]) -> list[Pod]:
    """Pods that may match a peer: pruned by its podSelector's matchLabels (exact check later)."""
    if not isinstance(peer, dict) or "ipBlock" in peer:
        return []
    wanted = ((peer.get("podSelector") or {}).get("matchLabels") or {}) if isinstance(
        peer.get("podSelector") or {}, dict) else {}
    found: set[int] | None = None
    for k, v in wanted.items():
        hits = index.get((str(k), str(v)), set())
        found = hits if found is None else found & hits
    return pods if found is None else [pods[i] for i in sorted(found)]


def label_index(pods: list[Pod]) -> dict[tuple[str, str], set[int]]:
    """(label key, value) -> positions of the pods that carry it."""
    index: dict[tuple[str, str], set[int]] = {}
    for i, pod in enumerate(pods):
        for kv in pod.labels:
            index.setdefault(kv, set()).add(i)
    return index


def evaluate(policies: Policies, src: Endpoint, dst: Endpoint) -> PortSet:
    """What src may open on dst: egress of src (if a pod) AND ingress of dst (if a pod)."""
    ports = everything()
    if isinstance(src, Pod):
        ports = intersect(ports, policies.allowed(src, dst, "Egress"))
    if isinstance(dst, Pod):
        ports = intersect(ports, policies.allowed(dst, src, "Ingress"))
    return ports


def atoms(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The IPv4 space cut at every boundary of `spans`."""
    cuts = {0, TOP + 1}
    for lo, hi in spans:
        cuts |= {lo, hi + 1}
    edges = sorted(cuts)
    return [(a, b - 1) for a, b in zip(edges, edges[1:], strict=False)]


def _inside(atom: tuple[int, int], ranges: Ranges) -> bool:
    return any(lo <= atom[0] and atom[1] <= hi for lo, hi in ranges)


def load_policies(path: Path) -> Policies:
    """The NetworkPolicy documents of a YAML file."""
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    return Policies(tuple(d for d in docs
                          if isinstance(d, dict) and d.get("kind") == "NetworkPolicy"))


class _Tally:
    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], set[str]] = {}
        self.notes: list[str] = []

    def compare(self, cell: tuple[str, str], what: str, got: PortSet, want: PortSet,
                extra_only: bool = False) -> None:
        extra, missing = minus(got, want), minus(want, got)
        if extra:
            self.marks.setdefault(cell, set()).add("LOOSER(k8s)")
            self.notes.append(f"k8s: {what} is allowed on {port_text(extra)}, which no flow "
                              "allows")
        if missing and not extra_only:
            self.marks.setdefault(cell, set()).add("STRICTER(k8s)")
            self.notes.append(f"k8s: {what} is blocked on {port_text(missing)}, which a flow "
                              "allows")


def _ip_ranges(cidrs: Iterable[str], excepts: Iterable[str] = ()) -> Ranges:
    spans = [s for s in map(_span, cidrs) if s]
    holes = _merge(s for s in map(_span, excepts) if s)
    return _minus(_merge(spans), holes)


def _pod_pairs(pols: Policies, pods: dict[str, Pod], wanted: dict[tuple[str, str], PortSet],
               tally: _Tally) -> None:
    """Compare every pair of stack pods, visiting only pairs some rule or flow names."""
    names = list(pods)
    plist = [pods[n] for n in names]
    name_of = {pod: n for n, pod in pods.items()}
    index = label_index(plist)
    ins = {n: pols.pod_rules(pods[n], "Ingress", plist, index) for n in names}
    outs = {n: pols.pod_rules(pods[n], "Egress", plist, index) for n in names}
    closed = all(sel and not anyone for _, anyone, sel in (*ins.values(), *outs.values()))
    if closed:  # every pod is selected both ways and no rule is open to anyone
        pairs = {(name_of[p], d) for d, (per, _, _) in ins.items() for p in per if p in name_of}
        pairs |= {(a, b) for (a, b) in wanted if a in pods and b in pods}
    else:
        pairs = {(a, b) for a in names for b in names}
    for a, b in sorted(pairs):
        if a == b:
            continue
        e_per, e_any, e_sel = outs[a]
        i_per, i_any, i_sel = ins[b]
        egress = union(e_any, e_per.get(pods[b], {})) if e_sel else everything()
        ingress = union(i_any, i_per.get(pods[a], {})) if i_sel else everything()
        tally.compare((a, b), f"{a} -> {b}", intersect(egress, ingress), wanted.get((a, b), {}))


def deployed_pods(out: Path, services: Iterable[str]) -> dict[str, Pod]:
    """The pods of OUT/k8s/workloads.yaml's Deployments (namespace, template labels), by
    service; {} without that file (the user's own Deployments are not castle's to read)."""
    path = out / "k8s" / "workloads.yaml"
    if not path.is_file():
        return {}
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    wanted = set(services)
    found: dict[str, Pod] = {}
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
            continue
        meta = doc.get("metadata") or {}
        labels = (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
            "labels") or {}
        if meta.get("name") in wanted and isinstance(labels, dict):
            found[str(meta["name"])] = Pod(str(meta.get("namespace", "")),
                                           tuple(sorted((str(k), str(v))
                                                        for k, v in labels.items())))
    return found


def compare_k8s(plan: Plan, out: Path) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Marks where OUT/k8s/networkpolicies.yaml allows more (LOOSER) or less (STRICTER), over
    the pods of the generated Deployments when there are any."""
    path = out / "k8s" / "networkpolicies.yaml"
    if not path.is_file():
        return {}, [f"k8s: {path} not found (run castle generate)"]
    pols = load_policies(path)
    k = plan.spec.kubernetes
    pods = {s.name: Pod(namespace_of(plan, s.name), s.labels) for s in plan.services}
    pods.update(deployed_pods(out, pods))
    want: dict[tuple[str, str], list[PortSet]] = {}
    for c in plan.conns:
        want.setdefault((c.src, c.dst), []).append({c.proto: ((c.lo, c.hi),)})
    wanted = {cell: union(*v) for cell, v in want.items()}
    tally = _Tally()

    _pod_pairs(pols, pods, wanted, tally)

    # Pods outside the stack: the ingress controller stands for internet ingress when
    # configured; a stranger pod elsewhere must reach nothing and be reached by nothing.
    dns = Pod(k.dns_namespace, tuple(sorted(k.dns_pod_labels.items())))
    stranger = Pod(STRANGER_NS, (("castle.io/stranger", "yes"),))
    controller = (Pod(k.ingress_namespace, tuple(sorted(k.ingress_pod_labels.items())))
                  if k.ingress_namespace else None)
    # Another pod beside the controller: the classic OR trap (two peer entries) lets it in.
    bystander = (Pod(k.ingress_namespace, (("castle.io/stranger", "yes"),))
                 if k.ingress_namespace and k.ingress_pod_labels else None)
    dns_ports: PortSet = {"udp": ((53, 53),), "tcp": ((53, 53),)}
    for name, pod in pods.items():
        got = evaluate(pols, pod, dns)
        if minus(dns_ports, got):
            tally.notes.append(f"k8s: {name} cannot resolve names: DNS to "
                               f"{k.dns_namespace} is closed on {port_text(minus(dns_ports, got))}")
        tally.compare((name, INTERNET), f"{name} -> the cluster DNS", got, dns_ports, True)
        tally.compare((INTERNET, name), f"a pod of another namespace -> {name}",
                      evaluate(pols, stranger, pod), {})
        tally.compare((name, INTERNET), f"{name} -> a pod of another namespace",
                      evaluate(pols, pod, stranger), {})
        if controller is not None:
            tally.compare((INTERNET, name), f"the ingress controller -> {name}",
                          evaluate(pols, controller, pod), wanted.get((INTERNET, name), {}))
            tally.compare((name, INTERNET), f"{name} -> the ingress controller",
                          evaluate(pols, pod, controller), {})
        if bystander is not None:
            tally.compare((INTERNET, name), f"another pod of {k.ingress_namespace} -> {name}",
                          evaluate(pols, bystander, pod), {})

    # Addresses: cut the IPv4 space where any policy or peer changes, compare atom by atom.
    outside = sorted({c.src for c in plan.conns if is_outside(c.src)} |
                     {c.dst for c in plan.conns if is_outside(c.dst)})
    ranges_in = {p: _ip_ranges(["0.0.0.0/0"]) if p == INTERNET else
                 _ip_ranges([p.removeprefix("cidr:")]) for p in outside}
    if controller is not None:
        ranges_in[INTERNET] = ()
    ranges_out = {p: _ip_ranges(["0.0.0.0/0"], [str(n) for n in plan.internet_except])
                  if p == INTERNET else _ip_ranges([p.removeprefix("cidr:")]) for p in outside}
    spans = pols.blocks() + [s for r in (*ranges_in.values(), *ranges_out.values()) for s in r]
    def reaches_addresses(pod: Pod, direction: str) -> bool:
        """False when no rule of a selected pod can match an address in that direction."""
        docs = pols.selecting(pod, direction)
        key, side = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        return not docs or any(
            not rule.get(side) or any(isinstance(p, dict) and "ipBlock" in p
                                      for p in rule.get(side))
            for doc in docs for rule in (doc.get("spec") or {}).get(key) or [])

    outward = {c.src for c in plan.conns if is_outside(c.dst)}
    inward = {c.dst for c in plan.conns if is_outside(c.src)}
    active = {(True, n) for n, pod in pods.items()
              if n in inward or reaches_addresses(pod, "Ingress")}
    active |= {(False, n) for n, pod in pods.items()
               if n in outward or reaches_addresses(pod, "Egress")}
    for atom in atoms(spans):
        shown = f"{ipaddress.IPv4Address(atom[0])}-{ipaddress.IPv4Address(atom[1])}"
        for inbound, ranges in ((True, ranges_in), (False, ranges_out)):
            peers = [p for p in outside if _inside(atom, ranges[p])]
            for name, pod in pods.items():
                if (inbound, name) not in active:
                    continue
                if inbound:
                    got, arrow = evaluate(pols, atom, pod), f"{shown} -> {name}"
                else:
                    got, arrow = evaluate(pols, pod, atom), f"{name} -> {shown}"

                def cell(peer: str, name: str = name, inbound: bool = inbound) -> tuple[str, str]:
                    return (peer, name) if inbound else (name, peer)

                every = union(*(wanted.get(cell(p), {}) for p in peers))
                for p in peers or [INTERNET]:
                    tally.compare(cell(p), arrow, got, every, extra_only=True)
                for p in peers:
                    own = wanted.get(cell(p), {})
                    tally.compare(cell(p), arrow, intersect(got, own), own)
    marks = {cell: " ".join(sorted(m, reverse=True)) for cell, m in tally.marks.items()}
    return marks, sorted(set(tally.notes), key=tally.notes.index)
