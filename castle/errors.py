"""Errors castle raises; str() of each is the message a user reads."""

from __future__ import annotations

from typing import NamedTuple


class CastleError(Exception):
    """Root of every error castle raises on purpose; the CLI maps it to an exit code."""

    exit_code = 2


class UsageError(CastleError):
    """The command was called in a way that cannot work (bad option, missing file)."""


class WriteRefused(CastleError):
    """Writing would overwrite a file castle did not generate, or escape the output folder."""


class Diagnostic(NamedTuple):
    """One finding about a spec, located in its file: an error or a warning."""

    file: str
    line: int
    col: int | None
    severity: str  # "error" | "warning"
    where: str  # field path such as "flows[2].to", or "" for the whole file
    message: str
    hint: str = ""

    def __str__(self) -> str:
        pos = f"{self.file}:{self.line}" + (f":{self.col}" if self.col else "")
        where = f"{self.where}: " if self.where else ""
        hint = f"; {self.hint}" if self.hint else ""
        return f"{pos}: {self.severity}: {where}{self.message}{hint}"


class SpecError(CastleError):
    """The spec is invalid; carries every error found (and the warnings seen with them)."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.line, d.col or 0, d.message))
        errors = [d for d in self.diagnostics if d.severity == "error"]
        super().__init__("\n".join(str(d) for d in errors))

    @property
    def errors(self) -> list[Diagnostic]:
        """The diagnostics that make the spec invalid."""
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        """The diagnostics that do not block generation."""
        return [d for d in self.diagnostics if d.severity == "warning"]
