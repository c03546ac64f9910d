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

import itertools
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from ipaddress import IPv4Network

from castle.errors import CastleError
from castle.io.render import quoted_comments, render
from castle.io.write import Output, header
from castle.plan import Conn, Plan, PlanService, Published
from castle.spec.findings import is_outside
from castle.targets.fw_addresses import (
    address_int,
    blocks,
    cidr,
    cover,
    dotted,
    shared,
    shared_text,
)
from castle.targets.ipt_ruleset import (
    MAX_CHAIN,
    MAX_COMMENT,
    Rule,
    Ruleset,
    ipt_comment,
    main_chain,
    sub_chain,
)
from castle.targets.systemd import unit, unit_path

PATH = "firewall/iptables.sh"
LEAF = 8  # dispatch chains end in at most this many per-address jumps
# nf_tables refuses a jump path deeper than 16 chains (base chain included): FORWARD,
# DOCKER-USER, castle's main chain, the dispatch tree, the service's chain, and two spare
# levels for hosts that reach DOCKER-USER from a chain of their own
MAX_TREE = 10
ESTABLISHED = "-m conntrack --ctstate RELATED,ESTABLISHED"
_RULES = "\0castle-rules\0"  # where script() puts the rules: no rendered value holds a NUL


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
        text = known[conn] = _describe(plan, [conn])[0]
    return text


def _descriptions(plan: Plan, conns: Sequence[Conn]) -> list[str]:
    """`describe` of each connection, made in one batch when none is known yet."""
    known: dict[Conn, str] = plan.memo.setdefault("describe", {})
    if known:
        return [describe(plan, c) for c in conns]
    texts = _describe(plan, conns)
    if "nftables" in plan.targets:  # kept for the other target that writes them
        known.update(zip(conns, texts, strict=True))
    return texts


def _describe(plan: Plan, conns: Iterable[Conn]) -> list[str]:
    flows, lines = plan.spec.flows, plan.flow_lines
    texts = []
    for src, dst, proto, lo, hi, _, ids in conns:
        text = f"castle: {src} -> {dst} {lo if lo == hi else f'{lo}-{hi}'}/{proto}"
        for i in ids:
            flow = flows[i]
            text += f"; flows[{i}] line {lines[i] if i < len(lines) else 0}"
            if flow.description:
                text += f" {flow.description}"
            if flow.waiver:
                text += f" (waiver: {flow.waiver})"
        texts.append(text)
    return texts


def stride(items: list[tuple[int, str]]) -> int:
    """Bits each dispatch level consumes, so that the tree is at most MAX_TREE chains deep.

    A chain that holds more than LEAF addresses spans a prefix of at most /28, and every
    level below lengthens the prefix by at least the stride: from a root at /p a path has at
    most (28 - p) // stride inner chains plus its leaf. The smallest stride that fits keeps
    each level's walk short (at most 2**stride rules).
    """
    plen = 32 - (items[0][0] ^ items[-1][0]).bit_length()
    return next(s for s in range(1, 33) if (28 - plen) // s + 2 <= MAX_TREE)


def dispatch(rs: Ruleset, kind: str, leaves: dict[int, str]) -> str:
    """A tree of chains that goes to the leaf chain of each address (by its rule there:
    `-d A/32 -g LEAF` or `-s ...`); misses DROP. Its root, or "" without addresses.

    Every hop is a goto, so a RETURN in a leaf goes straight back to the hooked chain's
    caller. Each level splits the addresses left by the next `stride` bits of their common
    prefix (each part then narrowed to its own prefix), so a packet walks at most 2**stride
    rules a level and the longest jump path fits nf_tables' limit at any size.
    """
    if not leaves:
        return ""
    ints = sorted(leaves)
    rules = list(map(leaves.__getitem__, ints))
    opt = rules[0][:2]
    head = f"{rs.tag}_{kind}"
    # a tree has fewer than two chains per address (every inner chain splits in two or more)
    names: Iterator[str] = (map(head.__add__, map(str, itertools.count()))
                            if len(f"{head}{2 * len(ints)}") <= MAX_CHAIN else
                            (sub_chain(rs.tag, f"{kind}{i}") for i in itertools.count()))
    note = f"dispatch on {opt} (prefix tree)"
    texts: list[str] = []
    order: list[str] = []
    _tree(texts, order, rs.heading(note), names, opt,
          stride([(ints[0], ""), (ints[-1], "")]), ints, rules, 0, len(ints))
    declared = len(rs.chains)
    rs.declare(order, note, texts)
    if len(rs.notes) != len(rs.chains):  # a tree's name met another chain's
        twice = next(c for c in rs.chains[declared:] if rs.chains.count(c) > 1)
        raise CastleError(f"iptables: two chains are both named {twice}")
    return order[0]


def _tree(texts: list[str], order: list[str], said: str, names: Iterator[str], opt: str,
          bits: int, ints: list[int], rules: list[str], lo: int, hi: int) -> str:
    """One chain of the dispatch tree, for ints[lo:hi], and below it its subtrees: their
    names go in `order`, their text (as Ruleset.open heads a chain, `said` its note) in
    `texts`, parents first. (A plain function, not a closure: a closure that calls itself is
    a reference cycle, and with the collector off for a command-line run it would keep the
    whole ruleset alive.)"""
    name = next(names)
    slot = len(texts)
    order.append(name)
    texts.append(name)  # the chain's place, its text once its subtrees are named
    if hi - lo <= LEAF:
        specs = rules[lo:hi]
    else:
        # the items are sorted: each group (the same `bits` bits after the common prefix)
        # ends where the next value of those bits begins
        shift = max(0, (ints[lo] ^ ints[hi - 1]).bit_length() - bits)
        specs = []
        start = lo
        while start < hi:
            end = bisect_left(ints, ((ints[start] >> shift) + 1) << shift, start + 1, hi)
            first = ints[start]
            host = (first ^ ints[end - 1]).bit_length()  # what cover() computes, without objects
            child = _tree(texts, order, said, names, opt, bits, ints, rules, start, end)
            specs.append(f"{opt} {dotted(first >> host << host)}/{32 - host} -g {child}")
            start = end
    sep = f"\n-A {name} "
    texts[slot] = f"# {name}: {said}{sep}{sep.join(specs)}{sep}-j DROP"
    return name


def _leaves(plan: Plan, names: Iterable[str], chain: dict[str, str], opt: str) -> dict[int, str]:
    """Address -> the rule that sends it to its service's chain, for every address of the
    named services."""
    texts, service = plan.address_text, plan.service
    out: dict[int, str] = {}
    for name in names:
        text, leaf = texts[name], chain[name]
        for net, ip in service(name).networks:
            out[address_int(ip)] = f"{opt} {text[net]}/32 -g {leaf}"
    return out


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
    # (each tree's leaves are let go once it is made: what comes next reuses their memory)
    to_tree = dispatch(rs, "T", _leaves(plan, svc_chain, svc_chain, "-d"))
    if to_tree:
        for b in own:
            rs.add(main, f"-d {b} -g {to_tree}")
    from_tree = dispatch(rs, "S", _leaves(plan, egress_svcs, out_chain, "-s"))
    if from_tree:
        for b in own:
            rs.add(main, f"-s {b} -g {from_tree}")
    else:
        for b in own:
            rs.add(main, f"-s {b} -j DROP", "castle: no service of the stack may connect out")
    # Plan's conn views are recomputed on each access: index them once (linear, not n^2).
    # The comments of the allowing rules, and of each chain's last, quoted in two batches.
    internal = plan.internal_conns
    into: dict[str, list[tuple[Conn, str]]] = {}
    for c, note in zip(internal, quoted_comments(_descriptions(plan, internal), MAX_COMMENT),
                       strict=True):
        into.setdefault(c.dst, []).append((c, note))
    ingress: dict[str, list[Conn]] = {}
    for c in plan.ingress:
        ingress.setdefault(c.dst, []).append(c)
    pubs: dict[str, list[Published]] = {}
    for p in plan.published:
        pubs.setdefault(p.service, []).append(p)
    ends = quoted_comments([f"castle: nothing else reaches {s.name}" for s in plan.services],
                           MAX_COMMENT)
    for svc, end in zip(plan.services, ends, strict=True):
        _destination(plan, rs, svc, svc_chain[svc.name], own, into.get(svc.name, []),
                     ingress.get(svc.name, []), pubs.get(svc.name, []),
                     drop_in.get(svc.name, "DROP"), end)
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
                 own: list[IPv4Network], conns: list[tuple[Conn, str]], ingress: list[Conn],
                 pubs: list[Published], drop: str, end: str) -> None:
    """What may reach one service: `conns` from within the stack (each with its quoted
    comment), the published ports, then `end`'s comment on the DROP of the rest."""
    head = f"-A {chain} "
    lines: list[str] = []
    peers: list[Conn] = []  # the (src, dst) of each line: its Conn's first two
    for c, note in conns:
        src, dst, proto, lo, hi, _, _ = c
        rng = lo if lo == hi else f"{lo}:{hi}"
        # the comment placed as add() places it, once for every shared network (by name)
        for sa, da in shared_text(plan, src, dst):
            lines.append(f"{head}-s {sa}/32 -d {da}/32 -p {proto} -m {proto} "
                         f"--dport {rng} -m comment --comment {note} -j RETURN")
            peers.append(c)
    rs.extend(chain, lines, peers)
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
            conn = next((c for c in ingress if c.src == src and c.proto == cp.proto
                         and c.lo <= cp.lo and cp.hi <= c.hi), None)
            net = cidr(src)
            what = describe(plan, conn) if conn else f"castle: {src} -> {svc.name} {cp}"
            rs.add(chain, f"{'-s ' + str(net) + ' ' if net else ''}"
                   f"{ports(cp.proto, cp.lo, cp.hi)} {ct} -j RETURN", what, src, svc.name)
    rs.extend(chain, [f"{head}-m comment --comment {end} -j {drop}"])


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
    text = render(
        "iptables.sh.j2",
        header=header(plan.source_name, plan.sha256),
        stack=plan.stack,
        container=container,
        tag=rs.tag,
        chains=rs.chains,
        hooks=rs.hooks,
        rules=_RULES,
        bridge=not container,
        ssh=f"{fw.ssh_port}/tcp from {', '.join(str(n) for n in fw.ssh_sources)}",
        manage_input=fw.manage_input,
        in_chain=sub_chain(rs.tag, "IN"),
        ssh6=fw.manage_input and ssh_narrowed(plan),
        ssh_port=fw.ssh_port,
    )
    # The rules go into the script in the one join that makes it (through the template a big
    # ruleset's 2 MB would be copied twice more); `{{ rules }}` has a line of its own there.
    before, after = text.split(f"\n{_RULES}\n")
    return "\n".join([before, *rs.pieces(), after])


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
