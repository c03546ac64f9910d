"""Oracle: validate a SARIF log against the OASIS SARIF 2.1.0 JSON Schema kept in tests/data."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema

from . import REPO_ROOT

# Vendored byte for byte from oasis-tcs/sarif-spec (source, commit, licence: README.md beside it).
SCHEMA = REPO_ROOT / "tests" / "data" / "sarif" / "sarif-schema-2.1.0.json"


@cache
def _validator() -> Any:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)  # draft-04
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate(doc: Any) -> list[str]:
    """Every schema violation of a SARIF document (a parsed JSON value); empty when valid."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
