"""`castle status`: the live host against the spec, on a real Docker Engine.

The host is changed by hand with the kernel's and Docker's own tools (iptables -F,
nft flush chain, docker network disconnect), so each expected difference is known
without asking castle; 0 before and after is the control that status can say "same".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine import Engine, engine_available
from tests.engine_stack import EXAMPLE, FIREWALLS, Stack, apply, prepare, remove, up

ROOT = Path(__file__).resolve().parent.parent


def castle_status(eng: Engine, stack: Stack, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run `castle status` on the engine's host, as an operator on that host would."""
    return eng.host(sys.executable, "-m", "castle", "status", str(stack.spec), "-o",
                    str(stack.out), *extra, check=False, docker_env=True)


def report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON report, after checking the exit code is 0 or 1."""
    assert done.returncode in (0, 1), done.stderr
    doc = json.loads(done.stdout)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def shop(docker_engine: Engine, tmp_path: Path) -> Iterator[Stack]:
    """The example stack up on the engine (no firewall loaded yet)."""
    stack = prepare(EXAMPLE, tmp_path / "shop")
    up(docker_engine, stack)
    yield stack
    docker_engine.down(stack.out, stack.project)


@pytest.mark.engine
@pytest.mark.parametrize("firewall", FIREWALLS)
def test_status_follows_the_host(docker_engine: Engine, shop: Stack, firewall: str) -> None:
    """0 after apply; 1 naming the chain after a flush and the container after a disconnect;
    0 again after the fix."""
    eng = docker_engine
    before = castle_status(eng, shop)
    assert before.returncode == 1  # nothing loaded yet
    assert "neither iptables chain CASTLE-shop nor nftables table inet castle_shop" in (
        before.stdout)

    apply(eng, shop, firewall)
    done = castle_status(eng, shop)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = report(castle_status(eng, shop, "--format", "json"))
    assert doc["ok"] is True and doc["differences"] == []
    assert doc["checked"] == [firewall, "docker"]

    if firewall == "iptables":
        eng.host("iptables", "-F", "CASTLE-shop_IN")
        chain = "chain CASTLE-shop_IN"
    else:
        eng.host("nft", "flush", "chain", "inet", "castle_shop", "to_stack")
        chain = "table inet castle_shop chain to_stack"
    done = castle_status(eng, shop)
    assert done.returncode == 1
    assert chain in done.stdout
    doc = report(castle_status(eng, shop, "--format", "json"))
    assert {d["kind"] for d in doc["differences"]} == {"rule-missing"}
    assert all(d["where"].startswith(chain) for d in doc["differences"])

    app = eng.container("shop", "app")
    name = eng.inspect(app)["Name"]
    assert isinstance(name, str)
    eng.docker("network", "disconnect", "shop_app-db", app)
    doc = report(castle_status(eng, shop, "--format", "json"))
    off = [d for d in doc["differences"] if d["kind"] == "container-off-network"]
    assert off == [{"service": "app", "where": f"container {name.lstrip('/')}",
                    "kind": "container-off-network",
                    "detail": "not on network app-db (planned address 10.89.3.2)"}]
    assert f"service app: container {name.lstrip('/')}: not on network app-db" in (
        castle_status(eng, shop).stdout)

    apply(eng, shop, firewall)
    eng.docker("network", "connect", "--ip", "10.89.3.2", "shop_app-db", app)
    done = castle_status(eng, shop)
    assert done.returncode == 0, done.stdout
    assert "shop: the host is the spec (checked " in done.stdout
    remove(eng, shop, firewall)


@pytest.mark.netns
def test_status_of_a_bare_host(tmp_path: Path) -> None:
    """A host with no castle firewall and no docker daemon: 1, and says what it could not check."""
    reason = engine_available()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}

    def bare_status() -> tuple[int, dict[str, Any]]:
        done = subprocess.run(["unshare", "--net", sys.executable, "-m", "castle", "status",
                               str(EXAMPLE), "-o", str(tmp_path), "--format", "json"],
                              capture_output=True, text=True, env=env, check=False, cwd=ROOT)
        return done.returncode, report(done)

    code, doc = bare_status()
    assert code == 1
    assert [d["kind"] for d in doc["differences"]] == ["firewall-missing"]
    assert doc["checked"] == [] and doc["notes"][0].startswith("docker: not checked")
    prepare(EXAMPLE, tmp_path)  # the generated files in OUT: current, so no difference
    assert [d["kind"] for d in bare_status()[1]["differences"]] == ["firewall-missing"]
    script = tmp_path / "firewall/iptables.sh"
    script.write_text(script.read_text().replace("--dport 5432", "--dport 5433"))
    code, doc = bare_status()
    assert code == 1
    assert [(d["kind"], d["where"]) for d in doc["differences"]] == [
        ("file-stale", "file firewall/iptables.sh"), ("firewall-missing", "firewall")]


def test_status_bad_spec_is_exit_2(tmp_path: Path) -> None:
    """A bad spec is bad input: exit 2, the error located, no traceback."""
    bad = tmp_path / "zones.toml"
    bad.write_text("version = 1\n[stack\n")
    done = subprocess.run([sys.executable, "-m", "castle", "status", str(bad)],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 2
    assert "zones.toml:2" in done.stderr and "Traceback" not in done.stderr
