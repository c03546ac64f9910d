"""Compose passthrough checked against the Compose Specification's own JSON schema (vendored).

A small JSON Schema (draft-07) checker for exactly the keywords that schema uses: importing
a full validator would cost more than the rest of a `castle generate`. The schema file is
read only when a spec has passthrough. A keyword the checker does not know makes it fail
loudly (tests/test_compose_schema.py keeps it in step with the vendored file).
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from castle.spec.findings import Finding, closest
from castle.spec.model import Spec

SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
# Keywords that say nothing about validity.
ANNOTATIONS = frozenset({"description", "deprecated", "default", "title", "$schema", "$id",
                         "definitions", "examples", "$comment"})
CHECKED = frozenset({"type", "$ref", "properties", "patternProperties", "additionalProperties",
                     "items", "oneOf", "anyOf", "allOf", "not", "enum", "const", "required",
                     "uniqueItems", "minimum", "maximum", "exclusiveMinimum",
                     "exclusiveMaximum", "pattern", "minLength", "maxLength", "minItems",
                     "maxItems", "minProperties", "maxProperties"})
_NAMES = {"object": "a table", "array": "an array", "string": "a string",
          "integer": "an integer", "number": "a number", "boolean": "a boolean", "null": "null"}

Path_ = tuple[str | int, ...]
Problem = tuple[Path_, str]


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The vendored Compose Specification schema (parsed once)."""
    doc: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    unknown = sorted(set(keywords(doc)) - CHECKED - ANNOTATIONS)
    if unknown:
        raise RuntimeError(f"{SCHEMA_FILE}: keywords castle cannot check: {', '.join(unknown)}")
    return doc


def keywords(node: Any) -> Iterator[str]:
    """Every keyword a schema uses (property names excluded)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                yield key
                if key in ("properties", "patternProperties", "definitions"):
                    stack.extend(value.values())
                elif key not in ("enum", "const", "required", "default", "examples"):
                    stack.append(value)


def _is(kind: str, value: Any) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return kind == "number" or isinstance(value, int) or float(value).is_integer()


def _what(value: Any) -> str:
    """How a TOML value is called in a message."""
    for kind in ("boolean", "object", "array", "string", "null"):
        if _is(kind, value):
            return _NAMES[kind]
    return "an integer" if isinstance(value, int) else "a float"


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def check(value: Any, node: dict[str, Any], path: Path_ = ()) -> list[Problem]:
    """Every way `value` breaks the schema `node` (empty: valid), deepest paths first."""
    root = schema()
    while "$ref" in node:  # draft-07: a $ref replaces its siblings
        ref = node["$ref"]
        if not ref.startswith("#/definitions/"):
            raise RuntimeError(f"unsupported $ref {ref}")
        node = root["definitions"][ref.removeprefix("#/definitions/")]
    out: list[Problem] = []
    kinds = node.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(k, value) for k in kinds):
            want = " or ".join(_NAMES[k] for k in kinds if k != "null")  # TOML has no null
            return [(path, f"must be {want}, not {_what(value)}")]
    if "enum" in node and not any(_same(value, e) for e in node["enum"]):
        return [(path, "must be one of " + ", ".join(json.dumps(e) for e in node["enum"]))]
    if "const" in node and not _same(value, node["const"]):
        return [(path, f"must be {json.dumps(node['const'])}")]
    for word in ("oneOf", "anyOf"):
        if word in node:
            out += _alternatives(value, node[word], path, one=word == "oneOf")
    for sub in node.get("allOf", ()):
        out += check(value, sub, path)
    if "not" in node and not check(value, node["not"], path):
        out.append((path, "is a form compose does not allow here"))
    if isinstance(value, dict):
        out += _object(value, node, path)
    elif isinstance(value, list):
        out += _array(value, node, path)
    elif isinstance(value, str):
        if "pattern" in node and not re.search(node["pattern"], value):
            out.append((path, f"{value[:60]!r} does not match {node['pattern']}"))
        if len(value) < node.get("minLength", 0):
            out.append((path, f"needs at least {node['minLength']} characters"))
        if "maxLength" in node and len(value) > node["maxLength"]:
            out.append((path, f"has more than {node['maxLength']} characters"))
    elif _is("number", value):
        out += _number(value, node, path)
    return out


def _number(value: float, node: dict[str, Any], path: Path_) -> list[Problem]:
    limits = (("minimum", operator.ge, "at least"), ("maximum", operator.le, "at most"),
              ("exclusiveMinimum", operator.gt, "more than"),
              ("exclusiveMaximum", operator.lt, "less than"))
    return [(path, f"must be {words} {node[key]}") for key, ok, words in limits
            if key in node and not ok(value, node[key])]


def _alternatives(value: Any, options: list[dict[str, Any]], path: Path_, *,
                  one: bool) -> list[Problem]:
    """oneOf / anyOf: the problems of the closest option when none fits."""
    results = [check(value, option, path) for option in options]
    fits = sum(1 for r in results if not r)
    if fits == 1 or (fits > 1 and not one):
        return []
    if fits > 1:
        return [(path, "matches more than one of the forms compose allows")]
    # the option of the right type whose problems lie deepest is what the user meant
    typed = [r for r in results if not (len(r) == 1 and r[0][1].startswith("must be ")
                                        and r[0][0] == path)]
    if not typed:
        kinds = [k for o in options for k in _types(o)]
        want = " or ".join(dict.fromkeys(_NAMES[k] for k in kinds if k != "null")) or "another form"
        return [(path, f"must be {want}, not {_what(value)}")]
    return max(typed, key=lambda r: max(len(p) for p, _ in r))


def _types(node: dict[str, Any]) -> list[str]:
    if "$ref" in node:
        node = schema()["definitions"][node["$ref"].removeprefix("#/definitions/")]
    kinds = node.get("type", [])
    return [kinds] if isinstance(kinds, str) else list(kinds)


def _object(value: dict[str, Any], node: dict[str, Any], path: Path_) -> list[Problem]:
    out: list[Problem] = []
    props: dict[str, Any] = node.get("properties", {})
    patterns: dict[str, Any] = node.get("patternProperties", {})
    extra = node.get("additionalProperties", True)
    for key in node.get("required", ()):
        if key not in value:
            out.append((path, f"needs the key {key!r}"))
    for key, item in value.items():
        matched = False
        if key in props:
            matched = True
            out += check(item, props[key], (*path, key))
        for pattern, sub in patterns.items():
            if re.search(pattern, key):
                matched = True
                out += check(item, sub, (*path, key))
        if matched:
            continue
        if extra is False:
            hint = closest(key, sorted(props)) or "check the spelling; own keys start with x-"
            out.append(((*path, key), f"compose has no key {key[:60]!r} here; {hint}"))
        elif isinstance(extra, dict):
            out += check(item, extra, (*path, key))
    if len(value) < node.get("minProperties", 0):
        out.append((path, f"needs at least {node['minProperties']} keys"))
    if "maxProperties" in node and len(value) > node["maxProperties"]:
        out.append((path, f"has more than {node['maxProperties']} keys"))
    return out


def _array(value: list[Any], node: dict[str, Any], path: Path_) -> list[Problem]:
    out: list[Problem] = []
    items = node.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            out += check(item, items, (*path, i))
    elif items is not None:
        raise RuntimeError("tuple-form `items` is not supported")
    if node.get("uniqueItems"):
        seen: list[str] = []
        for item in value:
            key = json.dumps(item, sort_keys=True)
            if key in seen:
                out.append((path, f"lists {json.dumps(item)[:60]} twice"))
                break
            seen.append(key)
    if len(value) < node.get("minItems", 0):
        out.append((path, f"needs at least {node['minItems']} items"))
    if "maxItems" in node and len(value) > node["maxItems"]:
        out.append((path, f"has more than {node['maxItems']} items"))
    return out


def definition(name: str) -> dict[str, Any]:
    """One definition of the schema (service, volume, config...)."""
    found: dict[str, Any] = schema()["definitions"][name]
    return found


# Where the schema allows a string for interpolation but compose then converts it (after
# substituting variables): the string must read as that type. Facts about compose-go v2.
_INT, _FLOAT, _BOOL = "an integer", "a number", "a boolean (true or false)"
_CASTS: dict[tuple[str, ...], str] = {
    **{(k,): _INT for k in ("cpu_count", "cpu_period", "cpu_quota", "cpu_rt_period",
                            "cpu_rt_runtime", "cpu_shares", "oom_score_adj", "pids_limit",
                            "scale")},
    ("cpu_percent",): _FLOAT, ("cpus",): _FLOAT,
    **{(k,): _BOOL for k in ("init", "oom_kill_disable", "privileged", "read_only",
                             "stdin_open", "tty")},
    ("deploy", "replicas"): _INT, ("deploy", "update_config", "parallelism"): _INT,
    ("deploy", "update_config", "max_failure_ratio"): _FLOAT,
    ("deploy", "rollback_config", "parallelism"): _INT,
    ("deploy", "rollback_config", "max_failure_ratio"): _FLOAT,
    ("deploy", "restart_policy", "max_attempts"): _INT,
    ("deploy", "placement", "max_replicas_per_node"): _INT,
    ("healthcheck", "retries"): _INT, ("healthcheck", "disable"): _BOOL,
    ("ports", "[]", "target"): _INT,
    ("ulimits", "*"): _INT, ("ulimits", "*", "hard"): _INT, ("ulimits", "*", "soft"): _INT,
    ("volumes", "[]", "read_only"): _BOOL, ("volumes", "[]", "volume", "nocopy"): _BOOL,
}
_TOP_CASTS: dict[tuple[str, ...], str] = {("external",): _BOOL}
_READS_AS = {
    _INT: re.compile(r"[+-]?[0-9]+"),
    _FLOAT: re.compile(r"[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf(inity)?|nan)",
                       re.IGNORECASE),
    _BOOL: re.compile(r"true|false|y|yes|on|n|no|off", re.IGNORECASE),
}


def cast_problems(value: Any, casts: dict[tuple[str, ...], str],
                  path: Path_ = ()) -> list[Problem]:
    """Strings compose would fail to convert to the type its loader expects there."""
    out: list[Problem] = []
    stack: list[tuple[Any, Path_, tuple[str, ...]]] = [(value, path, ())]
    while stack:
        item, where, shape = stack.pop()
        want = casts.get(shape)
        if want and isinstance(item, str) and "$" not in item and not _READS_AS[
                want].fullmatch(item):
            out.append((where, f"{item[:60]!r} must read as {want}"))
        children = (item.items() if isinstance(item, dict) else enumerate(item)
                    if isinstance(item, list) else ())
        for key, child in children:
            step = "[]" if isinstance(key, int) else key
            for part in (step, "*") if step != "[]" else (step,):
                sub = (*shape, part)
                if any(c[:len(sub)] == sub for c in casts):
                    stack.append((child, (*where, key), sub))
    return sorted(out)


def service_problems(image: str, passthrough: dict[str, Any]) -> list[Problem]:
    """What compose would reject in a service castle writes with this passthrough."""
    service = {"image": image, **passthrough}
    return check(service, definition("service")) or cast_problems(passthrough, _CASTS)


def findings(spec: Spec) -> list[Finding]:
    """Errors for every passthrough of a spec that compose would reject, at its key."""
    out: list[Finding] = []
    for name, svc in spec.services.items():
        if svc.compose:
            base: Path_ = ("services", name, "compose")
            for path, message in service_problems(svc.image, svc.compose):
                out.append(Finding("error", (*base, *path), message))
    for kind, objects in (("volumes", spec.compose.volumes), ("configs", spec.compose.configs)):
        node = definition(kind[:-1])
        for name, body in objects.items():
            where: Path_ = ("compose", kind, name)
            for path, message in (check(body, node, where)
                                  or cast_problems(body, _TOP_CASTS, where)):
                out.append(Finding("error", path, message))
    return out

