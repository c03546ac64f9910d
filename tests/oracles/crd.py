"""Oracle: validate custom resources (Istio, Linkerd, Kustomization) against shared/schemas/crds.

The schemas (datreeio CRDs-catalog) describe a whole object whose `spec` they constrain;
most leave unknown fields open, so `strict=True` (the default) closes every object schema
that lists its properties, as `kubernetes-validate --strict` does for built-in kinds.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from . import OracleUnavailable, shared_dir


def crds_dir() -> Path | None:
    """shared/schemas/crds, if present."""
    shared = shared_dir()
    path = shared / "schemas" / "crds" if shared else None
    return path if path and path.is_dir() else None


def skip_reason() -> str | None:
    """Why the CRD oracle cannot run here, or None when it can."""
    return None if crds_dir() else "shared/schemas/crds not found"


def schema_path(api_version: str, kind: str) -> Path | None:
    """The schema file of `group/version` + kind, e.g. security.istio.io/v1 AuthorizationPolicy."""
    root = crds_dir()
    if root is None:
        raise OracleUnavailable(skip_reason() or "CRD schemas missing")
    group, _, version = api_version.rpartition("/")
    path = root / group / f"{kind.lower()}_{version}.json"
    return path if group and path.is_file() else None


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
        # The top level also holds apiVersion, kind, metadata, which the schemas omit.
        for key in ("apiVersion", "kind", "metadata"):
            schema.setdefault("properties", {}).setdefault(key, {})
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def validate(obj: dict[str, Any], strict: bool = True) -> list[str]:
    """Every problem of one custom resource (apiVersion, kind, name, schema); [] if valid."""
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    path = schema_path(api_version, kind)
    if path is None:
        return [f"no schema for apiVersion {api_version!r} kind {kind!r}"]
    problems = []
    if kind != "Kustomization" and not (obj.get("metadata") or {}).get("name"):
        problems.append("metadata.name is missing")
    errors = sorted(_validator(path, strict).iter_errors(obj), key=lambda e: list(e.path))
    problems += [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    return problems
