"""What compose refuses in a file that castle's own YAML reading would let through:
duplicate keys, and local files the file names that are not there; and where a
service's problem is written."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from castle.errors import UsageError


def no_duplicate_keys(path: Path, node: yaml.Node | None) -> None:
    """UsageError at the second occurrence of a key in one mapping (compose refuses the
    file; PyYAML keeps the last value without a word)."""
    seen_nodes: set[int] = set()
    todo = [node] if node is not None else []
    while todo:
        n = todo.pop()
        if id(n) in seen_nodes:
            continue
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    line = k.start_mark.line + 1
                    if k.value in first:
                        raise UsageError(f"{path}:{line}: duplicate key {k.value!r} (first at "
                                         f"line {first[k.value]}): compose refuses the file")
                    first[k.value] = line
                todo += [k, v]
        elif isinstance(n, yaml.SequenceNode):
            todo += n.value


def _local(entry: Any, key: str) -> str | None:
    """The local path of an include/extends/env_file entry, None when it has none (a
    variable, a remote or an optional file)."""
    if isinstance(entry, dict):
        if entry.get("required") is False:
            return None
        entry = entry.get(key)
    if isinstance(entry, list):  # include's `path:` may list several files
        entry = entry[0] if entry else None
    if not isinstance(entry, str) or not entry or "$" in entry or "://" in entry \
            or entry.startswith(("git@", "oci:")):
        return None
    return entry


def missing_files(path: Path, raw: dict[str, Any],
                  lines: dict[tuple[str, ...], int]) -> tuple[list[str], list[str]]:
    """(fatal, notes): `include:` and `extends` files that are not there (the file cannot be
    read without them), and `env_file`s that are not there (compose refuses to start)."""
    folder = path.resolve().parent
    fatal, notes = [], []
    includes = raw.get("include")
    for item in includes if isinstance(includes, list) else []:
        name = _local(item, "path")
        if name and not (folder / name).exists():
            fatal.append(f"{path}:{lines.get(('include',), 1)}: included file {name!r} "
                         "is not there")
    services = raw.get("services")
    for svc, body in (services if isinstance(services, dict) else {}).items():
        if not isinstance(body, dict):
            continue
        ext = body.get("extends")
        name = _local(ext, "file") if isinstance(ext, dict) else None
        if name and not (folder / name).is_file():
            line = lines.get(("services", str(svc), "extends"), 1)
            fatal.append(f"{path}:{line}: service {svc!r} extends {name!r}, which is not there")
        env = body.get("env_file")
        for item in env if isinstance(env, list) else [env]:
            name = _local(item, "path")
            if name and not (folder / name).is_file():
                line = lines.get(("services", str(svc), "env_file"), 1)
                notes.append(f"{path.name}:{line}: env_file {name!r} of {svc!r} is not there")
    return fatal, notes


def located(name: str, problem: str,
             file_lines: list[tuple[Path, dict[tuple[str, ...], int]]], written: Any) -> str:
    """A service's problem at the file and line that write its `ports` (or the service), with
    the entries as written when variables filled them (an unset `${PORT}` leaves `:`)."""
    where = ""
    for key in (("services", name, "ports"), ("services", name)):
        found = [(f, lines[key]) for f, lines in reversed(file_lines) if key in lines]
        if found:
            where = f"{found[0][0]}:{found[0][1]}: "
            break
    ports = written.get("ports") if isinstance(written, Mapping) else None
    shown = [str(p) for p in ports or [] if "$" in str(p)] if isinstance(ports, list) else []
    hint = (f" (written {', '.join(repr(p) for p in shown)}: is every variable set, in .env or "
            "the environment?)") if shown else ""
    return f"{where}services.{name}: {problem}{hint}"
