"""castle status: the live host (firewall, docker networks and containers) against the spec.

What the firewall should be is not guessed from castle's own rule text: the generated
script (or nft file) is loaded into a throwaway network namespace and read back with the
same tool that reads the live host, so both sides are in the kernel's own notation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from shlex import quote
from typing import Any

from castle.errors import CastleError
from castle.generate import build, generate
from castle.plan import Plan
from castle.targets import iptables as ipt
from castle.targets.nftables import table_name

Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]
_PROJECT = "com.docker.compose.project"
_SERVICE = "com.docker.compose.service"
_NETWORK = "com.docker.compose.network"


def run(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell), capturing its text output; a missing tool is exit 127."""
    try:
        return subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              check=False, timeout=120)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not found")


@dataclass(frozen=True, order=True)
class Difference:
    """One place where the host is not what the spec says."""

    service: str  # the service concerned, "" for the stack as a whole
    where: str  # "chain CASTLE-shop_db", "table inet castle_shop", "network shop_app-db", ...
    kind: str  # chain-missing, rule-missing, rule-extra, container-off-network, ...
    detail: str

    def __str__(self) -> str:
        who = f"service {self.service}: " if self.service else ""
        return f"{who}{self.where}: {self.detail}"


@dataclass
class Status:
    """The comparison: what was checked, and every difference found."""

    stack: str
    checked: list[str] = field(default_factory=list)  # "iptables", "nftables", "docker"
    notes: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the host is the spec."""
        return not self.differences


def status(spec: str | Path, out: str | Path | None = None, runner: Runner = run) -> Status:
    """Compare the live host with a spec (iptables, nftables, docker); see Status."""
    _, plan, outputs = build(spec, ["iptables", "nftables"])
    texts = {o.path: o.content for o in outputs}
    st = Status(plan.stack)
    st.differences += _stale_files(spec, out)
    live_ipt = _live(runner, ["iptables-save", "-t", "filter"])
    table = table_name(plan.stack)
    live_nft = _live(runner, ["nft", "-s", "list", "table", "inet", table])
    rs = ipt.host_ruleset(plan)
    has_ipt = live_ipt is not None and f":{rs.tag} " in live_ipt
    has_nft = live_nft is not None
    if not has_ipt and not has_nft:
        st.differences.append(Difference(
            "", "firewall", "firewall-missing",
            f"neither iptables chain {rs.tag} nor nftables table inet {table} is loaded "
            "(load firewall/iptables.sh or firewall/castle.nft)"))
    if has_ipt:
        assert live_ipt is not None
        st.checked.append("iptables")
        want = _scratch(runner, "sh /dev/stdin >/dev/null && iptables-save -t filter",
                        texts["firewall/iptables.sh"], "iptables")
        st.differences += compare_iptables(plan, rs, want, live_ipt)
    if has_nft:
        assert live_nft is not None
        st.checked.append("nftables")
        want = _scratch(runner, f"nft -f /dev/stdin && nft -s list table inet {quote(table)}",
                        texts["firewall/castle.nft"], "nftables")
        st.differences += compare_nft(table, want, live_nft)
    docker = _docker_reachable(runner)
    if docker is None:
        st.checked.append("docker")
        st.differences += compare_docker(plan, runner)
    else:
        st.notes.append(f"docker: not checked ({docker})")
    st.differences.sort()
    return st


def _live(runner: Runner, argv: list[str]) -> str | None:
    done = runner(argv, None)
    return done.stdout if done.returncode == 0 else None


def _scratch(runner: Runner, script: str, text: str, what: str) -> str:
    """Load a generated firewall in a fresh network namespace and read it back."""
    if shutil.which("unshare") is None:
        raise CastleError("status needs unshare (util-linux) to read the expected ruleset")
    done = runner(["unshare", "--net", "sh", "-c", script], text)
    if done.returncode:
        raise CastleError(f"cannot load the generated {what} rules in a scratch namespace "
                          f"(run as root): {done.stderr.strip()}")
    return done.stdout


def _stale_files(spec: str | Path, out: str | Path | None) -> list[Difference]:
    root = Path(out) if out is not None else Path(spec).parent
    if not (root / "firewall").is_dir():
        return []
    result = generate(spec, root, targets=["iptables", "nftables"], check=True)
    changed = sorted({_diff_name(d) for d in result.diffs} - {""})
    return [Difference("", f"file {name}", "file-stale",
                       "differs from what the spec generates now (run castle generate, "
                       "then load it)") for name in changed]


def _diff_name(diff: str) -> str:
    """The file a unified diff is about: b/NAME, or a/NAME when it goes to /dev/null."""
    names = {line[:4]: line[4:].split("\t")[0] for line in diff.splitlines()[:2]}
    for key, prefix in (("+++ ", "b/"), ("--- ", "a/")):
        name = names.get(key, "")
        if name.startswith(prefix):
            return name[2:]
    return ""


# -- iptables ----------------------------------------------------------------------------------

def _chains(save: str) -> dict[str, list[str]]:
    """Chain name -> its rule lines (as iptables-save writes them) in one table's dump."""
    chains: dict[str, list[str]] = {}
    for line in save.splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split()[1], []).append(line)
    return chains


def _chain_service(rs: ipt.Ruleset, chain: str) -> str:
    dsts = {r.dst for r in rs.rules if r.chain == chain and r.dst}
    return dsts.pop() if len(dsts) == 1 else ""


def compare_iptables(plan: Plan, rs: ipt.Ruleset, want: str, live: str) -> list[Difference]:
    """castle's chains, their rules in order, and the jumps into them."""
    w, h = _chains(want), _chains(live)
    ours = set(rs.chains)
    out: list[Difference] = []
    for chain in rs.chains:
        svc = _chain_service(rs, chain)
        where = f"chain {chain} ({rs.notes[chain]})"
        if chain not in h:
            out.append(Difference(svc, where, "chain-missing", "missing"))
            continue
        exp, got = w.get(chain, []), h[chain]
        if exp == got:
            continue
        missing, extra = Counter(exp) - Counter(got), Counter(got) - Counter(exp)
        out += [Difference(svc, where, "rule-missing", f"missing rule: {r}")
                for r in sorted(missing.elements())]
        out += [Difference(svc, where, "rule-extra", f"rule not in the spec: {r}")
                for r in sorted(extra.elements())]
        if not missing and not extra:
            out.append(Difference(svc, where, "rule-order", "rules in another order"))
    for chain in sorted(h):
        if chain.startswith(f"{rs.tag}_") and chain not in ours:
            out.append(Difference("", f"chain {chain}", "chain-extra",
                                  "a chain of this stack that the spec no longer has"))
    for chain, lines in sorted(w.items()):
        if chain in ours:
            continue
        for line in lines:
            target = line.split(" -j ")[-1].split()[0] if " -j " in line else ""
            if target in ours and line not in h.get(chain, []):
                out.append(Difference("", f"chain {chain}", "hook-missing",
                                      f"missing jump: {line}"))
    return out


# -- nftables ----------------------------------------------------------------------------------

def _blocks(listing: str) -> dict[str, list[str]]:
    """`set NAME` / `chain NAME` -> its lines, from `nft -s list table`."""
    blocks: dict[str, list[str]] = {}
    current = ""
    for raw in listing.splitlines():
        line = raw.strip()
        words = line.split()
        if len(words) >= 3 and words[0] in ("set", "chain", "map") and words[-1] == "{":
            current = f"{words[0]} {words[1]}"
            blocks[current] = []
        elif line == "}" or not line:
            continue
        elif current:
            blocks[current].append(line)
    return blocks


def compare_nft(table: str, want: str, live: str) -> list[Difference]:
    """castle's table: every set's elements and every chain's rules."""
    w, h = _blocks(want), _blocks(live)
    out: list[Difference] = []
    for name, lines in w.items():
        where = f"table inet {table} {name}"
        if name not in h:
            out.append(Difference("", where, "chain-missing", "missing"))
            continue
        if lines == h[name]:
            continue
        missing, extra = Counter(lines) - Counter(h[name]), Counter(h[name]) - Counter(lines)
        out += [Difference(_nft_service(r), where, "rule-missing", f"missing: {r}")
                for r in sorted(missing.elements())]
        out += [Difference(_nft_service(r), where, "rule-extra", f"not in the spec: {r}")
                for r in sorted(extra.elements())]
        if not missing and not extra:
            out.append(Difference("", where, "rule-order", "lines in another order"))
    for name in sorted(set(h) - set(w)):
        out.append(Difference("", f"table inet {table} {name}", "chain-extra",
                              "not in the spec"))
    return out


def _nft_service(line: str) -> str:
    """The service an element's comment names ("castle: web -> app ..."): its destination,
    or its source for egress."""
    if 'comment "' not in line:
        return ""
    text = line.split('comment "', 1)[1]
    if " -> " not in text:
        return ""
    left, right = text.split(" -> ", 1)
    src, dst = (left.split() or [""])[-1], (right.split() or [""])[0].rstrip(":,\"")
    for name in (dst, src):  # egress rows concern their source
        if name != "internet" and name.replace("-", "").isalnum():
            return name
    return ""


# -- docker --------------------------------------------------------------------------------

def _docker_reachable(runner: Runner) -> str | None:
    """None when the docker CLI reaches a daemon, else why not."""
    done = runner(["docker", "version", "--format", "{{.Server.Version}}"], None)
    if done.returncode:
        text = (done.stderr.strip().splitlines() or ["no daemon"])[-1]
        return text[:200]
    return None


def _inspect(runner: Runner, kind: str, ids: list[str]) -> list[dict[str, Any]]:
    if not ids:
        return []
    done = runner(["docker", kind, "inspect", *ids], None)
    if done.returncode:
        raise CastleError(f"docker {kind} inspect failed: {done.stderr.strip()}")
    data = json.loads(done.stdout or "[]")
    return [d for d in data if isinstance(d, dict)]


def _ids(runner: Runner, argv: list[str]) -> list[str]:
    done = runner(argv, None)
    if done.returncode:
        raise CastleError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return sorted(set(done.stdout.split()))


def compare_docker(plan: Plan, runner: Runner) -> list[Difference]:
    """The stack's compose networks and containers against the planned layout."""
    project = plan.stack
    label = f"label={_PROJECT}={project}"
    nets = _inspect(runner, "network", _ids(runner, ["docker", "network", "ls", "-q",
                                                    "--filter", label]))
    by_net = {str((n.get("Labels") or {}).get(_NETWORK, "")): n for n in nets}
    docker_name = {key: str(n.get("Name", "")) for key, n in by_net.items()}
    out: list[Difference] = []
    for net in plan.networks:
        where = f"network {net.name}"
        found = by_net.get(net.name)
        if found is None:
            out.append(Difference("", where, "network-missing",
                                  f"no docker network of project {project} (compose up?)"))
            continue
        configs = (found.get("IPAM") or {}).get("Config") or []
        subnets = sorted(str(c.get("Subnet", "")) for c in configs)
        if subnets != [str(net.subnet)]:
            out.append(Difference("", where, "network-changed",
                                  f"subnet {', '.join(subnets) or 'none'}, planned {net.subnet}"))
        if bool(found.get("Internal")) != net.internal:
            out.append(Difference("", where, "network-changed",
                                  f"internal {bool(found.get('Internal'))}, planned "
                                  f"{net.internal}"))
        if found.get("EnableIPv6"):
            out.append(Difference("", where, "network-changed",
                                  "IPv6 is on: addresses no castle rule covers"))
    containers = _inspect(runner, "container", _ids(runner, ["docker", "ps", "-aq",
                                                            "--filter", label]))
    by_svc: dict[str, list[dict[str, Any]]] = {}
    for c in containers:
        name = str(((c.get("Config") or {}).get("Labels") or {}).get(_SERVICE, ""))
        by_svc.setdefault(name, []).append(c)
    compose_of = {v: k for k, v in docker_name.items()}
    for svc in plan.services:
        if not svc.networks:
            continue
        found_c = by_svc.get(svc.name, [])
        if not found_c:
            out.append(Difference(svc.name, "container", "container-missing",
                                  f"no container of project {project} (compose up?)"))
        for c in found_c:
            out += _container(svc.name, dict(svc.networks), c, compose_of)
    return out


def _container(svc: str, planned: dict[str, Any], c: dict[str, Any],
               compose_of: dict[str, str]) -> list[Difference]:
    name = str(c.get("Name", "")).lstrip("/") or str(c.get("Id", ""))[:12]
    where = f"container {name}"
    if not (c.get("State") or {}).get("Running"):
        return [Difference(svc, where, "container-stopped", "not running")]
    attached: dict[str, str] = {}
    for dname, body in ((c.get("NetworkSettings") or {}).get("Networks") or {}).items():
        attached[compose_of.get(dname, dname)] = str((body or {}).get("IPAddress", ""))
    out: list[Difference] = []
    for net, ip in sorted(planned.items()):
        if net not in attached:
            out.append(Difference(svc, where, "container-off-network",
                                  f"not on network {net} (planned address {ip})"))
        elif attached[net] != str(ip):
            out.append(Difference(svc, where, "container-address",
                                  f"address {attached[net] or 'none'} on {net}, planned {ip}"))
    for net in sorted(set(attached) - set(planned)):
        out.append(Difference(svc, where, "container-extra-network",
                              f"on network {net}, which the spec does not plan for it"))
    return out


# -- output ----------------------------------------------------------------------------------

def render_status(st: Status, fmt: str = "text") -> str:
    """The report: one line per difference (text), or a JSON document."""
    if fmt == "json":
        doc = {"stack": st.stack, "ok": st.ok, "checked": st.checked, "notes": st.notes,
               "differences": [asdict(d) for d in st.differences]}
        return json.dumps(doc, indent=2) + "\n"
    lines = [str(d) for d in st.differences]
    lines += [f"note: {n}" for n in st.notes]
    checked = ", ".join(st.checked) or "nothing"
    if st.ok:
        lines.append(f"{st.stack}: the host is the spec (checked {checked})")
    else:
        n = len(st.differences)
        lines.append(f"{st.stack}: {n} difference{'s' if n != 1 else ''} from the spec "
                     f"(checked {checked})")
    return "\n".join(lines) + "\n"


__all__ = ["Difference", "Status", "compare_docker", "compare_iptables", "compare_nft",
           "render_status", "run", "status"]
