"""The bodies of `castle generate` and `castle validate`, and the error-to-exit mapping.

They import no typer, so the console entry point can run a plain command line without
building typer's commands; cli.py wraps the same functions as typer commands.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from castle.errors import CastleError, SpecError, UsageError

F = TypeVar("F", bound=Callable[..., Any])


class Exit(Exception):
    """A command's chosen exit code (cli.py turns it into typer's Exit)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def err(text: str) -> None:
    """Print to stderr."""
    sys.stderr.write(text if text.endswith("\n") else text + "\n")


def handled(fn: F) -> F:
    """Run a command, turning castle's errors into messages and exit codes (never tracebacks)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            for d in exc.diagnostics:
                err(str(d))
            n = len(exc.errors)
            err(f"castle: {count(n, 'error')}; nothing was written")
            raise Exit(2) from None
        except CastleError as exc:
            err(f"castle: {exc}")
            raise Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err("castle: interrupted")
            raise Exit(130) from None
        except Exit:
            raise
        except OSError as exc:
            # the file system said no (an -o that is a file, a read-only folder): bad input
            where = f"{exc.filename}: " if exc.filename else ""
            err(f"castle: {where}{exc.strerror or exc}")
            raise Exit(2) from None
        except Exception as exc:
            if os.environ.get("CASTLE_DEBUG"):
                raise
            err(f"castle: internal error: {type(exc).__name__}: {exc} "
                "(a bug in castle; rerun with CASTLE_DEBUG=1 for details)")
            raise Exit(2) from None

    return wrapper  # type: ignore[return-value]


def count(n: int, noun: str) -> str:
    """3 services, 1 tier."""
    from castle.words import count as counted

    return counted(n, noun)


def folder(out: Path | None) -> None:
    """An -o that exists must be a folder."""
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: is a file, not a folder")


def warn(loaded: Any) -> None:
    """Print a loaded spec's warnings."""
    for d in loaded.warnings:
        err(str(d))


@handled
def validate(spec: Path) -> None:
    """Check a spec against the wall rules: errors (exit 2), warnings, or a summary."""
    # render every target in memory too: whatever generate would refuse, validate refuses
    from castle.spec.pools import neighbours
    from castle.targets.generate import build

    loaded, plan, _ = build(spec)
    warn(loaded)
    clashes = neighbours(spec, plan.stack, plan.spec.stack.pool)
    for d in clashes:
        err(str(d))
    n = len(loaded.warnings) + len(clashes)
    warned = f" ({count(n, 'warning')})" if n else ""
    print(f"{spec}: valid: {count(len(plan.services), 'service')} in "
          f"{count(len(plan.tiers), 'tier')}, {count(len(plan.spec.flows), 'flow')} -> "
          f"{count(len(plan.conns), 'connection')}, {count(len(plan.networks), 'network')}"
          f"{warned}")


@handled
def generate(spec: Path, out: Path | None, target: list[str] | None, check: bool,
             force: bool) -> None:
    """Write every artifact of a spec (atomically), or --check that they are up to date."""
    from castle.targets.generate import generate as run

    folder(out)
    result = run(spec, out, targets=target, check=check, force=force)
    warn(result.loaded)
    for note in result.notes:
        err(f"castle: warning: {note}")
    if check:
        if result.diffs:
            sys.stdout.write("".join(result.diffs))
            drift = "drifts" if len(result.diffs) == 1 else "drift"
            err(f"castle: {count(len(result.diffs), 'file')} in {result.out} {drift} from "
                f"{spec}; run: castle generate {spec} -o {result.out}")
            raise Exit(1)
        print(f"{result.out}: {count(len(result.outputs), 'file')} up to date with {spec}")
        return
    print(f"{result.out}: {count(len(result.outputs), 'file')}, {len(result.changed)} changed "
          f"({', '.join(result.plan.targets)})"
          + (f"; removed {', '.join(result.removed)}" if result.removed else ""))
    if result.tls:
        print(f"TLS: {result.tls.splitlines()[0]} (castle certs SPEC -o OUT for details)")
    if any(s.spec.container_firewall for s in result.plan.services):
        err("castle: note: container firewalls are discouraged (NET_ADMIN inside the container);"
            " the host firewall already enforces the same flows")
