"""castle benchmarks (DESIGN.md section 7): prints numbers; it never fails on timing.

    python benchmarks/bench.py            # everything
    python benchmarks/bench.py --quick    # skip the 1,000-service and Shorewall runs

Measures, on this machine, side by side:
- `castle generate` of the example (all targets) against a bare
  `python -c "import pydantic, jinja2, yaml, typer"`, in fresh processes (best of N);
- generation time and peak memory for synthetic stacks of 10, 100 and 1,000 services
  (five flows per service), and the growth factor between sizes;
- compose networks against a lower bound of the clique cover, and interfaces per service;
- Shorewall 5 compiling an equivalent zone config, when `shorewall` is installed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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


def run_child(argv: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one child process (os.wait4 gives its own rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"benchmark run failed: {' '.join(argv[-4:])}\n{err}")
    return elapsed, usage.ru_maxrss


def best_of(argv: list[str], n: int) -> float:
    """Fastest of n runs (the least disturbed by a shared machine)."""
    return min(run_child(argv)[0] for _ in range(n))


def castle_argv(*args: str) -> list[str]:
    """Run castle from this checkout in a fresh interpreter."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from castle.cli import main; sys.argv[0] = 'castle'; main()")
    return [sys.executable, "-c", code, *args]


def startup(tmp: Path, runs: int) -> None:
    """castle generate of the example against the bare imports it cannot avoid."""
    bare = best_of([sys.executable, "-c", "import pydantic, jinja2, yaml, typer"], runs)
    gen = best_of(castle_argv("generate", str(ROOT / "zones.example.toml"), "-o",
                              str(tmp / "example")), runs)
    print(f"example, all targets: castle generate {gen * 1000:.0f} ms; bare imports "
          f"{bare * 1000:.0f} ms; ratio {gen / bare:.2f} (target <= 1.3)")


def scaling(tmp: Path, sizes: list[int]) -> None:
    """Time, memory and network counts per stack size."""
    from castle.plan import clique_cover, compile_plan, cover_lower_bound
    from castle.spec.load import load

    print(f"{'services':>8} {'flows':>6} {'conns':>6} {'time s':>7} {'peak MB':>8} "
          f"{'networks':>8} {'bound':>6} {'ratio':>5} {'if/svc max':>10} {'avg':>5}")
    prev: tuple[int, float] | None = None
    for n in sizes:
        spec = tmp / f"bench-{n}.toml"
        spec.write_text(synthetic_spec(n))
        out = tmp / f"out-{n}"
        elapsed, rss = run_child(castle_argv("generate", str(spec), "-o", str(out)))
        # network statistics from the plan (the same numbers compose.yaml shows)
        loaded = load(spec)
        plan = compile_plan(loaded)
        adj: dict[str, set[str]] = {s.name: set() for s in plan.services}
        for c in plan.internal_conns:
            adj[c.src].add(c.dst)
            adj[c.dst].add(c.src)
        cover = clique_cover([s.name for s in plan.services], adj)
        bound = cover_lower_bound(adj)
        per = [len(s.networks) for s in plan.services]
        print(f"{n:>8} {len(plan.spec.flows):>6} {len(plan.conns):>6} {elapsed:>7.2f} "
              f"{rss / 1024:>8.0f} {len(plan.networks):>8} {bound:>6} "
              f"{len(cover) / max(bound, 1):>5.2f} {max(per):>10} {statistics.mean(per):>5.1f}")
        if prev:
            print(f"{'':>8} growth x{n / prev[0]:.0f} in size -> x{elapsed / prev[1]:.1f} in time")
        prev = (n, elapsed)


def shorewall(tmp: Path, services: int) -> None:
    """Shorewall 5 compiling an equivalent zone config (one zone per tier), if installed."""
    exe = shutil.which("shorewall")
    if exe is None:
        print("shorewall: not installed (apt-get install shorewall) - comparison skipped")
        return
    if os.geteuid() != 0:
        print("shorewall: needs root to probe capabilities - comparison skipped")
        return
    conf = tmp / "shorewall"
    conf.mkdir(exist_ok=True)
    tiers = ["edge", "front", "logic", "data"]
    (conf / "shorewall.conf").write_text("STARTUP_ENABLED=Yes\n")
    (conf / "zones").write_text("fw firewall\nnet ipv4\n" + "".join(f"{t} ipv4\n" for t in tiers))
    (conf / "interfaces").write_text("net eth0\n" + "".join(
        f"{t} br{i}\n" for i, t in enumerate(tiers)))
    (conf / "policy").write_text("all all DROP\n")
    rng = random.Random(7)
    rules = []
    for i in range(services * 5):
        a, b = rng.choice(tiers), rng.choice(tiers)
        rules.append(f"ACCEPT {a}:10.64.{i // 250}.{i % 250 + 1} {b}:10.65.{i // 250}."
                     f"{i % 250 + 1} tcp 8080\n")
    (conf / "rules").write_text("".join(rules))
    start = time.perf_counter()
    proc = subprocess.run(["unshare", "--net", exe, "-q", "compile", str(conf),
                           str(tmp / "shorewall.out")], capture_output=True, text=True,
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"shorewall: compile failed ({proc.stderr.strip()[:200]}) - comparison skipped")
        return
    print(f"shorewall compile, {services * 5} rules: {elapsed:.2f} s")


def main() -> None:
    """Run the benchmarks and print their numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="castle-bench-") as tmp:
        t = Path(tmp)
        startup(t, 3 if args.quick else 7)
        scaling(t, [10, 100] if args.quick else [10, 100, 1000])
        if not args.quick:
            shorewall(t, 100)
            start = time.perf_counter()
            subprocess.run(castle_argv("generate", str(t / "bench-100.toml"), "-o",
                                       str(t / "again")), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"castle generate, 100 services / ~500 flows: "
                  f"{time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
