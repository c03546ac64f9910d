"""The castle command line: parse options, call the library, map errors to exit codes."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from castle import commands
from castle.commands import Exit, err, folder
from castle.errors import UsageError

# Help and usage errors in click's plain layout: typer's rich layout imports rich,
# markdown-it and pygments, which cost a `castle --help` more than castle itself.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="castle: one concentric-walls spec, every wall that enforces it.",
)

F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        from castle import __version__

        print(f"castle {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print castle's version and exit")] = False,
) -> None:
    """castle: one concentric-walls spec, every wall that enforces it."""


def handled(fn: F) -> F:
    """Run a command through commands.handled, its exit code raised as typer's Exit."""
    inner = commands.handled(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except commands.Exit as exc:
            raise typer.Exit(exc.code) from None

    return wrapper  # type: ignore[return-value]


SpecArg = Annotated[Path, typer.Argument(help="the zones.toml to read", show_default=False)]


class MatrixFormat(StrEnum):
    """Output formats of `castle matrix`."""

    table = "table"
    json = "json"
    csv = "csv"


@app.command()
@handled
def init(
    folder: Annotated[Path, typer.Argument(help="where to write zones.toml")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing "
                                        "zones.toml")] = False,
) -> None:
    """Write a commented zones.toml to start from."""
    from castle.spec.starter import write_starter

    path = write_starter(folder, force=force)
    print(f"wrote {path}; next: castle validate {path}")


@app.command()
@handled
def validate(spec: SpecArg) -> None:
    """Check a spec against the wall rules: errors (exit 2), warnings, or a summary."""
    commands.validate(spec)


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
    commands.generate(spec, out, target, check, force)


@app.command()
@handled
def matrix(
    spec: SpecArg,
    fmt: Annotated[MatrixFormat, typer.Option("--format", "-f")] = MatrixFormat.table,
    artifacts: Annotated[Path | None, typer.Option("--artifacts", help="derive the matrix "
                         "from the generated files in this folder and mark differences")] = None,
) -> None:
    """Who may reach whom on which ports."""
    from castle.plan import compile_plan
    from castle.spec.load import load
    from castle.views.matrix import render_matrix, spec_matrix

    plan = compile_plan(load(spec))
    if artifacts is None:
        sys.stdout.write(render_matrix(spec_matrix(plan), fmt.value))
        return
    from castle.views.artifacts import compare_artifacts

    report, differs = compare_artifacts(plan, artifacts, fmt.value)
    sys.stdout.write(report)
    if differs:
        raise Exit(1)


class Firewall(StrEnum):
    """Which generated firewall `castle prove` applies."""

    iptables = "iptables"
    nftables = "nftables"
    both = "both"


class AuditFormat(StrEnum):
    """Output formats of `castle audit`."""

    text = "text"
    json = "json"
    sarif = "sarif"


class DrawFormat(StrEnum):
    """Output formats of `castle draw`."""

    svg = "svg"
    mermaid = "mermaid"
    dot = "dot"


class DiffFormat(StrEnum):
    """Output formats of `castle diff`."""

    text = "text"
    markdown = "markdown"


def _emit(text: str, out: Path | None) -> None:
    """Write command output to a file (atomically) or stdout."""
    if out is None:
        sys.stdout.write(text)
        return
    from castle.io.write import write_file

    write_file(out, text)
    err(f"wrote {out}")


@app.command()
@handled
def prove(
    spec: SpecArg,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="folder with the generated "
                   "files (default: generate into a temporary folder)")] = None,
    firewall: Annotated[Firewall, typer.Option("--firewall", help="which firewall to "
                        "apply")] = Firewall.both,
) -> None:
    """Build the stack in throwaway network namespaces, probe every pair and port, compare."""
    from castle.lab.prove import prove as run

    def progress(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        probes = commands.count(total, "probe")
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{probes}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    firewalls = ["iptables", "nftables"] if firewall is Firewall.both else [firewall.value]
    result = run(spec, out, firewalls, progress=progress if sys.stderr.isatty() else None)
    sys.stdout.write(result.report)
    if not result.ok:
        raise Exit(1)


@app.command()
@handled
def certs(
    spec: SpecArg,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="output folder, as for "
                   "generate; files go to its [tls].dir (default k8s/certs/)")] = None,
    days: Annotated[int | None, typer.Option("--days", help="with --check: fail when a "
                    "certificate expires within N days (default 30); else: leaf validity "
                    "in days (default [tls].days)")] = None,
    check: Annotated[bool, typer.Option("--check", help="write nothing; exit 1 when a "
                     "certificate is missing, wrong for the spec or expiring")] = False,
) -> None:
    """Make the private CA and the certificates tls flows need (never overwrites a key)."""
    from castle.tls.certs import certs as run

    folder(out)
    result = run(spec, out, days=days, check=check)
    sys.stdout.write(result.report)
    if not result.ok:
        raise Exit(1)


@app.command()
@handled
def audit(
    compose: Annotated[list[Path] | None, typer.Argument(
        help="existing compose files, merged in order (a single default-named file "
        "brings its override file, as compose does)")] = None,
    file: Annotated[list[Path] | None, typer.Option(
        "--file", help="a compose file (repeatable, as `docker compose -f`; -f is --format "
        "here)")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="compare with this "
                    "zones.toml")] = None,
    fmt: Annotated[AuditFormat, typer.Option("--format", "-f")] = AuditFormat.text,
) -> None:
    """Who can reach whom in an existing compose file set, and what should not."""
    from castle.views.audit import audit as run

    files = [*(file or []), *(compose or [])]
    if not files:
        raise UsageError("give a compose file: castle audit docker-compose.yml")
    result = run(files, spec, fmt.value)
    sys.stdout.write(result.report)
    if result.findings:
        raise Exit(1)


@app.command("import")
@handled
def import_(
    compose: Annotated[list[Path] | None, typer.Argument(
        help="existing compose files, merged in order (a single default-named file "
        "brings its override file, as compose does)")] = None,
    file: Annotated[list[Path] | None, typer.Option(
        "-f", "--file", help="a compose file (repeatable, as `docker compose -f`)")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="write the draft here "
                   "(default: stdout)")] = None,
) -> None:
    """Draft a zones.toml from compose files: flows for the connections the file shows (or
    guesses, noted), the other pairs of a shared network closed and listed in the draft."""
    from castle.views.importer import import_compose

    files = [*(file or []), *(compose or [])]
    if not files:
        raise UsageError("give a compose file: castle import docker-compose.yml")
    _emit(import_compose(files, out.parent if out is not None else None), out)


@app.command()
@handled
def explain(
    spec: SpecArg,
    src: Annotated[str, typer.Argument(metavar="FROM", help="a service, internet or cidr:X")],
    dst: Annotated[str, typer.Argument(metavar="TO", help="a service, internet or cidr:X")],
) -> None:
    """Why FROM can or cannot reach TO: the flow, network, rule and policy that carry it."""
    from castle.views.explain import explain as run

    sys.stdout.write(run(spec, src, dst))


@app.command()
@handled
def diff(
    old: Annotated[Path, typer.Argument(help="the spec before the change")],
    new: Annotated[Path, typer.Argument(help="the spec after the change")],
    fmt: Annotated[DiffFormat, typer.Option("--format", "-f")] = DiffFormat.text,
) -> None:
    """The connections a spec change opens and closes; exit 1 when anything opens."""
    from castle.views.specdiff import diff_specs

    result = diff_specs(old, new, fmt.value)
    sys.stdout.write(result.report)
    if result.opened:
        raise Exit(1)


@app.command()
@handled
def draw(
    spec: SpecArg,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="write here (default: "
                   "stdout)")] = None,
    fmt: Annotated[DrawFormat, typer.Option("--format", "-f")] = DrawFormat.svg,
) -> None:
    """The castle as concentric rings, with flows as arrows."""
    from castle.views.draw import draw as run

    _emit(run(spec, fmt.value), out)


class StatusFormat(StrEnum):
    """Output formats of `castle status`."""

    text = "text"
    json = "json"


@app.command()
@handled
def status(
    spec: SpecArg,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="the folder generate wrote "
                   "(default: the spec's folder); its firewall files are checked too")] = None,
    fmt: Annotated[StatusFormat, typer.Option("--format", "-f")] = StatusFormat.text,
) -> None:
    """The live host (iptables/nft, docker networks and containers) against the spec."""
    from castle.views.status import render_status
    from castle.views.status import status as run

    folder(out)
    result = run(spec, out)
    sys.stdout.write(render_status(result, fmt.value))
    if not result.ok:
        raise Exit(1)


@app.command()
@handled
def schema() -> None:
    """Print the JSON Schema of zones.toml (for editors)."""
    from castle.spec.starter import json_schema

    print(json_schema())


def _short_helps() -> None:
    """Each command's first paragraph as its line in `castle --help`, whole: click's plain
    layout would cut a longer one at the column's width (typer's rich layout wrapped it)."""
    for command in app.registered_commands:
        doc = inspect.getdoc(command.callback) if command.callback else None
        if command.short_help is None and doc:
            command.short_help = " ".join(doc.split("\n\n", 1)[0].split())


_short_helps()


def main() -> None:
    """Console entry point."""
    # typer turns every registered command into a click command on each run (signatures,
    # type hints, a pydantic TypeAdapter per parameter): build only the one invoked
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    chosen = [c for c in app.registered_commands
              if (c.name or getattr(c.callback, "__name__", "").replace("_", "-")) == name]
    if not chosen:
        app()
        return
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                      help=app.info.help)
    one.registered_commands = chosen
    one.registered_callback = app.registered_callback  # the same group options (--version)
    one()
