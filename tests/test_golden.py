"""Golden files: every generated file of the example, reviewed like code when it changes.

Regenerate after an intended change with:
    CASTLE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
and review `git diff tests/golden/` before committing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from castle.targets.generate import build

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
# name -> (spec, targets whose files are kept: None = all); the variants keep only the files
# their spec changes, so one golden copy does not stand in three places
CASES: dict[str, tuple[Path, list[str] | None]] = {
    "example": (ROOT / "zones.example.toml", None),
    "chain": (ROOT / "tests" / "data" / "specs" / "chain.toml", None),
    "mesh-istio": (ROOT / "tests" / "data" / "golden" / "mesh-istio.toml", ["k8s", "mesh"]),
    "mesh-linkerd": (ROOT / "tests" / "data" / "golden" / "mesh-linkerd.toml", ["k8s", "mesh"]),
    "fw-container": (ROOT / "tests" / "data" / "specs" / "fw-container.toml", ["iptables"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    """Generated files equal the committed golden copies, byte for byte."""
    spec, targets = CASES[name]
    _, _, outputs = build(spec, targets)
    folder = GOLDEN / name
    if os.environ.get("CASTLE_UPDATE_GOLDEN"):
        shutil.rmtree(folder, ignore_errors=True)
        for out in outputs:
            path = folder / out.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(out.content)
    wanted = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert wanted == sorted(o.path for o in outputs), (
        "the set of generated files changed; rerun with CASTLE_UPDATE_GOLDEN=1 and review")
    for out in outputs:
        assert (folder / out.path).read_text() == out.content, (
            f"{name}/{out.path} differs from its golden copy; rerun with "
            "CASTLE_UPDATE_GOLDEN=1 and review the diff")
