"""`castle init` and `castle schema`: a commented spec to start from, and its JSON Schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

from castle.errors import WriteRefused
from castle.io.render import templates_dir
from castle.io.write import write_file
from castle.spec.model import Spec
from castle.spec.record import json_schema as record_schema


def starter_text(stack: str, file_name: str = "zones.toml") -> str:
    """The commented starter zones.toml, with the stack named after its folder and the
    header's commands naming the file it is written to."""
    text = (templates_dir() / "zones.toml.j2").read_text(encoding="utf-8")
    text = text.replace("zones.example.toml", file_name)
    return text.replace('name = "shop"', f'name = "{stack}"', 1)


def _stack_name(folder: Path) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")[:63].strip("-")
    return name or "stack"


def write_starter(folder: Path, *, force: bool = False) -> Path:
    """Write FOLDER/zones.toml; refuse to replace an existing one unless `force`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "zones.toml"
    if (path.exists() or path.is_symlink()) and not force:
        raise WriteRefused(f"{path} exists; refusing to overwrite it (use --force)")
    if path.is_symlink():
        path.unlink()
    write_file(path, starter_text(_stack_name(folder), path.name))
    return path


def json_schema() -> str:
    """The JSON Schema of zones.toml, stable and sorted."""
    schema = record_schema(Spec)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "castle zones.toml (format version 1)"
    return json.dumps(schema, indent=2, sort_keys=True)
