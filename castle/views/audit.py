"""castle audit: who reaches whom in an existing compose file, what is risky, what breaks a spec."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from castle import __version__
from castle.errors import UsageError
from castle.plan import Plan, compile_plan
from castle.readers.compose import ComposeFile, ComposeService, Reach, reach, read, unknown_members
from castle.readers.compose_ports import PortMap
from castle.spec.load import load

LEVELS = ("error", "warning", "note")
FORMATS = ("text", "json", "sarif")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


@dataclass(frozen=True)
class Rule:
    """An audit rule: stable id, short name, default level, one-line description."""

    id: str
    name: str
    level: str
    text: str


RULES = {r.id: r for r in (
    Rule("CASTLE001", "shared-network-leak", "error",
         "Two services share a network but no flow of the spec joins them"),
    Rule("CASTLE002", "exposed-lateral", "warning",
         "A service published to the outside shares a network with a service it does not "
         "depend on"),
    Rule("CASTLE003", "host-network", "error",
         "network_mode: host puts the container on the host's own network"),
    Rule("CASTLE004", "shared-namespace", "note",
         "The service shares another container's network namespace"),
    Rule("CASTLE005", "external-network", "warning",
         "An external network: containers outside this file may be on it"),
    Rule("CASTLE006", "unexpected-publish", "error",
         "A port is published that no flow from outside allows"),
    Rule("CASTLE007", "net-admin", "error",
         "cap_add NET_ADMIN or ALL lets the container rewrite its own firewall"),
    Rule("CASTLE008", "privileged", "error", "privileged: true gives the container the host"),
    Rule("CASTLE009", "docker-socket", "error",
         "The Docker socket is mounted: whoever owns the container owns the host"),
    Rule("CASTLE010", "host-pid", "error", "pid: host shares the host's process namespace"),
    Rule("CASTLE011", "database-published", "error",
         "A database-looking service publishes ports on the host"),
    Rule("CASTLE012", "flow-not-carried", "error",
         "A flow of the spec joins two services that share no network"),
    Rule("CASTLE013", "ingress-not-published", "error",
         "A flow from outside reaches a port the file does not publish"),
    Rule("CASTLE014", "egress-blocked", "error",
         "A flow to the internet starts at a service that is only on internal networks"),
    Rule("CASTLE015", "missing-service", "error", "A service of the spec is not in the file"),
    Rule("CASTLE016", "unknown-service", "error", "A service of the file is not in the spec"),
    Rule("CASTLE017", "unexpected-egress", "warning",
         "A service can reach the internet although no flow of the spec lets it"),
    Rule("CASTLE018", "unreachable-publish", "warning",
         "Ports are published by a service that is only on internal networks"),
    Rule("CASTLE019", "publish-mismatch", "note",
         "A port is published on another host port or address than the spec says"),
    Rule("CASTLE020", "bad-network-reference", "warning",
         "An undefined network, or network_mode naming an unknown service"),
)}
_DATABASE = re.compile(
    r"(^|[/_-])(postgres|postgis|timescaledb|mysql|mariadb|percona|mongo|mongodb|redis|valkey|"
    r"keydb|memcached|elasticsearch|opensearch|cassandra|scylla|couchdb|couchbase|neo4j|"
    r"influxdb|clickhouse|cockroach|mssql|sqlserver|oracle|etcd|zookeeper|rethinkdb|arangodb|"
    r"dragonfly)([_-]|$)")
_ALL_INTERFACES = ("", "0.0.0.0", "::")


@dataclass(frozen=True, order=True)
class AuditFinding:
    """One result: where (the file's place in the set, the line), which rule, how bad, what."""

    rank: int  # the file's index in the file set: findings sort file by file
    line: int
    rule: str
    level: str
    message: str
    file: Path = field(default=Path(), compare=False)


@dataclass(frozen=True)
class AuditResult:
    """The rendered report and the number of findings (errors and warnings; notes excluded)."""

    report: str
    findings: int


@dataclass
class Audit:
    """A compose file, its reachability and the findings about it."""

    compose: ComposeFile
    reach: Reach
    spec_path: Path | None = None
    findings: list[AuditFinding] = field(default_factory=list)

    def add(self, rule: str, at: tuple[Path, int] | int, message: str,
            level: str | None = None) -> None:
        """Record a finding at (file, line) (a bare line: of the first file), at the rule's
        default level unless given."""
        file, line = at if isinstance(at, tuple) else (self.compose.path, at)
        files = list(self.compose.files) or [self.compose.path]
        rank = files.index(file) if file in files else len(files)
        self.findings.append(AuditFinding(rank, line, rule, level or RULES[rule].level,
                                          message, file))

    @property
    def counted(self) -> int:
        """Errors and warnings: what makes the audit fail."""
        return sum(1 for f in self.findings if f.level != "note")


def is_database(image: str) -> bool:
    """True when an image name looks like a database, cache or search engine."""
    repo = image.rsplit("@", 1)[0]
    last = repo.rsplit("/", 1)[-1].split(":", 1)[0].lower()
    return bool(_DATABASE.search(last))


def exposed(cf: ComposeFile, rc: Reach, svc: ComposeService) -> list[PortMap]:
    """Published ports reachable from outside the host (not loopback, not internal-only)."""
    if not svc.ports or (rc.networks.get(svc.name) and svc.name not in rc.egress):
        return []
    return [p for p in svc.ports if not p.loopback]


def analyze(compose: str | Path | list[Path], spec: str | Path | None = None) -> Audit:
    """Read a compose file (or file set) and collect every finding, comparing with a spec
    when given."""
    cf = read(compose)
    plan = compile_plan(load(spec)) if spec is not None else None
    result = Audit(cf, reach(cf), Path(spec) if spec is not None else None)
    _check_layout(result)
    _check_risks(result, plan)
    if plan is None:
        _check_lateral(result)
    else:
        _check_spec(result, plan)
    result.findings.sort()
    return result


def _check_layout(a: Audit) -> None:
    cf, rc = a.compose, a.reach
    for name, svc in cf.services.items():
        mode = svc.network_mode
        line = cf.where("services", name, "network_mode")  # (file, line)
        if mode == "host":
            a.add("CASTLE003", line, f"{name!r} uses network_mode: host: it reaches every "
                  "port published on the host, every container address behind the host's "
                  "bridges, and anything the host reaches; its own ports bypass compose "
                  "publishing")
        elif mode.startswith("service:") and rc.root.get(name):
            peers = [p for p in _neighbours(rc, name) if p != rc.root[name]]
            also = f"; it also reaches {', '.join(peers)}" if peers else ""
            a.add("CASTLE004", line, f"{name!r} runs in the network namespace of "
                  f"{rc.root[name]!r} (localhost, same addresses){also}")
        elif mode.startswith("container:"):
            a.add("CASTLE004", line, f"{name!r} joins the network namespace of a container "
                  f"outside this file ({mode}): its reach is unknown", "warning")
        elif mode == "bridge":
            a.add("CASTLE005", line, f"{name!r} is on Docker's default bridge, shared with "
                  "every container on the host started in that mode")
        if svc.ports and rc.networks.get(name) and name not in rc.egress:
            a.add("CASTLE018", cf.where("services", name, "ports"), f"{name!r} publishes "
                  f"{_ports(svc.ports)} but is only on internal networks: Docker forwards no "
                  "host port into them")
    for service, problem in rc.problems:
        if not cf.services[service].network_mode.startswith("container:"):  # CASTLE004 said it
            a.add("CASTLE020", cf.where("services", service, "network_mode"),
                  f"{service!r}: {problem}")
    for net, info in cf.networks.items():
        members = rc.members.get(net, ())
        if info.external and members:
            a.add("CASTLE005", cf.where("networks", net), f"network {net!r} is external: "
                  f"containers outside this file may be on it and reach {', '.join(members)}")
        if not info.defined:
            a.add("CASTLE020", cf.where("networks", net), f"network {net!r} is used by "
                  f"{', '.join(members) or 'nothing'} but not defined under `networks:`")


def _neighbours(rc: Reach, name: str) -> list[str]:
    return sorted(next(iter(p - {name})) for p in rc.pairs if name in p)


def _ports(ports: tuple[PortMap, ...] | list[PortMap]) -> str:
    return ", ".join(str(p) for p in ports)


def _check_risks(a: Audit, plan: Plan | None) -> None:
    cf = a.compose
    firewalled = {s.name for s in plan.services if s.spec.container_firewall} if plan else set()
    allowed = {p.service for p in plan.published} if plan else set()
    for name, svc in cf.services.items():
        caps = sorted({"NET_ADMIN", "ALL", "SYS_ADMIN"} & set(svc.cap_add))
        if caps:
            why = ("; the spec asks for it (container_firewall)" if name in firewalled
                   else ": prefer the host firewall")
            a.add("CASTLE007", cf.where("services", name, "cap_add"),
                  f"{name!r} adds {', '.join(caps)}: a compromised container can rewrite its "
                  f"own network rules{why}", "note" if name in firewalled else None)
        if svc.privileged:
            a.add("CASTLE008", cf.where("services", name, "privileged"),
                  f"{name!r} is privileged: every device and capability of the host")
        for sock in svc.sockets:
            a.add("CASTLE009", cf.where("services", name, "volumes"),
                  f"{name!r} mounts {sock}" + ("" if sock.endswith(".sock") else
                                              ", which holds the container engine's socket") +
                  ": control of the container engine is control of the host")
        if svc.pid == "host":
            a.add("CASTLE010", cf.where("services", name, "pid"),
                  f"{name!r} uses pid: host: it sees and can signal every process of the host")
        if svc.ports and is_database(svc.image):
            outside = [p for p in svc.ports if not p.loopback]
            level = "note" if name in allowed else (None if outside else "warning")
            a.add("CASTLE011", cf.where("services", name, "ports"),
                  f"{name!r} ({svc.image}) looks like a database and publishes "
                  f"{_ports(svc.ports)}" + ("" if outside else " (loopback only)") +
                  ("; the spec allows it" if name in allowed else ""), level)


def _check_lateral(a: Audit) -> None:
    """Without a spec, the one thing we can say: an exposed service reaching past its needs."""
    cf, rc = a.compose, a.reach
    for pair, via in rc.pairs.items():
        nets = [v.removeprefix("network ") for v in via if v.startswith("network ")]
        if not nets:
            continue
        x, y = sorted(pair)
        for e, n in ((x, y), (y, x)):
            svc, other = cf.services[e], cf.services[n]
            outside = exposed(cf, rc, svc)
            if outside and n not in svc.depends_on and e not in other.depends_on:
                a.add("CASTLE002", cf.where("services", e, "networks"),
                      f"{e!r} is published ({_ports(outside)}) and shares network "
                      f"{', '.join(nets)} with {n!r}, which it does not depend on: whoever "
                      f"owns {e!r} can reach {n!r} on any port (declare depends_on if "
                      "intended, or check with --spec)")
                break


def _check_spec(a: Audit, plan: Plan) -> None:
    cf, rc = a.compose, a.reach
    spec_name = plan.source_name
    in_spec = {s.name for s in plan.services}
    in_file = set(cf.services)
    for name in sorted(in_spec - in_file):
        a.add("CASTLE015", cf.where("services"), f"{name!r} is in {spec_name} but not in the file")
    for name in sorted(in_file - in_spec):
        a.add("CASTLE016", cf.where("services", name), f"{name!r} is in the file but not in "
              f"{spec_name}: castle cannot say what it may reach")
    allowed: dict[frozenset[str], list[int]] = {}
    for c in plan.internal_conns:
        allowed.setdefault(frozenset((c.src, c.dst)), []).extend(c.flows)
    for pair, via in rc.pairs.items():
        if pair <= in_spec and pair not in allowed:
            x, y = sorted(pair)
            a.add("CASTLE001", cf.where("services", x, "networks"),
                  f"{x!r} and {y!r} can reach each other ({'; '.join(via)}) but no flow of "
                  f"{spec_name} joins them")
    for pair, flows in sorted(allowed.items(), key=lambda i: sorted(i[0])):
        if pair <= in_file and pair not in rc.pairs:
            x, y = sorted(pair)
            where = ", ".join(f"{spec_name}:{plan.flow_lines[i]}" for i in sorted(set(flows)))
            a.add("CASTLE012", cf.where("services", x), f"a flow joins {x!r} and {y!r} ({where}) "
                  "but they share no network")
    _check_ingress(a, plan)
    _check_egress(a, plan)


def _covers(bind: str, want: str) -> bool:
    """True when a port bound to `bind` is reachable wherever the spec wants (`want`)."""
    return bind in _ALL_INTERFACES or bind == want


def _check_ingress(a: Audit, plan: Plan) -> None:
    cf = a.compose
    spec_name = plan.source_name
    for p in plan.published:
        svc = cf.services.get(p.service)
        if svc is None:
            continue
        line = cf.where("services", p.service, "ports")
        for port in range(p.container.lo, p.container.hi + 1):
            maps = [m for m in svc.ports if m.container == port and m.proto == p.container.proto]
            good = [m for m in maps if _covers(m.host_ip, p.host_ip)]
            src = " and ".join(p.sources)
            if not good:
                seen = f" (it publishes {_ports(maps)})" if maps else ""
                a.add("CASTLE013", line, f"{src} may reach {p.service!r} on {port}/"
                      f"{p.container.proto} per {spec_name}, but the file does not publish it"
                      f"{' there' if maps else ''}{seen}")
                continue
            host = p.host.lo + (port - p.container.lo)
            if not any(m.host in (None, host) for m in good):
                a.add("CASTLE019", line, f"{p.service!r} publishes {port}/{p.container.proto} "
                      f"as {_ports(good)}; {spec_name} says host port {host}")
    for name, svc in cf.services.items():
        if name not in {s.name for s in plan.services}:
            continue
        wanted = [p for p in plan.published if p.service == name]
        for m in svc.ports:
            match = [p for p in wanted if p.container.proto == m.proto
                     and p.container.lo <= m.container <= p.container.hi]
            if not match:
                a.add("CASTLE006", cf.where("services", name, "ports"),
                      f"{name!r} publishes {m} but no flow from outside reaches "
                      f"{m.container}/{m.proto} in {plan.source_name}",
                      "warning" if m.loopback else None)
            elif not any(_covers(p.host_ip, m.host_ip) for p in match):
                a.add("CASTLE006", cf.where("services", name, "ports"),
                      f"{name!r} publishes {m}, wider than the "
                      f"{match[0].host_ip} that {plan.source_name} asks for", "warning")


def _check_egress(a: Audit, plan: Plan) -> None:
    cf, rc = a.compose, a.reach
    spec_name = plan.source_name
    outside_users = {c.src for c in plan.egress} | {c.dst for c in plan.ingress}
    for src in sorted({c.src for c in plan.egress}):
        if src in cf.services and src not in rc.egress:
            a.add("CASTLE014", cf.where("services", src, "networks"),
                  f"{src!r} has a flow to the internet in {spec_name} but is only on internal "
                  "networks")
    for name in sorted(rc.egress):
        if name in {s.name for s in plan.services} and name not in outside_users:
            nets = list(rc.networks.get(name, ()))
            a.add("CASTLE017", cf.where("services", name, "networks"),
                  f"{name!r} is on a non-internal network ({', '.join(nets)}): it can open "
                  f"connections out of the stack, which no flow of {spec_name} allows")


# -- reports -------------------------------------------------------------------------------


def audit(compose: Path | list[Path], spec: Path | None, fmt: str) -> AuditResult:
    """Audit a compose file (optionally against a spec) and render the report in `fmt`."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    a = analyze(compose, spec)
    render = {"text": text_report, "json": json_report, "sarif": sarif_report}[fmt]
    return AuditResult(render(a), a.counted)


def _summary(a: Audit) -> str:
    n = a.counted
    if not n:
        head = "no findings"
    else:
        errors = sum(1 for f in a.findings if f.level == "error")
        head = (f"{n} finding{'s' if n != 1 else ''} ({errors} error{'s' if errors != 1 else ''}"
                f", {n - errors} warning{'s' if n - errors != 1 else ''})")
    notes = len(a.findings) - n
    return head + (f", {notes} note{'s' if notes != 1 else ''}" if notes else "")


def text_report(a: Audit) -> str:
    """The human report: networks, services, pairs, published ports, findings."""
    cf, rc = a.compose, a.reach
    out = [f"castle audit: {', '.join(map(str, cf.files or (cf.path,)))} "
           f"(read with {cf.reader})"]
    if cf.reader_note:
        out.append(f"  note: {cf.reader_note}")
    if a.spec_path is not None:
        out.append(f"  compared with {a.spec_path}")
    out.append("networks:")
    for net, info in cf.networks.items():
        flags = ["internal" if info.internal else "egress"]
        if unknown_members(cf, net):
            flags.append("external: members outside this file")
        out.append(f"  {net} ({', '.join(flags)}): {', '.join(rc.members.get(net, ())) or '-'}")
    out.append("services:")
    for name, svc in cf.services.items():
        mode = f"network_mode {svc.network_mode}" if svc.network_mode else ""
        nets = ", ".join(n for n in rc.networks.get(name, ())) or "no network"
        egress = "internet egress" if name in rc.egress else "no internet egress"
        out.append(f"  {name}: {mode or nets}; {egress}")
    out.append("who can reach whom (either direction, any port):")
    if not rc.pairs:
        out.append("  nobody")
    for pair, via in rc.pairs.items():
        x, y = sorted(pair)
        out.append(f"  {x} <-> {y}: {'; '.join(via)}")
    out.append("published on the host:")
    published = [(n, p) for n, s in cf.services.items() for p in s.ports]
    if not published:
        out.append("  nothing")
    for name, p in published:
        who = "the host only" if p.loopback else "everyone who reaches the host"
        out.append(f"  {name}: {p} ({who})")
    out.append("findings:" if a.findings else "findings: none")
    for f in a.findings:
        out.append(f"  {f.file}:{f.line}: {f.level}: {f.rule} {RULES[f.rule].name}: {f.message}")
    out.append(_summary(a))
    return "\n".join(out) + "\n"


def json_report(a: Audit) -> str:
    """The same facts as JSON, for scripts."""
    cf, rc = a.compose, a.reach
    doc = {
        "file": str(cf.path),
        "files": [str(p) for p in cf.files or (cf.path,)],
        "reader": cf.reader,
        "reader_note": cf.reader_note,
        "spec": str(a.spec_path) if a.spec_path else None,
        "networks": [{"name": n, "internal": i.internal, "external": unknown_members(cf, n),
                      "members": list(rc.members.get(n, ()))} for n, i in cf.networks.items()],
        "services": [{"name": n, "image": s.image, "network_mode": s.network_mode,
                      "networks": list(rc.networks.get(n, ())), "egress": n in rc.egress,
                      "published": [{"host_ip": p.host_ip, "host": p.host,
                                     "container": p.container, "protocol": p.proto,
                                     "loopback": p.loopback} for p in s.ports]}
                     for n, s in cf.services.items()],
        "pairs": [{"a": min(p), "b": max(p), "via": list(v)} for p, v in rc.pairs.items()],
        "findings": [{"rule": f.rule, "name": RULES[f.rule].name, "level": f.level,
                      "message": f.message, "file": str(f.file), "line": f.line}
                     for f in a.findings],
        "counts": {lvl: sum(1 for f in a.findings if f.level == lvl) for lvl in LEVELS},
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def artifact_uri(path: Path) -> str:
    """The file's URI relative to the working folder when it is inside it (as code scanning
    expects), else an absolute file URI."""
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.resolve().as_uri()


def sarif_report(a: Audit) -> str:
    """A SARIF 2.1.0 log (GitHub code scanning)."""
    ids = list(RULES)
    rules = [{"id": r.id, "name": r.name, "shortDescription": {"text": r.text},
              "defaultConfiguration": {"level": r.level},
              "properties": {"tags": ["security", "network"]}} for r in RULES.values()]
    files = a.compose.files or (a.compose.path,)
    results = [{
        "ruleId": f.rule,
        "ruleIndex": ids.index(f.rule),
        "level": f.level,
        "message": {"text": f.message},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(f.file)},
                                            "region": {"startLine": f.line}}}],
    } for f in a.findings]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "castle", "version": __version__, "rules": rules}},
            "artifacts": [{"location": {"uri": artifact_uri(p)}} for p in files],
            "properties": {"reader": a.compose.reader, "readerNote": a.compose.reader_note,
                           "spec": str(a.spec_path) if a.spec_path else ""},
            "results": results,
        }],
    }
    return json.dumps(log, indent=2, sort_keys=True) + "\n"
