"""Kubernetes: NetworkPolicies that allow exactly the plan's connections, and a kustomization."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any, NamedTuple

from castle.io.render import comment, environment, render, yaml_pairs, yaml_scalar, yaml_strings
from castle.io.write import Output, header
from castle.plan import Conn, Plan
from castle.spec.findings import INTERNET, is_outside
from castle.targets import workloads
from castle.targets.k8s_names import (
    EVERYWHERE,
    MANAGED,
    NAMESPACES,
    NS_LABEL,
    WORKLOADS,
    mesh_kind,
    namespace_of,
    secret_item,
    used_namespaces,
)
from castle.tls import plan as tlsplan
from castle.tls import recipes as tls_recipes

POLICIES = "k8s/networkpolicies.yaml"
KUSTOMIZATION = "k8s/kustomization.yaml"
PARTS = "networkpolicies-parts.yaml.j2"
DENY = "castle-default-deny"
DNS = "castle-allow-dns"

Labels = workloads.Labels
Ports = tuple[tuple[str, int, int], ...]  # (TCP|UDP, port, endPort or 0)


# One ingress or egress rule: its comment (through `comment`), its peer entry and its ports,
# as YAML text (a plain tuple: a big stack has tens of thousands)
Entry = tuple[str, str, str]


class Policy(NamedTuple):
    """One NetworkPolicy, ready for the template: names and labels already YAML-quoted, the
    title comment text (through `comment`)."""

    title: str
    name: str
    namespace: str
    annotations: Sequence[tuple[str, str]]
    pod_labels: Labels
    types: Sequence[str]
    ingress: Sequence[Entry]
    egress: Sequence[Entry]


# What the ingress rule of dst and the egress rule of src share: the flows behind the
# connections (sorted), their text ("flows[3] (description), flows[9]") and the ports' text
_Pair = tuple[tuple[int, ...], str, str]


class _Writer:
    """The text of each distinct peer and port list, rendered once through the parts macros
    (a big stack names the same service in hundreds of rules), and the quoted values."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.parts: Any = environment().get_template(PARTS).module
        # (home namespace, ingress) -> peer -> its `from` / `to` entry
        self.peers: dict[tuple[str, bool], dict[str, str]] = {}
        self.pods: dict[tuple[str, str], str] = {}  # (service, home) -> its peer entry
        self.ports: dict[Ports, str] = {}
        self.single: dict[tuple[str, int, int], str] = {}  # (proto, lo, hi) -> its ports
        self.labels = workloads.quoted_labels(plan)  # service -> its pod labels, quoted
        # a peer's or service's name as comment text (`comment` keeps each character's
        # place, so a rule's comment is quoted in parts)
        self.said = {s.name: comment(s.name) for s in plan.services}
        flows = plan.spec.flows
        # each flow as the rules' comments name it, its description through `comment` once
        # (not once a rule: each flow is in the ingress and the egress rule it opens)
        self.flow_texts = [f"flows[{i}] ({comment(f.description)})" if f.description
                           else f"flows[{i}]" for i, f in enumerate(flows)]
        self.notes: dict[int, list[tuple[str, str]]] = {}  # flow -> its annotations, quoted
        self.noted = any(map(attrgetter("description"), flows)) or any(
            map(attrgetter("waiver"), flows))

    def entries_of(self, home: str, ingress: bool) -> dict[str, str]:
        """The peer entries written so far for the rules of namespace home on one side."""
        return self.peers.setdefault((home, ingress), {})

    def peer(self, name: str, home: str, ingress: bool) -> str:
        """The `from` / `to` entry of a service, internet or a CIDR, seen from namespace home."""
        texts = self.entries_of(home, ingress)
        text = texts.get(name)
        if text is None:
            text = texts[name] = self._peer(name, home, ingress)
        return text

    def _peer(self, name: str, home: str, ingress: bool) -> str:
        plan, parts = self.plan, self.parts
        if not is_outside(name):
            text = self.pods.get((name, home))
            if text is None:
                ns = namespace_of(plan, name)
                labels = self.labels[name]
                if ns == home and not plan.spec.kubernetes.tier_namespaces:
                    text = str(parts.pods(None, labels))
                else:
                    text = str(parts.pods(yaml_pairs([(NS_LABEL, ns)]), labels))
                self.pods[name, home] = text
            return text
        k = plan.spec.kubernetes
        if name == INTERNET and ingress and k.ingress_namespace:
            return str(parts.pods(yaml_pairs([(NS_LABEL, k.ingress_namespace)]),
                                  yaml_pairs(sorted(k.ingress_pod_labels.items())) or None))
        if name == INTERNET:
            excepts = () if ingress else tuple(str(n) for n in plan.internet_except)
            return str(parts.ip_block(EVERYWHERE, excepts))
        return str(parts.ip_block(name.removeprefix("cidr:"), ()))

    def port_list(self, ports: Ports) -> str:
        """The `ports:` items of one rule."""
        text = self.ports.get(ports)
        if text is None:
            text = self.ports[ports] = str(self.parts.ports(ports))
        return text

    def single_ports(self, c: Conn) -> str:
        """The `ports:` items of a rule of one connection (kept by protocol and ports)."""
        text = self.single[c.proto, c.lo, c.hi] = self.port_list(
            ((c.proto.upper(), c.lo, c.hi if c.hi > c.lo else 0),))
        return text

    def pair(self, conns: list[Conn]) -> _Pair:
        """Flows and ports of the connections between two peers (in the plan's order, which
        is by protocol and port)."""
        ids = tuple(sorted({i for c in conns for i in c.flows}))
        items = tuple((c.proto.upper(), c.lo, c.hi if c.hi > c.lo else 0) for c in conns)
        return ids, ", ".join([self.flow_texts[i] for i in ids]), self.port_list(items)

    def annotations(self, pairs: list[_Pair]) -> list[tuple[str, str]]:
        """castle/flow-N and castle/waiver-N of the flows behind a policy's rules."""
        out: list[tuple[str, str]] = []
        for i in sorted({i for p in pairs for i in p[0]}):
            notes = self.notes.get(i)
            if notes is None:
                flow = self.plan.spec.flows[i]
                notes = self.notes[i] = yaml_pairs(
                    ([(f"castle/flow-{i}", flow.description)] if flow.description else [])
                    + ([(f"castle/waiver-{i}", flow.waiver)] if flow.waiver else []))
            out += notes
        return out


def policies(plan: Plan) -> list[Policy]:
    """Every NetworkPolicy: per namespace default deny and DNS, then per service."""
    k = plan.spec.kubernetes
    w = _Writer(plan)
    out: list[Policy] = []
    dns_peer = str(w.parts.pods(yaml_pairs([(NS_LABEL, k.dns_namespace)]),
                                yaml_pairs(sorted(k.dns_pod_labels.items())) or None))
    dns = [("cluster DNS", dns_peer, w.port_list((("UDP", 53, 0), ("TCP", 53, 0))))]
    quoted_ns: dict[str, str] = {}
    for ns in used_namespaces(plan):  # (which checks each namespace's length)
        q = quoted_ns[ns] = yaml_scalar(ns)
        out.append(Policy("deny every connection in and out unless allowed below",
                          yaml_scalar(DENY), q, (), [], ("Ingress", "Egress"), (), ()))
        out.append(Policy("every pod may resolve names through the cluster DNS",
                          yaml_scalar(DNS), q, (), [], ("Egress",), (), dns))
    # the plan's connections come sorted by peers, then protocol and port: grouped in that
    # order, a pair's connections are sorted by port; its flows and ports serve the ingress
    # of dst and the egress of src alike
    by_pair: dict[tuple[str, str], list[Conn]] = {}
    for c in plan.conns:
        by_pair.setdefault((c.src, c.dst), []).append(c)
    # peers in the plan's order of services, then internet, then CIDRs
    rank: dict[str, tuple[bool, int, bool, str]] = {
        s: (False, i, True, s) for s, i in plan.rank.items()}
    inbound: dict[str, dict[str, _Pair]] = {s.name: {} for s in plan.services}
    outbound: dict[str, dict[str, _Pair]] = {s.name: {} for s in plan.services}
    said, single, texts = w.said, w.single, w.flow_texts
    for (src, dst), conns in by_pair.items():
        if src not in rank or dst not in rank:  # internet or a CIDR, first met
            for peer in (src, dst):
                if peer not in rank:
                    rank[peer] = (True, 0, peer != INTERNET, peer)
                    inbound[peer], outbound[peer], said[peer] = {}, {}, comment(peer)
        c = conns[0]
        if len(conns) == 1 and len(c.flows) == 1:  # the common case, without a call
            pair: _Pair = (c.flows, texts[c.flows[0]],
                    single.get((c.proto, c.lo, c.hi)) or w.single_ports(c))
        else:
            pair = w.pair(conns)
        inbound[dst][src] = outbound[src][dst] = pair
    # every policy's name in one quoting pass: ingress and egress of each service in turn
    names = yaml_strings([f"{s.name}{side}" for s in plan.services
                          for side in ("-ingress", "-egress")])
    sides = ((True, inbound, "from ", "who may open connections to %s", 0, ("Ingress",)),
             (False, outbound, "to ", "where %s may open connections", 1, ("Egress",)))
    noted, tiers = w.noted, plan.tier_namespaces
    labels = w.labels
    for i, svc in enumerate(plan.services):
        name, ns = svc.name, tiers[svc.tier]
        q = quoted_ns[ns]
        for ingress, side, word, title, at, types in sides:
            by_peer = side[name]
            if not by_peer:
                continue
            peers = sorted(by_peer, key=rank.__getitem__)
            used = list(map(by_peer.__getitem__, peers))
            known = w.peers.get((ns, ingress)) or w.entries_of(ns, ingress)
            entries = [(f"{word}{said[peer]}: {flows}",
                        known.get(peer) or w.peer(peer, ns, ingress), ports)
                       for peer, (_, flows, ports) in zip(peers, used, strict=True)]
            out.append(Policy(title % said[name], names[2 * i + at], q,
                              w.annotations(used) if noted else (), labels[name], types,
                              entries if ingress else (), () if ingress else entries))
    return out


def policy_names(plan: Plan, src: str, dst: str) -> list[str]:
    """The policies (as namespace/name) that carry src -> dst; [] when nothing allows it."""
    if not any(c.src == src and c.dst == dst for c in plan.conns):
        return []
    names = []
    if not is_outside(src):
        names.append(f"{namespace_of(plan, src)}/{src}-egress")
    if not is_outside(dst):
        names.append(f"{namespace_of(plan, dst)}/{dst}-ingress")
    return names


def tls_path_prefix(plan: Plan) -> tuple[str, bool]:
    """The TLS folder as seen from k8s/, and whether kustomize's default restrictor allows it."""
    folder = plan.spec.tls.dir.strip("/")
    if folder == "k8s":
        return "", True
    if folder.startswith("k8s/"):
        return folder.removeprefix("k8s/") + "/", True
    return f"../{folder}/", False


def secret_generators(plan: Plan) -> list[dict[str, Any]]:
    """secretGenerator entries: a kubernetes.io/tls Secret per cert pair, the CA per namespace."""
    files = tlsplan.secret_files(plan)
    prefix, _ = tls_path_prefix(plan)
    single = not plan.spec.kubernetes.tier_namespaces
    gens: list[dict[str, Any]] = []
    ca_namespaces: set[str] = set()
    for name in files:
        if not name.endswith("-cert"):
            continue
        base = name.removesuffix("-cert")  # "db-server", "app-client"
        service = base.rsplit("-", 1)[0]
        ns = namespace_of(plan, service)
        ca_namespaces.add(ns)
        secret, cert_key = secret_item(name)
        key_key = secret_item(base + "-key")[1]
        gens.append({
            "name": secret,
            "namespace": None if single else ns,
            "type": "kubernetes.io/tls",
            "files": [f"{cert_key}={prefix}{files[name]}",
                      f"{key_key}={prefix}{files[base + '-key']}"],
        })
    if tlsplan.CA_SECRET in files:
        for ns in sorted(ca_namespaces):
            secret, ca_key = secret_item(tlsplan.CA_SECRET)
            gens.append({
                "name": secret,
                "namespace": None if single else ns,
                "type": "Opaque",
                "files": [f"{ca_key}={prefix}{files[tlsplan.CA_SECRET]}"],
            })
    for name, file in tls_recipes.generated_secrets(plan).items():
        secret, key = secret_item(name)
        service = name.removesuffix(tls_recipes.PASSWORD_SUFFIX)
        gens.append({
            "name": secret,
            "namespace": None if single else namespace_of(plan, service),
            "type": "Opaque",
            "files": [f"{key}={prefix}{file}"],
        })
    return sorted(gens, key=lambda g: (g["name"], g["namespace"] or ""))


def kustomization_context(plan: Plan) -> dict[str, Any]:
    """What kustomization.yaml.j2 needs."""
    resources = ["networkpolicies.yaml"]
    if plan.spec.kubernetes.workloads:
        resources = ["namespaces.yaml", "workloads.yaml", *resources]
    if mesh_kind(plan) != "none":
        resources.append("mesh.yaml")
    prefix, contained = tls_path_prefix(plan)
    return {
        "header": header(plan.source_name, plan.sha256),
        "namespace": None if plan.spec.kubernetes.tier_namespaces else plan.namespace,
        "resources": resources,
        "secrets": secret_generators(plan),
        "tls_dir": plan.spec.tls.dir,
        "tls_outside": not contained,
        "managed": MANAGED,
    }


def paths(plan: Plan) -> list[str]:
    """The files `outputs` writes, without rendering them."""
    scaffold = [NAMESPACES, WORKLOADS] if plan.spec.kubernetes.workloads else []
    return [POLICIES, KUSTOMIZATION, *scaffold]


def outputs(plan: Plan) -> list[Output]:
    """The k8s target's files."""
    managed = f"{yaml_scalar(MANAGED[0])}: {yaml_scalar(MANAGED[1])}"
    pols = render("networkpolicies.yaml.j2", header=header(plan.source_name, plan.sha256),
                  policies=policies(plan), managed=managed,
                  namespaces=used_namespaces(plan))
    kust = render("kustomization.yaml.j2", **kustomization_context(plan))
    files = [Output(POLICIES, pols), Output(KUSTOMIZATION, kust)]
    if plan.spec.kubernetes.workloads:
        files += workloads.outputs(plan)
    return files
