"""The console entry point: an unchanged `generate --check` answered from the manifest.

Only `castle generate SPEC [-o OUT] [-t NAME ...] --check` in its plain spellings is looked
at here, with the standard library alone; every other command line, and every check the
manifest cannot settle, goes to the full command line of cli.py.
"""

from __future__ import annotations

import gc
import sys
import types
from pathlib import Path


def parse_check(argv: list[str]) -> tuple[Path, Path | None, list[str]] | None:
    """(spec, out, targets) of a plain `generate ... --check`; None for anything else."""
    if not argv or argv[0] != "generate":
        return None
    spec: Path | None = None
    out: Path | None = None
    targets: list[str] = []
    check = False
    args = iter(argv[1:])
    for arg in args:
        if arg == "--check":
            check = True
        elif arg in ("-o", "--out", "-t", "--target"):
            value = next(args, None)
            if value is None:
                return None
            if arg in ("-o", "--out"):
                out = Path(value)
            else:
                targets.append(value)
        elif arg.startswith("-") or spec is not None:
            return None  # --force, --help, --out=X, -oX, a second argument: cli.py decides
        else:
            spec = Path(arg)
    return (spec, out, targets) if check and spec is not None else None


def fast_check(argv: list[str]) -> bool:
    """Answer an unchanged `generate --check` from the manifest; False when it cannot."""
    parsed = parse_check(argv)
    if parsed is None:
        return False
    from castle.io.manifest import answer

    spec, out, targets = parsed
    done = answer(spec, out, targets)
    if done is None:
        return False
    for d in done.warnings:
        sys.stderr.write(f"{d}\n")
    from castle.words import count

    print(f"{done.out}: {count(done.files, 'file')} up to date with {spec}")
    return True


def quick_start() -> None:
    """Start-up tuning of a command-line run (not of castle used as a library).

    The collector is off: a run allocates much and frees little, and building pydantic's
    models and typer's commands would otherwise set off collections that find nothing.
    Pydantic's plugin discovery reads every installed package's metadata; castle's models
    are its own, so the CLI never loads plugins into them.
    """
    gc.disable()
    if "pydantic.plugin._loader" not in sys.modules:
        loader = types.ModuleType("pydantic.plugin._loader")
        loader.get_plugins = tuple  # type: ignore[attr-defined]  # no plugins: ()
        sys.modules["pydantic.plugin._loader"] = loader


def main() -> None:
    """Run castle."""
    quick_start()
    if fast_check(sys.argv[1:]):
        return
    from castle.cli import main as full

    full()
