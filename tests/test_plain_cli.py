"""Plain `generate` and `validate` command lines run without typer, exactly as typer runs them.

The console entry point (castle.entry) parses `generate SPEC [-o OUT] [-t NAME ...]
[--check] [--force]` and `validate SPEC` itself and calls castle.commands; anything else
goes to typer (castle.cli). Each command line of the table runs twice in fresh copies of
one stack, through the entry point and through cli.py alone. Both must agree on the exit
code, stdout, stderr and every file left behind; the entry point must skip typer for the
plain lines and hand the others to it (the negative control: lines it must not take).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "zones.example.toml"
PROBE = ("import sys\nsys.argv[0] = 'castle'\n"
         "try:\n    from castle.{module} import main; main()\n"
         "finally:\n    print('TYPER', 'typer' in sys.modules, file=sys.stderr)\n")

# (command line, taken by the entry point without typer)
LINES: list[tuple[list[str], bool]] = [
    (["validate", "zones.toml"], True),
    (["validate", "broken.toml"], True),
    (["validate", "wrong.toml"], True),
    (["validate", "nowhere.toml"], True),
    (["generate", "zones.toml", "-o", "out"], True),
    (["generate", "zones.toml"], True),
    (["generate", "zones.toml", "-o", "new", "-t", "compose", "--target", "iptables"], True),
    (["generate", "--check", "zones.toml", "--out", "out"], True),
    (["generate", "zones.toml", "-o", "new", "--check"], True),
    (["generate", "zones.toml", "-o", "out", "-t", "k8s", "--check"], True),
    (["generate", "zones.toml", "-o", "out", "-t", "nope"], True),
    (["generate", "zones.toml", "-o", "zones.toml"], True),
    (["generate", "zones.toml", "-o", "new", "--force"], True),
    (["generate", "zones.toml", "-o", "a", "-o", "b"], True),
    (["generate", "wrong.toml", "-o", "new"], True),
    (["generate", "zones.toml", "-o", "out", "--check", "--force"], True),
    (["generate", "zones.toml", "-o", "new", "-t", "compose", "-t", "compose"], True),
    (["generate", "zones.toml", "-o", "new", "-t", "COMPOSE"], True),
    (["generate", "zones.toml", "--force", "--force", "-o", "new", "--check"], True),
    (["generate", "nowhere.toml", "-o", "new"], True),
    (["validate", "out"], True),
    (["generate", "zones.toml", "-o", "foreign"], True),
    (["generate", "zones.toml", "-o", "foreign", "--force"], True),
    (["generate", "zones.toml", "-o", "foreign", "--check"], True),
    (["generate", "zones.toml", "--out=out"], False),
    (["generate", "zones.toml", "-oout"], False),
    (["generate", "zones.toml", "-o"], False),
    (["generate", "zones.toml", "-o", "--check"], False),
    (["generate", "zones.toml", "-x"], False),
    (["generate", "--", "zones.toml"], False),
    (["generate"], False),
    (["validate", "zones.toml", "other.toml"], False),
    (["validate", "--help"], False),
    (["generate", "-h"], False),
    (["--version"], False),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the example generated into out/ (certificates issued once), and specs
    that are broken (bad TOML) or wrong (an unknown service)."""
    folder = tmp_path_factory.mktemp("plain") / "stack"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "zones.toml")
    (folder / "broken.toml").write_text("version = [\n")
    (folder / "wrong.toml").write_text(EXAMPLE.read_text().replace('to = "app"', 'to = "apx"', 1))
    assert "apx" in (folder / "wrong.toml").read_text()
    (folder / "foreign").mkdir()  # a compose file castle did not write
    (folder / "foreign" / "compose.yaml").write_text("services: {}\n")
    done = run(folder, "cli", ["generate", "zones.toml", "-o", "out"])
    assert done.returncode == 0, done.stderr
    return folder


def run(folder: Path, module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """castle in a fresh interpreter, through castle.entry or castle.cli."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-P", "-c", PROBE.format(module=module), *argv],
                          capture_output=True, text=True, cwd=folder, env=env, check=False,
                          timeout=120)


def files(folder: Path) -> dict[str, bytes]:
    """Every file below a folder and its bytes (a newly issued key or certificate is random:
    only its name is compared, and the manifest's record of them by the names it covers)."""
    return {str(p.relative_to(folder)): b"" if "certs" in p.parts else content(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def content(path: Path) -> bytes:
    if path.name != ".castle-manifest.json":
        return path.read_bytes()
    data = json.loads(path.read_bytes())
    tls = data.pop("tls", None)
    data["tls files"] = sorted(tls["files"]) if tls is not None else None
    return json.dumps(data, sort_keys=True).encode()


@pytest.mark.parametrize(("argv", "plain"), LINES, ids=[" ".join(a) for a, _ in LINES])
def test_both_paths_agree(argv: list[str], plain: bool, stack: Path, tmp_path: Path) -> None:
    entry, full = tmp_path / "entry", tmp_path / "full"
    shutil.copytree(stack, entry)
    shutil.copytree(stack, full)
    fast = run(entry, "entry", argv)
    slow = run(full, "cli", argv)
    fast_err, _, fast_typer = fast.stderr.rpartition("TYPER ")
    slow_err, _, _ = slow.stderr.rpartition("TYPER ")
    assert fast_typer.strip() == str(not plain), fast.stderr
    assert (fast.returncode, fast.stdout, fast_err) == (slow.returncode, slow.stdout, slow_err)
    assert files(entry) == files(full)
    assert "Traceback" not in fast.stderr


def test_the_table_covers_every_outcome(stack: Path, tmp_path: Path) -> None:
    """The plain lines reach each exit code (0, 1, 2), writes and refusals alike."""
    codes = set()
    for argv, plain in LINES:
        if plain:
            folder = tmp_path / str(len(codes)) / str(LINES.index((argv, plain)))
            shutil.copytree(stack, folder)
            codes.add(run(folder, "entry", argv).returncode)
    assert codes == {0, 1, 2}
