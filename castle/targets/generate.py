"""The main job as a library call: spec -> plan -> files, written atomically or diffed."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from castle import targets as target_registry
from castle.errors import UsageError
from castle.io import manifest
from castle.io.write import Output, Prune, diff_outputs, locked, write_outputs, writes
from castle.plan import Plan, compile_plan, select_targets
from castle.spec.load import Loaded, load
from castle.spec.model import TARGETS

if TYPE_CHECKING:
    from castle.tls.files import CertsResult


class Result(NamedTuple):
    """What a generate run produced (or would produce, with check)."""

    loaded: Loaded
    plan: Plan
    out: Path
    outputs: list[Output]
    changed: list[str]  # written or removed paths (removed ones are also in `removed`)
    diffs: list[str]
    removed: list[str]
    notes: list[str]  # warnings met while writing
    tls: str  # what the TLS step did (castle certs' report), empty when nothing was needed


def spec_dir_from(spec_path: str | Path, out: str | Path | None) -> str:
    """The spec's folder relative to the output folder (POSIX, "." when they are one)."""
    if out is None:
        return "."
    rel = os.path.relpath(Path(spec_path).resolve().parent, Path(out).resolve())
    return Path(rel).as_posix()


def build(spec_path: str | Path, targets: Iterable[str] | None = None,
          out: str | Path | None = None) -> tuple[Loaded, Plan, list[Output]]:
    """Load, compile and render a spec without touching the disk (paths in passthrough keys
    are written relative to `out`, default the spec's folder)."""
    wanted = list(targets or [])
    unknown = [t for t in wanted if t not in TARGETS]
    if unknown:
        raise UsageError(f"unknown target {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    loaded = load(spec_path)
    plan = compile_plan(loaded, wanted or None, spec_dir_from(spec_path, out))
    if "mesh" in plan.targets and plan.spec.mesh.kind == "none":
        raise UsageError("target 'mesh' needs [mesh] kind = \"istio\" or \"linkerd\" in the spec")
    return loaded, plan, target_registry.outputs(plan)


def generate(spec_path: str | Path, out: str | Path | None = None, *,
             targets: Iterable[str] | None = None, check: bool = False,
             force: bool = False) -> Result:
    """Generate every artifact of a spec into `out` (default: the spec's folder)."""
    wanted = list(targets or [])
    loaded, plan, outputs = build(spec_path, wanted, out)
    root = Path(out) if out is not None else Path(spec_path).parent
    prune = Prune(plan.source_name, full_paths(loaded, plan, outputs, narrowed=bool(wanted)))
    if check:
        return Result(loaded, plan, root, outputs, [], diff_outputs(root, outputs, prune), [], [],
                      "")
    tls = ""
    issued: CertsResult | None = None
    castle: str | None = None
    if {"compose", "k8s"} & set(plan.targets):
        # the files compose.yaml and the kustomization mount exist before either is written:
        # a first `docker compose up` never meets a missing secret (and refusal writes nothing)
        if root.is_dir():  # a refusal writes nothing, keys included (write_outputs re-checks)
            writes(root.resolve() if root.is_symlink() else root, outputs, force=force)
        root.mkdir(parents=True, exist_ok=True)
        with locked(root):  # another run's write_outputs sweeps temporary files below root
            issued, castle = _certificates(plan, root)
        tls = issued.report if issued is not None else ""
    notes: list[str] = []
    changed = write_outputs(root, outputs, force=force, prune=prune, notes=notes)
    manifest.record(root, Path(spec_path), wanted, outputs, prune.keep, loaded.sha256,
                    loaded.warnings, issued.facts if issued is not None else None, castle)
    produced = {o.path for o in outputs}
    return Result(loaded, plan, root, outputs, changed, [],
                  [p for p in changed if p not in produced], notes, tls)


def _certificates(plan: Plan, root: Path) -> tuple[CertsResult | None, str | None]:
    """The TLS step (castle.tls.certs.ensure) and castle's fingerprint, when one was taken.

    An unchanged TLS folder is answered from the last manifest's record without loading
    cryptography (castle.tls.known); any doubt runs the full check. (The TLS modules are
    imported here: a firewall-only run never needs them.)"""
    from castle.tls import known
    from castle.tls import plan as tlsplan

    if not tlsplan.leaves(plan):
        return None, None  # ensure has nothing to do
    previous = manifest.previous(root)
    castle = manifest.fingerprint() if isinstance(previous, dict) and "tls" in previous else None
    fast = known.answer(plan, root, previous, castle)
    if fast is not None:
        return fast, castle
    from castle.tls.certs import ensure

    return ensure(plan, root), castle


def full_paths(loaded: Loaded, plan: Plan, outputs: list[Output], *,
               narrowed: bool) -> frozenset[str]:
    """Every path the spec produces with its full target set, plus this run's own.

    A `--target compose` run must keep the k8s files the spec still produces; only files
    the spec produces under no target are stale. This run's files count too (a `--target`
    outside [stack].targets must not delete what it just wrote).
    """
    mine = frozenset(o.path for o in outputs)
    if not narrowed:  # this run already built the full set
        return mine
    # the same plan with the spec's own targets: only the file names, nothing rendered
    everything = select_targets(loaded.spec, None)
    if everything == plan.targets:
        return mine
    return mine | frozenset(target_registry.paths(replace(plan, targets=everything)))
