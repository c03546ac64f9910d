"""The records zones.toml validates into: frozen, comparable, copied with updates, and
validated by pydantic's core without BaseModel's machinery (what start-up pays for)."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from castle.spec.model import Firewall, Flow, Spec
from castle.spec.record import ValidationError, json_schema

ROOT = Path(__file__).resolve().parent.parent


def test_a_record_is_frozen_and_compares_by_value() -> None:
    a = Flow.model_validate({"from": "web", "to": "db", "ports": [5432]})
    b = Flow.model_validate({"from_": ["web"], "to": "db", "ports": ["5432/tcp"]})
    assert a == b and a is not b
    assert a != Flow.model_validate({"from": "web", "to": "db"})
    with pytest.raises(AttributeError, match="frozen"):
        a.to = ["app"]  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del a.to
    assert repr(a).startswith("Flow(from_=['web'], to=['db'], ports=")


def test_model_copy_replaces_only_what_it_is_given() -> None:
    a = Flow.model_validate({"from": "web", "to": "db", "description": "x"})
    b = a.model_copy(update={"to": ["app"]})
    assert (b.from_, b.to, b.description) == (["web"], ["app"], "x")
    assert a.to == ["db"]  # the original is untouched
    assert b.__pydantic_fields_set__ == {"from_", "to", "description"}


def test_an_absent_table_is_its_defaults() -> None:
    assert Firewall.default() == Firewall.model_validate({})
    spec = Spec.model_validate({"version": 1, "stack": {"name": "s"}, "tiers": [{"name": "t"}]})
    assert spec.firewall == Firewall.default() and spec.firewall.ssh_port == 22


def test_errors_are_pydantics_own() -> None:
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate({"version": 1, "stack": {"name": "Bad"}, "tiers": [], "typo": 1})
    got = {(e["type"], e["loc"]) for e in caught.value.errors()}
    assert got == {("value_error", ("stack", "name")), ("value_error", ("tiers",)),
                   ("extra_forbidden", ("typo",))}


def test_the_json_schema_describes_every_field() -> None:
    schema = json_schema(Spec)
    assert schema["required"] == ["version", "stack", "tiers"]
    assert schema["additionalProperties"] is False
    flow = schema["$defs"]["Flow"]
    assert "from" in flow["properties"] and "from_" not in flow["properties"]
    for name, body in [("Spec", schema), *schema["$defs"].items()]:
        for key, prop in body["properties"].items():
            assert prop["description"], f"{name}.{key} has no description"
    assert schema["$defs"]["Firewall"]["properties"]["ssh_port"]["default"] == 22
    json.dumps(schema)  # every default has a JSON form


@pytest.mark.parametrize("command", ["validate", "generate"])
def test_a_run_never_imports_basemodel(tmp_path: Path, command: str) -> None:
    """The spec is validated by pydantic_core alone: BaseModel's machinery (pydantic.main,
    its schema generation and plugin discovery) stays out of the process."""
    spec = tmp_path / "zones.toml"
    spec.write_text((ROOT / "zones.example.toml").read_text())
    code = ("import sys, runpy; sys.argv = ['castle', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('castle', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('LOADED', *sorted(m for m in sys.modules if m.startswith('pydantic')))\n")
    done = subprocess.run([sys.executable, "-c", code, command, str(spec), "-o",
                           str(tmp_path / "out")][: 5 if command == "validate" else 7],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split("LOADED", 1)[1].split()
    assert "pydantic_core" in loaded  # the negative control: the probe sees imports
    assert [m for m in loaded if not m.startswith("pydantic_core")] == []


def test_a_record_copies_and_pickles_as_a_model_did() -> None:
    """copy, deepcopy and pickle rebuild a record without going through its frozen setattr;
    a deep copy shares no list with the original."""
    spec = Spec.model_validate({"version": 1, "stack": {"name": "s"}, "tiers": [{"name": "t"}],
                                "flows": [{"from": "internet", "to": "t", "ports": [80]}]})
    for copied in (copy.copy(spec), copy.deepcopy(spec), pickle.loads(pickle.dumps(spec))):
        assert copied == spec and copied is not spec
        assert copied.__pydantic_fields_set__ == spec.__pydantic_fields_set__
        with pytest.raises(AttributeError, match="frozen"):
            copied.flows = []  # type: ignore[misc]
    deep = copy.deepcopy(spec)
    deep.flows[0].to.append("other")
    assert spec.flows[0].to == ["t"]  # the negative control: the copy is its own
