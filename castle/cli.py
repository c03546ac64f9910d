"""The castle command line: parse options, call the library, map errors to exit codes."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from castle.errors import CastleError, SpecError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="castle: one concentric-walls spec, every wall that enforces it.",
)

F = TypeVar("F", bound=Callable[..., Any])


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
            err(f"castle: {n} error{'s' if n != 1 else ''}; nothing was written")
            raise typer.Exit(2) from None
        except CastleError as exc:
            err(f"castle: {exc}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err("castle: interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get("CASTLE_DEBUG"):
                raise
            err(f"castle: internal error: {type(exc).__name__}: {exc} "
                "(a bug in castle; rerun with CASTLE_DEBUG=1 for details)")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _warn(loaded: Any) -> None:
    for d in loaded.warnings:
        err(str(d))


SpecArg = Annotated[Path, typer.Argument(help="the zones.toml to read", show_default=False)]


class MatrixFormat(str, Enum):
    """Output formats of `castle matrix`."""

    table = "table"
    json = "json"
    csv = "csv"


@app.command()
@handled
def init(
    folder: Annotated[Path, typer.Argument(help="where to write zones.toml")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing zones.toml")] = False,
) -> None:
    """Write a commented zones.toml to start from."""
    from castle.starter import write_starter

    path = write_starter(folder, force=force)
    print(f"wrote {path}; next: castle validate {path}")


@app.command()
@handled
def validate(spec: SpecArg) -> None:
    """Check a spec against the wall rules: errors (exit 2), warnings, or a summary."""
    from castle.load import load
    from castle.plan import compile_plan

    loaded = load(spec)
    plan = compile_plan(loaded)
    _warn(loaded)
    n = len(loaded.warnings)
    print(f"{spec}: valid: {len(plan.services)} services in {len(plan.tiers)} tiers, "
          f"{len(plan.spec.flows)} flows -> {len(plan.conns)} connections, "
          f"{len(plan.networks)} networks" + (f" ({n} warning{'s' if n != 1 else ''})" if n else ""))


@app.command()
@handled
def generate(
    spec: SpecArg,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="output folder "
                                             "(default: the spec's folder)")] = None,
    target: Annotated[list[str] | None, typer.Option("--target", "-t", help="only this "
                      "target (repeatable): compose, iptables, nftables, k8s, mesh")] = None,
    check: Annotated[bool, typer.Option("--check", help="write nothing; show the diff and "
                                        "exit 1 when files drift from the spec")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite files castle did not "
                                        "generate")] = False,
) -> None:
    """Write every artifact of a spec (atomically), or --check that they are up to date."""
    from castle.generate import generate as run

    result = run(spec, out, targets=target, check=check, force=force)
    _warn(result.loaded)
    if check:
        if result.diffs:
            sys.stdout.write("".join(result.diffs))
            err(f"castle: {len(result.diffs)} file(s) in {result.out} drift from {spec}; "
                f"run: castle generate {spec} -o {result.out}")
            raise typer.Exit(1)
        print(f"{result.out}: {len(result.outputs)} files up to date with {spec}")
        return
    print(f"{result.out}: {len(result.outputs)} files, {len(result.changed)} changed "
          f"({', '.join(result.plan.targets)})")
    if any(s.spec.container_firewall for s in result.plan.services):
        err("castle: note: container firewalls are discouraged (NET_ADMIN inside the container);"
            " the host firewall already enforces the same flows")


@app.command()
@handled
def matrix(
    spec: SpecArg,
    fmt: Annotated[MatrixFormat, typer.Option("--format", "-f")] = MatrixFormat.table,
    artifacts: Annotated[Path | None, typer.Option("--artifacts", help="derive the matrix "
                         "from the generated files in this folder and mark differences")] = None,
) -> None:
    """Who may reach whom on which ports."""
    from castle.load import load
    from castle.matrix import render_matrix, spec_matrix
    from castle.plan import compile_plan

    plan = compile_plan(load(spec))
    if artifacts is None:
        sys.stdout.write(render_matrix(spec_matrix(plan), fmt.value))
        return
    from castle.artifacts import compare_artifacts

    report, differs = compare_artifacts(plan, artifacts, fmt.value)
    sys.stdout.write(report)
    if differs:
        raise typer.Exit(1)


@app.command()
@handled
def schema() -> None:
    """Print the JSON Schema of zones.toml (for editors)."""
    from castle.starter import json_schema

    print(json_schema())


def main() -> None:
    """Console entry point."""
    app()
