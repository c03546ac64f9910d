"""Compose values as castle import carries them: environment, volumes, names, comment lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from castle.errors import UsageError


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


def grouped(pairs: list[tuple[str, str]]) -> list[str]:
    """Pairs as "a <-> b, c;" entries, one per first name, in order."""
    by: dict[str, list[str]] = {}
    for a, b in sorted(tuple(sorted(p)) for p in pairs):
        by.setdefault(a, []).append(b)
    return [f"{a} <-> {', '.join(bs)};" for a, bs in by.items()]


def wrap(items: list[str], width: int = 86) -> list[str]:
    """Words of the items flowed into lines of at most `width` characters."""
    lines: list[str] = []
    for word in " ".join(items).split(" ") if items else []:
        if lines and len(lines[-1]) + len(word) + 1 <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


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
