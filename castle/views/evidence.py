"""Who calls whom in a compose stack: host names and URLs in environment, command and config."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Environment keys whose value names a host to call.
_HOST_KEY = re.compile(r"(HOST|ADDR|SERVER|URL|URI|ENDPOINT|UPSTREAM|BROKER|DSN|BACKEND|PROXY)",
                       re.IGNORECASE)
# proxy and client configs that name a host without a port or scheme: `server db;`
_DIRECTIVE = re.compile(r"\b(?:server|proxy_pass|upstream|host)\s+([A-Za-z0-9_.-]+)")
_MAX_FILE = 256 * 1024
_MAX_FILES = 200  # per service, in mounted folders


@dataclass
class Evidence:
    """Calls seen from one service to others: destination -> ports named (may be empty)."""

    calls: dict[str, set[int]] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)  # destination -> where it was seen

    def add(self, dst: str, port: int | None, why: str) -> None:
        """Record one sign that this service calls `dst` (on `port` when one was written)."""
        ports = self.calls.setdefault(dst, set())
        if port is not None and 1 <= port <= 65535:
            ports.add(port)
        self.why.setdefault(dst, why)


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a compose value (lists, mappings, scalars)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            yield str(item)


def _env_pairs(env: Any) -> Iterable[tuple[str, str]]:
    if isinstance(env, Mapping):
        for k, v in env.items():
            if v is not None:
                yield str(k), str(v)
    elif isinstance(env, list):
        for item in env:
            k, _, v = str(item).partition("=")
            yield k, v


def _bare_keys(env: Any) -> list[str]:
    """Entries without a value: compose passes the host's value of that name through."""
    if isinstance(env, Mapping):
        return [str(k) for k, v in env.items() if v is None]
    if isinstance(env, list):
        return [str(x) for x in env if isinstance(x, str) and "=" not in x]
    return []


def _read_env_file(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in _read(path).splitlines():
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)$", line)
        if m:
            pairs.append((m.group(1), m.group(2).strip().strip("'\"")))
    return pairs


def _read(path: Path) -> str:
    try:
        if not path.is_file() or path.stat().st_size > _MAX_FILE:
            return ""
        data = path.read_bytes()
    except OSError:
        return ""
    return "" if b"\0" in data else data.decode("utf-8", errors="replace")


def _mounted_texts(svc: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(file name, text) of the bind-mounted files and configs a service reads (a proxy's
    nginx.conf, an app's settings file), small text files only."""
    sources: list[str] = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, Mapping) and vol.get("type") == "bind":
            sources.append(str(vol.get("source") or ""))
    for src in sources:
        p = Path(src)
        if not p.is_absolute():
            continue
        if p.is_dir():
            try:
                files = sorted(f for f in p.rglob("*") if f.is_file())[:_MAX_FILES]
            except OSError:
                files = []
        else:
            files = [p]
        for f in files:
            text = _read(f)
            if text:
                yield f.name, text


def _pattern(names: Iterable[str]) -> re.Pattern[str]:
    alts = "|".join(re.escape(n) for n in sorted(set(names), key=lambda n: (-len(n), n)))
    # a host name: not inside a longer name or a path, optionally followed by :PORT
    return re.compile(rf"(?<![A-Za-z0-9_.\-/])({alts})(?::([0-9]{{1,5}}))?"
                      r"(?![A-Za-z0-9_\-]|\.[A-Za-z])")


def _calls_in(text: str, pat: re.Pattern[str], strict: bool) -> Iterable[tuple[str, int | None]]:
    """Host names in a text: in strict mode only as URLs (scheme://, user@) or NAME:PORT."""
    for m in pat.finditer(text):
        port = int(m.group(2)) if m.group(2) else None
        before = text[max(0, m.start() - 3):m.start()]
        if not strict or port is not None or before.endswith(("://", "@")):
            yield m.group(1), port


def gather(services: Mapping[str, Mapping[str, Any]], written: Mapping[str, Mapping[str, Any]],
           hostnames: Mapping[str, set[str]],
           host_env: Mapping[str, str] | None = None) -> dict[str, Evidence]:
    """Evidence of calls between services.

    `services` is the interpolated model (what containers see), `written` the same
    services as merged without interpolation (absolute paths), `hostnames` maps each
    service to every name it answers to (service name, container_name, hostname, aliases),
    `host_env` is what compose fills value-less entries (`- VAR`) from (shell and .env).
    """
    host_env = host_env or {}
    owner = {h: s for s, names in hostnames.items() for h in names}
    out: dict[str, Evidence] = {}
    if not owner:
        return out
    pat = _pattern(owner)
    for name, svc in services.items():
        ev = out.setdefault(name, Evidence())
        raw = written.get(name) or {}

        def note(text: str, why: str, strict: bool, ev: Evidence = ev, me: str = name) -> None:
            for host, port in _calls_in(text, pat, strict):
                dst = owner[host]
                if dst != me:
                    ev.add(dst, port, why)

        env = list(_env_pairs(svc.get("environment")))
        env += [(k, host_env[k]) for k in _bare_keys(raw.get("environment")) if k in host_env]
        for item in raw.get("env_file") or []:
            path = item.get("path") if isinstance(item, Mapping) else item
            if isinstance(path, str):
                env += _read_env_file(Path(path))
        for key, value in env:
            note(value, f"environment {key}", strict=not _HOST_KEY.search(key))
        for key in ("command", "entrypoint"):
            for text in _strings(svc.get(key)):
                note(text, key, strict=True)
        for fname, text in _mounted_texts(raw):
            note(text, f"mounted file {fname}", strict=True)
            for m in _DIRECTIVE.finditer(text):
                if m.group(1) in owner and owner[m.group(1)] != name:
                    ev.add(owner[m.group(1)], None, f"mounted file {fname}")
    return out


def named_volumes(svc: Mapping[str, Any]) -> set[str]:
    """The named volumes a service mounts (short or long syntax)."""
    names = set()
    for vol in svc.get("volumes") or []:
        if isinstance(vol, Mapping):
            source = vol.get("source") if vol.get("type") == "volume" else None
        else:
            head, sep, _ = str(vol).partition(":")
            source = head if sep and not head.startswith((".", "/", "~", "$")) else None
        if isinstance(source, str) and source:
            names.add(source)
    return names


def share_volumes(found: dict[str, Evidence], written: Mapping[str, Mapping[str, Any]]) -> None:
    """A service that shares a named volume with one whose configuration names hosts may
    read the configuration it writes there (a setup job writing the app's settings): it
    gets those calls too."""
    mounts = {name: named_volumes(svc) for name, svc in written.items()}
    seen = {name: (dict(ev.calls), dict(ev.why)) for name, ev in found.items()}
    for a, vols in sorted(mounts.items()):
        for b, others in sorted(mounts.items()):
            common = sorted(vols & others)
            if a == b or not common or b not in seen:
                continue
            calls, _ = seen[b]
            for dst, ports in sorted(calls.items()):
                if dst == a:
                    continue
                ev = found.setdefault(a, Evidence())
                why = f"configuration {b!r} writes to volume {common[0]!r}"
                ev.add(dst, None, why)
                for port in sorted(ports):
                    ev.add(dst, port, why)
