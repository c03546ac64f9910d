"""Service mesh (opt-in): Istio or Linkerd mTLS and per-destination authorization."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from castle.errors import UsageError
from castle.io.render import render
from castle.io.write import Output, header
from castle.plan import Conn, Plan, PlanService
from castle.spec.findings import INTERNET, is_outside
from castle.targets.k8s_names import EVERYWHERE, MANAGED, MESH, namespace_of, used_namespaces

# Meshes authorize TCP only (neither proxies UDP); Istio and Linkerd name single ports, so a
# range is listed port by port, up to this many per destination.
MAX_PORTS = 4096


@dataclass
class Source:
    """Who may connect: a service identity, a namespace (ingress controller) or IP blocks."""

    peer: str
    principal: str = ""  # Istio principal of a service
    account: tuple[str, str] = ("", "")  # (namespace, service account) for Linkerd
    namespace: str = ""  # ingress controller namespace
    cidr: str = ""  # an ipBlock: internet without an ingress namespace, or a CIDR flow


@dataclass
class Rule:
    """Sources allowed on some ports of one destination."""

    comment: str
    source: Source
    ports: list[int]


@dataclass
class Destination:
    """One service that accepts connections, and its rules."""

    service: str
    namespace: str
    labels: list[tuple[str, str]]
    rules: list[Rule] = field(default_factory=list)

    @property
    def plaintext_ports(self) -> list[int]:
        """Ports reached without mesh mTLS (from IP blocks): PERMISSIVE in Istio."""
        return sorted({p for r in self.rules if r.source.cidr for p in r.ports})

    @property
    def ports(self) -> list[int]:
        """Every port some rule allows."""
        return sorted({p for r in self.rules for p in r.ports})


def _ports(conns: list[Conn]) -> list[int]:
    ports = sorted({p for c in conns if c.proto == "tcp" for p in range(c.lo, c.hi + 1)})
    if len(ports) > MAX_PORTS:
        raise UsageError(f"mesh: {len(ports)} ports to one destination; meshes list ports one "
                         f"by one (at most {MAX_PORTS}): narrow the port ranges")
    return ports


def _source(plan: Plan, peer: str) -> Source:
    k = plan.spec.kubernetes
    td = plan.spec.mesh.trust_domain
    if peer == INTERNET and k.ingress_namespace and k.ingress_service_account:
        # the controller's own identity: as narrow as the NetworkPolicy's pod labels
        sa = k.ingress_service_account
        return Source(peer, principal=f"{td}/ns/{k.ingress_namespace}/sa/{sa}",
                      account=(k.ingress_namespace, sa))
    if peer == INTERNET and k.ingress_namespace:
        return Source(peer, namespace=k.ingress_namespace)
    if is_outside(peer):
        return Source(peer, cidr=EVERYWHERE if peer == INTERNET else peer.removeprefix("cidr:"))
    svc: PlanService = plan.service(peer)
    ns = namespace_of(plan, peer)
    return Source(peer, principal=f"{td}/ns/{ns}/sa/{svc.service_account}",
                  account=(ns, svc.service_account))


def destinations(plan: Plan) -> list[Destination]:
    """Every service with TCP connections in, with one rule per source."""
    out: list[Destination] = []
    order = plan.rank
    inbound: dict[str, dict[str, list[Conn]]] = {}
    for c in plan.conns:
        if c.proto == "tcp":
            inbound.setdefault(c.dst, {}).setdefault(c.src, []).append(c)
    for svc in plan.services:
        by_src = inbound.get(svc.name, {})
        if not by_src:
            continue
        dest = Destination(svc.name, namespace_of(plan, svc.name), list(svc.labels))
        for src in sorted(by_src, key=lambda s: (s not in order, order.get(s, 0), s)):
            conns = by_src[src]
            flows = ", ".join(f"flows[{i}]" for i in sorted({i for c in conns for i in c.flows}))
            dest.rules.append(Rule(f"from {src}: {flows}", _source(plan, src), _ports(conns)))
        if len(dest.ports) > MAX_PORTS:
            raise UsageError(f"mesh: {svc.name} accepts more than {MAX_PORTS} ports")
        out.append(dest)
    return out


def service_accounts(plan: Plan) -> list[tuple[str, str]]:
    """(namespace, service account) of every service: the identities the mesh checks.

    Written here only when [kubernetes] workloads = false; else workloads.yaml has them."""
    if plan.spec.kubernetes.workloads:
        return []
    return sorted({(namespace_of(plan, s.name), s.service_account) for s in plan.services})


def listen_ports(svc: PlanService) -> list[int]:
    """A service's TCP listen ports, one by one (the mesh proxies TCP only); [] past
    MAX_PORTS, where Linkerd's default-inbound-policy deny covers the ports no flow names."""
    if sum(p.hi - p.lo + 1 for p in svc.spec.listen if p.proto == "tcp") > MAX_PORTS:
        return []
    return sorted({n for p in svc.spec.listen if p.proto == "tcp" for n in range(p.lo, p.hi + 1)})


def every_service(plan: Plan) -> list[tuple[Destination, list[int]]]:
    """Every service with TCP listen ports: its inbound rules and all its listen ports."""
    dests = {d.service: d for d in destinations(plan)}
    out = []
    for svc in plan.services:
        ports = listen_ports(svc)
        if ports or svc.name in dests:
            dest = dests.get(svc.name) or Destination(svc.name, namespace_of(plan, svc.name),
                                                      list(svc.labels))
            out.append((dest, ports))
    return out


def linkerd_servers(dest: Destination, listen: list[int]) -> list[dict[str, Any]]:
    """One Linkerd Server per listen port (a port no flow names gets no authorization: with
    accessPolicy deny nothing reaches it), with the sources allowed on it."""
    servers = []
    for port in sorted(set(listen) | set(dest.ports)):
        rules = [r for r in dest.rules if port in r.ports]
        mesh = [r.source for r in rules if not r.source.cidr]
        nets = [r.source.cidr for r in rules if r.source.cidr]
        servers.append({
            "name": f"{dest.service}-{port}",
            "port": port,
            "comment": "; ".join(r.comment for r in rules) or "no flow: nothing may connect",
            "identities": sorted({("Namespace", s.namespace, "") if s.namespace
                                  else ("ServiceAccount", s.account[1], s.account[0])
                                  for s in mesh}),
            "networks": sorted(set(nets)),
        })
    return servers


def context(plan: Plan) -> dict[str, Any]:
    """What the mesh templates need."""
    dests = destinations(plan)
    return {
        "header": header(plan.source_name, plan.sha256),
        "managed": MANAGED,
        "namespaces": used_namespaces(plan),
        "accounts": service_accounts(plan),
        "destinations": dests,
        "servers": [(d, linkerd_servers(d, ports)) for d, ports in every_service(plan)],
        "ingress_namespace": plan.spec.kubernetes.ingress_namespace or "",
        "ingress_account": plan.spec.kubernetes.ingress_service_account or "",
    }


def paths(plan: Plan) -> list[str]:
    """The files `outputs` writes, without rendering them."""
    return [] if plan.spec.mesh.kind == "none" else [MESH]


def outputs(plan: Plan) -> list[Output]:
    """The mesh target's file (none when [mesh] kind is none)."""
    kind = plan.spec.mesh.kind
    if kind == "none":
        return []
    return [Output(MESH, render(f"mesh-{kind}.yaml.j2", **context(plan)))]
