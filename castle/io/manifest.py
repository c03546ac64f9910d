"""What a set of outputs was generated from, so an unchanged `--check` needs no rendering.

`castle generate` writes OUT/.castle-manifest.json after the files: the spec's name, bytes
hash and place, the targets asked for, a fingerprint of castle itself (its code, templates,
Python and libraries), every output's hash, the paths the stale-file check keeps and the
spec's warnings. `answer` gives "up to date" only when every recorded fact still holds on
disk; anything missing, unreadable or different returns None, and the caller runs the full
comparison. Standard library only: this module must not load pydantic, jinja2 or typer.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Collection, Iterable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple

from castle.errors import Diagnostic
from castle.io.render import templates_dir
from castle.io.write import Output, locked, stale, utf8_chunks, write_tmp

NAME = ".castle-manifest.json"
MAX_BYTES = 256 * 2**20  # a manifest larger than this is not read (256 MiB)
FORMAT = 1
# libraries whose code shapes the output (a new version may render other bytes)
# (cryptography judges the certificates whose check the manifest's "tls" record stands for)
LIBRARIES = ("pydantic", "pydantic_core", "jinja2", "markupsafe", "yaml", "typer", "cryptography")


class UpToDate(NamedTuple):
    """A `--check` answered from the manifest: nothing drifts."""

    out: Path
    files: int
    warnings: list[Diagnostic]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(top: str, suffix: str, skip: str | None) -> list[tuple[str, str]]:
    """(path relative to top, path) of each file below top with the suffix, sorted."""
    found = []
    for folder, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if d not in (skip, "__pycache__")]
        rel = os.path.relpath(folder, top)
        found += [(n if rel == "." else f"{rel}/{n}", os.path.join(folder, n))
                  for n in names if n.endswith(suffix)]
    return sorted(found)


def _sha_text(text: str) -> str:
    """_sha of the text's UTF-8 bytes, without holding them all."""
    h = hashlib.sha256()
    for chunk in utf8_chunks(text):
        h.update(chunk)
    return h.hexdigest()


def fingerprint() -> str:
    """A hash of everything besides the spec that decides the output bytes."""
    h = hashlib.sha256(f"{sys.version}\0{sys.implementation.cache_tag}\0".encode())
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # all of castle
    # castle/_jinja is left out: made from the templates and Jinja (both counted), and
    # used only while it matches them, so it never decides the output
    sources = _files(package, ".py", "_jinja") + _files(str(templates_dir()), ".j2", None)
    for where, path in sources:
        with open(path, "rb") as fh:
            data = fh.read()
        h.update(f"{where}\0{len(data)}\0".encode())
        h.update(data)
    for name in LIBRARIES:
        spec = find_spec(name)
        origin = spec.origin if spec and spec.origin else ""
        try:
            st = os.stat(origin)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "-"
        h.update(f"{name}\0{origin}\0{stamp}\0".encode())
    return h.hexdigest()


def _spec_place(spec: Path, root: Path) -> str:
    return os.path.relpath(spec.resolve(), root.resolve())


def facts(spec: Path, root: Path, targets: Sequence[str], outputs: Iterable[Output],
          keep: Collection[str], spec_sha256: str, warnings: Iterable[Diagnostic],
          tls: dict[str, Any] | None = None, castle: str | None = None) -> dict[str, Any]:
    """The manifest's content for a run that produced `outputs` from the spec's bytes.

    tls is what the run's certificate check saw (castle.tls.known), castle a fingerprint
    this run already computed."""
    return {
        "format": FORMAT,
        "castle": castle or fingerprint(),
        "spec": {"name": spec.name, "sha256": spec_sha256, "place": _spec_place(spec, root)},
        "targets": list(targets),
        "files": {o.path: _sha_text(o.content) for o in outputs},
        "keep": sorted(keep),
        "warnings": [[d.line, d.col, d.severity, d.where, d.message, d.hint]
                     for d in warnings],
    } | ({"tls": tls} if tls is not None else {})


def record(root: Path, spec: Path, targets: Sequence[str], outputs: Iterable[Output],
           keep: Collection[str], spec_sha256: str, warnings: Iterable[Diagnostic],
           tls: dict[str, Any] | None = None, castle: str | None = None) -> None:
    """Write the manifest (atomically) after a successful write of the outputs."""
    if root.is_symlink():
        root = root.resolve()
    text = json.dumps(facts(spec, root, targets, outputs, keep, spec_sha256, warnings, tls,
                            castle), indent=1, sort_keys=True) + "\n"
    path = root / NAME
    # under the folder's lock: another run's recovery removes temporary files it finds
    with locked(root):
        try:
            if path.read_text(encoding="utf-8") == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        os.replace(write_tmp(path, text, 0o644), path)


def previous(root: Path) -> Any:
    """The manifest an earlier run left in root, parsed (untrusted); None when there is none.

    Never through a symbolic link or from anything but a regular file."""
    try:
        fd = os.open(root / NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def answer(spec: Path, out: Path | None, targets: Sequence[str]) -> UpToDate | None:
    """UpToDate when the manifest's every fact holds for this `--check`; else None."""
    root = out if out is not None else spec.parent
    try:
        return _answer(spec, root, list(targets))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return None  # any doubt: the full comparison decides


def _answer(spec: Path, root: Path, targets: list[str]) -> UpToDate | None:
    if not root.is_dir():
        return None
    m = json.loads((root / NAME).read_text(encoding="utf-8"))
    if not isinstance(m, dict) or m.get("format") != FORMAT or m["targets"] != targets:
        return None
    recorded = m["spec"]
    if recorded["name"] != spec.name or recorded["sha256"] != _sha(spec.read_bytes()):
        return None
    if recorded["place"] != _spec_place(spec, root):
        return None
    files: dict[str, str] = m["files"]
    for rel, sha in files.items():
        if _sha((root / rel).read_bytes()) != sha:
            return None
    if stale(root, spec.name, frozenset(m["keep"])):
        return None
    if m["castle"] != fingerprint():  # last: the dearest fact to establish
        return None
    warnings = [Diagnostic(str(spec), int(line), col, str(sev), str(where), str(msg), str(hint))
                for line, col, sev, where, msg, hint in m["warnings"]]
    return UpToDate(root, len(files), warnings)
