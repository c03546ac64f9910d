"""The console entry point: plain command lines without typer, `--check` from the manifest.

`castle generate SPEC [-o OUT] [-t NAME ...] [--check] [--force]` and `castle validate SPEC`
in their plain spellings are parsed here with the standard library alone, and run by the
same functions cli.py's typer commands call (castle.commands): building typer's commands
costs more than a small spec's whole run. An unchanged `--check` is answered from the
manifest before anything else is imported. Every other command line goes to cli.py.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path


class Plain:
    """A plain `generate` or `validate` command line, as typer would have parsed it."""

    def __init__(self, command: str, spec: Path, out: Path | None, targets: list[str],
                 check: bool, force: bool) -> None:
        self.command, self.spec, self.out = command, spec, out
        self.targets, self.check, self.force = targets, check, force


_VALUED = {"-o": "out", "--out": "out", "-t": "target", "--target": "target"}


def _word(arg: str | None) -> bool:
    """A value or argument this parser takes as it stands (anything else: typer decides)."""
    return arg is not None and arg != "" and not arg.startswith("-")


def parse_plain(argv: list[str]) -> Plain | None:
    """`generate SPEC [-o OUT] [-t NAME ...] [--check] [--force]` or `validate SPEC`.

    Only the spellings below are taken; `--out=X`, `-oX`, `--help`, `--`, an empty or
    dash-led value, a second argument or any other word return None, for typer to parse.
    A shell-completion request (typer reads `_CASTLE_COMPLETE` and the like) does too.
    """
    if not argv or argv[0] not in ("generate", "validate"):
        return None
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):
        return None
    if argv[0] == "validate":
        if len(argv) != 2 or not _word(argv[1]):
            return None
        return Plain("validate", Path(argv[1]), None, [], False, False)
    spec: Path | None = None
    out: Path | None = None
    targets: list[str] = []
    check = force = False
    args = iter(argv[1:])
    for arg in args:
        if arg == "--check":
            check = True
        elif arg == "--force":
            force = True
        elif arg in _VALUED:
            value = next(args, None)
            if value is None or not _word(value):
                return None
            if _VALUED[arg] == "out":
                out = Path(value)  # typer keeps the last one given
            else:
                targets.append(value)
        elif not _word(arg) or spec is not None:
            return None
        else:
            spec = Path(arg)
    if spec is None:
        return None
    return Plain("generate", spec, out, targets, check, force)


def parse_check(argv: list[str]) -> tuple[Path, Path | None, list[str]] | None:
    """(spec, out, targets) of a plain `generate ... --check`; None for anything else."""
    plain = parse_plain(argv)
    if plain is None or plain.command != "generate" or not plain.check or plain.force:
        return None
    return plain.spec, plain.out, plain.targets


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

    The collector is off: a run allocates much and frees little, and building the spec's
    validators and typer's commands would otherwise set off collections that find nothing.
    """
    gc.disable()


def run_plain(plain: Plain) -> int:
    """Run a plain command line without typer: the same functions cli.py's commands call."""
    from castle import commands

    try:
        if plain.command == "validate":
            commands.validate(plain.spec)
        else:
            commands.generate(plain.spec, plain.out, plain.targets or None, plain.check,
                              plain.force)
    except commands.Exit as exc:
        return exc.code
    return 0


def main() -> None:
    """Run castle."""
    quick_start()
    argv = sys.argv[1:]
    if fast_check(argv):
        return
    plain = parse_plain(argv)
    if plain is not None:
        code = run_plain(plain)
        if code:
            raise SystemExit(code)
        return
    from castle.cli import main as full

    full()
