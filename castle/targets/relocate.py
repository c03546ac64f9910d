"""Local paths of passthrough compose keys, moved from the spec's folder to the output's."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

_REMOTE = ("http://", "https://", "git://", "git@", "ssh://", "github.com/", "docker-image://",
           "service:", "oci-layout://")


def move(path: str, base: str) -> str:
    """A relative path of the spec's folder as seen from the output folder (`base` is the
    spec's folder relative to the output folder); absolute, remote or `${VAR}` paths stay."""
    if base == "." or not path or path.startswith(("/", "~", "$", *_REMOTE)):
        return path
    moved = posixpath.normpath(posixpath.join(base, path))
    return moved if moved.startswith(("../", "/")) or moved == ".." else f"./{moved}"


def _volume(item: Any, base: str) -> Any:
    if isinstance(item, str):
        source, sep, rest = item.partition(":")
        # a short-syntax source is a path only when it starts with . (else a volume name)
        return move(source, base) + sep + rest if source.startswith(".") and sep else item
    if isinstance(item, dict) and item.get("type", "bind") == "bind" and isinstance(
            item.get("source"), str) and item["source"].startswith("."):
        return {**item, "source": move(item["source"], base)}
    return item


def _build(value: Any, base: str) -> Any:
    if isinstance(value, str):
        return move(value, base)
    if isinstance(value, dict):
        out = dict(value)
        # no context is the compose file's folder (`dockerfile_inline` needs none written)
        context = out.get("context", ".")
        if isinstance(context, str):
            out["context"] = move(context, base)
        extra = out.get("additional_contexts")
        if isinstance(extra, dict):
            out["additional_contexts"] = {k: move(v, base) if isinstance(v, str) else v
                                          for k, v in extra.items()}
        return out
    return value


def _files(value: Any, base: str) -> Any:
    """env_file / label_file: a path, a list of paths, or of {path: ...} tables."""
    if isinstance(value, str):
        return move(value, base)
    if isinstance(value, list):
        return [_files(v, base) if not isinstance(v, dict) else
                {**v, "path": move(v["path"], base)} if isinstance(v.get("path"), str) else v
                for v in value]
    return value


def _develop(value: Any, base: str) -> Any:
    """develop.watch: each rule's `path` is a local path."""
    if not (isinstance(value, dict) and isinstance(value.get("watch"), list)):
        return value
    rules = [{**r, "path": move(r["path"], base)} if isinstance(r, dict) and isinstance(
        r.get("path"), str) else r for r in value["watch"]]
    return {**value, "watch": rules}


_SERVICE: dict[str, Callable[[Any, str], Any]] = {
    "build": _build, "env_file": _files, "label_file": _files,
    "develop": _develop,
    "volumes": lambda v, b: [_volume(x, b) for x in v] if isinstance(v, list) else v,
}


def service_keys(keys: dict[str, Any], base: str) -> dict[str, Any]:
    """A service's passthrough keys with their local paths moved."""
    if base == ".":
        return keys
    return {k: _SERVICE[k](v, base) if k in _SERVICE else v for k, v in keys.items()}


def top_object(body: dict[str, Any], base: str) -> dict[str, Any]:
    """A top-level config or secret with its `file` moved; a volume of the local driver
    bound to a folder (`o: bind`) with its `device` moved, as compose resolves it."""
    opts = body.get("driver_opts")
    if base != "." and body.get("driver") == "local" and isinstance(opts, dict) and \
            opts.get("o") == "bind" and isinstance(opts.get("device"), str):
        return {**body, "driver_opts": {**opts, "device": move(opts["device"], base)}}
    if base == "." or not isinstance(body.get("file"), str):
        return body
    return {**body, "file": move(body["file"], base)}
