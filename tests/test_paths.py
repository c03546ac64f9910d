"""Each target lists its files without rendering them, and the list is what it renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from castle import targets
from castle.plan import compile_plan
from castle.spec.load import load

ROOT = Path(__file__).resolve().parent.parent
SPECS = [ROOT / "zones.example.toml", *sorted((ROOT / "tests/data/specs").glob("*.toml"))]


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_paths_are_the_rendered_files(spec: Path) -> None:
    """targets.paths(plan) equals the paths of targets.outputs(plan), target by target."""
    plan = compile_plan(load(spec))  # every target the spec produces
    rendered = [o.path for o in targets.outputs(plan)]
    assert targets.paths(plan) == rendered
    assert rendered  # the control: a spec with files
