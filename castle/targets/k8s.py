"""Kubernetes: NetworkPolicies that allow exactly the plan's connections, and a kustomization."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from castle.io.render import render
from castle.io.write import Output, header
from castle.plan import Conn, Plan, PlanService
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
DENY = "castle-default-deny"
DNS = "castle-allow-dns"

Labels = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Peer:
    """One `from` / `to` entry: pods (namespace AND pod selector in ONE entry) or an ipBlock."""

    ns_labels: Labels | None = None
    pod_labels: Labels | None = None
    cidr: str = ""
    excepts: tuple[str, ...] = ()


@dataclass(slots=True)
class Rule:
    """One ingress or egress rule: a peer and the ports it may use."""

    comment: str
    peers: list[Peer]
    ports: list[tuple[str, int, int]]  # (TCP|UDP, port, endPort or 0)


@dataclass(slots=True)
class Policy:
    """One NetworkPolicy, ready for the template."""

    name: str
    namespace: str
    comment: str
    pod_labels: Labels
    types: list[str]
    annotations: list[tuple[str, str]] = field(default_factory=list)
    ingress: list[Rule] = field(default_factory=list)
    egress: list[Rule] = field(default_factory=list)


def _pods_peer(plan: Plan, svc: PlanService, home: str) -> Peer:
    known: dict[tuple[str, str], Peer] = plan.memo.setdefault("k8s_pods_peer", {})
    peer = known.get((svc.name, home))
    if peer is None:
        peer = known[svc.name, home] = _new_pods_peer(plan, svc, home)
    return peer


def _new_pods_peer(plan: Plan, svc: PlanService, home: str) -> Peer:
    ns = namespace_of(plan, svc.name)
    if ns == home and not plan.spec.kubernetes.tier_namespaces:
        return Peer(pod_labels=list(svc.labels))
    return Peer(ns_labels=[(NS_LABEL, ns)], pod_labels=list(svc.labels))


def outside_peer(plan: Plan, peer: str, ingress: bool) -> Peer:
    """The peer entry for internet or a CIDR, as the spec's [kubernetes] table asks."""
    k = plan.spec.kubernetes
    if peer == INTERNET and ingress and k.ingress_namespace:
        return Peer(ns_labels=[(NS_LABEL, k.ingress_namespace)],
                    pod_labels=sorted(k.ingress_pod_labels.items()) or None)
    if peer == INTERNET:
        excepts = () if ingress else tuple(str(n) for n in plan.internet_except)
        return Peer(cidr=EVERYWHERE, excepts=excepts)
    return Peer(cidr=peer.removeprefix("cidr:"))


def _ports(conns: list[Conn]) -> list[tuple[str, int, int]]:
    return [(c.proto.upper(), c.lo, c.hi if c.hi > c.lo else 0)
            for c in sorted(conns, key=lambda c: (c.proto, c.lo, c.hi))]


def _flows_text(plan: Plan, conns: list[Conn]) -> str:
    flows = plan.spec.flows
    if len(conns) == 1 and len(conns[0].flows) == 1:  # the common case: no set to sort
        i = conns[0].flows[0]
        desc = flows[i].description
        return f"flows[{i}] ({desc})" if desc else f"flows[{i}]"
    parts = []
    for i in sorted({i for c in conns for i in c.flows}):
        desc = flows[i].description
        parts.append(f"flows[{i}]" + (f" ({desc})" if desc else ""))
    return ", ".join(parts)


def _annotations(plan: Plan, conns: list[Conn]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i in sorted({i for c in conns for i in c.flows}):
        flow = plan.spec.flows[i]
        if flow.description:
            out.append((f"castle/flow-{i}", flow.description))
        if flow.waiver:
            out.append((f"castle/waiver-{i}", flow.waiver))
    return out


def _group(order: dict[str, int], conns: list[Conn], key: str) -> list[tuple[str, list[Conn]]]:
    """Connections grouped by peer (key 'src' or 'dst'), internet and CIDRs after services."""
    groups: dict[str, list[Conn]] = {}
    for c in conns:
        groups.setdefault(getattr(c, key), []).append(c)
    return sorted(groups.items(), key=lambda kv: (kv[0] not in order, order.get(kv[0], 0),
                                                  kv[0] != INTERNET, kv[0]))


def service_policies(plan: Plan, svc: PlanService, inbound: list[Conn],
                     outbound: list[Conn]) -> list[Policy]:
    """The ingress and egress policies of one service (none when it has no flows that way)."""
    ns = namespace_of(plan, svc.name)
    order = plan.rank
    out: list[Policy] = []
    if inbound:
        rules = []
        for src, conns in _group(order, inbound, "src"):
            peer = (outside_peer(plan, src, ingress=True) if is_outside(src)
                    else _pods_peer(plan, plan.service(src), ns))
            rules.append(Rule(f"from {src}: {_flows_text(plan, conns)}", [peer], _ports(conns)))
        out.append(Policy(f"{svc.name}-ingress", ns, f"who may open connections to {svc.name}",
                          list(svc.labels), ["Ingress"], _annotations(plan, inbound),
                          ingress=rules))
    if outbound:
        rules = []
        for dst, conns in _group(order, outbound, "dst"):
            peer = (outside_peer(plan, dst, ingress=False) if is_outside(dst)
                    else _pods_peer(plan, plan.service(dst), ns))
            rules.append(Rule(f"to {dst}: {_flows_text(plan, conns)}", [peer], _ports(conns)))
        out.append(Policy(f"{svc.name}-egress", ns, f"where {svc.name} may open connections",
                          list(svc.labels), ["Egress"], _annotations(plan, outbound),
                          egress=rules))
    return out


def policies(plan: Plan) -> list[Policy]:
    """Every NetworkPolicy: per namespace default deny and DNS, then per service."""
    k = plan.spec.kubernetes
    out: list[Policy] = []
    for ns in used_namespaces(plan):
        out.append(Policy(DENY, ns, "deny every connection in and out unless allowed below",
                          [], ["Ingress", "Egress"]))
        dns = Peer(ns_labels=[(NS_LABEL, k.dns_namespace)],
                   pod_labels=sorted(k.dns_pod_labels.items()) or None)
        out.append(Policy(DNS, ns, "every pod may resolve names through the cluster DNS",
                          [], ["Egress"],
                          egress=[Rule("cluster DNS", [dns], [("UDP", 53, 0), ("TCP", 53, 0)])]))
    inbound: dict[str, list[Conn]] = {}
    outbound: dict[str, list[Conn]] = {}
    for c in plan.conns:
        inbound.setdefault(c.dst, []).append(c)
        outbound.setdefault(c.src, []).append(c)
    for svc in plan.services:
        out.extend(service_policies(plan, svc, inbound.get(svc.name, []),
                                    outbound.get(svc.name, [])))
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
    pols = render("networkpolicies.yaml.j2", header=header(plan.source_name, plan.sha256),
                  policies=policies(plan), managed=MANAGED,
                  namespaces=used_namespaces(plan))
    kust = render("kustomization.yaml.j2", **kustomization_context(plan))
    files = [Output(POLICIES, pols), Output(KUSTOMIZATION, kust)]
    if plan.spec.kubernetes.workloads:
        files += workloads.outputs(plan)
    return files
