"""Spec -> Plan: the target-neutral decisions (connections, networks, addresses), computed once.

Pure: no Jinja, no I/O. Everything is sorted so that output is byte-identical across runs.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, collapse_addresses
from typing import Any, NamedTuple

from castle.errors import SpecError
from castle.spec.addresses import AddressError, fixed_subnets, kept_addresses, member_addresses
from castle.spec.findings import INTERNET, Edge, Finding, is_outside
from castle.spec.load import Loaded, to_diagnostic
from castle.spec.model import METADATA, TARGETS, Service, Spec
from castle.spec.values import PortRange, publish_ranges, span
from castle.words import count

_OCTETS = tuple(str(n) for n in range(256))  # the last number of an address, as text


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


@dataclass(frozen=True, slots=True)
class Published:
    """A host port forwarded to a service because a flow from outside reaches it."""

    service: str
    host_ip: str
    host: PortRange
    container: PortRange
    sources: tuple[str, ...]  # "internet" and/or "cidr:A.B.C.D/N"


@dataclass(frozen=True, slots=True)
class PlanService:
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
        """Service -> network -> its address there, as text (formatted once for all targets)."""
        texts: dict[str, dict[str, str]] = {s.name: {} for s in self.services}
        for net in self.networks:  # in name order, as each service's networks are
            # the addresses of a /24 or smaller share their first three numbers
            base = int(net.subnet.network_address)
            head = f"{base >> 24}.{base >> 16 & 255}.{base >> 8 & 255}."
            for member, ip in net.addresses:
                n = int(ip)
                texts[member][net.name] = (head + _OCTETS[n & 255] if n >> 8 == base >> 8
                                           else str(ip))
        return texts

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


def merge_conns(edges: Iterable[Edge], tls_flows: set[int]) -> tuple[Conn, ...]:
    """Merge expanded flow edges into sorted connections with overlapping ranges joined."""
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
            out.append(Conn(src, dst, proto, lo, hi, tls, (flow,)))
            continue
        ranges.sort()
        lo, hi, flows = ranges[0][0], ranges[0][1], {ranges[0][2]}
        for rlo, rhi, flow in ranges[1:]:
            if rlo <= hi + 1:
                hi = max(hi, rhi)
                flows.add(flow)
            else:
                out.append(Conn(src, dst, proto, lo, hi, tls, tuple(sorted(flows))))
                lo, hi, flows = rlo, rhi, {flow}
        out.append(Conn(src, dst, proto, lo, hi, tls, tuple(sorted(flows))))
    return tuple(out)


def clique_cover(nodes: list[str], adj: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Greedy edge clique cover: every edge in some clique, each clique adds uncovered edges.

    Nodes are visited in the given order; a clique grows by the common neighbour that
    covers the most still-uncovered edges (never by one that covers none, which would
    only add an interface to a container).
    """
    order = {n: i for i, n in enumerate(nodes)}
    uncovered = {n: set(adj[n]) for n in nodes}
    cliques: list[tuple[str, ...]] = []
    for u in nodes:
        left = uncovered[u]
        # u's uncovered neighbours only shrink: walking them in order once takes the
        # smallest still uncovered each time
        for v in sorted(left, key=order.__getitem__):
            if v not in left:
                continue
            clique = [u, v]
            cand = (adj[u] & adj[v]) - {u, v}
            while cand:
                best, gain = None, 0
                for w in sorted(cand, key=order.__getitem__):
                    g = len(uncovered[w].intersection(clique))
                    if g > gain:
                        best, gain = w, g
                if best is None:
                    break
                clique.append(best)
                cand &= adj[best]
                cand.discard(best)
            for a in clique:  # (no node is its own neighbour)
                uncovered[a].difference_update(clique)
            cliques.append(tuple(sorted(clique, key=order.__getitem__)))
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


def _name_networks(groups: list[tuple[tuple[str, ...], bool]],
                   tier_of: dict[str, str]) -> list[str]:
    names: list[str] = []
    used: set[str] = set()
    counters: dict[str, int] = {}
    for members, edge in groups:
        if edge:
            base = f"{members[0]}-edge"
        elif len(members) <= 3 and len("-".join(members)) <= 40:
            base = "-".join(members)
        else:
            tiers = list(dict.fromkeys(tier_of[m] for m in members))
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


def allocate(pool: IPv4Network, sizes: list[int],
             avoid: Iterable[IPv4Network] = ()) -> list[IPv4Network]:
    """One equal-sized subnet per network from `pool`: /24 when they fit, smaller when not.

    `sizes` are member counts; each subnet also needs the network, gateway and broadcast
    addresses. Subnets skip the `avoid` ranges that lie inside the pool (the SSH sources:
    an operator network handed to a bridge could no longer reach the host). Raises
    ValueError when the pool is too small.
    """
    if not sizes:
        return []
    holes = [(int(n.network_address), int(n.broadcast_address)) for n in avoid
             if n.overlaps(pool) and not n.supernet_of(pool)]
    need = max(sizes) + 3
    smallest = 32 - (need - 1).bit_length()  # longest prefix that still holds the largest
    for prefix in range(min(24, smallest), smallest + 1):
        if prefix < pool.prefixlen:
            continue
        if 2 ** (prefix - pool.prefixlen) >= len(sizes):
            got = list(itertools.islice(_take(pool, prefix, holes), len(sizes)))
            if len(got) == len(sizes):
                return got
    raise ValueError(
        f"cannot fit {count(len(sizes), 'network')} of up to {count(max(sizes), 'service')} "
        f"in {pool}" + (" outside [firewall] ssh_sources" if holes else "")
    )


def _take(pool: IPv4Network, prefix: int, holes: list[tuple[int, int]]) -> Iterable[IPv4Network]:
    base = int(pool.network_address)
    step = 2 ** (32 - prefix)
    for lo in range(base, base + (2 ** (prefix - pool.prefixlen)) * step, step):
        if not holes or not any(lo <= h_hi and h_lo <= lo + step - 1 for h_lo, h_hi in holes):
            yield IPv4Network((lo, prefix))


def _around_kept(spec: Spec, groups: list[tuple[tuple[str, ...], bool]],
                 subnets: list[IPv4Network],
                 kept: dict[int, dict[str, IPv4Address]]) -> list[IPv4Network]:
    """The subnets with the networks that hold kept addresses on theirs, the others
    allocated from the pool around them."""
    fixed = fixed_subnets(kept, [len(m) for m, _ in groups], subnets[0].prefixlen)
    rest = [i for i in range(len(groups)) if i not in fixed]
    moved = allocate(spec.stack.pool, [len(groups[i][0]) for i in rest],
                     [*spec.firewall.ssh_sources, *fixed.values()])
    out = dict(fixed) | dict(zip(rest, moved, strict=True))
    for i, net in sorted(fixed.items()):
        name = sorted(kept[i])[0]
        # as allocate() does: only an SSH source that covers the whole pool may hold subnets
        for ssh in spec.firewall.ssh_sources:
            if ssh.overlaps(net) and not ssh.supernet_of(spec.stack.pool):
                raise AddressError(name, f"{kept[i][name]} needs {net}, which overlaps "
                                   f"[firewall] ssh_sources {ssh} (a bridge there would take "
                                   "the host's route to it)", "pick an address outside "
                                   "ssh_sources")
        if any(out[j].overlaps(net) for j in rest):  # it covers the whole pool
            raise AddressError(name, f"{kept[i][name]} needs {net}, which covers "
                               f"subnet_pool {spec.stack.pool}, where the other networks go",
                               "pick an address outside subnet_pool, or another pool")
    return [out[i] for i in range(len(groups))]


def compile_plan(loaded: Loaded, targets: Iterable[str] | None = None,
                 spec_dir: str = ".") -> Plan:
    """Build the Plan of a loaded spec; raise SpecError if the address pool is too small."""
    spec = loaded.spec
    depth = {t.name: i for i, t in reversed(list(enumerate(spec.tiers)))}
    order = sorted(spec.services, key=lambda n: (depth[spec.services[n].tier], n))
    tls_flows = {i for i, f in enumerate(spec.flows) if f.tls}
    conns = merge_conns(loaded.edges, tls_flows)

    adj: dict[str, set[str]] = {n: set() for n in order}
    needs_out: set[str] = set()
    for c in conns:
        if is_outside(c.src):
            needs_out.add(c.dst)
        elif is_outside(c.dst):
            needs_out.add(c.src)
        else:
            adj[c.src].add(c.dst)
            adj[c.dst].add(c.src)

    groups: list[tuple[tuple[str, ...], bool]] = [
        (members, False) for members in clique_cover(order, adj)
    ]
    open_groups = [g for g, _ in groups if needs_out.issuperset(g)]
    reached = {m for g in open_groups for m in g}
    for svc in order:
        if svc in needs_out and svc not in reached:
            groups.append(((svc,), True))
    rank = {n: i for i, n in enumerate(order)}

    def placed(group: tuple[tuple[str, ...], bool]) -> tuple[int, bool, list[int]]:
        ranks = [rank[m] for m in group[0]]
        return min(ranks), group[1], ranks

    groups.sort(key=placed)
    tier_of = {n: spec.services[n].tier for n in order}
    names = _name_networks(groups, tier_of)

    try:
        subnets = allocate(spec.stack.pool, [len(m) for m, _ in groups],
                           spec.firewall.ssh_sources)
        wanted = {n: s.address for n, s in spec.services.items()}
        callers: dict[str, set[str]] = {}
        if any(ip is not None for ip in wanted.values()):  # only kept addresses ask for them
            for c in conns:
                callers.setdefault(c.dst, set()).add(c.src)
        kept = kept_addresses(wanted, [m for m, _ in groups], callers)
        if kept:
            subnets = _around_kept(spec, groups, subnets, kept)
    except ValueError as exc:
        finding = Finding("error", ("stack", "subnet_pool"), str(exc),
                          "use a larger subnet_pool (for example a /16)")
        raise SpecError([to_diagnostic(str(loaded.path), loaded.source, finding)]) from None
    except AddressError as exc:
        finding = Finding("error", ("services", exc.service, "address"), str(exc), exc.hint)
        raise SpecError([to_diagnostic(str(loaded.path), loaded.source, finding)]) from None

    networks: list[Network] = []
    for i, ((members, _edge), name, subnet) in enumerate(zip(groups, names, subnets,
                                                             strict=True)):
        internal = not needs_out.issuperset(members)
        base = int(subnet.network_address)
        addrs = member_addresses(members, subnet, kept.get(i, {}))
        networks.append(Network(name, subnet, IPv4Address(base + 1), internal, members, addrs))
    networks.sort(key=lambda n: n.name)
    # filled in network name order, each service's list is sorted already
    per_service: dict[str, list[tuple[str, IPv4Address]]] = {n: [] for n in order}
    for net in networks:
        for m, ip in net.addresses:
            per_service[m].append((net.name, ip))

    services = tuple(
        PlanService(
            name=n,
            tier=tier_of[n],
            depth=depth[tier_of[n]],
            spec=spec.services[n],
            networks=tuple(per_service[n]),
            labels=tuple(sorted((spec.services[n].labels or
                                 {"app.kubernetes.io/name": n}).items())),
            service_account=spec.services[n].service_account or n,
        )
        for n in order
    )
    return Plan(
        spec=spec,
        source_name=loaded.name,
        sha256=loaded.sha256,
        tiers=tuple(t.name for t in spec.tiers),
        services=services,
        networks=tuple(networks),
        conns=conns,
        published=_published(spec, conns),
        targets=select_targets(spec, targets),
        flow_lines=tuple(loaded.source.flow_line(i) for i in range(len(spec.flows))),
        spec_dir=spec_dir,
    )


def _published(spec: Spec, conns: tuple[Conn, ...]) -> tuple[Published, ...]:
    found: dict[tuple[str, str, PortRange, PortRange], set[str]] = {}
    for c in conns:
        if not is_outside(c.src):
            continue
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
