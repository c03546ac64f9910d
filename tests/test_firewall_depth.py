"""iptables.sh loads on the nf_tables backend at every size: the kernel's jump-depth limit.

nf_tables refuses a ruleset whose longest chain of jumps and gotos, from a base chain, is
deeper than 16 chains ("Too many links"). The oracles: a depth count read from the script's
own text (independent of castle's tree builder) and the real kernel loading the script with
iptables-nft inside a throwaway network namespace. The negative control builds the binary
tree castle used before (one address bit a level) and shows both oracles reject it.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.bench import synthetic_spec
from castle.lab.netns import netns_available
from castle.targets import iptables
from castle.targets.generate import generate

NFT_LIMIT = 16  # chains on one jump path, the base chain included (NFT_JUMP_STACK_SIZE)
ABOVE = ("FORWARD", "DOCKER-USER")  # the chains above castle's own on the hooked path


def longest_path(script: str) -> int:
    """Chains on the longest jump/goto path of a script, FORWARD and DOCKER-USER included."""
    edges: dict[str, set[str]] = {}
    for line in script.splitlines():
        m = re.match(r"-A (\S+) .*-[jg] (\S+)\s*$", line)
        if m:
            edges.setdefault(m[1], set()).add(m[2])
    hooked = re.search(r"^-A DOCKER-USER -j (\S+)$|hook_add DOCKER-USER '?([^' \n]+)", script,
                       re.M)
    assert hooked, "the script hooks no chain into DOCKER-USER"
    main = hooked[1] or hooked[2]

    @functools.cache
    def chains_below(chain: str) -> int:
        # verdicts (RETURN, DROP) are targets too, but no chain of the script
        return 1 + max((chains_below(t) for t in edges.get(chain, ()) if t in edges),
                       default=0)

    return len(ABOVE) + chains_below(main)


def nft_load(script: Path) -> subprocess.CompletedProcess[str]:
    """Apply the script with the nf_tables backend in a new network namespace."""
    return subprocess.run(
        ["unshare", "--net", "sh", "-c",
         "IPTABLES_RESTORE=iptables-nft-restore IPTABLES_SAVE=iptables-nft-save sh \"$0\"",
         str(script)], capture_output=True, text=True, check=False)


def generated(tmp_path: Path, services: int) -> Path:
    """iptables.sh of a synthetic stack (about five flows per service)."""
    spec = tmp_path / "zones.toml"
    spec.write_text(synthetic_spec(services))
    generate(spec, tmp_path / "out", targets=["iptables"])
    return tmp_path / "out/firewall/iptables.sh"


def need_nft_backend() -> None:
    """Skip without root and namespaces, or without iptables-nft."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("iptables-nft-restore") is None:
        pytest.skip("iptables-nft-restore is not installed")


@pytest.mark.parametrize("services", [10, 100, 1000])
def test_depth_fits_the_kernel_limit(services: int, tmp_path: Path) -> None:
    """Read from the script itself, the longest jump path stays within 16 chains."""
    depth = longest_path(generated(tmp_path, services).read_text())
    assert 4 <= depth <= NFT_LIMIT


def test_every_pool_width_fits() -> None:
    """Whatever the prefix the stack's addresses span, the tree is at most MAX_TREE deep."""
    for plen in range(0, 29):
        lo = 0x0A000000 >> (32 - plen) << (32 - plen) if plen else 0
        hi = lo + (1 << (32 - plen)) - 1
        bits = iptables.stride([(lo, None, ""), (hi, None, "")])  # type: ignore[list-item]
        assert (28 - plen) // bits + 2 <= iptables.MAX_TREE


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("services", [3000, 10000])
def test_loads_on_nf_tables(services: int, tmp_path: Path) -> None:
    """The real kernel (iptables-nft) accepts iptables.sh of 3,000 and 10,000 services."""
    need_nft_backend()
    script = generated(tmp_path, services)
    assert longest_path(script.read_text()) <= NFT_LIMIT
    done = nft_load(script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "applied" in done.stderr


@pytest.mark.netns
@pytest.mark.slow
def test_a_binary_tree_is_too_deep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: one address bit a level (castle's old tree) breaks both oracles."""
    need_nft_backend()
    monkeypatch.setattr(iptables, "stride", lambda items: 1)
    script = generated(tmp_path, 3000)
    assert longest_path(script.read_text()) > NFT_LIMIT
    done = nft_load(script)
    assert done.returncode != 0
    assert "Too many links" in done.stderr
