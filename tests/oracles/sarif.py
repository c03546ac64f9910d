"""Oracle: validate a SARIF log against the OASIS SARIF 2.1.0 JSON Schema in shared/schemas."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from . import OracleUnavailable, shared_dir


def schema_path() -> Path | None:
    """shared/schemas/sarif/sarif-schema-2.1.0.json, if present."""
    shared = shared_dir()
    path = shared / "schemas" / "sarif" / "sarif-schema-2.1.0.json" if shared else None
    return path if path and path.is_file() else None


def skip_reason() -> str | None:
    """Why the SARIF oracle cannot run here, or None when it can."""
    return None if schema_path() else "shared/schemas/sarif/sarif-schema-2.1.0.json not found"


@cache
def _validator() -> Any:
    path = schema_path()
    if path is None:
        raise OracleUnavailable(skip_reason() or "SARIF schema missing")
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema)  # draft-04
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate(doc: Any) -> list[str]:
    """Every schema violation of a SARIF document (a parsed JSON value); empty when valid."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
