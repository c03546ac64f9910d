"""The main job as a library call: spec -> plan -> files, written atomically or diffed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from castle import targets as target_registry
from castle.errors import UsageError
from castle.load import Loaded, load
from castle.model import TARGETS
from castle.plan import Plan, compile_plan
from castle.write import Output, diff_outputs, write_outputs


@dataclass(frozen=True)
class Result:
    """What a generate run produced (or would produce, with check)."""

    loaded: Loaded
    plan: Plan
    out: Path
    outputs: list[Output]
    changed: list[str]
    diffs: list[str]


def build(spec_path: str | Path, targets: Iterable[str] | None = None) -> tuple[Loaded, Plan,
                                                                               list[Output]]:
    """Load, compile and render a spec without touching the disk."""
    wanted = list(targets or [])
    unknown = [t for t in wanted if t not in TARGETS]
    if unknown:
        raise UsageError(f"unknown target {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    loaded = load(spec_path)
    plan = compile_plan(loaded, wanted or None)
    if "mesh" in plan.targets and plan.spec.mesh.kind == "none":
        raise UsageError("target 'mesh' needs [mesh] kind = \"istio\" or \"linkerd\" in the spec")
    return loaded, plan, target_registry.outputs(plan)


def generate(spec_path: str | Path, out: str | Path | None = None, *,
             targets: Iterable[str] | None = None, check: bool = False,
             force: bool = False) -> Result:
    """Generate every artifact of a spec into `out` (default: the spec's folder)."""
    loaded, plan, outputs = build(spec_path, targets)
    root = Path(out) if out is not None else Path(spec_path).parent
    if check:
        return Result(loaded, plan, root, outputs, [], diff_outputs(root, outputs))
    changed = write_outputs(root, outputs, force=force)
    return Result(loaded, plan, root, outputs, changed, [])
