"""`generate --check` answered from the manifest: taken when nothing changed, never wrong.

Every edit of the table is checked through both paths: the full comparison (cli.py, which
renders every file again) and the console entry point (which first asks the manifest).
They must agree on the exit code and the output; where anything drifted, the manifest must
decline (and the full comparison reports the drift). The oracle for "nothing changed" is
the full comparison itself, run beside the fast path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from castle.io import manifest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "zones.example.toml"
HEAVY = ("pydantic", "pydantic_core", "jinja2", "typer", "yaml")
PROBE = ("import sys, runpy; sys.argv = ['castle', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('castle', run_name='__main__')\n"
         "finally:\n    print('LOADED', *[m for m in {heavy!r} if m in sys.modules],"
         " file=sys.stderr)\n")


def castle(*args: str, full: bool = False, cwd: Path | None = None,
           path: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run castle in a fresh interpreter: the console entry, or cli.py alone (`full`)."""
    code = ("import sys; sys.argv[0] = 'castle'; from castle.cli import main; main()" if full
            else PROBE.format(heavy=HEAVY))
    env = {**os.environ, "PYTHONPATH": str(path)}
    # -P: the working folder is not put first on sys.path (PYTHONPATH decides)
    return subprocess.run([sys.executable, "-P", "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=cwd, check=False)


def loaded(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The heavy libraries the probed run imported."""
    line = next(x for x in done.stderr.splitlines() if x.startswith("LOADED"))
    return line.split()[1:]


def without_probe(stderr: str) -> str:
    return "".join(x + "\n" for x in stderr.splitlines() if not x.startswith("LOADED"))


@pytest.fixture
def stack(tmp_path: Path) -> tuple[Path, Path]:
    """The example (plus a warning) generated into out/ by the console entry."""
    spec = tmp_path / "zones.toml"
    # a lonely service: the spec warns, and the fast path must repeat the warning
    spec.write_text(EXAMPLE.read_text() + '\n[services.lonely]\ntier = "data"\n'
                    'image = "busybox:1.36"\n')
    out = tmp_path / "out"
    done = castle("generate", str(spec), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / manifest.NAME).is_file()
    return spec, out


def test_unchanged_check_takes_the_fast_path(stack: tuple[Path, Path]) -> None:
    """Nothing changed: the same answer as the full comparison, without the heavy imports."""
    spec, out = stack
    fast = castle("generate", str(spec), "-o", str(out), "--check")
    full = castle("generate", str(spec), "-o", str(out), "--check", full=True)
    assert fast.returncode == full.returncode == 0, full.stderr
    assert fast.stdout == full.stdout
    assert without_probe(fast.stderr) == full.stderr
    assert "warning" in full.stderr  # the lonely service
    assert loaded(fast) == []
    assert manifest.answer(spec, out, []) is not None


def test_default_out_and_relative_paths(tmp_path: Path) -> None:
    """OUT defaults to the spec's folder; a relative spec prints as the full path does."""
    shutil.copy(EXAMPLE, tmp_path / "zones.toml")
    assert castle("generate", "zones.toml", cwd=tmp_path).returncode == 0
    fast = castle("generate", "zones.toml", "--check", cwd=tmp_path)
    full = castle("generate", "zones.toml", "--check", full=True, cwd=tmp_path)
    assert (fast.returncode, fast.stdout) == (full.returncode, full.stdout) == (0, full.stdout)
    assert loaded(fast) == []


def test_a_run_with_other_targets_falls_back(stack: tuple[Path, Path]) -> None:
    """Other options than the recorded ones: the manifest declines, the full check decides."""
    spec, out = stack
    assert manifest.answer(spec, out, ["compose"]) is None
    fast = castle("generate", str(spec), "-o", str(out), "-t", "compose", "--check")
    full = castle("generate", str(spec), "-o", str(out), "-t", "compose", "--check", full=True)
    assert fast.returncode == full.returncode == 0
    assert "pydantic_core" in loaded(fast)


def test_a_narrowed_run_reads_the_same_on_both_paths(tmp_path: Path) -> None:
    """A `-t compose` run, checked with the same option: the fast answer is taken and
    counts the files as the full one does."""
    shutil.copy(EXAMPLE, tmp_path / "zones.toml")
    spec, out = tmp_path / "zones.toml", tmp_path / "out"
    assert castle("generate", str(spec), "-o", str(out), "-t", "compose").returncode == 0
    fast = castle("generate", str(spec), "-o", str(out), "-t", "compose", "--check")
    full = castle("generate", str(spec), "-o", str(out), "-t", "compose", "--check", full=True)
    assert (fast.returncode, fast.stdout) == (full.returncode, full.stdout) == (0, full.stdout)
    assert " files up to date with " in full.stdout
    assert loaded(fast) == []


def hand_edit(spec: Path, out: Path) -> None:
    path = out / "compose.yaml"
    path.write_text(path.read_text() + "# a hand edit\n")


def same_size_edit(spec: Path, out: Path) -> None:
    path = out / "firewall/castle.nft"
    text = path.read_text()
    path.write_text(text.replace("accept", "acc3pt", 1))


def missing(spec: Path, out: Path) -> None:
    (out / "k8s/networkpolicies.yaml").unlink()


def stale_file(spec: Path, out: Path) -> None:
    # a container script of castle's layout, from this spec, that the spec no longer makes
    head = (out / "firewall/iptables.sh").read_text().splitlines(keepends=True)[:3]
    (out / "firewall/container-gone.sh").write_text("".join(head) + "echo old\n")


def spec_comment(spec: Path, out: Path) -> None:
    spec.write_text(spec.read_text() + "# only a comment: the hash in every header moves\n")


def spec_change(spec: Path, out: Path) -> None:
    spec.write_text(spec.read_text().replace("listen = [5432]", "listen = [5432, 5433]", 1))


def fewer_targets(spec: Path, out: Path) -> None:
    # the outputs of a narrower run: the full set is missing files
    shutil.rmtree(out)
    done = castle("generate", str(spec), "-o", str(out), "-t", "compose")
    assert done.returncode == 0, done.stderr


def forged_manifest(spec: Path, out: Path) -> None:
    # the manifest names a hash for a file that is not what the spec produces
    path = out / manifest.NAME
    data = json.loads(path.read_text())
    hand_edit(spec, out)
    data["files"]["compose.yaml"] = "0" * 64
    path.write_text(json.dumps(data))


def broken_manifest(spec: Path, out: Path) -> None:
    hand_edit(spec, out)
    (out / manifest.NAME).write_text("{not json")


EDITS: dict[str, Callable[[Path, Path], None]] = {
    "hand edit": hand_edit, "same-size edit": same_size_edit, "missing file": missing,
    "stale file": stale_file, "spec comment": spec_comment, "spec change": spec_change,
    "fewer targets": fewer_targets, "forged manifest": forged_manifest,
    "broken manifest": broken_manifest,
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_every_drift_is_caught_by_both_paths(edit: str, stack: tuple[Path, Path]) -> None:
    """The manifest declines; the entry point and the full comparison both report drift."""
    spec, out = stack
    EDITS[edit](spec, out)
    assert manifest.answer(spec, out, []) is None
    fast = castle("generate", str(spec), "-o", str(out), "--check")
    full = castle("generate", str(spec), "-o", str(out), "--check", full=True)
    assert full.returncode == 1, full.stderr
    assert (fast.returncode, fast.stdout) == (full.returncode, full.stdout)
    assert "drift" in full.stderr and "drift" in fast.stderr


def test_a_changed_castle_falls_back(stack: tuple[Path, Path], tmp_path: Path) -> None:
    """castle's own templates changed: the recorded fingerprint no longer holds."""
    spec, out = stack
    copy = tmp_path / "castle-copy"
    shutil.copytree(ROOT / "castle", copy / "castle",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "templates", copy / "templates")
    # unchanged copy: same fingerprint, so the fast answer holds
    assert loaded(castle("generate", str(spec), "-o", str(out), "--check", path=copy)) == []
    nft = copy / "templates/castle.nft.j2"
    nft.write_text(nft.read_text().replace("accept", "accept comment \"new\"", 1))
    fast = castle("generate", str(spec), "-o", str(out), "--check", path=copy)
    full = castle("generate", str(spec), "-o", str(out), "--check", full=True, path=copy)
    assert full.returncode == 1, full.stderr
    assert (fast.returncode, fast.stdout) == (1, full.stdout)
    assert "pydantic_core" in loaded(fast)


@pytest.mark.parametrize("changed", ["castle/targets/iptables.py", "templates/tls/client.cnf.j2"])
def test_changed_code_or_a_nested_template_falls_back(changed: str, stack: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    """Any module of castle (not only castle/io) and the templates below templates/tls count."""
    spec, out = stack
    copy = tmp_path / "castle-copy"
    shutil.copytree(ROOT / "castle", copy / "castle",
                    ignore=shutil.ignore_patterns("__pycache__", "_jinja"))
    shutil.copytree(ROOT / "templates", copy / "templates")
    assert loaded(castle("generate", str(spec), "-o", str(out), "--check", path=copy)) == []
    edited = copy / changed
    edited.write_text(edited.read_text() + ("\n# changed\n" if changed.endswith(".py") else "\n"))
    assert "pydantic_core" in loaded(castle("generate", str(spec), "-o", str(out), "--check",
                                       path=copy))


def test_command_lines_the_fast_path_leaves_alone() -> None:
    """Only plain `generate SPEC [-o OUT] [-t X] --check` is parsed outside cli.py."""
    from castle.entry import parse_check

    assert parse_check(["generate", "z.toml", "--check", "-o", "o", "-t", "k8s"]) == (
        Path("z.toml"), Path("o"), ["k8s"])
    for argv in (["generate", "z.toml"], ["generate", "--check"], ["validate", "z.toml"],
                 ["generate", "z.toml", "--check", "--force"], ["generate", "--help"],
                 ["generate", "z.toml", "--check", "--out=o"], ["generate", "a", "b", "--check"],
                 ["generate", "z.toml", "--check", "-o"], []):
        assert parse_check(argv) is None, argv
