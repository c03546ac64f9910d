"""Injection: hostile text in every user-supplied field is rejected (exit 2, file:line) or inert.

Table-driven: each (field, payload) says which. For emitted payloads every generated YAML
document parses to the same structure as with a harmless placeholder (so the value
round-trips exactly and nothing else moved), the shell script passes `sh -n` and
shellcheck, runs (--dry-run) without executing the payload, and nft accepts its file.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from castle.cli import app
from tests.strategies import dump_toml

ROOT = Path(__file__).resolve().parents[1]
BASE = tomllib.loads((ROOT / "zones.example.toml").read_text())
MARK = "XMARKX"
PLACEHOLDER = "PLACEHOLDER"
PWNED = "/tmp/castle-injection-pwned"  # the shell payloads try to create it

PAYLOADS = {
    "double-quote": f'a"b{MARK}"',
    "single-quote": f"a'b{MARK}'",
    "command-subst": f"$(touch {PWNED}){MARK}",
    "backticks": f"`touch {PWNED}`{MARK}",
    "shell-mix": f"'; touch {PWNED}; echo '\"{MARK}",
    "jinja-var": f"{{{{ 7 * 7 }}}}{MARK}",
    "jinja-block": f"{{% for x in range(3) %}}x{{% endfor %}}{MARK}",
    "jinja-comment": f"{{# gone #}}{MARK}",
    "yaml-anchor": f"&a [{MARK}]",
    "yaml-alias": f"*a {MARK}",
    "yaml-tag": f"!!python/object/apply:os.system ['touch {PWNED}'] {MARK}",
    "yaml-flow": f"{{a: 1}}, [b] {MARK}: c # d",
    "yaml-doc": f"--- {MARK}\n...",
    "nft-breakout": f'"; flush ruleset; add table ip x {MARK} #',
    "backslash": f"a\\b\\{MARK}\\",
    "unicode": f"ünïcødé 🐍 {MARK}",
    "newline": f"a\n{MARK}: b",
    "crlf": f"a\r\n{MARK}",
    "nul": f"a\x00{MARK}",
    "u2028": f"a\u2028{MARK}",
    "tab": f"a\t{MARK}",
    "long": MARK + "x" * 5000,
}
CONTROL = re.compile("[\x00-\x1f\x7f\u2028\u2029]")


def _flow(data: dict[str, Any], i: int) -> dict[str, Any]:
    flow: dict[str, Any] = data["flows"][i]
    return flow


def _rename_service(data: dict[str, Any], value: str) -> None:
    data["services"][value] = data["services"].pop("admin")
    _flow(data, 2)["from"] = value


def _rename_tier(data: dict[str, Any], value: str) -> None:
    data["tiers"][2]["name"] = value
    data["services"]["db"]["tier"] = value


def _set(path: tuple[Any, ...]) -> Callable[[dict[str, Any], str], None]:
    def setter(data: dict[str, Any], value: str) -> None:
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
        node[path[-1]] = value

    return setter


def _tls_literal(data: dict[str, Any], value: str) -> None:
    data["services"]["app"].setdefault("tls_env", {})["DB_SSL"] = "=" + value


def _compose_label_key(data: dict[str, Any], value: str) -> None:
    data["services"]["web"].setdefault("compose", {})["labels"] = {value: value}


def _waiver(data: dict[str, Any], value: str) -> None:
    _flow(data, 3)["waiver"] = value


# field -> (how to inject, what castle must do: "reject", "text" or "emit")
FIELDS: dict[str, tuple[Callable[[dict[str, Any], str], None], str]] = {
    "stack.name": (_set(("stack", "name")), "reject"),
    "tier name": (_rename_tier, "reject"),
    "service name": (_rename_service, "reject"),
    "image": (_set(("services", "web", "image")), "reject"),
    "k8s label value": (_set(("services", "web", "labels", "app")), "reject"),
    "service_account": (_set(("services", "web", "service_account")), "reject"),
    "service description": (_set(("services", "web", "description")), "text"),
    "stack description": (_set(("stack", "description")), "text"),
    "flow description": (_set(("flows", 1, "description")), "text"),
    "waiver": (_waiver, "text"),
    "tls_env literal": (_tls_literal, "text"),
    "passthrough env": (_set(("services", "app", "compose", "environment", "DB_HOST")), "emit"),
    "passthrough command": (_set(("services", "web", "compose", "command")), "emit"),
    "passthrough label key": (_compose_label_key, "emit"),
}


def expectation(field: str, payload: str) -> str:
    """'reject' or 'emit' for a (field, payload) pair: the table the tests check."""
    kind = FIELDS[field][1]
    if kind == "text":  # one-line free text: no control characters, at most 500 characters
        value = PAYLOADS[payload]
        return "reject" if CONTROL.search(value) or len(value) > 500 else "emit"
    return kind


CASES = [(f, p) for f in FIELDS for p in PAYLOADS]


def run_generate(tmp: Path, data: dict[str, Any]) -> tuple[int, str, Path]:
    """Write the spec, run `castle generate` into tmp/out; (exit code, output, out)."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / "zones.toml"
    spec.write_text(dump_toml(data), encoding="utf-8")
    out = tmp / "out"
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out),
                                      "-t", "compose", "-t", "iptables", "-t", "nftables",
                                      "-t", "k8s"])
    return result.exit_code, result.output, out


def yaml_docs(folder: Path) -> dict[str, list[Any]]:
    """Every YAML file below a folder, parsed (safe loader)."""
    return {str(p.relative_to(folder)): list(yaml.safe_load_all(p.read_text(encoding="utf-8")))
            for p in sorted(folder.rglob("*.yaml"))}


def swap(value: Any, old: str, new: str) -> Any:
    """`value` with `old` replaced by `new` in every string, keys included."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {swap(k, old, new): swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [swap(v, old, new) for v in value]
    return value


def check_shell(path: Path) -> None:
    """The script parses, passes shellcheck, and its dry run executes nothing it carries."""
    assert subprocess.run(["sh", "-n", str(path)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", "-s", "sh", str(path)], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stdout
    done = subprocess.run(["sh", str(path), "--dry-run"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert not Path(PWNED).exists(), "the payload ran"
    inside = False
    for line in path.read_text().splitlines():
        if re.match(r"\s*cat <<'CASTLE_RULES'$", line):
            inside = True
        elif line == "CASTLE_RULES":
            inside = False
        elif MARK in line:
            assert inside or line.lstrip().startswith("#"), f"unquoted payload: {line}"


def check_nft(path: Path) -> None:
    """The payload only appears in comments, and nft accepts the file (in a new netns)."""
    for line in path.read_text().splitlines():
        if MARK in line:
            stripped = re.sub(r'comment "[^"]*"', "", line)
            assert MARK not in stripped or stripped.lstrip().startswith("#"), line
    if shutil.which("nft") and shutil.which("unshare"):
        done = subprocess.run(["unshare", "--net", "nft", "-c", "-f", str(path)],
                              capture_output=True, text=True)
        if "Operation not permitted" not in done.stderr:
            assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[Any]]]:
    """Per field, the YAML generated with a harmless placeholder in it."""
    out: dict[str, dict[str, list[Any]]] = {}
    for field, (inject, kind) in FIELDS.items():
        if kind == "reject":
            continue
        data = copy.deepcopy(BASE)
        inject(data, PLACEHOLDER)
        code, text, folder = run_generate(tmp_path_factory.mktemp("base"), data)
        assert code == 0, text
        out[field] = yaml_docs(folder)
    return out


@pytest.mark.parametrize(("field", "payload"), CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_injection(field: str, payload: str, tmp_path: Path,
                   baseline: dict[str, dict[str, list[Any]]]) -> None:
    """Rejected with file:line and nothing written, or emitted inertly and round-tripped."""
    value = PAYLOADS[payload]
    data = copy.deepcopy(BASE)
    FIELDS[field][0](data, value)
    code, text, out = run_generate(tmp_path, data)
    assert "Traceback" not in text and "internal error" not in text, text
    if expectation(field, payload) == "reject":
        assert code == 2, text
        assert re.search(r"zones\.toml:\d+(:\d+)?: error: ", text), text
        assert not out.exists() or not any(out.rglob("*"))
        return
    assert code == 0, text
    docs = yaml_docs(out)
    # a tls_env literal is written for compose: `$` doubled so that it is not interpolated
    written = value.replace("$", "$$") if field == "tls_env literal" else value
    want = baseline[field]
    if field == "passthrough command" or (field == "passthrough env" and "$" in value):
        # workloads.yaml reads these as compose does (a command string is split into words,
        # a `$` value is compose interpolation and left out): tests/test_workloads.py
        want = {k: v for k, v in want.items() if k != "k8s/workloads.yaml"}
        docs.pop("k8s/workloads.yaml")
    assert swap(docs, written, PLACEHOLDER) == want, "YAML changed shape"
    compose = docs["compose.yaml"][0]
    if field == "passthrough env":
        assert compose["services"]["app"]["environment"]["DB_HOST"] == value
    elif field == "passthrough command":
        assert compose["services"]["web"]["command"] == value
    elif field == "passthrough label key":
        assert compose["services"]["web"]["labels"] == {value: value}
    elif field == "tls_env literal":
        assert compose["services"]["app"]["environment"]["DB_SSL"] == written
    # the slow tools run only where the payload reached the file
    if MARK in (out / "firewall" / "iptables.sh").read_text():
        check_shell(out / "firewall" / "iptables.sh")
    if MARK in (out / "firewall" / "castle.nft").read_text():
        check_nft(out / "firewall" / "castle.nft")


def test_the_table_has_both_outcomes() -> None:
    """Negative control for the table itself: some cases are rejected, some emitted."""
    outcomes = {expectation(f, p) for f, p in CASES}
    assert outcomes == {"reject", "emit"}


def test_shape_check_catches_a_yaml_breakout(tmp_path: Path) -> None:
    """Negative control: a value pasted into YAML unquoted changes the parsed shape."""
    good = "services:\n  web:\n    command: PLACEHOLDER\n"
    differed = 0
    for evil in ("true", "[a, b]", PAYLOADS["yaml-alias"], PAYLOADS["yaml-flow"]):
        broken = good.replace(PLACEHOLDER, evil)
        try:
            parsed = yaml.safe_load(broken)
        except yaml.YAMLError:
            continue  # refusing to parse is caught too
        assert swap(parsed, evil, PLACEHOLDER) != yaml.safe_load(good), evil
        differed += 1
    assert differed >= 2


def test_shell_check_catches_an_unquoted_payload(tmp_path: Path) -> None:
    """Negative control: a payload outside the quoted heredoc runs, and the check says so."""
    script = tmp_path / "bad.sh"
    script.write_text(f"#!/bin/sh\necho {PAYLOADS['command-subst']}\n")
    try:
        with pytest.raises(AssertionError):
            check_shell(script)
    finally:
        Path(PWNED).unlink(missing_ok=True)
