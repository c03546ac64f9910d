"""Read zones.toml into a validated Spec; every problem becomes a SpecError with file and line."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castle.errors import Diagnostic, SpecError, UsageError
from castle.spec import toml_lines
from castle.spec.findings import Edge, Finding, Loc, closest, where
from castle.spec.model import Flow, Service, Spec
from castle.spec.record import Record, ValidationError
from castle.spec.rules import check
from castle.spec.values import compiled

_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
# The patterns below read a text only to place a problem or a warning: a valid spec read by
# toml_lines never needs them, so each is compiled by its first use, not on import.
_HEADER = rf"^\s*(\[\[?)\s*({_PART}(?:\s*\.\s*{_PART})*)\s*\]\]?\s*(#.*)?$"
_KEY = rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*="
_BARE = r"[A-Za-z0-9_-]+"
_INLINE = r"\{([^{}]*)\}"  # one inline table (flows are flat: no nesting)
_INLINE_KEY = r"(?:^|,)\s*([A-Za-z0-9_-]+)\s*="
_STRING = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"


def _brackets(text: str) -> int:
    """Opened minus closed square brackets outside strings and comments."""
    code = compiled(_STRING).sub("", text).split("#", 1)[0]
    return code.count("[") - code.count("]")
_TOML_POS = r"\(at line (\d+), column (\d+)\)"


def _split_key(text: str) -> list[str]:
    """The parts of a dotted TOML key, quoted parts unquoted (escapes included)."""
    if "\\" in text:  # an escape in a basic string: let the TOML reader spell it out
        import tomllib

        try:
            node: Any = tomllib.loads(f"{text} = 0")
        except tomllib.TOMLDecodeError:
            return []
        keys: list[str] = []
        while isinstance(node, dict) and len(node) == 1:
            key, node = next(iter(node.items()))
            keys.append(key)
        return keys
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", text)
    return [a or b or c for a, b, c in parts]


class SourceMap:
    """Maps field paths of a TOML document (("flows", 2, "to")) to the line that sets them.

    The text is scanned on first use: a spec without problems needs only its flows' lines
    (for the firewall comments), and the plain reader (toml_lines) already found those.
    """

    def __init__(self, text: str, flow_lines: list[int] | None = None) -> None:
        self._text = text
        self._lines: dict[tuple[str | int, ...], int] | None = None
        self._flows = flow_lines

    @property
    def lines(self) -> dict[tuple[str | int, ...], int]:
        """Every field path the text sets, with its line."""
        if self._lines is None:
            self._lines = _scan(self._text)
        return self._lines

    def flow_line(self, index: int) -> int:
        """The line of flows[index]: `line(("flows", index))`, without a scan when known."""
        if self._flows is not None and index < len(self._flows):
            return self._flows[index]
        return self.line(("flows", index))

    def line(self, loc: Loc) -> int:
        """The line of the longest known prefix of `loc` (1 when nothing matches)."""
        path = tuple(loc)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1


def _scan(text: str) -> dict[tuple[str | int, ...], int]:
    """Field path -> line, for every header, key and inline table of a TOML text."""
    lines: dict[tuple[str | int, ...], int] = {}
    counts: dict[tuple[str, ...], int] = {}
    table: tuple[str | int, ...] = ()
    array: tuple[str | int, ...] | None = None  # inside `key = [` over several lines
    depth = items = 0
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if array is not None:
            items = _inline_tables(lines, array, items, line, n)
            depth += _brackets(line)
            if depth <= 0:
                array = None
            continue
        if stripped[:1] == "[":
            m = compiled(_HEADER).match(line)
            if m:
                keys = tuple(_split_key(m.group(2)))
                if m.group(1) == "[[":
                    idx = counts.get(keys, 0)
                    counts[keys] = idx + 1
                    table = (*keys, idx)
                    lines.setdefault(keys, n)
                else:
                    table = keys
                lines.setdefault(table, n)
            continue
        head, eq, value = stripped.partition("=")
        if not eq:
            continue
        head = head.rstrip()
        if compiled(_BARE).fullmatch(head):  # the common case, without the full key grammar
            parts: list[str] = [head]
        else:
            k = compiled(_KEY).match(line)
            if not k:
                continue
            parts = _split_key(k.group(1))
        path = (*table, *parts)
        for cut in range(len(table) + 1, len(path) + 1):
            lines.setdefault(path[:cut], n)
        if value.lstrip().startswith("["):  # an array, maybe of inline tables
            items = _inline_tables(lines, path, 0, value, n)
            depth = _brackets(value)
            array = path if depth > 0 else None
    return lines


def _inline_tables(lines: dict[tuple[str | int, ...], int], path: tuple[str | int, ...],
                   index: int, text: str, n: int) -> int:
    """Record the inline tables `{ k = v, ... }` of an array line; return the next index."""
    for body in compiled(_INLINE).findall(text):
        lines.setdefault((*path, index), n)
        for key in compiled(_INLINE_KEY).findall(body):
            lines.setdefault((*path, index, key), n)
        index += 1
    return index


@dataclass(frozen=True)
class Loaded:
    """A validated spec with where it came from and what its checks found."""

    spec: Spec
    path: Path
    text: str
    sha256: str
    source: SourceMap
    warnings: tuple[Diagnostic, ...]
    edges: tuple[Edge, ...]

    @property
    def name(self) -> str:
        """The spec's file name, as written into generated headers."""
        return self.path.name

    def diagnostic(self, finding: Finding) -> Diagnostic:
        """Locate a finding in this spec's file."""
        return to_diagnostic(str(self.path), self.source, finding)

    def line_of(self, loc: Loc) -> int:
        """The line that sets a field path."""
        return self.source.line(loc)


def to_diagnostic(file: str, source: SourceMap, finding: Finding) -> Diagnostic:
    """A Finding placed at its file and line."""
    return Diagnostic(file, source.line(finding.loc), None, finding.severity, where(finding.loc),
                      finding.message, finding.hint)


def _fields(model: type[Record], loc: tuple[str | int, ...]) -> list[str]:
    """The field names allowed at `loc` (for "did you mean" on unknown fields)."""
    current: type[Record] | None = model
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the item has the list's record
        if current is None:
            return []
        info = current.fields.get(str(part))
        if info is None:
            info = next((f for f in current.fields.values() if f.alias == part), None)
        if info is None:
            return []
        current = info.type.records[0] if info.type.records else None
    if current is None:
        return []
    return [f.alias or n for n, f in current.fields.items()]


def _pydantic_findings(exc: ValidationError, prefix: Loc = ()) -> list[Finding]:
    findings = []
    for err in exc.errors():
        # a dict key's own error: pydantic appends "[key]"; the key itself is the place
        loc = tuple(p for p in (*prefix, *err["loc"]) if p != "[key]")
        msg = str(err["msg"]).removeprefix("Value error, ")
        hint = ""
        kind = err["type"]
        if kind == "extra_forbidden":
            name = str(loc[-1])
            parent = loc[:-1]
            # services.NAME is a dict level, not a model: skip it when looking up fields
            model_path = tuple(p for i, p in enumerate(parent)
                               if not (i > 0 and parent[i - 1] == "services"))
            msg = f"unknown field {name!r}"
            hint = closest(name, _fields(Spec, model_path)) or "remove it (typos are errors)"
        elif kind == "missing":
            msg = f"missing required field {str(loc[-1])!r}"
        elif kind == "literal_error" and loc == ("version",):
            msg = f"unsupported format version {err.get('input')!r}"
            hint = "this castle reads version = 1"
        findings.append(Finding("error", loc, msg, hint))
    return findings


def parse(text: str, file: str = "zones.toml") -> tuple[Spec, SourceMap, list[Finding], list[Edge]]:
    """Parse and validate TOML text; raise SpecError listing every error found."""
    plain = toml_lines.read(text)
    data, flow_lines = plain if plain is not None else (_read_toml(text, file), None)
    del plain
    source = SourceMap(text, flow_lines)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        findings = _piecewise(data) or _pydantic_findings(exc)
        raise SpecError([to_diagnostic(file, source, f) for f in findings]) from None
    del data  # the records hold what they need: the checks reuse the tables' memory
    findings, edges = check(spec)
    findings += _compose_findings(spec)
    if any(f.severity == "error" for f in findings):
        raise SpecError([to_diagnostic(file, source, f) for f in findings])
    return spec, source, findings, edges


def _read_toml(text: str, file: str) -> dict[str, Any]:
    """tomllib's reading of a text outside the plain subset (imported only for one)."""
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = compiled(_TOML_POS).search(str(exc))
        line, col = (int(m.group(1)), int(m.group(2))) if m else (1, None)
        message = compiled(_TOML_POS).sub("", str(exc)).strip()
        raise SpecError([Diagnostic(file, line, col, "error", "", f"invalid TOML: {message}",
                                    "fix the syntax at that position")]) from None
    except ValueError:
        # not TOMLDecodeError: an integer longer than Python's int() converts
        long = re.search(r"[0-9][0-9_]{4299,}", text)
        line = text.count("\n", 0, long.start()) + 1 if long else 1
        raise SpecError([Diagnostic(file, line, None, "error", "", "invalid TOML: an integer "
                                    "of more than 4300 digits", "write a number castle can "
                                    "use (a port or a count)")]) from None
    except RecursionError:
        # tomllib recurses per nesting level: thousands of [[[...]]] exhaust the stack
        raise SpecError([Diagnostic(file, 1, None, "error", "", "invalid TOML: arrays or "
                                    "inline tables nested too deeply",
                                    "a zones.toml needs a few levels at most")]) from None


_OPTIONAL_TABLES = frozenset({"firewall", "kubernetes", "mesh", "tls", "compose"})


def _piecewise(data: dict[str, Any]) -> list[Finding]:
    """Validate services and flows one by one, then run the wall rules on the valid rest,
    so that a typo in one table does not hide the problems of the others."""
    raw_services = data.get("services", {})
    raw_flows = data.get("flows", [])
    if not isinstance(raw_services, dict) or not isinstance(raw_flows, list):
        return []
    findings: list[Finding] = []
    services: dict[str, Service] = {}
    for name, raw in raw_services.items():
        try:
            services[name] = Service.model_validate(raw)
        except ValidationError as exc:
            findings += _pydantic_findings(exc, ("services", name))
    flows: list[Flow] = []
    skip: set[int] = set()
    for i, raw in enumerate(raw_flows):
        try:
            flows.append(Flow.model_validate(raw))
        except ValidationError as exc:
            findings += _pydantic_findings(exc, ("flows", i))
            flows.append(Flow.model_validate({"from": "internet", "to": "internet"}))
            skip.add(i)
    rest_data = {**data, "services": {}, "flows": []}
    try:
        rest = Spec.model_validate(rest_data)
    except ValidationError as exc:
        findings += _pydantic_findings(exc)
        # a bad optional table still leaves the services and flows worth checking
        bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
        if bad - _OPTIONAL_TABLES:
            return findings
        try:
            rest = Spec.model_validate({k: v for k, v in rest_data.items() if k not in bad})
        except ValidationError:
            return findings
    spec = rest.model_copy(update={"services": services, "flows": flows})
    more, _ = check(spec, frozenset(skip), frozenset(raw_services) - set(services))
    return findings + [f for f in more if f.severity == "error"] + _compose_findings(spec)


def _compose_findings(spec: Spec) -> list[Finding]:
    """What compose would reject in the passthrough (its schema is read only when there is
    any passthrough at all)."""
    if not (spec.compose.volumes or spec.compose.configs
            or any(s.compose for s in spec.services.values())):
        return []
    from castle.spec.compose_schema import findings

    return findings(spec)


def load(path: str | Path) -> Loaded:
    """Read, parse and validate a spec file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{p}: is a folder, not a zones.toml") from None
    except OSError as exc:
        raise UsageError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # editors may save a BOM
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Diagnostic(str(p), line, None, "error", "",
                                    "the file is not UTF-8 text", "save it as UTF-8")]) from None
    spec, source, findings, edges = parse(text, str(p))
    warnings = tuple(to_diagnostic(str(p), source, f) for f in findings)
    return Loaded(spec, p, text, hashlib.sha256(raw).hexdigest(), source, warnings, tuple(edges))
