"""Spec -> Plan: the target-neutral decisions (connections, networks, addresses), computed once.

Pure: no Jinja, no I/O. Everything is sorted so that output is byte-identical across runs.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, collapse_addresses
from operator import attrgetter, eq, itemgetter
from typing import Any, NamedTuple

from castle.errors import SpecError
from castle.spec.addresses import (
    AddressError,
    address,
    allocate_starts,
    around_kept,
    kept_addresses,
    member_addresses,
    network,
)
from castle.spec.findings import INTERNET, Edge, Finding, is_outside
from castle.spec.load import Loaded, to_diagnostic
from castle.spec.model import METADATA, TARGETS, Service, Spec
from castle.spec.values import PortRange, publish_ranges, span

OCTETS = tuple(str(n) for n in range(256))  # each number of an address, as text


# Conn and Network are named tuples: a big stack makes thousands of each, and a frozen
# dataclass pays one object.__setattr__ per field (the order, equality and hash are the
# same: those of the fields in turn)
class Conn(NamedTuple):
    """An allowed connection: src opens dst on proto lo-hi (peers: services, internet, cidr:X)."""

    src: str
    dst: str
    proto: str
    lo: int
    hi: int
    tls: bool = False
    flows: tuple[int, ...] = ()

    @property
    def ports(self) -> PortRange:
        """The port range as a PortRange."""
        return PortRange(self.proto, self.lo, self.hi)

    @property
    def port_text(self) -> str:
        """80 or 8000-8010."""
        return span(self.lo, self.hi)


class Network(NamedTuple):
    """A compose network: a clique of services that may talk, with its subnet."""

    name: str
    subnet: IPv4Network
    gateway: IPv4Address
    internal: bool
    members: tuple[str, ...]
    addresses: tuple[tuple[str, IPv4Address], ...]


class Published(NamedTuple):
    """A host port forwarded to a service because a flow from outside reaches it."""

    service: str
    host_ip: str
    host: PortRange
    container: PortRange
    sources: tuple[str, ...]  # "internet" and/or "cidr:A.B.C.D/N"


class PlanService(NamedTuple):
    """A service with everything the targets need about it."""

    name: str
    tier: str
    depth: int
    spec: Service
    networks: tuple[tuple[str, IPv4Address], ...]  # (network, address), sorted by network
    labels: tuple[tuple[str, str], ...]
    service_account: str

    @property
    def image(self) -> str:
        """The container image."""
        return self.spec.image

    @property
    def addresses(self) -> tuple[IPv4Address, ...]:
        """Every static address of the service."""
        return tuple(ip for _, ip in self.networks)


@dataclass(frozen=True)
class Plan:
    """Everything every target renders from, computed once from a valid spec."""

    spec: Spec
    source_name: str
    sha256: str
    tiers: tuple[str, ...]
    services: tuple[PlanService, ...]
    networks: tuple[Network, ...]
    conns: tuple[Conn, ...]
    published: tuple[Published, ...]
    targets: tuple[str, ...]
    flow_lines: tuple[int, ...] = ()
    # the spec's folder as seen from the output folder: passthrough paths are moved by it
    spec_dir: str = "."
    _by_name: dict[str, PlanService] = field(default_factory=dict, compare=False, repr=False)
    # what the targets derive from the plan and share (a comment text, a service's TLS
    # wiring), computed once per plan: keyed by the deriving function's name
    memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def stack(self) -> str:
        """The stack (compose project) name."""
        return self.spec.stack.name

    @property
    def namespace(self) -> str:
        """The Kubernetes namespace."""
        return self.spec.namespace

    @functools.cached_property
    def rank(self) -> dict[str, int]:
        """Service name -> position in the plan's order (outermost tier first, then name)."""
        return {s.name: i for i, s in enumerate(self.services)}

    @functools.cached_property
    def tier_namespaces(self) -> dict[str, str]:
        """Tier -> Kubernetes namespace: `<namespace>-<tier>` with tier_namespaces, else one."""
        split = self.spec.kubernetes.tier_namespaces
        return {t: f"{self.namespace}-{t}" if split else self.namespace for t in self.tiers}

    def namespace_of(self, service: str) -> str:
        """The Kubernetes namespace a service's pods run in."""
        return self.tier_namespaces[self.service(service).tier]

    def service(self, name: str) -> PlanService:
        """Look a service up by name."""
        if not self._by_name:
            self._by_name.update({s.name: s for s in self.services})
        return self._by_name[name]

    @functools.cached_property
    def address_text(self) -> dict[str, dict[str, str]]:
        """Service -> network -> its address there, as text (formatted once for all targets;
        compile_plan fills it in as it builds the networks, without str() each)."""
        return {s.name: {net: str(ip) for net, ip in s.networks} for s in self.services}

    @functools.cached_property
    def _sides(self) -> tuple[tuple[Conn, ...], tuple[Conn, ...], tuple[Conn, ...]]:
        """(internal, ingress, egress) connections, sorted out in one pass."""
        internal: list[Conn] = []
        ingress: list[Conn] = []
        egress: list[Conn] = []
        for c in self.conns:
            src_out, dst_out = is_outside(c.src), is_outside(c.dst)
            if src_out:
                ingress.append(c)
            if dst_out:
                egress.append(c)
            if not src_out and not dst_out:
                internal.append(c)
        return tuple(internal), tuple(ingress), tuple(egress)

    @functools.cached_property
    def internal_conns(self) -> tuple[Conn, ...]:
        """Service -> service connections."""
        return self._sides[0]

    @functools.cached_property
    def ingress(self) -> tuple[Conn, ...]:
        """Connections from internet or a CIDR into the stack."""
        return self._sides[1]

    @functools.cached_property
    def egress(self) -> tuple[Conn, ...]:
        """Connections from the stack out to internet or a CIDR."""
        return self._sides[2]

    @functools.cached_property
    def tls_pairs(self) -> tuple[tuple[str, str], ...]:
        """(client, server) pairs joined by a tls flow."""
        return tuple(sorted({(c.src, c.dst) for c in self.internal_conns if c.tls}))

    @functools.cached_property
    def internet_except(self) -> tuple[IPv4Network, ...]:
        """Where "internet" egress never goes, in every target: [kubernetes] egress_except
        (private and link-local ranges by default) and always the cloud metadata address."""
        nets = [*self.spec.kubernetes.egress_except, IPv4Network(METADATA)]
        return tuple(collapse_addresses(nets))

    @functools.cached_property
    def subnets(self) -> tuple[IPv4Network, ...]:
        """Every compose subnet of the stack."""
        return tuple(n.subnet for n in self.networks)


_new_tuple = tuple.__new__  # a named tuple built without its __new__'s Python frame
_key = itemgetter(0, 1, 2)
_NAME_LABEL = "app.kubernetes.io/name"  # a service's one label when it sets none


def merge_conns(edges: Iterable[Edge], tls_flows: set[int]) -> tuple[Conn, ...]:
    """Merge expanded flow edges into sorted connections with overlapping ranges joined."""
    edges = tuple(edges)
    if not tls_flows:
        # the usual big stack: each (src, dst, proto) once, so each edge's port is a
        # connection of its own, and sorting them is all there is to do
        rows = [(e.src, e.dst, p.proto, p.lo, p.hi, False, (e.flow,))
                for e in edges for p in e.ports]
        rows.sort()  # (plain tuples sort faster than named ones)
        keys = list(map(_key, rows))
        if not any(map(eq, keys, keys[1:])):
            return tuple(map(_new_tuple, itertools.repeat(Conn), rows))
    grouped: dict[tuple[str, str, str], list[tuple[int, int, int]]] = {}
    tls_pairs: set[tuple[str, str]] = set()
    for e in edges:
        for p in e.ports:
            grouped.setdefault((e.src, e.dst, p.proto), []).append((p.lo, p.hi, e.flow))
        if e.flow in tls_flows:
            tls_pairs.add((e.src, e.dst))
    out: list[Conn] = []
    # in the order of the keys, each key's merged ranges rising and disjoint: the dataclass
    # order (src, dst, proto, lo, ...) without sorting the connections themselves
    for key in sorted(grouped):
        src, dst, proto = key
        tls = (src, dst) in tls_pairs
        ranges = grouped[key]
        if len(ranges) == 1:
            lo, hi, flow = ranges[0]
            out.append(_new_tuple(Conn, (src, dst, proto, lo, hi, tls, (flow,))))
            continue
        ranges.sort()
        lo, hi, flows = ranges[0][0], ranges[0][1], {ranges[0][2]}
        for rlo, rhi, flow in ranges[1:]:
            if rlo <= hi + 1:
                hi = max(hi, rhi)
                flows.add(flow)
            else:
                out.append(_new_tuple(Conn, (src, dst, proto, lo, hi, tls, tuple(sorted(flows)))))
                lo, hi, flows = rlo, rhi, {flow}
        out.append(_new_tuple(Conn, (src, dst, proto, lo, hi, tls, tuple(sorted(flows)))))
    return tuple(out)


def clique_cover(nodes: list[str], adj: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Greedy edge clique cover: every edge in some clique, each clique adds uncovered edges.

    Nodes are visited in the given order; a clique grows by the common neighbour that
    covers the most still-uncovered edges (never by one that covers none, which would
    only add an interface to a container). No node is its own neighbour.
    """
    index = {n: i for i, n in enumerate(nodes)}
    cliques = _cover([{index[m] for m in adj[n]} for n in nodes])
    return [tuple(nodes[i] for i in c) for c in cliques]


def _cover(adj: list[set[int]]) -> list[tuple[int, ...]]:
    """clique_cover of nodes 0 .. n-1 visited in that order, each clique's members rising."""
    uncovered = [set(a) for a in adj]
    cliques: list[tuple[int, ...]] = []
    for u, left in enumerate(uncovered):
        if not left:
            continue
        near = adj[u]
        # u's uncovered neighbours only shrink, and all come after u (each node before it
        # covered all its edges): walking them in order once takes the smallest each time
        for v in sorted(left):
            if v not in left:
                continue
            if near.isdisjoint(adj[v]):  # most often: no common neighbour, the pair u-v
                left.discard(v)
                uncovered[v].discard(u)
                cliques.append((u, v))
                continue
            cand = near & adj[v]  # their common neighbours (neither u nor v)
            clique = [u, v]
            while cand:
                best, gain = -1, 0
                for w in sorted(cand):
                    g = len(uncovered[w].intersection(clique))
                    if g > gain:
                        best, gain = w, g
                if not gain:
                    break
                clique.append(best)
                cand &= adj[best]
            for a in clique:
                uncovered[a].difference_update(clique)
            cliques.append(tuple(sorted(clique)))
    return cliques


def cover_lower_bound(adj: dict[str, set[str]]) -> int:
    """A lower bound on any edge clique cover: edges no two of which fit in one clique.

    Two edges share a clique only if all their endpoints are pairwise adjacent, so a set of
    edges in which no pair does needs one clique each (greedy maximal set, deterministic).
    """
    chosen: set[frozenset[str]] = set()
    by_node: dict[str, set[str]] = {}  # node -> other ends of its chosen edges
    for a in sorted(adj):
        for b in sorted(adj[a]):
            if b <= a:
                continue
            common = ({a} | adj[a]) & ({b} | adj[b])
            clash = any(y in common for x in common for y in by_node.get(x, ()))
            if not clash:
                chosen.add(frozenset((a, b)))
                by_node.setdefault(a, set()).add(b)
                by_node.setdefault(b, set()).add(a)
    return len(chosen)


def _name_networks(members: list[tuple[str, ...]], edge: list[bool],
                   tier_of: dict[str, str]) -> list[str]:
    names: list[str] = []
    used: set[str] = set()
    counters: dict[str, int] = {}
    for group, out in zip(members, edge, strict=True):
        if out:
            base = f"{group[0]}-edge"
        elif len(group) > 3 or len(base := "-".join(group)) > 40:
            tiers = list(dict.fromkeys(tier_of[m] for m in group))
            base = f"{tiers[0]}-{tiers[-1]}" if len(tiers) > 1 else tiers[0]
            counters[base] = counters.get(base, 0) + 1
            base = f"{base}-{counters[base]}"
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name)
        names.append(name)
    return names


def compile_plan(loaded: Loaded, targets: Iterable[str] | None = None,
                 spec_dir: str = ".") -> Plan:
    """Build the Plan of a loaded spec; raise SpecError if the address pool is too small."""
    spec = loaded.spec
    specs = spec.services
    depth = {t.name: i for i, t in reversed(list(enumerate(spec.tiers)))}
    order = sorted(specs, key=lambda n: (depth[specs[n].tier], n))
    tls_flows = set(itertools.compress(itertools.count(), map(attrgetter("tls"), spec.flows)))
    conns = merge_conns(loaded.edges, tls_flows)

    # from here to the networks a service is its rank in `order`: ints hash, compare,
    # sort and index lists faster than names
    rank = {n: i for i, n in enumerate(order)}
    groups, edge, outward, sides = _groups(conns, rank)
    members = [(order[g[0]],) if g[1] == edge else
               (order[g[0]], order[g[1]]) if len(g) == 2 else tuple(map(order.__getitem__, g))
               for g in groups]
    names = _name_networks(members, [g[1] == edge for g in groups],
                           {n: specs[n].tier for n in order})
    sizes = list(map(len, members))
    kept: dict[int, dict[str, IPv4Address]] = {}
    try:
        starts, prefix = allocate_starts(spec.stack.pool, sizes, spec.firewall.ssh_sources)
        subnets: list[IPv4Network] = []  # only around kept addresses: else each at its start
        if any(s.address is not None for s in specs.values()):  # only kept addresses cost
            callers: dict[str, set[str]] = {}
            for c in conns:
                callers.setdefault(c.dst, set()).add(c.src)
            kept = kept_addresses({n: s.address for n, s in specs.items()}, members, callers)
        if kept:
            subnets = around_kept(spec.stack.pool, spec.firewall.ssh_sources, sizes, prefix, kept)
            starts = [int(n.network_address) for n in subnets]
    except ValueError as exc:
        finding = Finding("error", ("stack", "subnet_pool"), str(exc),
                          "use a larger subnet_pool (for example a /16)")
        raise SpecError([to_diagnostic(str(loaded.path), loaded.source, finding)]) from None
    except AddressError as exc:
        finding = Finding("error", ("services", exc.service, "address"), str(exc), exc.hint)
        raise SpecError([to_diagnostic(str(loaded.path), loaded.source, finding)]) from None

    networks, pairs, texts = _networks(groups, members, names, starts, prefix,
                                       (subnets, kept), outward, edge)
    services: list[PlanService] = []
    for svc, name, mine in zip(map(specs.__getitem__, order), order, pairs, strict=True):
        labels = tuple(sorted(svc.labels.items())) if svc.labels else ((_NAME_LABEL, name),)
        services.append(PlanService(name, svc.tier, depth[svc.tier], svc, tuple(mine), labels,
                                    svc.service_account or name))
    plan = Plan(
        spec=spec,
        source_name=loaded.name,
        sha256=loaded.sha256,
        tiers=tuple(t.name for t in spec.tiers),
        services=tuple(services),
        networks=tuple(networks),
        conns=conns,
        published=_published(spec, sides[1]),
        targets=select_targets(spec, targets),
        flow_lines=tuple(map(loaded.source.flow_line, range(len(spec.flows)))),
        spec_dir=spec_dir,
        _by_name=dict(zip(order, services, strict=True)),
    )
    # what the cached properties would find again (_sides one is_outside at a time)
    plan.__dict__.update(rank=rank, _sides=tuple(map(tuple, sides)),
                         address_text=dict(zip(order, texts, strict=True)))
    return plan


def _networks(groups: list[tuple[int, ...]], members: list[tuple[str, ...]], names: list[str],
              starts: list[int], prefix: int,
              around: tuple[list[IPv4Network], dict[int, dict[str, IPv4Address]]],
              outward: set[int], edge: int
              ) -> tuple[list[Network], list[list[tuple[str, IPv4Address]]], list[dict[str, str]]]:
    """The networks in name order, and by service rank its (network, address) pairs and
    its address texts (as Plan.address_text has them), filled in that order: sorted."""
    subnets, kept = around  # the subnets when kept addresses moved some
    networks: list[Network] = []
    pairs: list[list[tuple[str, IPv4Address]]] = [[] for _ in range(edge)]
    texts: list[dict[str, str]] = [{} for _ in range(edge)]
    octet = OCTETS
    short = prefix >= 24  # a /24 or smaller: an address is its network's head and one number
    for i in sorted(range(len(groups)), key=names.__getitem__):
        g, mem, name, lo = groups[i], members[i], names[i], starts[i]
        internal = g[1] != edge and (g[0] not in outward or not outward.issuperset(g))
        head = f"{octet[lo >> 24]}.{octet[lo >> 16 & 255]}.{octet[lo >> 8 & 255]}."
        gateway = address(lo + 1)
        if subnets or prefix > 30:
            subnet = subnets[i] if subnets else network(lo, prefix)
            addrs = list(member_addresses(mem, subnet, kept.get(i, {})))
            for j, (_, ip) in enumerate(addrs):
                n = int(ip)
                pairs[g[j]].append((name, ip))
                texts[g[j]][name] = head + octet[n & 255] if n >> 8 == lo >> 8 else str(ip)
        else:
            subnet = network(lo, prefix)
            addrs = []
            # the first member's address (.2) and, on a short network, its last number
            base, low = lo + 2, (lo & 255) + 2
            for j, m in enumerate(mem):  # (no zip: its strict= costs a keyword call)
                ip = address(base + j)
                addrs.append((m, ip))
                r = g[j]
                pairs[r].append((name, ip))
                texts[r][name] = head + octet[low + j] if short else str(ip)
        networks.append(_new_tuple(Network, (name, subnet, gateway, internal, mem, tuple(addrs))))
    return networks, pairs, texts


def _groups(conns: tuple[Conn, ...], rank: dict[str, int]) -> tuple[
        list[tuple[int, ...]], int, set[int], tuple[list[Conn], list[Conn], list[Conn]]]:
    """Every network's members by rank, in the order networks are numbered: the cliques,
    and (rank, edge) for a service that reaches outside yet is in no clique of such
    services alone (edge, one past the last rank, sorts it after the cliques it starts);
    with `edge`, the services that reach outside and the connections as Plan._sides."""
    adj: list[set[int]] = [set() for _ in rank]  # (freed on return, before the networks)
    outward: set[int] = set()
    sides: tuple[list[Conn], list[Conn], list[Conn]] = ([], [], [])
    for c in conns:
        src, dst = rank.get(c.src, -1), rank.get(c.dst, -1)  # -1: internet or a CIDR
        if src < 0:
            outward.add(dst)
            sides[1].append(c)
        elif dst < 0:
            outward.add(src)
            sides[2].append(c)
        else:
            adj[src].add(dst)
            adj[dst].add(src)
            sides[0].append(c)
    groups = _cover(adj)
    # the members of each clique whose members all reach outside
    reached = {r for g in groups if g[0] in outward and outward.issuperset(g) for r in g}
    edge = len(adj)
    groups += [(r, edge) for r in sorted(outward - reached)]
    groups.sort()  # by first rank; a clique's members rise, and `edge` sorts after them all
    return groups, edge, outward, sides


def _published(spec: Spec, ingress: list[Conn]) -> tuple[Published, ...]:
    found: dict[tuple[str, str, PortRange, PortRange], set[str]] = {}
    for c in ingress:
        for ip, host, container in publish_ranges(spec.services[c.dst].publish, c.ports):
            found.setdefault((c.dst, ip, host, container), set()).add(c.src)
    return tuple(
        Published(svc, ip, host, container, tuple(sorted(srcs, key=lambda s: (s != INTERNET, s))))
        for (svc, ip, host, container), srcs in sorted(found.items())
    )


def select_targets(spec: Spec, wanted: Iterable[str] | None) -> tuple[str, ...]:
    """The targets to emit: --target, else the spec's [stack].targets, else all that apply."""
    chosen = list(wanted) if wanted else list(spec.stack.targets or TARGETS)
    if spec.mesh.kind == "none" and "mesh" in chosen and not wanted and not spec.stack.targets:
        chosen.remove("mesh")
    return tuple(t for t in TARGETS if t in chosen)


def plan_summary(plan: Plan) -> dict[str, Any]:
    """Counts for a one-line summary."""
    return {
        "services": len(plan.services),
        "tiers": len(plan.tiers),
        "flows": len(plan.spec.flows),
        "connections": len(plan.conns),
        "networks": len(plan.networks),
    }
