"""Benchmark: rule counts and load times of iptables.sh and castle.nft for 100 and 1,000 services.

Prints numbers; asserts nothing. Loading runs inside `unshare --net` (root only), so the
machine's own ruleset is never touched; without root only generation is measured.
Run: python benchmarks/firewall.py [SIZES...]
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from castle.targets import iptables  # noqa: E402
from castle.targets.generate import generate  # noqa: E402  (after the path is set)


def synthetic(n: int, seed: int = 1) -> str:
    """A spec of n services: 10% edge, 70% app, 20% data, about 4 flows per service."""
    rnd = random.Random(seed)
    edge = [f"e{i}" for i in range(max(1, n // 10))]
    data = [f"d{i}" for i in range(max(1, n // 5))]
    app = [f"a{i}" for i in range(n - len(edge) - len(data))]
    out = ["version = 1", f'[stack]\nname = "bench{n}"\nsubnet_pool = "10.64.0.0/10"']
    out += [f'[[tiers]]\nname = "{t}"' for t in ("edge", "app", "data")]
    for tier, names, port in (("edge", edge, 443), ("app", app, 8000), ("data", data, 5432)):
        for i, s in enumerate(names):
            pub = f'\npublish = ["{10000 + i}:443"]' if tier == "edge" else ""
            out.append(f'[services.{s}]\ntier = "{tier}"\nimage = "x:1"\n'
                       f'listen = [{port}, "{port + 1}/udp"]{pub}')
    flows = [f'[[flows]]\nfrom = "internet"\nto = "{e}"\nports = [443]' for e in edge]
    for a in app:
        flows.append(f'[[flows]]\nfrom = "{rnd.choice(edge)}"\nto = "{a}"')
        flows.append(f'[[flows]]\nfrom = "{a}"\nto = "{rnd.choice(data)}"\nports = [5432]')
        if rnd.random() < 0.1:
            flows.append(f'[[flows]]\nfrom = "{a}"\nto = "internet"\nports = [443]')
    for d in data:
        flows.append(f'[[flows]]\nfrom = "{rnd.choice(app)}"\nto = "{d}"\nports = ["5433/udp"]')
    return "\n\n".join(out + flows) + "\n"


def load_time(argv: str) -> float | None:
    """Seconds to run a shell command in a fresh network namespace, or None without root."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    t = time.perf_counter()
    done = subprocess.run(["unshare", "--net", "sh", "-c", argv], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise SystemExit(f"loading failed: {done.stderr.strip()[:500]}")
    return time.perf_counter() - t


def walk_bound(text: str) -> int:
    """Longest rule walk through the iptables dispatch tree to a destination's chain."""
    rules: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("-A "):
            chain = line.split()[1]
            rules.setdefault(chain, []).append(line)
    tree = {c for c in rules if re.search(r"_T\d+$", c)}

    def walk(chain: str) -> int:
        subs = [re.search(r"-g (\S+)", x) for x in rules[chain]]
        deeper = [walk(m.group(1)) for m in subs if m and m.group(1) in tree]
        return len(rules[chain]) + max(deeper, default=0)

    root = next(c for c in tree if c.endswith("_T0"))
    return walk(root) + 3  # + the main chain's reply, dispatch and egress rules


def main(sizes: list[int]) -> None:
    print(f"{'services':>8} {'flows':>6} {'gen s':>6} | {'ipt rules':>9} {'chains':>6} "
          f"{'walk<=':>6} {'load s':>7} | {'nft elems':>9} {'rules':>5} {'load s':>7}")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="castle-bench-") as tmp:
            spec = Path(tmp) / "zones.toml"
            spec.write_text(synthetic(n))
            t = time.perf_counter()
            result = generate(spec, Path(tmp) / "out", targets=["iptables", "nftables"])
            gen = time.perf_counter() - t
            ipt = Path(tmp) / "out/firewall/iptables.sh"
            nft = Path(tmp) / "out/firewall/castle.nft"
            rs = iptables.host_ruleset(result.plan)
            text = nft.read_text()
            elems = len(re.findall(r" comment \"castle: ", text))
            nft_rules = len([x for x in text.splitlines() if re.match(
                r"\t\t(ct |ip |iif |tcp |drop)", x)])
            ipt_load = load_time(f"sh {ipt} 2>/dev/null")
            nft_load = load_time(f"nft -f {nft}")

            def fmt(v: float | None) -> str:
                return f"{v:7.3f}" if v is not None else "  (root)"

            print(f"{n:>8} {len(result.plan.spec.flows):>6} {gen:6.2f} | {len(rs.rules):>9} "
                  f"{len(rs.chains):>6} {walk_bound(ipt.read_text()):>6} {fmt(ipt_load)} | "
                  f"{elems:>9} {nft_rules:>5} {fmt(nft_load)}")
    print("walk<=: most rules an iptables packet meets before its destination's own rules;"
          " nftables: a fixed handful of set lookups at any size")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000])
