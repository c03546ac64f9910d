"""What the wall rules report: findings at a field path, expanded edges, peer names, hints."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import NamedTuple

from castle.spec.values import PortRange, PublishEntry

INTERNET = "internet"
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Finding:
    """A rule broken (error) or a smell (warning), at a field path of the spec."""

    severity: str
    loc: Loc
    message: str
    hint: str = ""


class Edge(NamedTuple):
    """One expanded (source, destination) of a flow with the port ranges it opens."""

    # a named tuple: a big spec makes one per flow, and a frozen dataclass took twice as
    # long to make
    flow: int
    src: str
    dst: str
    ports: tuple[PortRange, ...]


def is_outside(peer: str) -> bool:
    """True for `internet` and `cidr:` peers: anything not a service of the stack."""
    return peer == INTERNET or peer.startswith("cidr:")


def where(loc: Loc) -> str:
    """Render a field path as flows[2].to."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # a key TOML must quote is shown quoted: services."a b", not services.a b
        name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
        out += f".{name}" if out else name
    return out


def written(entry: PublishEntry) -> str:
    """A publish entry quoted as the user wrote it: "8443:443"."""
    return f'"{entry.text or entry}"'


def toml_endpoints(endpoints: list[str]) -> str:
    """A flow's from or to as TOML: "web", or ["web", "tier:data"] for several."""
    quoted = [f'"{e}"' for e in endpoints]
    return quoted[0] if len(quoted) == 1 else f"[{', '.join(quoted)}]"


def closest(name: str, candidates: list[str], prefix: str = "") -> str:
    """A "did you mean" hint for an unknown name, or an empty string."""
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return f"did you mean '{prefix}{match[0]}'?" if match else ""
