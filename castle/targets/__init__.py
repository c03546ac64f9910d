"""Targets: one module each, exposing `outputs(plan) -> list[Output]`; imported lazily."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from castle.io.write import Output
from castle.plan import Plan

MODULES = {
    "compose": "castle.targets.compose",
    "iptables": "castle.targets.iptables",
    "nftables": "castle.targets.nftables",
    "k8s": "castle.targets.k8s",
    "mesh": "castle.targets.mesh",
}


def paths(plan: Plan) -> list[str]:
    """The paths `outputs(plan)` produces, without rendering where a target can list them."""
    found: list[str] = []
    for name in plan.targets:
        module = importlib.import_module(MODULES[name])
        listing: Callable[[Plan], list[str]] | None = getattr(module, "paths", None)
        found.extend(listing(plan) if listing else [o.path for o in module.outputs(plan)])
    return sorted(found)


def outputs(plan: Plan) -> list[Output]:
    """Every file the plan's targets produce, in a stable order."""
    files: list[Output] = []
    for name in plan.targets:
        module = importlib.import_module(MODULES[name])
        build: Callable[[Plan], list[Output]] = module.outputs
        files.extend(build(plan))
    return sorted(files, key=lambda o: o.path)
