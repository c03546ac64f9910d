"""Compose passthrough is checked against the Compose Specification's JSON schema.

Oracles: compose-go (`config -q`, the real Compose loader) for the verdict on whole files,
and the `jsonschema` package (Draft7Validator) for castle's own small schema checker.
Every passthrough castle accepts, compose-go accepts; what compose-go rejects for its
shape, castle rejects at the key's line.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from castle.cli import app
from castle.spec import compose_schema
from tests.oracles import compose_go
from tests.strategies import examples, toml_key, toml_value

needs_compose = pytest.mark.skipif(compose_go.skip_reason() is not None,
                                   reason=str(compose_go.skip_reason()))

HEAD = """version = 1
[stack]
name = "t"
[[tiers]]
name = "a"
[services.web]
tier = "a"
image = "busybox:1"
"""

# (passthrough, must castle and compose accept it?)
CASES: list[tuple[dict[str, Any], bool]] = [
    ({"restart": "always"}, True),
    ({"environment": {"A": "1", "B": 2, "C": True}}, True),
    ({"environment": ["A=1", "B=2"]}, True),
    ({"command": ["sh", "-c", "echo hi"]}, True),
    ({"command": "echo hi"}, True),
    ({"healthcheck": {"test": ["CMD", "true"], "interval": "5s", "retries": 3}}, True),
    ({"deploy": {"resources": {"limits": {"cpus": "0.5", "memory": "64M"}}}}, True),
    ({"labels": {"a": "b"}, "user": "1000", "read_only": True}, True),
    ({"x-mine": {"anything": [1, "two"]}}, True),
    ({"ulimits": {"nofile": {"soft": 1024, "hard": 2048}}}, True),
    ({"envirnoment": {"A": "1"}}, False),
    ({"bad\u0001key": 1}, False),
    ({"restart\u0000": "always"}, False),
    ({"healthcheck": {"test": ["CMD", "true"], "bogus": 1}}, False),
    ({"healthcheck": {"interval": 5}}, False),
    ({"command": 5}, False),
    ({"read_only": "yes please"}, False),
    ({"deploy": {"replicas": "x", "mode": 3}}, False),
    ({"environment": {"": "x"}}, False),
    ({"ulimits": {"nofile": {"soft": 1024}}}, False),
    ({"stop_signal": {"a": 1}}, False),
]


# The schema is stricter than compose-go's loader here: castle follows the schema.
STRICTER = [{"labels": ["a=b", "a=b"]}]


def validate(tmp: Path, passthrough: dict[str, Any]) -> tuple[int, str, Path]:
    """castle validate + generate of a one-service spec carrying `passthrough`."""
    lines = [HEAD, "[services.web.compose]"]
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in passthrough.items()]
    spec = tmp / "zones.toml"
    spec.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(tmp / "out"),
                                      "-t", "compose"])
    return result.exit_code, result.output, spec


def compose_accepts(tmp: Path, passthrough: dict[str, Any]) -> bool:
    """compose-go's verdict on a hand-made file with the same service (JSON is YAML)."""
    path = tmp / "hand.yaml"
    doc = {"services": {"web": {"image": "busybox:1", **passthrough}}}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return compose_go.config_check(path, "t")[0]


@needs_compose
@pytest.mark.parametrize(("passthrough", "ok"), CASES, ids=[json.dumps(c[0])[:40] for c in CASES])
def test_castle_and_compose_agree(passthrough: dict[str, Any], ok: bool, tmp_path: Path) -> None:
    """Each case: compose-go's verdict is the table's, and castle's is the same."""
    assert compose_accepts(tmp_path, passthrough) == ok, "the table is wrong about compose"
    code, output, spec = validate(tmp_path, passthrough)
    assert "internal error" not in output and "Traceback" not in output
    if ok:
        assert code == 0, output
        assert compose_go.config_check(tmp_path / "out" / "compose.yaml", "t")[0]
        return
    assert code == 2, output
    key = next(iter(passthrough))
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1)
                if text.startswith(toml_key(key)))
    assert re.search(rf"zones\.toml:{line}: error: services\.web\.compose\.", output), output
    assert not (tmp_path / "out").exists()


@needs_compose
@pytest.mark.parametrize("passthrough", STRICTER)
def test_castle_may_be_stricter_than_compose(passthrough: dict[str, Any], tmp_path: Path) -> None:
    """Where the schema forbids what compose-go tolerates, castle rejects (never the reverse)."""
    assert compose_accepts(tmp_path, passthrough)
    assert validate(tmp_path, passthrough)[0] == 2


@needs_compose
def test_top_level_objects(tmp_path: Path) -> None:
    """[compose.volumes] and [compose.configs] bodies are checked too, at their lines."""
    spec = tmp_path / "zones.toml"
    spec.write_text(HEAD + '\n[compose.volumes.data]\ndriver = 3\n\n[compose.configs.c]\n'
                    'content = "x"\nunknown = true\n')
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "zones.toml:11: error: compose.volumes.data.driver: must be a string" in result.output
    assert "zones.toml:15: error: compose.configs.c.unknown: compose has no key" in result.output
    hand = tmp_path / "hand.yaml"
    for top in ({"volumes": {"data": {"driver": 3}}},
                {"configs": {"c": {"content": "x", "unknown": True}}}):
        hand.write_text(json.dumps({"services": {"web": {"image": "x"}}, **top}))
        assert not compose_go.config_check(hand, "t")[0], top


# -- castle's checker against a reference JSON Schema implementation --------------------------


def reference(name: str) -> jsonschema.Draft7Validator:
    """jsonschema's validator for one definition of the vendored schema."""
    doc = json.loads(compose_schema.SCHEMA_FILE.read_text())
    return jsonschema.Draft7Validator({**doc["definitions"][name],
                                       "definitions": doc["definitions"]})


def test_checker_knows_every_keyword_of_the_schema() -> None:
    """The vendored schema uses only keywords castle's checker implements."""
    used = set(compose_schema.keywords(json.loads(compose_schema.SCHEMA_FILE.read_text())))
    assert used <= compose_schema.CHECKED | compose_schema.ANNOTATIONS, used
    assert "additionalProperties" in used and "oneOf" in used  # the walk really ran


_PROPS = sorted(json.loads(compose_schema.SCHEMA_FILE.read_text())["definitions"]["service"]
                ["properties"])
_SCALARS = st.one_of(st.booleans(), st.integers(-3, 70000), st.sampled_from(
    ["", "1", "always", "5s", "64M", "a=b", "CMD", "tcp", "host", "x-y", "1.5", "rw"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["test", "soft", "hard", "a", "interval", "limits",
                                     "memory", "cpus", "source", "target", "x-k"]), inner,
                    max_size=3)), max_leaves=6)
_SERVICES = st.dictionaries(st.sampled_from([*_PROPS, "bogus", "x-own"]), _VALUES, max_size=4)


@settings(max_examples=examples(300))
@given(_SERVICES)
def test_checker_agrees_with_jsonschema(service: dict[str, Any]) -> None:
    """Valid for castle's checker if and only if valid for jsonschema's Draft7Validator."""
    ours = compose_schema.check(service, compose_schema.definition("service"))
    assert (not ours) == reference("service").is_valid(service), ours


def test_checker_can_reject() -> None:
    """Negative control: the property above sees both verdicts."""
    validator = reference("service")
    assert validator.is_valid({"restart": "always"})
    assert not validator.is_valid({"restart": 1})
    assert compose_schema.check({"restart": 1}, compose_schema.definition("service"))


# -- random passthrough: what castle accepts, compose-go accepts -------------------------------

_SIMPLE = st.sampled_from([
    ("restart", st.sampled_from(["no", "always", "on-failure", "unless-stopped"])),
    ("user", st.sampled_from(["1000", "app", "0:0"])),
    ("read_only", st.booleans()),
    ("tty", st.one_of(st.booleans(), st.sampled_from(["x"]))),
    ("command", st.one_of(st.lists(st.text("abc -$", max_size=4), max_size=3), st.integers())),
    ("labels", st.one_of(st.dictionaries(st.sampled_from(["a", "b.c"]), st.text("xy", max_size=3)),
                         st.lists(st.sampled_from(["a=1", "b=2"]), max_size=3))),
    ("healthcheck", st.fixed_dictionaries({}, optional={
        "test": st.lists(st.sampled_from(["CMD", "true"]), min_size=1, max_size=2),
        "retries": st.one_of(st.integers(0, 5), st.sampled_from(["3", [1]])),
        "interval": st.one_of(st.sampled_from(["5s", "1m"]), st.integers(1, 5))})),
    ("stop_grace_period", st.one_of(st.sampled_from(["10s"]), st.booleans())),
    ("enviroment", st.just({"A": "1"})),
])


@needs_compose
@settings(max_examples=examples(20))
@given(st.lists(_SIMPLE, min_size=1, max_size=3, unique_by=lambda kv: kv[0]).flatmap(
    lambda pairs: st.fixed_dictionaries({k: v for k, v in pairs})))
def test_random_passthrough_castle_never_accepts_what_compose_rejects(
        passthrough: dict[str, Any]) -> None:
    """castle's verdict equals compose-go's for random passthrough tables."""
    with tempfile.TemporaryDirectory() as tmp:
        code, output, _ = validate(Path(tmp), passthrough)
        assert code in (0, 2) and "internal error" not in output
        assert (code == 0) == compose_accepts(Path(tmp), passthrough), output
        if code == 0:
            assert compose_go.config_check(Path(tmp) / "out" / "compose.yaml", "t")[0]
