"""Compose port syntax: `expose` and `ports` entries as port ranges and host-to-container maps."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from castle.errors import UsageError
from castle.spec.values import PortRange


@dataclass(frozen=True, order=True)
class PortMap:
    """One published container port: host bind address, host port (None = ephemeral)."""

    container: int
    proto: str
    host_ip: str
    host: int | None

    @property
    def loopback(self) -> bool:
        """True when only the host itself can reach it (127.0.0.0/8 or ::1)."""
        try:
            return ipaddress.ip_address(self.host_ip).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        ip = self.host_ip or "0.0.0.0"
        ip = f"[{ip}]" if ":" in ip else ip
        host = "ephemeral" if self.host is None else str(self.host)
        return f"{ip}:{host}->{self.container}/{self.proto}"


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def parse_expose(item: Any) -> PortRange:
    """An `expose` entry ("80", 80, "90-91/udp") as a PortRange; UsageError when malformed."""
    text, _, proto = str(item).partition("/")
    try:
        lo, hi = _range(text.strip())
    except ValueError:
        raise UsageError(f"`expose: {item}` is not a port") from None
    return PortRange((proto or "tcp").lower(), lo, hi)


def parse_ports(item: Any) -> set[PortMap]:
    """Every published container port of one `ports` entry (short or long syntax)."""
    try:
        if isinstance(item, Mapping):
            published = item.get("published")
            host = None if published in (None, "") else str(published)
            proto = str(item.get("protocol") or "tcp").lower()
            return _expand(str(item.get("host_ip") or ""), host, str(item["target"]), proto)
        if isinstance(item, int):
            return _expand("", None, str(item), "tcp")
        text, _, proto = str(item).partition("/")
        ip = ""
        if text.startswith("["):  # [IPv6]:host:container
            ip, _, text = text[1:].partition("]:")
        elif text.count(":") == 2:
            ip, _, text = text.partition(":")
        elif text.count(":") > 2:  # unbracketed IPv6 address
            parts = text.split(":")
            ip, text = ":".join(parts[:-2]), ":".join(parts[-2:])
        host, _, container = text.rpartition(":")
        return _expand(ip, host or None, container, (proto or "tcp").lower())
    except (KeyError, ValueError):
        raise UsageError(f"`ports: {item}` is not a port mapping") from None


def _expand(ip: str, host: str | None, container: str, proto: str) -> set[PortMap]:
    if ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:  # `localhost`, a typo: compose refuses the file too
            raise UsageError(f"host address {ip!r} is not an IP address") from None
    clo, chi = _range(container)
    if host is None:
        return {PortMap(c, proto, ip, None) for c in range(clo, chi + 1)}
    hlo, hhi = _range(host)
    if clo == chi:  # a host range for one container port: compose picks one of them
        return {PortMap(clo, proto, ip, hlo)}
    return {PortMap(c, proto, ip, hlo + i) for i, c in enumerate(range(clo, chi + 1))}


def merge_ports(singles: set[tuple[str, int]]) -> list[PortRange]:
    """(proto, port) pairs as sorted, merged ranges."""
    out: list[PortRange] = []
    for proto, port in sorted(singles):
        if out and out[-1].proto == proto and out[-1].hi + 1 == port:
            out[-1] = PortRange(proto, out[-1].lo, port)
        else:
            out.append(PortRange(proto, port, port))
    return out
