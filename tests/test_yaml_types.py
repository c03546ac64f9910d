"""Strings castle writes into YAML read back as the same strings, whoever reads them.

YAML 1.1 (PyYAML) reads `yes`, `on`, `12:30` and `2026-12-03` as a bool, a number and a
date; YAML 1.2 (ruamel.yaml) and compose-go read `1e3`, `0o17` and `0e12345` as numbers.
Every string castle emits must survive all three readers unchanged: a service named `1e3`
must not become the number 1000, nor a short git hash `0e12345` the number 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from typer.testing import CliRunner

from castle.cli import app
from tests.oracles import compose_go
from tests.strategies import examples, toml_key, toml_str

# The forms YAML readers turn into something else when they are written plain.
SPECIAL = ["1e3", "0o17", "0e12345", "yes", "no", "on", "off", "y", "n", "null", "Null", "~",
           "true", "False", "0x1F", ".inf", "-.inf", ".nan", "1_000", "12:30", "190:20:30",
           "2026-12-03", "2026-12-03T10:00:00Z", "0", "-1", "+1", "1.5", "0b101", "017",
           " lead", "trail ", "#", "a #b", ": ", "a: b", "*a", "&a", "!tag", "!!str x", "%",
           "@", "`", "<<", "=", "- x", "? x", "[a]", "{a: 1}", "'q'", '"d"', "|", ">", "",
           "multi\nline", "tab\there", "ünïcødé 🐍", "\u00a0nbsp", "---", "..."]
# The subset that may be a service name (DNS-1123) and a compose object name.
DNS_SPECIAL = [s for s in SPECIAL if s.islower() and s.replace("-", "").isalnum()
               and s.isascii() and not s.startswith("-")] + ["0x1f", "123", "1e10"]
TOP_SPECIAL = ["1e3", "0o17", "0e12345", "yes", "null", "0x1F", "1_000", "true", "0", "1.5"]
LINE_SAFE = [s for s in SPECIAL if "\n" not in s and "\t" not in s]

_RUAMEL = YAML(typ="safe", pure=True)


def read_11(text: str) -> list[Any]:
    """Every document of a YAML text, read by a YAML 1.1 reader (PyYAML)."""
    return list(yaml.safe_load_all(text))


def read_12(text: str) -> list[Any]:
    """Every document of a YAML text, read by a YAML 1.2 reader (ruamel.yaml)."""
    return list(_RUAMEL.load_all(text))


def typed(value: Any) -> Any:
    """A structure where every scalar carries its type (True, 1 and 1.0 stay apart)."""
    if isinstance(value, dict):
        return {typed(k): typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value if value is None or isinstance(
        value, str | int | float | bool) else str(value))


def strings_in(value: Any) -> set[str]:
    """Every string (keys included) of a parsed structure."""
    if isinstance(value, dict):
        return set().union(*(strings_in(k) | strings_in(v) for k, v in value.items()), set())
    if isinstance(value, list):
        return set().union(*(strings_in(v) for v in value), set())
    return {value} if isinstance(value, str) else set()


def spec_text(server: str, client: str, value: str, key: str, top: str) -> str:
    """A spec that carries `value` through every field that reaches YAML as a string."""
    q = toml_str
    return f"""version = 1
[stack]
name = "t"
[mesh]
kind = "istio"
[[tiers]]
name = "a"

[services.{toml_key(server)}]
tier = "a"
image = "busybox:1"
listen = [5432]
labels = {{ app = {q(server)} }}
tls_env = {{ DB_TLS = "server_cert", LITERAL = {q("=" + value) if value in LINE_SAFE
                                                  else q("=x")} }}

[services.{toml_key(server)}.compose]
environment = {{ {toml_key(key)} = {q(value)}, PLAIN = {q(value)} }}
labels = {{ {toml_key(key)} = {q(value)} }}
command = ["sh", "-c", {q(value)}]
healthcheck = {{ test = ["CMD", {q(value)}] }}
working_dir = {q("/" + value)}
volumes = [{q(top + ":/data")}]
configs = [{q(top)}]

[services.{toml_key(client)}]
tier = "a"
image = "busybox:1"
listen = [80]

[[flows]]
from = {q(client)}
to = {q(server)}
ports = [5432]
tls = true
description = {q(value) if value in LINE_SAFE else q("d")}
waiver = {q(value) if value in LINE_SAFE else q("w")}

[compose.volumes.{toml_key(top)}]
labels = {{ {toml_key(key)} = {q(value)} }}

[compose.configs.{toml_key(top)}]
content = {q(value)}
"""


def generate(tmp: Path, text: str) -> Path:
    """Write the spec and generate every target; the output folder."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / "zones.toml"
    spec.write_text(text, encoding="utf-8")
    out = tmp / "out"
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def check_readers_agree(out: Path) -> None:
    """Every generated YAML file reads the same, types included, in YAML 1.1 and 1.2."""
    files = sorted(out.rglob("*.yaml"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert typed(read_11(text)) == typed(read_12(text)), f"{path.name} differs"


def check_compose(out: Path, server: str, client: str, value: str, key: str, top: str) -> None:
    """compose-go's normalized model holds every value as the same string."""
    doc = compose_go.config_json(out / "compose.yaml", "t")
    assert set(doc["services"]) == {server, client}
    svc = doc["services"][server]
    assert svc["environment"][key] == value and svc["environment"]["PLAIN"] == value
    assert svc["labels"] == {key: value}
    assert svc["command"] == ["sh", "-c", value]
    assert svc["healthcheck"]["test"] == ["CMD", value]
    if value in LINE_SAFE:
        assert svc["environment"]["LITERAL"] == value
    assert doc["volumes"][top]["labels"] == {key: value}
    assert doc["configs"][top].get("content", "") == value  # compose omits an empty one


def _cases() -> list[tuple[str, str, str, str, str]]:
    cases = []
    for i, value in enumerate(SPECIAL):
        server = DNS_SPECIAL[i % len(DNS_SPECIAL)]
        client = DNS_SPECIAL[(i + 1) % len(DNS_SPECIAL)]
        key = LINE_SAFE[i % len(LINE_SAFE)].strip() or "K"
        if "=" in key or "$" in key:
            key = "K"
        cases.append((server, client, value, key, TOP_SPECIAL[i % len(TOP_SPECIAL)]))
    return cases


@pytest.mark.skipif(compose_go.skip_reason() is not None, reason=str(compose_go.skip_reason()))
@pytest.mark.parametrize(("server", "client", "value", "key", "top"), _cases(),
                         ids=[repr(c[2]) for c in _cases()])
def test_special_strings_read_back(server: str, client: str, value: str, key: str, top: str,
                                   tmp_path: Path) -> None:
    """Each special form, through every field, reads back unchanged in all three readers."""
    out = generate(tmp_path, spec_text(server, client, value, key, top))
    check_readers_agree(out)
    compose = read_12((out / "compose.yaml").read_text(encoding="utf-8"))[0]
    assert set(compose["services"]) == {server, client}
    assert compose["services"][server]["environment"]["PLAIN"] == value
    for path in (out / "k8s" / "networkpolicies.yaml", out / "k8s" / "workloads.yaml"):
        names = strings_in(read_12(path.read_text(encoding="utf-8")))
        assert server in names and client in names, path.name
    # the mesh names the client by its identity (its ServiceAccounts are in workloads.yaml)
    names = strings_in(read_12((out / "k8s" / "mesh.yaml").read_text(encoding="utf-8")))
    assert server in names and any(n.endswith(f"/sa/{client}") for n in names), names
    check_compose(out, server, client, value, key, top)
    if value in LINE_SAFE and value:  # free text reaches Kubernetes as annotations
        docs = read_12((out / "k8s" / "networkpolicies.yaml").read_text(encoding="utf-8"))
        notes = [v for d in docs for k, v in ((d or {}).get("metadata", {}).get(
            "annotations") or {}).items() if k.startswith(("castle/flow-", "castle/waiver-"))]
        assert notes and set(notes) == {value}, notes


def test_long_keys_read_back(tmp_path: Path) -> None:
    """A key longer than YAML's 1024-character limit for plain keys still reads back."""
    if compose_go.skip_reason():
        pytest.skip(str(compose_go.skip_reason()))
    key = "K" * 1500
    out = generate(tmp_path, spec_text("s", "c", "1e3", key, "vol"))
    check_readers_agree(out)
    check_compose(out, "s", "c", "1e3", key, "vol")


def test_agreement_check_can_fail() -> None:
    """Negative control: unquoted special forms make the two readers disagree."""
    for plain in ("1e3", "0o17", "yes", "12:30", "2026-12-03"):
        text = f"a: {plain}\n{plain}: b\n"
        assert typed(read_11(text)) != typed(read_12(text)) or not isinstance(
            read_11(text)[0]["a"], str), plain


# -- random strings through every field -----------------------------------------------------

_ALPHABET = st.characters(codec="utf-8", exclude_characters="$\x00\r",
                          exclude_categories=("Cs",))
# keys: no control characters, no `=` (KEY=value) and no `$` (interpolation)
_KEY_ALPHABET = st.characters(codec="utf-8", exclude_characters="$=",
                              exclude_categories=("Cs", "Cc", "Zl", "Zp"))
_VALUES = st.one_of(st.sampled_from(SPECIAL), st.text(_ALPHABET, max_size=12),
                    st.builds(lambda a, b: a + b, st.sampled_from(SPECIAL),
                              st.text(_ALPHABET, max_size=4)))


@pytest.mark.skipif(compose_go.skip_reason() is not None, reason=str(compose_go.skip_reason()))
@settings(max_examples=examples(15))
@given(value=_VALUES, server=st.sampled_from(DNS_SPECIAL), top=st.sampled_from(TOP_SPECIAL),
       key=st.one_of(st.sampled_from([k for k in LINE_SAFE if k.strip() and "=" not in k]),
                     st.text(_KEY_ALPHABET, min_size=1, max_size=10).filter(
                         lambda k: k.strip() == k)))
def test_random_strings_read_back(value: str, server: str, top: str, key: str) -> None:
    """Random text (special forms included) survives YAML 1.1, 1.2 and compose-go."""
    import tempfile

    client = "c" if server != "c" else "d"
    with tempfile.TemporaryDirectory() as tmp:
        out = generate(Path(tmp), spec_text(server, client, value, key, top))
        check_readers_agree(out)
        check_compose(out, server, client, value, key, top)



def test_compose_json_is_a_strict_oracle(tmp_path: Path) -> None:
    """Negative control: compose-go really reads an unquoted `0e12345` as a number."""
    if compose_go.skip_reason():
        pytest.skip(str(compose_go.skip_reason()))
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  s:\n    image: x\n    environment:\n      A: 0e12345\n"
                    "    labels:\n      L: 0o17\n")
    doc = compose_go.config_json(path, "t")
    assert json.dumps(doc["services"]["s"]["environment"]["A"]) != '"0e12345"'
    assert doc["services"]["s"]["labels"]["L"] != "0o17"


# -- every expression of the YAML templates goes through a quoting filter ---------------------

_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
# Expressions that are castle's own constants or whole lines of layout, never spec text:
# loop words the template itself lists, protocol/port integers, policy types, the header.
_CONSTANTS = {"header", "key", "word", "kind", "t", "proto", "port", "end", "s.port",
              "labels(d.labels, 6)", '" " * indent', "meta(sa, ns)",
              "meta(s.name, d.namespace)", 'meta(s.name ~ "-mesh", d.namespace)',
              'meta(s.name ~ "-outside", d.namespace)', "pairs(w.labels, 4)",
              "pairs(w.labels, 6)", "pairs(w.labels, 8)", "pairs(w.annotations, 8)",
              'words("command", w.command)', 'words("args", w.args)'}
_QUOTING = ("yq", "yblock", "comment")
# Values a target quotes in Python, through the filters' own functions (render.yaml_strings,
# yaml_scalar, comment, yaml_block): one pass a service instead of one filter call a value.
# These are the fields of compose.py's rows; test_compose.py's
# test_every_service_field_reads_back and test_injection read them back.
_PREQUOTED = {
    "compose.yaml.j2": {"name", "description", "image", "passthrough", "p", "net", "ip", "a",
                        "m", "source", "target", "internal", "subnet", "gateway"},
    # castle.targets.workloads quotes every value with yaml_scalar (the yq filter's function)
    "workloads.yaml.j2": {"account", "config_map", "container_ports", "fs_group", "image", "k",
                          "managed", "namespace", "ns", "path", "qname", "run_group",
                          "run_user", "sa", "secret", "service_ports", "sub", "text", "v",
                          "volume", "w", "working_dir"},
    # castle.targets.k8s likewise (titles and notes with comment); peers and port lists are
    # text of the -parts template, whose macros quote with yq
    "networkpolicies.yaml.j2": {"k", "managed", "name", "namespace", "note", "peer", "ports",
                                "title", "v"},
    # the pod selectors' labels, which castle.targets.k8s quotes with yaml_pairs
    "networkpolicies-parts.yaml.j2": {"k", "v"},
}


def unquoted_expressions(text: str) -> list[str]:
    """The `{{ ... }}` expressions of a template that pass through no quoting filter."""
    found = []
    for expr in re.findall(r"{{-?\s*(.*?)\s*-?}}", text):
        filters = [f.strip().split("(")[0] for f in expr.split("|")[1:]]
        if not any(f in _QUOTING for f in filters) and expr not in _CONSTANTS:
            found.append(expr)
    return found


def test_yaml_templates_quote_every_value() -> None:
    """No YAML template writes an expression without yq, yblock or comment (constants and
    values quoted in Python aside)."""
    found = {p.name: unquoted_expressions(p.read_text()) for p in _TEMPLATES.glob("*.yaml.j2")}
    bad = {name: [e for e in exprs if e not in _PREQUOTED.get(name, set())]
           for name, exprs in found.items()}
    assert len(bad) >= 5 and not any(bad.values()), bad
    # the list names only what its templates really write unfiltered
    for name, exprs in _PREQUOTED.items():
        assert exprs == set(found[name]), name


def test_template_scan_can_fail() -> None:
    """Negative control: an unfiltered name is found, a quoted one is not."""
    assert unquoted_expressions("  {{ s.name }}:\n    image: {{ s.image | yq }}\n") == ["s.name"]
