"""Independent test oracles for castle: none of them imports the castle package."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class OracleUnavailable(RuntimeError):
    """An external tool or data set an oracle needs is missing; str() is the skip reason."""


class OracleError(RuntimeError):
    """An oracle tool failed in a way that is not a verdict about its input."""


def shared_dir() -> Path | None:
    """The project's shared/ folder (`<repo>/../shared`, or $CASTLE_SHARED), if present."""
    override = os.environ.get("CASTLE_SHARED")
    path = Path(override) if override else REPO_ROOT.parent / "shared"
    return path if path.is_dir() else None


def venv_script(name: str) -> Path | None:
    """A console script of the running interpreter's environment, else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    return Path(found) if found else None
