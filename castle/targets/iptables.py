"""firewall/iptables.sh: DOCKER-USER and INPUT rules, plus opt-in per-container firewalls.

The host script hands the stack's forwarded traffic to castle's own chains: replies first,
then a prefix-tree dispatch on the destination address into one chain per service (so a
packet walks a few rules per level of a tree at most MAX_TREE chains deep, plus the flows
of its one destination), where
exactly the spec's (source, destination, proto, port) return to Docker's chains and the rest
is dropped. castle only ever narrows what Docker (or the host's own INPUT rules) allow: an
allowed packet RETURNs, it is never ACCEPTed past Docker's isolation.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import NamedTuple

from castle.errors import CastleError
from castle.io.render import comment, quoted_comment, render
from castle.io.write import Output, header
from castle.plan import Conn, Plan, PlanService, Published
from castle.spec.findings import is_outside
from castle.targets.fw_addresses import blocks, cidr, cover, dotted, shared, shared_text
from castle.targets.systemd import unit, unit_path

PATH = "firewall/iptables.sh"
MAX_CHAIN = 28  # iptables' limit on chain names (29 bytes with the NUL)
MAX_COMMENT = 255  # the comment match keeps at most 256 bytes with the NUL
LEAF = 8  # dispatch chains end in at most this many per-address jumps
# nf_tables refuses a jump path deeper than 16 chains (base chain included): FORWARD,
# DOCKER-USER, castle's main chain, the dispatch tree, the service's chain, and two spare
# levels for hosts that reach DOCKER-USER from a chain of their own
MAX_TREE = 10
ESTABLISHED = "-m conntrack --ctstate RELATED,ESTABLISHED"


class Rule(NamedTuple):
    """One `-A CHAIN ...` line; src/dst name the peers an allowing rule lets through."""

    chain: str
    spec: str
    src: str = ""
    dst: str = ""

    @property
    def line(self) -> str:
        """The iptables-restore line."""
        return f"-A {self.chain} {self.spec}"


@dataclass
class Ruleset:
    """castle's chains (in order, the first is the one hooked) and their rules."""

    tag: str
    hooks: list[tuple[str, str, bool]] = field(default_factory=list)  # builtin, chain, wanted
    chains: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # chain -> what it is for
    rules: list[Rule] = field(default_factory=list)
    # chain -> its `-A` lines so far, kept beside `rules` as they are added (a big stack has
    # tens of thousands: lines() then only joins them, in the order of the chains)
    _lines: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def chain(self, suffix: str, note: str) -> str:
        """Declare a chain named after the tag and return its name."""
        name = sub_chain(self.tag, suffix)
        if name in self.notes:
            raise CastleError(f"iptables: two chains are both named {name}")
        self.chains.append(name)
        self.notes[name] = note
        self._lines[name] = []
        return name

    def add(self, chain: str, spec: str, text: str = "", src: str = "", dst: str = "") -> None:
        """Append a rule, with a comment when `text` is given."""
        if text:  # the comment goes just before the verdict, where iptables-save puts it
            note = _note(text)
            at = max(spec.rfind(" -j "), spec.rfind(" -g "))
            spec = f"{spec[:at]} {note}{spec[at:]}" if at >= 0 else f"{note} {spec}"
        self.rules.append(Rule(chain, spec, src, dst))
        self._lines[chain].append(f"-A {chain} {spec}")

    def extend(self, chain: str, rows: list[tuple[str, str, str]]) -> None:
        """Append (spec, src, dst) rules whose comments are in place already."""
        self.rules += [Rule(chain, spec, src, dst) for spec, src, dst in rows]
        self._lines[chain] += [f"-A {chain} {spec}" for spec, _, _ in rows]

    def lines(self) -> list[str]:
        """Rules grouped by chain, each group after a `#` line saying what the chain is for."""
        said: dict[str, str] = {}  # the tree's chains share a few notes
        out: list[str] = []
        for name in self.chains:
            note = self.notes[name]
            text = said.get(note)
            if text is None:
                text = said[note] = comment(note)
            out.append(f"# {name}: {text}")
            out += self._lines[name]
        return out


def _hash(text: str, size: int = 4) -> str:
    """`size` base-32 characters (5 bits each) of the text's SHA-256."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:size].lower()


def main_chain(stack: str) -> str:
    """CASTLE-<stack>, or for long names CASTLE-<4 chars>~<40-bit hash>, so that every
    sub-chain still fits 28 chars and two long names practically never meet (the script
    also refuses a chain whose first rule names another stack)."""
    name = f"CASTLE-{stack}"
    return name if len(name) <= 20 else f"CASTLE-{stack[:4]}~{_hash(stack, 8)}"


def sub_chain(tag: str, suffix: str) -> str:
    """<tag>_<suffix>; stack names hold no '_', so no stack's chains match another's prefix."""
    if not suffix:
        return tag
    name = f"{tag}_{suffix}"
    if len(name) <= MAX_CHAIN:
        return name
    room = MAX_CHAIN - len(tag) - 6
    return f"{tag}_{suffix[:room]}~{_hash(suffix)}"


def _note(text: str) -> str:
    """The comment match of a rule."""
    return f"-m comment --comment {ipt_comment(text)}"


def ipt_comment(text: str) -> str:
    """A double-quoted iptables-restore word: one line, no quotes or backslashes, <=255 bytes."""
    return quoted_comment(text, MAX_COMMENT)


def ports(proto: str, lo: int, hi: int) -> str:
    """-p tcp -m tcp --dport 80 (or 8000:8010)."""
    rng = str(lo) if lo == hi else f"{lo}:{hi}"
    return f"-p {proto} -m {proto} --dport {rng}"


def describe(plan: Plan, conn: Conn) -> str:
    """The comment of an allowing rule: the connection, then its flows with their lines
    (once per plan: iptables and nftables both write it)."""
    known: dict[Conn, str] = plan.memo.setdefault("describe", {})
    text = known.get(conn)
    if text is None:
        text = known[conn] = _describe(plan, conn)
    return text


def _describe(plan: Plan, conn: Conn) -> str:
    flows, lines = plan.spec.flows, plan.flow_lines
    parts = [f"castle: {conn.src} -> {conn.dst} {conn.port_text}/{conn.proto}"]
    for i in conn.flows:
        flow = flows[i]
        line = lines[i] if i < len(lines) else 0
        text = f"flows[{i}] line {line}"
        if flow.description:
            text += f" {flow.description}"
        if flow.waiver:
            text += f" (waiver: {flow.waiver})"
        parts.append(text)
    return "; ".join(parts)


def stride(items: list[tuple[int, str, str]]) -> int:
    """Bits each dispatch level consumes, so that the tree is at most MAX_TREE chains deep.

    A chain that holds more than LEAF addresses spans a prefix of at most /28, and every
    level below lengthens the prefix by at least the stride: from a root at /p a path has at
    most (28 - p) // stride inner chains plus its leaf. The smallest stride that fits keeps
    each level's walk short (at most 2**stride rules).
    """
    plen = 32 - (items[0][0] ^ items[-1][0]).bit_length()
    return next(s for s in range(1, 33) if (28 - plen) // s + 2 <= MAX_TREE)


def dispatch(rs: Ruleset, kind: str, opt: str, leaves: list[tuple[int, str, str]]) -> str:
    """A tree of chains that goes to the leaf chain of each (address, its text, leaf) on
    `opt` (-d or -s); misses DROP.

    Every hop is a goto, so a RETURN in a leaf goes straight back to the hooked chain's
    caller. Each level splits the addresses left by the next `stride` bits of their common
    prefix (each part then narrowed to its own prefix), so a packet walks at most 2**stride
    rules a level and the longest jump path fits nf_tables' limit at any size.
    """
    items = sorted(leaves)
    ints = [n for n, _, _ in items]
    return _tree(rs, kind, opt, stride(items), itertools.count(), items, ints, 0, len(items))


def _tree(rs: Ruleset, kind: str, opt: str, bits: int, counter: Iterator[int],
          items: list[tuple[int, str, str]], ints: list[int], lo: int, hi: int) -> str:
    """One chain of the dispatch tree, for items[lo:hi], and below it its subtrees (a plain
    function, not a closure: a closure that calls itself is a reference cycle, and with the
    collector off for a command-line run it would keep the whole ruleset alive)."""
    name = rs.chain(f"{kind}{next(counter)}", f"dispatch on {opt} (prefix tree)")
    if hi - lo <= LEAF:
        rs.extend(name, [(f"{opt} {text}/32 -g {leaf}", "", "") for _, text, leaf in items[lo:hi]])
    else:
        # the items are sorted: each group (the same `bits` bits after the common prefix)
        # ends where the next value of those bits begins
        shift = max(0, (ints[lo] ^ ints[hi - 1]).bit_length() - bits)
        start = lo
        while start < hi:
            end = bisect_left(ints, ((ints[start] >> shift) + 1) << shift, start + 1, hi)
            first = ints[start]
            host = (first ^ ints[end - 1]).bit_length()  # what cover() computes, without objects
            rs.add(name, f"{opt} {dotted(first >> host << host)}/{32 - host} "
                         f"-g {_tree(rs, kind, opt, bits, counter, items, ints, start, end)}")
            start = end
    rs.add(name, "-j DROP")
    return name


def _leaves(plan: Plan, names: Iterable[str], chain: dict[str, str]) -> list[tuple[int, str, str]]:
    """(address, its text, the service's chain) for every address of the named services."""
    texts = plan.address_text
    return [(int(ip), texts[name][net], chain[name])
            for name in names for net, ip in plan.service(name).networks]


def forward_rules(plan: Plan, rs: Ruleset, main: str, own: list[IPv4Network]) -> None:
    """The DOCKER-USER side: replies, then per-destination and per-source (egress) chains."""
    # The stack's name in the first rule lets the script tell its chains from a colliding
    # stack's (see check_owner in the template).
    rs.add(main, f"{ESTABLISHED} -j RETURN",
           f"castle stack {plan.stack}: replies of allowed connections")
    if not own:
        return
    svc_chain = {s.name: rs.chain(s.name, f"what may reach {s.name}") for s in plan.services}
    egress_svcs = sorted({c.src for c in plan.egress})
    out_chain = {s: rs.chain(f"O-{s}", f"where {s} may connect outside the stack")
                 for s in egress_svcs}
    drop_in, drop_out = _log_chains(plan, rs)
    # with logging, services without egress get a leaf too: their drops are logged by name
    out_chain |= {s: drop_out[s] for s in drop_out if s not in out_chain}
    egress_svcs = sorted(out_chain)
    leaves = _leaves(plan, svc_chain, svc_chain)
    if leaves:
        to_tree = dispatch(rs, "T", "-d", leaves)
        for b in own:
            rs.add(main, f"-d {b} -g {to_tree}")
    out_leaves = _leaves(plan, egress_svcs, out_chain)
    if out_leaves:
        from_tree = dispatch(rs, "S", "-s", out_leaves)
        for b in own:
            rs.add(main, f"-s {b} -g {from_tree}")
    else:
        for b in own:
            rs.add(main, f"-s {b} -j DROP", "castle: no service of the stack may connect out")
    # Plan's conn views are recomputed on each access: index them once (linear, not n^2).
    into: dict[str, list[Conn]] = {}
    for c in plan.internal_conns + plan.ingress:
        into.setdefault(c.dst, []).append(c)
    pubs: dict[str, list[Published]] = {}
    for p in plan.published:
        pubs.setdefault(p.service, []).append(p)
    for svc in plan.services:
        _destination(plan, rs, svc, svc_chain[svc.name], own, into.get(svc.name, []),
                     pubs.get(svc.name, []), drop_in.get(svc.name, "DROP"))
    outgoing: dict[str, list[Conn]] = {}
    for c in plan.egress:
        outgoing.setdefault(c.src, []).append(c)
    for s in egress_svcs:
        if s not in outgoing:
            continue  # a log-and-drop leaf only
        chain = out_chain[s]
        drop = drop_out.get(s, "DROP")
        # Flows naming a CIDR first; then "internet", which means public addresses only.
        named = [c for c in outgoing[s] if cidr(c.dst)]
        public = [c for c in outgoing[s] if not cidr(c.dst)]
        for c in named:
            rs.add(chain, f"-d {cidr(c.dst)} {ports(c.proto, c.lo, c.hi)} -j RETURN",
                   describe(plan, c), c.src, c.dst)
        if public:
            for net in plan.internet_except:
                rs.add(chain, f"-d {net} -j {drop}",
                       f"castle: {net} is not internet (only a flow naming it opens it)")
        for c in public:
            rs.add(chain, f"{ports(c.proto, c.lo, c.hi)} -j RETURN", describe(plan, c),
                   c.src, c.dst)
        rs.add(chain, f"-j {drop}", f"castle: nothing else leaves {s}")


def _log_chains(plan: Plan, rs: Ruleset) -> tuple[dict[str, str], dict[str, str]]:
    """With [firewall] log_drops: per service, a chain that logs (rate-limited) then drops
    what may not reach it, and one for what it may not send out. Empty maps without."""
    if not plan.spec.firewall.log_drops:
        return {}, {}
    from castle.targets import droplog  # only specs that log need it

    names = droplog.prefixes(plan)
    drop_in: dict[str, str] = {}
    drop_out: dict[str, str] = {}
    for svc in plan.services:
        for kind, table, text in (("L-", drop_in, names[svc.name]),
                                  ("LO-", drop_out, droplog.prefix(plan.stack, svc.name, True))):
            what = "to" if kind == "L-" else "from"
            chain = rs.chain(kind + svc.name, f"log, then drop, what {what} {svc.name} no flow "
                                              "allows")
            rs.add(chain, droplog.iptables_target(plan, text))
            rs.add(chain, "-j DROP")
            table[svc.name] = chain
    return drop_in, drop_out


def _destination(plan: Plan, rs: Ruleset, svc: PlanService, chain: str,
                 own: list[IPv4Network], conns: list[Conn], pubs: list[Published],
                 drop: str = "DROP") -> None:
    rows: list[tuple[str, str, str]] = []
    for c in conns:
        if is_outside(c.src):
            continue
        # the comment placed as add() places it, once for every shared network
        tail = f"{ports(c.proto, c.lo, c.hi)} {_note(describe(plan, c))} -j RETURN"
        rows += [(f"-s {sa}/32 -d {da}/32 {tail}", c.src, c.dst)
                 for sa, da in shared_text(plan, c.src, c.dst)]
    rs.extend(chain, rows)
    if pubs:
        for b in own:
            rs.add(chain, f"-s {b} -j {drop}",
                   "castle: the stack's own containers never come in through published ports")
    for p in pubs:
        h, cp = p.host, p.container
        orig = str(h.lo) if h.lo == h.hi else f"{h.lo}:{h.hi}"
        ct = "-m conntrack --ctstate DNAT"
        if p.host_ip and p.host_ip != "0.0.0.0":
            ct += f" --ctorigdst {p.host_ip}"
        ct += f" --ctorigdstport {orig}"
        for src in p.sources:
            conn = next((c for c in conns if c.src == src and c.proto == cp.proto
                         and c.lo <= cp.lo and cp.hi <= c.hi), None)
            net = cidr(src)
            what = describe(plan, conn) if conn else f"castle: {src} -> {svc.name} {cp}"
            rs.add(chain, f"{'-s ' + str(net) + ' ' if net else ''}"
                   f"{ports(cp.proto, cp.lo, cp.hi)} {ct} -j RETURN", what, src, svc.name)
    rs.add(chain, f"-j {drop}", f"castle: nothing else reaches {svc.name}")


def ssh_narrowed(plan: Plan) -> bool:
    """True when [firewall] ssh_sources limits SSH (anything but 0.0.0.0/0)."""
    sources = plan.spec.firewall.ssh_sources
    return bool(sources) and not any(n.prefixlen == 0 for n in sources)


def input_rules(plan: Plan, rs: Ruleset, chain: str, own: list[IPv4Network]) -> None:
    """Host protection: loopback and replies untouched, containers kept off, SSH narrowed."""
    fw = plan.spec.firewall
    rs.add(chain, "-i lo -j RETURN", "castle: loopback is never touched")
    rs.add(chain, f"{ESTABLISHED} -j RETURN", "castle: replies and the operator's sessions")
    for b in own:
        rs.add(chain, f"-s {b} -j DROP",
               f"castle: containers of {plan.stack} never reach the host itself")
    sources = sorted({str(n) for n in fw.ssh_sources})
    if sources and "0.0.0.0/0" not in sources:
        for src in sources:
            rs.add(chain, f"-s {src} -p tcp -m tcp --dport {fw.ssh_port} -j RETURN",
                   f"castle: SSH from {src} ([firewall] ssh_sources)")
        rs.add(chain, f"-p tcp -m tcp --dport {fw.ssh_port} -j DROP",
               "castle: SSH from anywhere else")


def host_ruleset(plan: Plan) -> Ruleset:
    """Every chain and rule of the host script."""
    tag = main_chain(plan.stack)
    rs = Ruleset(tag)
    main = rs.chain("", f"castle's entry for stack {plan.stack}, jumped to from DOCKER-USER")
    manage = plan.spec.firewall.manage_input
    in_name = sub_chain(tag, "IN")
    if manage:
        rs.chain("IN", "host protection, jumped to from INPUT")
    rs.hooks = [("DOCKER-USER", main, True), ("INPUT", in_name, manage)]
    own = blocks(plan)
    forward_rules(plan, rs, main, own)
    if manage:
        input_rules(plan, rs, in_name, own)
    return rs


def container_ruleset(plan: Plan, svc: PlanService) -> Ruleset:
    """INPUT/OUTPUT allow-lists applied inside one container's own network namespace."""
    rs = Ruleset("CASTLE")
    cin = rs.chain("IN", f"what may reach {svc.name}")
    cout = rs.chain("OUT", f"where {svc.name} may connect")
    rs.hooks = [("INPUT", cin, True), ("OUTPUT", cout, True)]
    own = blocks(plan)
    for chain, lo in ((cin, "-i lo"), (cout, "-o lo")):
        rs.add(chain, f"{lo} -j RETURN", "castle: loopback (Docker's DNS at 127.0.0.11 too)")
        rs.add(chain, f"{ESTABLISHED} -j RETURN", "castle: replies of allowed connections")
    for c in plan.internal_conns:
        if svc.name not in (c.src, c.dst):
            continue
        for sa, da in shared(plan, c.src, c.dst):
            chain = cin if c.dst == svc.name else cout
            rs.add(chain, f"-s {sa}/32 -d {da}/32 {ports(c.proto, c.lo, c.hi)} -j RETURN",
                   describe(plan, c), c.src, c.dst)
    for chain, opt in ((cin, "-s"), (cout, "-d")):
        for b in own:
            rs.add(chain, f"{opt} {b} -j DROP", "castle: no other traffic within the stack")
    for c in plan.ingress:
        if c.dst == svc.name:
            net = cidr(c.src)
            rs.add(cin, f"{'-s ' + str(net) + ' ' if net else ''}"
                   f"{ports(c.proto, c.lo, c.hi)} -j RETURN", describe(plan, c), c.src, c.dst)
    for c in plan.egress:
        if c.src == svc.name:
            net = cidr(c.dst)
            rs.add(cout, f"{'-d ' + str(net) + ' ' if net else ''}"
                   f"{ports(c.proto, c.lo, c.hi)} -j RETURN", describe(plan, c), c.src, c.dst)
    rs.add(cin, "-j DROP", f"castle: nothing else reaches {svc.name}")
    rs.add(cout, "-j DROP", f"castle: {svc.name} connects nowhere else")
    return rs


def script(plan: Plan, rs: Ruleset, *, container: str = "") -> str:
    """Render the POSIX sh script that applies, prints or removes a ruleset."""
    fw = plan.spec.firewall
    return render(
        "iptables.sh.j2",
        header=header(plan.source_name, plan.sha256),
        stack=plan.stack,
        container=container,
        tag=rs.tag,
        chains=rs.chains,
        hooks=rs.hooks,
        rules="\n".join(rs.lines()),  # each line made in Python; a ruleset has one at least
        bridge=not container,
        ssh=f"{fw.ssh_port}/tcp from {', '.join(str(n) for n in fw.ssh_sources)}",
        manage_input=fw.manage_input,
        in_chain=sub_chain(rs.tag, "IN"),
        ssh6=fw.manage_input and ssh_narrowed(plan),
        ssh_port=fw.ssh_port,
    )


def _opted_in(plan: Plan) -> list[PlanService]:
    return [s for s in plan.services if s.spec.container_firewall and s.networks]


def paths(plan: Plan) -> list[str]:
    """The files `outputs` writes, without rendering them."""
    return [PATH, unit_path(plan.stack, "iptables")] + [
        f"firewall/container-{svc.name}.sh" for svc in _opted_in(plan)]


def outputs(plan: Plan) -> list[Output]:
    """The host script and, for services that opt in, their container scripts."""
    files = [Output(PATH, script(plan, host_ruleset(plan)), 0o755), unit(plan, "iptables")]
    for svc in _opted_in(plan):
        files.append(Output(f"firewall/container-{svc.name}.sh",
                            script(plan, container_ruleset(plan, svc), container=svc.name),
                            0o755))
    return files


__all__ = ["PATH", "Rule", "Ruleset", "blocks", "cidr", "container_ruleset", "cover",
           "host_ruleset", "ipt_comment", "is_outside", "main_chain", "outputs", "paths", "shared",
           "sub_chain"]
