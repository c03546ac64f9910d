"""Who calls whom in a compose stack: host names and URLs in environment, command and config."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Environment keys whose value names a host to call.
# A word at the end of a part of the key: DB_HOST, DATABASE_URL, BOOTSTRAP_SERVERS_CONFIG,
# not SECURITY (a URI inside a word) nor NO_PROXY (hosts not to call through a proxy).
_HOST_KEY = re.compile(r"(?<!NO_)(HOST|HOSTNAME|ADDR|ADDRESS|SERVER|URL|URI|ENDPOINT|UPSTREAM|"
                       r"BROKER|DSN|BACKEND|PROXY)S?(?:_|$)", re.IGNORECASE)
# `DB_HOST=db` beside `DB_PORT=5433`: the port of that host
_PORT_KEY = re.compile(r"^(.*?)_?(?:HOST|HOSTNAME|ADDR|ADDRESS|SERVER)$", re.IGNORECASE)
# proxy and client configs that name a host without a port or scheme: `server db;`
_DIRECTIVE = re.compile(r"\b(?:server|proxy_pass|upstream|host|reverse_proxy|to)\s+"
                        r"([A-Za-z0-9_.-]+)")
# a reverse proxy's labels on the services it routes to (traefik, caddy-docker-proxy)
_LABEL_PORT = re.compile(r"^traefik\.(?:http|tcp|udp)\.services\.[^.]+\.loadbalancer\.server"
                         r"\.port$")
_CADDY_UPSTREAM = re.compile(r"\{\{\s*upstreams(?:\s+(?:https?\s+)?([0-9]{1,5}))?\s*\}\}")
LABEL_PROXIES = ("traefik", "caddy-docker-proxy")
_MAX_FILE = 256 * 1024
_MAX_FILES = 200  # per service, in mounted folders
# In a mounted folder (often the project's whole source tree) only configuration files
# count; a compose file names every service and image (`image: redis:7` is no call).
_CONFIG_SUFFIXES = (".conf", ".cfg", ".cnf", ".ini", ".yml", ".yaml", ".json", ".toml",
                    ".env", ".properties", ".xml", ".template", ".tmpl", ".caddy", ".lua")
_CONFIG_NAMES = ("Caddyfile", ".env", "nginx.conf", "haproxy.cfg")
_SKIP_DIRS = ("node_modules", "vendor", "__pycache__", "venv", "site-packages")
_MAX_SEEN = 20000  # files looked at per mounted folder
_COMPOSE_FILE = re.compile(r"^(docker-)?compose([.-].*)?\.ya?ml$")


@dataclass
class Evidence:
    """Calls seen from one service to others: destination -> ports named (may be empty)."""

    calls: dict[str, set[int]] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)  # destination -> where it was seen
    serves: set[int] = field(default_factory=set)  # ports it names for itself (its own URL)
    names_self: bool = False  # its configuration names its own host: it is configured here

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
    return _env_text(_read(path))


def _env_text(text: str) -> list[tuple[str, str]]:
    """KEY=value lines of an env file."""
    pairs = []
    for line in text.splitlines():
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


def _config_files(folder: Path) -> list[Path]:
    """Config files in a mounted folder, a bounded walk: dependency and hidden folders
    (node_modules, .git) are not configuration."""
    found: list[Path] = []
    seen = 0
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        seen += len(files)
        found += [Path(top, f) for f in sorted(files)
                  if Path(f).suffix in _CONFIG_SUFFIXES or f in _CONFIG_NAMES]
        if seen > _MAX_SEEN or len(found) >= _MAX_FILES:
            break
    return sorted(found)[:_MAX_FILES]


def _mounted_texts(svc: Mapping[str, Any], root: Path | None,
                   config_files: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    """(file name, text) of the bind-mounted files and configs a service reads (a proxy's
    nginx.conf, an app's settings file): small text files inside the project's folder only
    (a bind of the host's /etc or of the engine's socket says nothing about this stack)."""
    sources: list[str] = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, Mapping):
            if vol.get("type") == "bind":
                sources.append(str(vol.get("source") or ""))
        elif isinstance(vol, str) and vol.startswith((".", "/")) and ":" in vol:
            sources.append(vol.split(":", 1)[0])
    for cfg in svc.get("configs") or []:
        name = cfg.get("source") if isinstance(cfg, Mapping) else cfg
        if isinstance(name, str) and name in config_files:
            sources.append(config_files[name])
    for src in sources:
        p = Path(src) if root is None else root / src  # an absolute src stays itself
        try:
            inside = root is None or p.resolve().is_relative_to(root)
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if not p.is_absolute() or not inside:
            continue
        for f in _config_files(p) if p.is_dir() else [p]:
            if _COMPOSE_FILE.match(f.name):
                continue
            text = _read(f)
            if text:
                yield f.name, text


def _labels(services: Mapping[str, Mapping[str, Any]],
            images: Mapping[str, str]) -> Iterable[tuple[str, str, int | None, str]]:
    """(proxy, routed service, port, why) from the labels a label-driven reverse proxy reads:
    `traefik.enable=true` or a traefik router/service label, a caddy-docker-proxy
    `{{upstreams PORT}}`. The proxy is every service running that proxy's image."""
    proxies = {kind: sorted(n for n, img in images.items() if img == kind)
               for kind in LABEL_PROXIES}
    for name, svc in sorted(services.items()):
        labels = dict(_env_pairs(svc.get("labels")))
        routed: dict[str, tuple[int | None, str]] = {}
        for key, value in sorted(labels.items()):
            if key.startswith("traefik.") and key != "traefik.enable" or (
                    key == "traefik.enable" and value.strip().lower() == "true"):
                port = int(value) if _LABEL_PORT.match(key) and value.strip().isdigit() else None
                if port is not None or "traefik" not in routed:
                    routed["traefik"] = (port, f"label {key}")
            m = _CADDY_UPSTREAM.search(value) if key.startswith("caddy") else None
            if m:
                routed["caddy-docker-proxy"] = (int(m.group(1)) if m.group(1) else None,
                                                f"label {key}")
        if labels.get("traefik.enable", "").strip().lower() == "false":
            routed.pop("traefik", None)
        for kind, (port, why) in sorted(routed.items()):
            for proxy in proxies[kind]:
                if proxy != name:
                    yield proxy, name, port, f"{why} of {name!r}"


def _pattern(names: Iterable[str]) -> re.Pattern[str]:
    alts = "|".join(re.escape(n) for n in sorted(set(names), key=lambda n: (-len(n), n)))
    # a host name: not inside a longer name or a path (a `/` only as in `://`), optionally
    # followed by :PORT
    return re.compile(rf"(?<![A-Za-z0-9_.\-])(?<![^/]/)(?<!^/)({alts})(?::([0-9]{{1,5}}))?"
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
           host_env: Mapping[str, str] | None = None, *, root: Path | None = None,
           images: Mapping[str, str] | None = None,
           config_files: Mapping[str, str] | None = None) -> dict[str, Evidence]:
    """Evidence of calls between services: the caller's own configuration says whom it calls.

    `services` is the interpolated model (what containers see), `written` the same
    services as merged without interpolation (absolute paths), `hostnames` maps each
    service to every name it answers to (service name, container_name, hostname, aliases),
    `host_env` is what compose fills value-less entries (`- VAR`) from (shell and .env),
    `root` the project's folder (mounted files outside it are not read), `images` each
    service's image name without registry and tag, `config_files` the file of each
    top-level config. Healthchecks are not read: a container testing itself calls nobody.
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

        def note(text: str, why: str, strict: bool, ev: Evidence = ev, me: str = name,
                 port_of: int | None = None) -> None:
            for host, port in _calls_in(text, pat, strict):
                dst = owner[host]
                port = port if port is not None else port_of
                if dst != me:
                    ev.add(dst, port, why)
                else:
                    ev.names_self = True
                    if port is not None:
                        ev.serves.add(port)

        env = list(_env_pairs(svc.get("environment")))
        env += [(k, host_env[k]) for k in _bare_keys(raw.get("environment")) if k in host_env]
        for item in raw.get("env_file") or []:
            path = item.get("path") if isinstance(item, Mapping) else item
            if isinstance(path, str):
                env += _read_env_file(Path(path))
        values = dict(env)
        for key, value in env:
            m = _PORT_KEY.match(key)
            sibling = values.get(f"{m.group(1)}_PORT" if m.group(1) else "PORT", "") if m else ""
            note(value, f"environment {key}", strict=not _HOST_KEY.search(key),
                 port_of=int(sibling) if sibling.strip().isdigit() else None)
        for key in ("command", "entrypoint"):
            for text in _strings(svc.get(key)):
                note(text, key, strict=True)
        for fname, text in _mounted_texts(svc, root, config_files or {}):
            note(text, f"mounted file {fname}", strict=True)
            if fname.endswith(".env"):  # the app reads it as its environment
                for key, value in _env_text(text):
                    note(value, f"mounted file {fname}", strict=not _HOST_KEY.search(key))
            for m in _DIRECTIVE.finditer(text):
                if m.group(1) in owner and owner[m.group(1)] != name:
                    ev.add(owner[m.group(1)], None, f"mounted file {fname}")
    for proxy, routed, port, why in _labels(services, images or {}):
        out.setdefault(proxy, Evidence()).add(routed, port, why)
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
    """A service whose own configuration names nobody, sharing a named volume with one whose
    configuration names hosts, may read the configuration written there (a setup job writing
    the app's settings): it gets those calls too. One that names its own hosts keeps them."""
    mounts = {name: named_volumes(svc) for name, svc in written.items()}
    seen = {name: (dict(ev.calls), dict(ev.why)) for name, ev in found.items()}
    for a, vols in sorted(mounts.items()):
        for b, others in sorted(mounts.items()):
            common = sorted(vols & others)
            if a == b or not common or b not in seen or seen.get(a, ({}, {}))[0]:
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
