"""Oracle: validate custom resources (Istio, Linkerd, Kustomization) against vendored schemas.

tests/data/crds/ holds the `openAPIV3Schema` of each CustomResourceDefinition, taken from
the upstream repositories at the releases castle supports (see its README): Istio 1.22 and
the newest release, Linkerd 2.16 and the newest edge. A resource is checked against every
vendored release of its group, so it must be valid for the oldest and the newest alike.
The schemas leave unknown fields open, so `strict=True` (the default) closes every object
schema that lists its properties, as `kubernetes-validate --strict` does for built-in kinds
(the API server prunes unknown fields, which would make a misspelt field silently vanish).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from . import REPO_ROOT

CRDS = REPO_ROOT / "tests" / "data" / "crds"
RELEASES = {
    "security.istio.io": ("istio-1.22.8", "istio-1.30.3"),
    "policy.linkerd.io": ("linkerd-2.16", "linkerd-edge-26.8.3"),
    "kustomize.config.k8s.io": ("kustomize",),
}


def crds_dir() -> Path | None:
    """tests/data/crds, if present (it is part of the repository)."""
    return CRDS if CRDS.is_dir() else None


def skip_reason() -> str | None:
    """Why the CRD oracle cannot run here, or None when it can."""
    return None if crds_dir() else f"{CRDS} not found"


def schema_paths(api_version: str, kind: str) -> dict[str, Path]:
    """release -> schema file of `group/version` + kind in that release (missing ones left out)."""
    group, _, version = api_version.rpartition("/")
    out = {}
    for release in RELEASES.get(group, ()):
        path = CRDS / release / group / f"{kind.lower()}_{version}.json"
        if path.is_file():
            out[release] = path
    return out


def _close(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _close(v) for k, v in node.items()}
        combined = any(
            isinstance(sub, dict) and "properties" in sub
            for key in ("oneOf", "anyOf", "allOf")
            for sub in node.get(key, [])
        )
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
            and not combined
        ):
            node["additionalProperties"] = False
    elif isinstance(node, list):
        node = [_close(v) for v in node]
    return node


@cache
def _validator(path: Path, strict: bool) -> Any:
    schema = json.loads(path.read_text())
    if strict:
        schema = _close(copy.deepcopy(schema))
        # metadata is the API server's (ObjectMeta), not described by the CRD
        for key in ("apiVersion", "kind", "metadata"):
            schema.setdefault("properties", {}).setdefault(key, {})
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def validate(obj: dict[str, Any], strict: bool = True) -> list[str]:
    """Every problem of one custom resource in any supported release; [] if valid in all."""
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    group = api_version.rpartition("/")[0]
    paths = schema_paths(api_version, kind)
    missing = [r for r in RELEASES.get(group, ("?",)) if r not in paths]
    problems = [f"{r}: no schema for apiVersion {api_version!r} kind {kind!r}" for r in missing]
    if kind != "Kustomization" and not (obj.get("metadata") or {}).get("name"):
        problems.append("metadata.name is missing")
    for release, path in sorted(paths.items()):
        errors = sorted(_validator(path, strict).iter_errors(obj), key=lambda e: list(e.path))
        problems += [f"{release}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: "
                     f"{e.message}" for e in errors]
    return problems
