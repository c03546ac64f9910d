"""castle benchmarks (DESIGN.md section 7): every figure a ratio against a peer run beside it.

    python benchmarks/bench.py              # start-up, 1,000 services against peers, scaling
    python benchmarks/bench.py --quick      # fewer rounds, scaling 100 / 1,000 only
    python benchmarks/bench.py --runs 15    # more rounds per figure

Whole processes only, run in interleaved rounds (castle, its peer, castle, its peer...), and
medians of wall time and CPU time (the CPU figure moves less on a busy machine). Peers:
- the bare `python -c "import pydantic, jinja2, yaml, typer"` for start-up;
- Shorewall 5 (`shorewall compile -e` with a capabilities file) and `ferm --remote`, from
  Debian's packages when installed, compiling the same allowed tuples as castle's
  iptables.sh, for 1,000 services and about 5,000 flows;
- castle itself at 100 / 1,000 / 10,000 services for the scaling table (time, peak memory).
It prints numbers and never fails on them; the suite has no timed tests.
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BARE = [sys.executable, "-c", "import pydantic, jinja2, yaml, typer"]


def synthetic_spec(services: int, flows_per_service: int = 5, seed: int = 7) -> str:
    """A valid spec: 4 tiers, services spread over them, flows inward by one wall or sideways."""
    rng = random.Random(seed)
    tiers = ["edge", "front", "logic", "data"]
    names = [f"s{i:04d}" for i in range(services)]
    tier_of = {n: tiers[min(3, i * 4 // services)] for i, n in enumerate(names)}
    by_tier = {t: [n for n in names if tier_of[n] == t] for t in tiers}
    lines = ["version = 1", "[stack]", 'name = "bench"', 'subnet_pool = "10.64.0.0/10"']
    for t in tiers:
        lines += ["[[tiers]]", f'name = "{t}"']
    published = by_tier["edge"][:10]
    for n in names:
        lines += [f"[services.{n}]", f'tier = "{tier_of[n]}"', 'image = "busybox:1.36"',
                  "listen = [8080, 9090]"]
        if n in published:  # each on its own host port
            lines.append(f'publish = ["{20000 + published.index(n)}:8080"]')
    seen: set[tuple[str, str]] = set()
    for n in names:
        depth = tiers.index(tier_of[n])
        targets = by_tier[tiers[min(depth + 1, 3)]] + by_tier[tier_of[n]]
        for _ in range(flows_per_service):
            dst = rng.choice(targets)
            if dst == n or (n, dst) in seen:
                continue
            seen.add((n, dst))
            lines += ["[[flows]]", f'from = "{n}"', f'to = "{dst}"',
                      f"ports = [{rng.choice([8080, 9090])}]"]
    for n in published:
        lines += ["[[flows]]", 'from = "internet"', f'to = "{n}"', "ports = [8080]"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Run:
    """One finished child process."""

    wall: float
    cpu: float
    rss_mb: float


def run_child(argv: list[str]) -> Run:
    """Wall time, CPU time and peak RSS of one child process (os.wait4 gives its rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if code not in (0, 1):
        raise SystemExit(f"benchmark run failed ({code}): {' '.join(argv)[-300:]}\n{err}")
    return Run(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def castle_argv(*args: str) -> list[str]:
    """castle from this checkout, through its console entry point, in a fresh interpreter."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.argv[0] = 'castle'; "
            "from castle.entry import main; main()")
    return [sys.executable, "-c", code, *args]


def rounds(commands: dict[str, list[str]], n: int,
           before: Callable[[str], None] | None = None) -> dict[str, list[Run]]:
    """Run every command once per round, in turn, for n rounds (after one warm-up round)."""
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for i in range(n + 1):
        for name, argv in commands.items():
            if before:
                before(name)
            r = run_child(argv)
            if i:
                runs[name].append(r)
    return runs


def med(runs: list[Run], what: str) -> float:
    """Median of one measure."""
    return statistics.median(getattr(r, what) for r in runs)


def table(runs: dict[str, list[Run]], peer: dict[str, str], target: dict[str, str]) -> None:
    """Each command's medians and its ratio against its peer, wall and CPU."""
    print(f"  {'command':<44} {'wall ms':>8} {'ratio':>6} {'cpu ms':>7} {'ratio':>6} "
          f"{'MB':>5}  {'against':<22} target")
    for name, rs in runs.items():
        p = peer.get(name)
        wall, cpu = med(rs, "wall"), med(rs, "cpu")
        if p is None:
            ratio_w = ratio_c = "-"
        else:
            ratio_w = f"{wall / med(runs[p], 'wall'):.2f}"
            ratio_c = f"{cpu / med(runs[p], 'cpu'):.2f}"
        print(f"  {name:<44} {wall * 1000:>8.0f} {ratio_w:>6} {cpu * 1000:>7.0f} {ratio_c:>6} "
              f"{med(rs, 'rss_mb'):>5.0f}  {p or '':<22} {target.get(name, '')}")


def startup(tmp: Path, n: int) -> None:
    """The example spec: generate, an unchanged --check, validate, --help against bare imports."""
    spec = tmp / "zones.toml"
    shutil.copy(ROOT / "zones.example.toml", spec)
    out = tmp / "example"
    run_child(castle_argv("generate", str(spec), "-o", str(out)))
    cold = tmp / "cold-cache"

    def before(name: str) -> None:
        if "cold" in name:  # Jinja's bytecode cache lives in TMPDIR: a new one each time
            shutil.rmtree(cold, ignore_errors=True)
            cold.mkdir()

    commands = {
        "bare imports": BARE,
        "castle generate (all targets)": castle_argv("generate", str(spec), "-o", str(out)),
        "castle generate, cold Jinja cache": [
            "env", f"TMPDIR={cold}", *castle_argv("generate", str(spec), "-o", str(out))],
        "castle generate --check (unchanged)": castle_argv("generate", str(spec), "-o",
                                                           str(out), "--check"),
        "castle validate": castle_argv("validate", str(spec)),
        "castle --help": castle_argv("--help"),
    }
    runs = rounds(commands, n, before)
    peer = {k: "bare imports" for k in commands if k != "bare imports"}
    print(f"start-up, example spec ({n} interleaved rounds, medians)")
    table(runs, peer, {"castle generate (all targets)": "<= 1.3",
                       "castle generate, cold Jinja cache": "<= 1.3",
                       "castle generate --check (unchanged)": "a small fraction",
                       "castle validate": "<= 1.2", "castle --help": "<= 1.2"})


def allowed_tuples(spec: Path) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str]],
                                       list[tuple[str, str, str]]]:
    """castle's allowed (src, dst, proto, port), egress (src, proto, port) and ingress
    (dst, proto, port), from the plan: the policy the peers compile too."""
    from castle.plan import compile_plan
    from castle.spec.findings import is_outside
    from castle.spec.load import load
    from castle.targets.iptables import shared

    plan = compile_plan(load(spec))

    def port(lo: int, hi: int) -> str:
        return str(lo) if lo == hi else f"{lo}:{hi}"

    inner = [(str(sa), str(da), c.proto, port(c.lo, c.hi)) for c in plan.internal_conns
             for sa, da in shared(plan, c.src, c.dst)]
    out = [(str(ip), c.proto, port(c.lo, c.hi)) for c in plan.egress
           for ip in plan.service(c.src).addresses]
    into = [(str(ip), c.proto, port(c.lo, c.hi)) for c in plan.ingress if is_outside(c.src)
            for ip in plan.service(c.dst).addresses]
    return inner, out, into


def shorewall_conf(folder: Path, tuples: tuple[list[tuple[str, str, str, str]],
                                              list[tuple[str, str, str]],
                                              list[tuple[str, str, str]]]) -> bool:
    """A Shorewall config of the same tuples plus a capabilities file; False if impossible."""
    inner, out, into = tuples
    folder.mkdir()
    (folder / "shorewall.conf").write_text("STARTUP_ENABLED=Yes\nLOGFILE=/dev/null\n")
    (folder / "zones").write_text("fw firewall\nnet ipv4\nstk ipv4\n")
    (folder / "interfaces").write_text("net eth0\nstk br0\n")
    (folder / "policy").write_text("all all DROP\n")
    (folder / "rules").write_text(
        "".join(f"ACCEPT stk:{s} stk:{d} {p} {n}\n" for s, d, p, n in inner)
        + "".join(f"ACCEPT stk:{s} net {p} {n}\n" for s, p, n in out)
        + "".join(f"ACCEPT net stk:{d} {p} {n}\n" for d, p, n in into))
    # the capabilities file spares the compiler its probing (a faster Shorewall): made in
    # a private network and mount namespace, with this folder as /etc/shorewall
    caps = subprocess.run(
        ["unshare", "--net", "--mount", "sh", "-c",
         f"mount --bind {folder} /etc/shorewall && shorewall show -f capabilities"],
        capture_output=True, text=True, check=False)
    if caps.returncode or "capabilities" not in caps.stdout:
        return False
    (folder / "capabilities").write_text(caps.stdout)
    return True


def ferm_conf(path: Path, tuples: tuple[list[tuple[str, str, str, str]],
                                        list[tuple[str, str, str]],
                                        list[tuple[str, str, str]]]) -> None:
    """A ferm file of the same tuples, in one chain like castle's."""
    inner, out, into = tuples
    rules = [f"  saddr {s} daddr {d} proto {p} dport {n} RETURN;" for s, d, p, n in inner]
    rules += [f"  saddr {s} proto {p} dport {n} RETURN;" for s, p, n in out]
    rules += [f"  daddr {d} proto {p} dport {n} RETURN;" for d, p, n in into]
    path.write_text("table filter chain CASTLE {\n" + "\n".join(rules) + "\n  DROP;\n}\n")


def peers(tmp: Path, services: int, n: int) -> None:
    """castle at 1,000 services against Shorewall and ferm on the same tuples."""
    spec = tmp / f"peers-{services}.toml"
    spec.write_text(synthetic_spec(services))
    tuples = allowed_tuples(spec)
    commands = {
        "castle generate (all targets)": castle_argv("generate", str(spec), "-o",
                                                     str(tmp / "p-all")),
        "castle generate -t iptables": castle_argv("generate", str(spec), "-o",
                                                   str(tmp / "p-ipt"), "-t", "iptables"),
        "castle generate -t iptables -t nftables": castle_argv(
            "generate", str(spec), "-o", str(tmp / "p-fw"), "-t", "iptables", "-t", "nftables"),
    }
    peer = {"castle generate -t iptables": "castle generate (all targets)"}
    notes = []
    if shutil.which("shorewall") and os.geteuid() == 0 and shutil.which("unshare"):
        if shorewall_conf(tmp / "shorewall", tuples):
            commands["shorewall compile -e"] = ["shorewall", "-q", "compile", "-e",
                                                str(tmp / "shorewall"), str(tmp / "sw.out")]
            peer["castle generate -t iptables -t nftables"] = "shorewall compile -e"
        else:
            notes.append("shorewall: no capabilities file could be made - skipped")
    else:
        notes.append("shorewall: not installed or not root - skipped")
    if shutil.which("ferm"):
        ferm_conf(tmp / "castle.ferm", tuples)
        commands["ferm --remote"] = ["ferm", "--remote", str(tmp / "castle.ferm")]
        peer["castle generate -t iptables"] = "ferm --remote"
    else:
        notes.append("ferm: not installed - skipped")
    if "shorewall compile -e" in commands:
        peer["castle generate (all targets)"] = "shorewall compile -e"
    runs = rounds(commands, n)
    flows = synthetic_spec(services).count("[[flows]]")
    print(f"\n{services} services, {flows} flows, {len(tuples[0])} allowed address tuples "
          f"({n} interleaved rounds, medians)")
    table(runs, peer, {"castle generate (all targets)": "< 1 vs peers; < 0.5 s, < 150 MB",
                       "castle generate -t iptables": "< 1 vs ferm"})
    if "ferm --remote" in commands:
        ratio = med(runs["castle generate -t iptables"], "wall") / med(
            runs["castle generate (all targets)"], "wall")
        print(f"  -t iptables against all targets: {ratio:.2f} (target <= 1)")
    for note in notes:
        print(f"  {note}")


def scaling(tmp: Path, sizes: list[int]) -> None:
    """Time and peak memory of all targets per stack size, and the growth between sizes."""
    from castle.plan import clique_cover, compile_plan, cover_lower_bound
    from castle.spec.load import load

    print(f"\nscaling, all targets (one run each)\n  {'services':>8} {'flows':>6} "
          f"{'wall s':>7} {'cpu s':>6} {'peak MB':>8} {'networks':>8} {'/bound':>6} "
          f"{'if/svc':>6}  growth (size -> cpu)")
    prev: tuple[int, Run] | None = None
    for n in sizes:
        spec = tmp / f"scale-{n}.toml"
        text = synthetic_spec(n)
        spec.write_text(text)
        r = run_child(castle_argv("generate", str(spec), "-o", str(tmp / f"scale-{n}")))
        growth = (f"x{n / prev[0]:.0f} -> x{r.cpu / prev[1].cpu:.1f}, memory "
                  f"x{r.rss_mb / prev[1].rss_mb:.1f}" if prev else "")
        # compose networks against a lower bound of the clique cover, from the plan
        plan = compile_plan(load(spec))
        adj: dict[str, set[str]] = {s.name: set() for s in plan.services}
        for c in plan.internal_conns:
            adj[c.src].add(c.dst)
            adj[c.dst].add(c.src)
        cover = len(clique_cover([s.name for s in plan.services], adj))
        ifs = max(len(s.networks) for s in plan.services)
        print(f"  {n:>8} {text.count('[[flows]]'):>6} {r.wall:>7.2f} {r.cpu:>6.2f} "
              f"{r.rss_mb:>8.0f} {len(plan.networks):>8} "
              f"{cover / max(cover_lower_bound(adj), 1):>6.2f} {ifs:>6}  {growth}")
        prev = (n, r)
    print("  targets: 1,000 services < 0.5 s and 150 MB; 10,000 at most ~10x that, < 400 MB")


def main() -> None:
    """Run the benchmarks and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no 10,000")
    parser.add_argument("--runs", type=int, default=0, help="rounds per figure")
    args = parser.parse_args()
    n = args.runs or (5 if args.quick else 11)
    # castle's bytecode, as an installed wheel has it (PYTHONDONTWRITEBYTECODE would
    # otherwise compile every module from source on every run)
    compileall.compile_dir(str(ROOT / "castle"), quiet=1)
    # and its templates precompiled, as the build hook does for a wheel or an editable install
    from castle.io import compiled, render

    compiled.compile_all(render.environment(), ROOT / "templates", ROOT / "castle" / "_jinja")
    compileall.compile_dir(str(ROOT / "castle" / "_jinja"), quiet=1)
    print(f"castle benchmarks on {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}\n")
    with tempfile.TemporaryDirectory(prefix="castle-bench-") as tmp:
        t = Path(tmp)
        startup(t, n)
        peers(t, 1000, max(3, n // 3))
        scaling(t, [100, 1000] if args.quick else [100, 1000, 10000])


if __name__ == "__main__":
    main()
