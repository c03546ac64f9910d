"""The wall rules: expand flows into peers and ports, and report every rule a spec breaks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence

from castle.spec.findings import (
    INTERNET,
    Edge,
    Finding,
    Loc,
    closest,
    is_outside,
    toml_endpoints,
    written,
)
from castle.spec.model import RESERVED, Spec
from castle.spec.tls_rules import TlsRules
from castle.spec.values import (
    MAX_DECLARED_PORTS,
    PortRange,
    dns_label_problem,
    listens_on,
    more_ports_than,
    publish_ranges,
)


class Checker(TlsRules):
    """Walks a Spec once, collecting findings and the expanded edges of every flow."""

    # a plain class: making it a dataclass cost each process a quarter of a millisecond
    def __init__(self, spec: Spec, skip_flows: frozenset[int] = frozenset(),
                 broken: frozenset[str] = frozenset()) -> None:
        self.spec = spec
        self.skip_flows = skip_flows  # flows that failed validation (reported already)
        self.broken = broken  # services that failed validation: known, not unknown
        self.findings: list[Finding] = []
        self.edges: list[Edge] = []
        # endpoint text -> its peers, for the texts that expanded without a finding (a big
        # spec names each service in many flows, and a tier: expansion scans every service)
        self._peers: dict[str, tuple[str, ...]] = {}
        self._depth: dict[str, int] = {}
        # the edges from outside the stack (internet, cidr:), as check_flows found them
        self._ingress: list[Edge] = []

    def error(self, loc: Loc, message: str, hint: str = "") -> None:
        """Record an error."""
        self.findings.append(Finding("error", loc, message, hint))

    def warn(self, loc: Loc, message: str, hint: str = "") -> None:
        """Record a warning."""
        self.findings.append(Finding("warning", loc, message, hint))

    # -- names -------------------------------------------------------------------------

    def depth(self) -> dict[str, int]:
        """Tier name -> depth (0 = outermost)."""
        if not self._depth:
            for i, tier in enumerate(self.spec.tiers):
                self._depth.setdefault(tier.name, i)
        return self._depth

    def check_names(self) -> None:
        """Duplicate tiers, bad or reserved service names, unknown tiers of services."""
        seen: dict[str, int] = {}
        for i, tier in enumerate(self.spec.tiers):
            if tier.name in seen:
                self.error(("tiers", i, "name"), f"tier {tier.name!r} is declared twice",
                           f"first declared as tiers[{seen[tier.name]}]")
            seen.setdefault(tier.name, i)
        tiers = list(seen)
        for name, svc in self.spec.services.items():
            problem = dns_label_problem(name)
            if problem:
                self.error(("services", name), f"service name {problem}")
            elif name in RESERVED:
                self.error(("services", name), f"{name!r} is reserved for traffic from outside",
                           "rename the service")
            elif name in seen:
                # A service named like a tier is legal but confusing in `from`/`to`.
                pass
            if svc.tier not in seen:
                self.error(("services", name, "tier"), f"unknown tier {svc.tier!r}",
                           closest(svc.tier, tiers)
                           or f"declare it in [[tiers]] ({', '.join(tiers)})")

    # -- flows -------------------------------------------------------------------------

    def endpoint(self, text: str, loc: Loc) -> list[str]:
        """Expand one endpoint string to peers; an unknown one is reported and dropped."""
        known = self._peers.get(text)
        if known is None:
            peers = self._endpoint(text, loc)
            if peers:  # an empty expansion may have been reported: look it up again
                self._peers[text] = tuple(peers)
            return peers
        return list(known)

    def _endpoint(self, text: str, loc: Loc) -> list[str]:
        services = self.spec.services
        if text == INTERNET:
            return [INTERNET]
        if text.startswith("tier:"):
            tier = text[5:]
            if tier not in self.depth():
                self.error(loc, f"unknown tier {tier!r}",
                           closest(tier, list(self.depth()), "tier:"))
                return []
            return sorted(n for n, s in services.items() if s.tier == tier)
        if text.startswith("cidr:"):
            raw = text[5:]
            try:
                net = ipaddress.IPv4Network(raw, strict=True)
            except ValueError as exc:
                hint = "write it as cidr:A.B.C.D/N"
                try:
                    loose = ipaddress.IPv4Network(raw, strict=False)
                    hint = f"did you mean 'cidr:{loose}'?"
                except ValueError:
                    pass
                self.error(loc, f"malformed CIDR {raw!r} ({exc})", hint)
                return []
            return [f"cidr:{net}"]
        if text in services:
            return [text]
        if text in self.broken:
            return []
        candidates = (sorted(set(services) | self.broken) + [f"tier:{t}" for t in self.depth()]
                      + [INTERNET])
        self.error(loc, f"unknown service {text!r}",
                   closest(text, candidates)
                   or "use a service, tier:NAME, internet or cidr:A.B.C.D/N")
        return []

    def check_flows(self) -> None:
        """Expand every flow; check ports, walls, egress and duplicates."""
        depth = self.depth()
        services = self.spec.services
        tiers = [t.name for t in self.spec.tiers]
        innermost = len(tiers) - 1
        # each service's tier depth, looked up once rather than for every pair of every
        # flow; a peer it does not hold is outside the stack (internet, cidr:)
        level = {name: depth.get(svc.tier, 0) for name, svc in services.items()
                 if not is_outside(name)}
        peers = self._peers  # a service's name is its one peer: known before a flow names it
        peers.update({name: (name,) for name in level if not name.startswith("tier:")})
        # whether src -> dst breaks a wall depends on their depths alone (None: from
        # outside): _wall is asked once per pair of depths, and again only to word a breach
        breaks: dict[tuple[int | None, int], bool] = {}
        edges = self.edges
        for i, flow in enumerate(self.spec.flows):
            if i in self.skip_flows:
                continue
            ends = flow.from_  # one endpoint, seen before: the common case, without a call
            known = peers.get(ends[0]) if len(ends) == 1 else None
            srcs = known if known is not None else self._expand(ends, ("flows", i, "from"))
            ends = flow.to
            known = peers.get(ends[0]) if len(ends) == 1 else None
            dsts = known if known is not None else self._expand(ends, ("flows", i, "to"))
            asked = flow.ports
            opened = None if asked is None else tuple(asked)
            reported: set[str] = set()
            multi = len(dsts) > 1
            for src in srcs:
                ds = level.get(src)
                for dst in dsts:
                    if src == dst:
                        if flow.from_ == flow.to == [src]:
                            self.warn(("flows", i), f"{src!r} -> {src!r} is a flow to itself",
                                      "a container always reaches itself; remove the flow")
                        continue
                    dd = level.get(dst)
                    if ds is None and dd is None:
                        key = "outside-outside"
                        if key not in reported:
                            reported.add(key)
                            self.error(("flows", i),
                                       f"{self.written(i, src, dst)} never touches the stack",
                                       "one side of a flow must be a service")
                        continue
                    ports = opened
                    if asked is None or (dd is not None
                                         and not listens_on(services[dst].listen, asked)):
                        ports = self._ports(i, src, dst, reported, multi, dd is None)
                    if ports is not None:
                        edges.append(Edge(i, src, dst, ports))
                        if ds is None:
                            self._ingress.append(edges[-1])
                    if dd is None:  # egress is not bound by the wall direction rules
                        if not flow.waiver:
                            key = "egress-inner"
                            if ds == innermost and innermost > 0 and key not in reported:
                                reported.add(key)
                                self.warn(("flows", i), f"{src!r} in the innermost tier "
                                          f"{tiers[innermost]!r} opens connections out of the "
                                          "stack", "add waiver = \"why\" to say it is intended")
                        continue
                    verdict = breaks.get((ds, dd))
                    if verdict is None:
                        verdict = breaks[ds, dd] = bool(self._wall(src, dst, ds, dd, tiers)[0])
                    if verdict and not flow.waiver:
                        msg, hint = self._wall(src, dst, ds, dd, tiers)
                        if msg not in reported:
                            reported.add(msg)
                            self.error(("flows", i), f"{self.written(i, src, dst)} {msg}", hint)
        self._check_duplicates()

    def written(self, i: int, src: str, dst: str) -> str:
        """'web' -> 'db', plus the flow as written when it names them otherwise (tier:, lists)."""
        flow = self.spec.flows[i]
        pair = f"{src!r} -> {dst!r}"
        if flow.from_ == [src] and flow.to == [dst]:
            return pair
        return f"{pair} (flow from = {toml_endpoints(flow.from_)}, to = {toml_endpoints(flow.to)})"

    def _expand(self, endpoints: list[str], loc: Loc) -> Sequence[str]:
        if len(endpoints) == 1:  # one endpoint's peers hold no repeat
            return self.endpoint(endpoints[0], loc)
        peers: list[str] = []
        for j, text in enumerate(endpoints):
            for peer in self.endpoint(text, (*loc, j)):
                if peer not in peers:
                    peers.append(peer)
        return peers

    def _ports(
        self, i: int, src: str, dst: str, reported: set[str], multi: bool, outside: bool
    ) -> tuple[PortRange, ...] | None:
        """The ports a flow opens from src to dst (an `outside` one), None when it opens
        none."""
        flow = self.spec.flows[i]
        if outside:
            if flow.ports is None:
                if "egress-ports" not in reported:
                    reported.add("egress-ports")
                    self.error(("flows", i), f"egress {self.written(i, src, dst)} must list "
                               "its ports",
                               "add ports = [443] (or the ports the service calls out on)")
                return None
            return tuple(flow.ports)
        listen = self.spec.services[dst].listen
        if flow.ports is None:
            if not listen:
                key = f"nolisten:{dst}"
                if key not in reported:
                    reported.add(key)
                    # among several destinations, one that listens on nothing just gets nothing
                    report = self.warn if multi else self.error
                    report(("flows", i, "to"), f"{dst!r} listens on no port"
                           + (": this flow opens nothing to it" if multi else ""),
                           f"add listen = [...] to [services.{dst}] or ports to the flow")
                return None
            return tuple(listen)
        ok = True
        for j, port in enumerate(flow.ports):
            if not listens_on(listen, [port]):
                ok = False
                key = f"port:{dst}:{port}"
                if key not in reported:
                    reported.add(key)
                    have = ", ".join(str(r) for r in listen) or "nothing"
                    self.error(("flows", i, "ports", j),
                               f"{dst!r} does not listen on {port}",
                               f"it listens on {have}; add the port to [services.{dst}].listen")
        return tuple(flow.ports) if ok else None

    @staticmethod
    def _wall(src: str, dst: str, ds: int | None, dd: int, tiers: list[str]) -> tuple[str, str]:
        """How src -> dst (a service) breaks a wall and how to mend it; ("", "") when it
        does not. `ds` and `dd` are their tiers' depths (ds None: src is outside the stack);
        egress never reaches here."""
        waive = 'or add waiver = "why" to the flow'
        if ds is None:
            if dd > 0:
                return (f"enters at tier {tiers[dd]!r}, behind the outermost "
                        f"wall {tiers[0]!r}",
                        f"expose a service of tier {tiers[0]!r} (a proxy) instead, {waive}")
            return "", ""
        if dd < ds:
            return (f"goes outward (from tier {tiers[ds]!r} to "
                    f"{tiers[dd]!r}); walls only open inward",
                    f"let {dst!r} open the connection instead, {waive}")
        if dd - ds > 1:
            skipped = ", ".join(repr(t) for t in tiers[ds + 1:dd])
            return (f"skips the wall {skipped}",
                    f"route it through a {tiers[ds + 1]!r} service, {waive}")
        return "", ""

    def _check_duplicates(self) -> None:
        """Warn about each flow whose every port range an earlier flow between the same
        peers already opened (the edges come in flow order, each pair once per flow)."""
        # (src, dst) -> the first edge between them; every edge, once a later flow adds one
        covered: dict[tuple[str, str], Edge | list[Edge]] = {}
        flow, new, owner = -1, False, -1  # owner: the first earlier flow that covers one
        for edge in (*self.edges, None):  # None: the end of the last flow
            if edge is None or edge.flow != flow:
                if flow >= 0 and not new and owner >= 0:
                    self.warn(("flows", flow), f"flows[{flow}] allows nothing that "
                              f"flows[{owner}] (and earlier flows) do not already allow",
                              "remove it or merge them")
                if edge is None:
                    return
                flow, new, owner = edge.flow, False, -1
            if not edge.ports:
                continue
            earlier = covered.setdefault((edge.src, edge.dst), edge)
            if earlier is edge:  # the first between these peers: most edges
                new = True
                continue
            if not isinstance(earlier, list):
                earlier = covered[edge.src, edge.dst] = [earlier]
            for p in edge.ports if not new else ():
                found = next((e.flow for e in earlier for r in e.ports if r.covers(p)), -1)
                if found < 0:
                    new = True
                    break
                owner = found if owner < 0 else min(owner, found)
            earlier.append(edge)

    # -- publishing and reachability ---------------------------------------------------

    def check_publish(self) -> None:
        """Every publish entry needs a flow from outside; host ports may not collide."""
        ingress: dict[str, list[PortRange]] = {}
        for edge in self._ingress:
            ingress.setdefault(edge.dst, []).extend(edge.ports)
        for name, svc in self.spec.services.items():
            for j, entry in enumerate(svc.publish):
                earlier = [k for k, e in enumerate(svc.publish[:j])
                           if e.container.proto == entry.container.proto
                           and e.container.lo <= entry.container.hi
                           and entry.container.lo <= e.container.hi]
                if earlier:
                    first = svc.publish[earlier[0]]
                    self.error(("services", name, "publish", j),
                               f"{written(entry)}: {entry.container} is already renamed by "
                               f"publish[{earlier[0]}] ({written(first)})",
                               "one host port per container port: keep one entry")
                    continue
                if entry.host_ip.startswith("127."):
                    self.warn(("services", name, "publish", j),
                              f"{written(entry)} binds the host's loopback: the flows from "
                              f"outside that publish {entry.container} cannot reach it",
                              "host-only is kept as written: narrow the flow's source to "
                              "cidr:127.0.0.1/32; to let others in, bind the one host address "
                              "they reach (every interface would open it to the world)")
                if not any(r.covers(entry.container) for r in ingress.get(name, [])):
                    self.error(("services", name, "publish", j),
                               f"{written(entry)} publishes {entry.container} but no flow from "
                               f"internet or a CIDR reaches {name!r} on it",
                               f"add a flow from = \"internet\", to = \"{name}\", "
                               f"ports = [{entry.container.lo}]")
        # (proto, host port) -> binds so far: (host IP or "" for all, service, container port)
        claimed: dict[tuple[str, int], list[tuple[str, str, int]]] = {}
        for name, ip, host, container in self.host_ports():
            for port in range(host.lo, min(host.hi, host.lo + 4096) + 1):
                mine = (ip, name, container.lo + port - host.lo)
                binds = claimed.setdefault((host.proto, port), [])
                clash = next((b for b in binds if b[1:] != mine[1:]
                              and (not b[0] or not ip or b[0] == ip)), None)
                if clash:
                    who = (f"both {clash[1]!r} and {name!r}" if clash[1] != name
                           else f"{name!r} for container ports {clash[2]} and {mine[2]}")
                    free = port + 8000 if port + 8000 <= 65535 else port - 1
                    quoted = self._publishing(port, host.proto, {clash[1], name})
                    self.error(("services", name, "publish"),
                               f"host port {port}/{host.proto} is published by {who}{quoted}",
                               "map one to another host port: "
                               f"publish = [\"{free}:{mine[2]}\"]")
                    break
                if mine not in binds:
                    binds.append(mine)

    def _publishing(self, port: int, proto: str, names: set[str]) -> str:
        """The publish entries, as written, that put a host port on these services."""
        entries = [f"{written(e)} of {name!r}" for name in sorted(names)
                   for e in self.spec.services[name].publish
                   if e.host.proto == proto and e.host.lo <= port <= e.host.hi]
        return f" ({', '.join(entries)})" if entries else ""

    def host_ports(self) -> Iterator[tuple[str, str, PortRange, PortRange]]:
        """(service, host IP, host range, container range) published by flows from outside."""
        seen: set[tuple[str, str, PortRange, PortRange]] = set()
        for edge in self._ingress:
            for port in edge.ports:
                for ip, host, container in publish_ranges(
                        self.spec.services[edge.dst].publish, port):
                    if (edge.dst, ip, host, container) not in seen:
                        seen.add((edge.dst, ip, host, container))
                        yield edge.dst, ip, host, container

    def check_kubernetes(self) -> None:
        """The ingress controller lives outside the stack's namespaces; with tier_namespaces,
        every `<namespace>-<tier>` must still be a DNS label."""
        k = self.spec.kubernetes
        own = ({f"{self.spec.namespace}-{t.name}" for t in self.spec.tiers} if k.tier_namespaces
               else {self.spec.namespace})
        if k.ingress_namespace in own:
            self.error(("kubernetes", "ingress_namespace"),
                       f"ingress_namespace {k.ingress_namespace!r} is a namespace of this stack: "
                       "its default deny would cover the ingress controller too",
                       "name the namespace the ingress controller runs in, outside the stack's")
        if not k.tier_namespaces:
            return
        for i, tier in enumerate(self.spec.tiers):
            ns = f"{self.spec.namespace}-{tier.name}"
            if len(ns) > 63:
                self.error(("kubernetes", "tier_namespaces"),
                           f"namespace {ns[:40]}... of tier {tier.name!r} (tiers[{i}]) is longer "
                           "than 63 characters",
                           "set a shorter [kubernetes] namespace, or shorter tier names")
                return

    def check_selectors(self) -> None:
        """No service's pod labels may select another service's pods in its namespace.

        A NetworkPolicy, a Deployment and a mesh policy select pods by matchLabels: when one
        service's labels are a subset of another's (or equal), every policy of the first also
        applies to the second. castle reports it rather than adding a label on its own, since
        the labels are the contract with Deployments and dashboards the user already has.
        """
        k = self.spec.kubernetes
        # (namespace, label) -> services whose pods carry it: candidates without a scan of all
        having: dict[tuple[str, tuple[str, str]], set[str]] = {}
        # each service's namespace, labels and the having-sets of its labels
        found: list[tuple[str, str, dict[str, str], list[set[str]]]] = []
        namespace = self.spec.namespace
        for name, svc in self.spec.services.items():
            ns = f"{namespace}-{svc.tier}" if k.tier_namespaces else namespace
            labels = svc.labels or {"app.kubernetes.io/name": name}
            sets = []
            for item in labels.items():
                carriers = having.get((ns, item))
                if carriers is None:
                    carriers = having[ns, item] = set()
                carriers.add(name)
                sets.append(carriers)
            found.append((name, ns, labels, sets))
        for name, svc in self.spec.services.items():
            if k.workloads and more_ports_than(svc.listen, MAX_DECLARED_PORTS):
                self.warn(("services", name, "listen"),
                          f"more than {MAX_DECLARED_PORTS} listen ports: its Deployment "
                          "declares none and it gets no Service",
                          "narrow the ranges, or set [kubernetes] workloads = false")
            if k.workloads and svc.listen and name[:1].isdigit():
                self.warn(("services", name), f"Kubernetes Service names start with a letter: "
                          f"workloads.yaml gets no Service {name!r}",
                          "rename the service, or set [kubernetes] workloads = false")
        by_name: dict[str, dict[str, str]] = {}
        shared = max(map(len, having.values()), default=1) > 1  # a label on two services
        for name, ns, labels, sets in found if shared else ():
            if min(map(len, sets)) == 1:  # a label only its own pods carry: none shared
                continue
            by_name = by_name or {other: mine for other, _, mine, _ in found}
            sets.sort(key=len)
            for other in sorted(set.intersection(*sets) - {name}):
                other_labels = by_name[other]
                if labels == other_labels and other < name:
                    continue  # identical: reported once, at the first name
                # a default label set names its own service, so the wider set is explicit
                at = name if self.spec.services[name].labels is not None else other
                shown = ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
                self.error(("services", at, "labels"),
                           f"the labels of {name!r} ({shown}) also select the pods of {other!r} "
                           f"in namespace {ns!r}: every policy of {name!r} would apply to both",
                           f"give {name!r} a label {other!r} does not have")
        if (self.spec.mesh.kind != "none" and k.ingress_namespace and k.ingress_pod_labels
                and not k.ingress_service_account):
            self.error(("kubernetes", "ingress_pod_labels"),
                       "a mesh authorizes identities (service accounts), not pod labels: "
                       "without ingress_service_account it would let every pod of "
                       f"{k.ingress_namespace!r} in",
                       "set [kubernetes] ingress_service_account to the ingress "
                       "controller's service account")

    def check_reach(self) -> None:
        """Warn about lonely services and empty tiers; discourage container firewalls."""
        touched = {e.src for e in self.edges} | {e.dst for e in self.edges}
        for name, svc in self.spec.services.items():
            listen = svc.listen
            for j in range(1, len(listen)):  # the first port repeats none
                port = listen[j]
                for other in listen[:j]:
                    if other.proto == port.proto and other.lo <= port.hi and port.lo <= other.hi:
                        self.warn(("services", name, "listen", j),
                                  f"{port} repeats an earlier listen port", "remove the repeat")
                        break
            if name not in touched:
                self.warn(("services", name), f"{name!r} reaches nothing and nothing reaches it",
                          "add a flow, or remove the service")
            if svc.container_firewall:
                self.warn(("services", name, "container_firewall"),
                          "a firewall inside the container needs NET_ADMIN, which lets a "
                          "compromised container rewrite its own rules",
                          "prefer the host firewall (iptables.sh / castle.nft)")
        used = {svc.tier for svc in self.spec.services.values()}
        for i, tier in enumerate(self.spec.tiers):
            if tier.name not in used:
                self.warn(("tiers", i), f"tier {tier.name!r} has no services")


def check(spec: Spec, skip_flows: frozenset[int] = frozenset(),
          broken: frozenset[str] = frozenset()) -> tuple[list[Finding], list[Edge]]:
    """Every finding about a validated spec, and the expanded edges of its flows.

    `skip_flows` and `broken` name flows and services that failed field validation, so the
    rest of the spec is still checked and every problem is reported at once.
    """
    checker = Checker(spec, skip_flows, broken)
    checker.check_names()
    checker.check_flows()
    checker.check_publish()
    checker.check_reach()
    checker.check_tls()
    checker.check_kubernetes()
    checker.check_selectors()
    return checker.findings, checker.edges
