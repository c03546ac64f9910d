"""The README's examples run as written: its console sessions and its two opening commands."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from castle.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def console_sessions() -> list[list[tuple[str, list[str]]]]:
    """Every ```console block as (command, expected output lines) pairs."""
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), re.S)
    sessions = []
    for block in blocks:
        steps: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        sessions.append(steps)
    return sessions


def in_order(expected: list[str], output: str) -> bool:
    """Each expected line (less elided ones) appears in the output, in order."""
    lines = [line.rstrip() for line in output.splitlines()]
    at = 0
    for want in expected:
        if "..." in want or not want.strip():
            continue
        want = want.rstrip()
        while at < len(lines) and lines[at] != want:
            at += 1
        if at == len(lines):
            return False
        at += 1
    return True


@pytest.fixture()
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding what the README's examples refer to, as the working directory."""
    shutil.copy(ROOT / "zones.example.toml", tmp_path)
    shutil.copytree(ROOT / "tests" / "data" / "compose", tmp_path / "tests" / "data" / "compose")
    for extra in (ROOT / "tests" / "data" / "readme").iterdir():
        shutil.copy(extra, tmp_path / extra.name)
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_console_examples(sandbox: Path) -> None:
    """Each `$ castle ...` line runs; its printed output and `echo $?` match the README."""
    ran = 0
    for steps in console_sessions():
        code = None
        for command, expected in steps:
            if command == "echo $?":
                assert code is not None and [str(code)] == [e for e in expected if e], command
                continue
            words = shlex.split(command, comments=True)
            if not words or words[0] != "castle" or "|" in words:
                code = None
                continue  # another tool (rsvg-convert, dot): not castle's example to run
            result = CliRunner().invoke(app, words[1:])
            code = result.exit_code
            assert code in (0, 1, 2), (command, result.output)
            assert "Traceback" not in result.output
            assert in_order(expected, result.output), (command, result.output)
            ran += 1
    assert ran >= 10


def test_quickstart_command(tmp_path: Path) -> None:
    """The README's first command installs castle and generates the example, as written."""
    if os.environ.get("CASTLE_SKIP_QUICKSTART"):
        pytest.skip("CASTLE_SKIP_QUICKSTART is set")
    first = re.search(r"```sh\n(.*?)\n```", README.read_text(), re.S)
    assert first is not None
    command = first.group(1)
    assert "castle generate zones.example.toml" in command
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=False)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    clone = tmp_path / "castle"
    for name in files.stdout.splitlines():
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    proc = subprocess.run(["bash", "-c", command], cwd=clone, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in ("compose.yaml", "firewall/iptables.sh", "firewall/castle.nft",
                 "k8s/networkpolicies.yaml", "k8s/kustomization.yaml"):
        assert (clone / "out" / path).is_file(), path
