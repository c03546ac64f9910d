"""Address pools: a default that differs per stack, and a check that stacks beside each other
do not overlap (Docker refuses a second network in an address range already in use)."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from castle.errors import Diagnostic
from castle.spec import toml_lines

# 128 /16 pools in 10.128.0.0/9: clear of Docker's own default pools (172.17-31, 192.168)
_BASE = ipaddress.IPv4Network("10.128.0.0/9")
_POOLS = 128


def default_pool(stack: str) -> ipaddress.IPv4Network:
    """The default subnet_pool of a stack: a /16 chosen by a hash of its name, so two stacks
    with default settings run side by side on one host (unless their names collide in 128)."""
    k = int.from_bytes(hashlib.sha256(stack.encode()).digest()[:4], "big") % _POOLS
    return ipaddress.IPv4Network((int(_BASE.network_address) + (k << 16), 16))


def _pool_of(path: Path) -> tuple[str, ipaddress.IPv4Network] | None:
    """(stack name, pool) of a spec file, None when it is not one that reads."""
    try:
        text = path.read_text(encoding="utf-8")
        plain = toml_lines.read(text)
        if plain is None:
            import tomllib

            doc = tomllib.loads(text)
        else:
            doc = plain[0]
        stack = doc["stack"]
        name = str(stack["name"])
        pool = stack.get("subnet_pool")
        return name, ipaddress.IPv4Network(pool) if pool else default_pool(name)
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError,  # TOML's too
            RecursionError):  # tomllib recurses per nesting level
        return None


def neighbours(spec: Path, name: str, pool: ipaddress.IPv4Network) -> list[Diagnostic]:
    """Warnings for the other specs in the spec's folder whose pool overlaps this one."""
    out = []
    for other in sorted(spec.parent.glob("*.toml")):
        if other.resolve() == spec.resolve():
            continue
        seen = _pool_of(other)
        if seen is None or seen[0] == name or not seen[1].overlaps(pool):
            continue
        out.append(Diagnostic(str(spec), 1, None, "warning", "stack.subnet_pool",
                              f"{pool} overlaps {seen[1]} of stack {seen[0]!r} ({other.name}): "
                              "the two cannot run on one host",
                              "give one of them another subnet_pool"))
    return out
