"""Drop logging ([firewall] log_drops): the log prefixes and rate limits both firewalls use.

A prefix names the stack and the service: `castle/<stack>/<service> ` for a packet to the
service that no flow allows, `castle/<stack>/<service>/out ` for one the service sends where
no flow allows. iptables' LOG and NFLOG keep at most 29 characters, so a stack or service
name longer than 8 characters becomes its first 3 characters, `~` and 4 characters of its
hash (names never hold `~`, so a shortened name never equals a real one); both firewalls use
the same prefix, so one grep finds a drop whichever is loaded.
"""

from __future__ import annotations

import base64
import hashlib

from castle.errors import CastleError
from castle.io.render import nft_string, quoted_comment
from castle.plan import Plan

MAX_PREFIX = 29  # iptables LOG --log-prefix and NFLOG --nflog-prefix limit
BURST = 5


def short(name: str) -> str:
    """The name itself when it has at most 8 characters, else abc~hash (8 characters)."""
    if len(name) <= 8:
        return name
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:4].lower()
    return f"{name[:3]}~{digest}"


def prefix(stack: str, service: str, out: bool = False) -> str:
    """The log prefix of drops to (or, with `out`, from) a service."""
    text = f"castle/{short(stack)}/{short(service)}{'/out' if out else ''} "
    if len(text) > MAX_PREFIX:  # cannot happen with 8-character parts; keep the limit honest
        raise CastleError(f"log prefix {text!r} is longer than {MAX_PREFIX} characters")
    return text


def prefixes(plan: Plan) -> dict[str, str]:
    """Service -> its inbound prefix; raises when two shortened service names meet."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for svc in plan.services:
        p = prefix(plan.stack, svc.name)
        if p in seen:
            raise CastleError(f"[firewall] log_drops: services {seen[p]!r} and {svc.name!r} "
                              f"share the log prefix {p.strip()!r}; rename one")
        seen[p] = svc.name
        out[svc.name] = p
    return out


def rate(plan: Plan) -> tuple[str, str]:
    """(rate, unit) of [firewall] log_rate, e.g. ('10', 'minute')."""
    n, _, unit = plan.spec.firewall.log_rate.partition("/")
    return n, unit


def iptables_target(plan: Plan, text: str) -> str:
    """The rate-limited LOG (or NFLOG) rule body for one prefix."""
    fw = plan.spec.firewall
    n, unit = rate(plan)
    limit = f"-m limit --limit {n}/{unit} --limit-burst {BURST}"
    if fw.log_group is not None:
        return (f"{limit} -j NFLOG --nflog-group {fw.log_group} "
                f"--nflog-prefix {quoted_comment(text, MAX_PREFIX)}")
    return f"{limit} -j LOG --log-prefix {quoted_comment(text, MAX_PREFIX)} --log-level 4"


def nft_statement(plan: Plan, text: str) -> str:
    """The rate-limited nft log statement for one prefix."""
    fw = plan.spec.firewall
    n, unit = rate(plan)
    group = f" group {fw.log_group}" if fw.log_group is not None else " level warn"
    return f"limit rate {n}/{unit} burst {BURST} packets log prefix {nft_string(text)}{group}"
