"""Hostile files in the output folder: a planted recovery journal, planted temporary names.

Whoever can add files to a repository's deploy folder must not get file writes outside it
from `castle generate` (which CI runs on repository content). Each attack asserts that
nothing outside the output folder changed, that the run gives a clear message (never an
internal error) and that the next run into the folder works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from castle.cli import app
from castle.io import write
from castle.io.write import Output, header, write_outputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "zones.example.toml"


def snapshot(folder: Path) -> dict[str, tuple[bool, bytes | str]]:
    """Every entry below a folder: (is a link, content or link target)."""
    out: dict[str, tuple[bool, bytes | str]] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = (True, os.readlink(p))
        elif p.is_file():
            out[rel] = (False, p.read_bytes())
    return out


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(spec, output folder, an outside folder with a victim file)."""
    spec = tmp_path / "repo" / "zones.toml"
    spec.parent.mkdir()
    spec.write_text(EXAMPLE.read_text())
    out = spec.parent / "deploy"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    (outside / "secret").write_text("do not move me\n")
    return spec, out, outside


def generate(spec: Path, out: Path) -> tuple[int, str]:
    """Run `castle generate` (compose target only: fast) and return (exit code, output)."""
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out), "-t", "compose"])
    return result.exit_code, result.output


def plant(out: Path, journal: object) -> None:
    """Put a journal in the output folder (JSON, or raw text when given a str)."""
    text = journal if isinstance(journal, str) else json.dumps(journal)
    (out / write.JOURNAL).write_text(text)


def payload(out: Path, name: str = "payload") -> Path:
    """A file that looks like castle's output (it carries the header)."""
    path = out / name
    path.write_text(header("zones.toml", "0" * 64) + "attacker's content\n")
    return path


def assert_after(spec: Path, out: Path, outside: Path,
                 before: dict[str, tuple[bool, bytes | str]]) -> str:
    """The run exits 0 or 2 with a message, outside is untouched, the journal is gone and
    a second run succeeds; return the first run's output."""
    code, output = generate(spec, out)
    assert "internal error" not in output and "Traceback" not in output, output
    assert snapshot(outside) == before, "a file outside the output folder changed"
    assert code in (0, 2), output
    assert not (out / write.JOURNAL).exists() or code == 2
    code2, output2 = generate(spec, out)
    assert code2 == 0, f"a later run is wedged: {output2}"
    assert snapshot(outside) == before
    return output


def test_journal_cannot_rename_over_an_absolute_path(site: tuple[Path, Path, Path]) -> None:
    """[["payload", "/abs/victim"]]: the victim keeps its content, the journal is reported."""
    spec, out, outside = site
    payload(out)
    plant(out, [["payload", str(outside / "victim")]])
    before = snapshot(outside)
    output = assert_after(spec, out, outside, before)
    assert "journal" in output
    assert (outside / "victim").read_text() == "precious\n"


def test_journal_cannot_escape_with_dotdot(site: tuple[Path, Path, Path]) -> None:
    """A `..` destination (and a castle-looking temporary name) stays inside the folder."""
    spec, out, outside = site
    payload(out, ".compose.yaml.castle-tmp-1")
    plant(out, [[".compose.yaml.castle-tmp-1", "../../outside/victim"]])
    before = snapshot(outside)
    assert_after(spec, out, outside, before)
    assert (outside / "victim").read_text() == "precious\n"


def test_journal_cannot_bring_outside_files_in(site: tuple[Path, Path, Path]) -> None:
    """An absolute or `..` source would move an outside file INTO the output folder."""
    spec, out, outside = site
    plant(out, [[str(outside / "secret"), "compose.yaml"],
                ["../outside/victim", "k8s/networkpolicies.yaml"]])
    before = snapshot(outside)
    assert_after(spec, out, outside, before)
    assert "do not move me" not in (out / "compose.yaml").read_text()


def test_journal_cannot_follow_a_symlinked_folder(site: tuple[Path, Path, Path]) -> None:
    """A relative destination below a planted link to an outside folder."""
    spec, out, outside = site
    (out / "firewall").symlink_to(outside, target_is_directory=True)
    payload(out, ".victim.castle-tmp-1")
    plant(out, [[".victim.castle-tmp-1", "firewall/victim"]])
    before = snapshot(outside)
    code, output = generate(spec, out)
    assert "internal error" not in output
    assert snapshot(outside) == before


def test_planted_journal_with_castle_shapes_is_not_acted_on(
        site: tuple[Path, Path, Path]) -> None:
    """A journal in castle's own format, naming castle's temporary-name pattern and a layout
    path, but planted (not written by a run): the planted file is never moved into place."""
    spec, out, outside = site
    tmp = payload(out, ".compose.yaml.castle-tmp-abc123")
    st = tmp.stat()
    plant(out, {"castle-journal": 1, "renames": [
        {"tmp": tmp.name, "final": "compose.yaml", "device": st.st_dev, "inode": st.st_ino + 1,
         "sha256": "0" * 64}]})
    before = snapshot(outside)
    # recovery alone: the planted rename is reported and not done
    notes: list[str] = []
    write.recover(out, notes)
    assert not (out / "compose.yaml").exists()
    assert notes and "ignored" in notes[0]
    assert not (out / write.JOURNAL).exists() and not tmp.exists()
    assert snapshot(outside) == before


@pytest.mark.parametrize("text", ["null", "[1, 2]", '{"a": 1}', '[["a"]]', "not json {",
                                  '[["a", "b", "c"]]', '[[1, 2]]', '"x"', "",
                                  "[" * 100000, "[]" + " " * (5 << 20)])
def test_malformed_journal_is_reported_and_removed(text: str,
                                                    site: tuple[Path, Path, Path]) -> None:
    """Garbage in the journal: a warning, no internal error, and later runs work."""
    spec, out, outside = site
    plant(out, text)
    before = snapshot(outside)
    output = assert_after(spec, out, outside, before)
    assert "journal" in output


def test_journal_that_is_a_symlink_or_folder(site: tuple[Path, Path, Path]) -> None:
    """A journal linking outside is removed as a link (its target untouched); a folder in
    its place gives a clear message, exit 2."""
    spec, out, outside = site
    (out / write.JOURNAL).symlink_to(outside / "victim")
    before = snapshot(outside)
    assert_after(spec, out, outside, before)
    (out / write.JOURNAL).mkdir()
    code, output = generate(spec, out)
    assert code == 2 and "journal" in output and "internal error" not in output


def test_stray_cleanup_stays_in_the_layout(site: tuple[Path, Path, Path]) -> None:
    """Leftover temporary names are removed only in castle's own folders; a user's file
    that merely contains the tag, deeper down, is left alone."""
    spec, out, outside = site
    user = out / "docs" / "notes.castle-tmp-keep"
    user.parent.mkdir()
    user.write_text("mine\n")
    stray = out / ".compose.yaml.castle-tmp-9999"
    stray.write_text("half written")
    assert generate(spec, out)[0] == 0
    assert user.read_text() == "mine\n" and not stray.exists()


# -- the journal of a real crash is still honoured ---------------------------------------------


def test_real_crash_journal_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Positive control: a crash after the journal, then recovery, gives the new set."""
    paths = ["compose.yaml", "k8s/networkpolicies.yaml"]
    a = [Output(p, header("zones.toml", "a" * 64) + "a\n") for p in paths]
    b = [Output(p, header("zones.toml", "b" * 64) + "b\n") for p in paths]
    write_outputs(tmp_path, a)
    real = os.replace
    calls = {"n": 0}

    def replace(src: object, dst: object) -> None:
        if calls["n"] >= 2:  # the journal and one file: then crash
            raise OSError("simulated crash")
        calls["n"] += 1
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        write_outputs(tmp_path, b)
    monkeypatch.undo()
    notes: list[str] = []
    write.recover(tmp_path, notes)
    assert notes == []
    assert [(tmp_path / p).read_text() for p in paths] == [o.content for o in b]


# -- single-file writes: draw -o, import -o ---------------------------------------------------


def _predictable(path: Path) -> Path:
    """The temporary name an older castle used: .NAME.castle-tmp-PID."""
    return path.with_name(f".{path.name}{write.TMP_TAG}{os.getpid()}")


@pytest.mark.parametrize("command", ["draw", "import"])
def test_single_file_write_ignores_planted_temp_links(command: str, tmp_path: Path) -> None:
    """A symlink planted at the old predictable temporary name is never written through,
    and -o naming a symlink is refused."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text())
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  web:\n    image: nginx\n")
    source = spec if command == "draw" else compose
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "out.txt"
    _predictable(target).symlink_to(victim)
    result = CliRunner().invoke(app, [command, str(source), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    assert target.is_file() and not target.is_symlink() and target.stat().st_size > 0
    link = tmp_path / "link.txt"
    link.symlink_to(victim)
    result = CliRunner().invoke(app, [command, str(source), "-o", str(link)])
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert victim.read_text() == "precious\n"


def test_temp_names_are_unpredictable(tmp_path: Path) -> None:
    """Two temporary files for one target get different, non-PID names."""
    target = tmp_path / "compose.yaml"
    a = write.write_tmp(target, "x", 0o644)
    b = write.write_tmp(target, "y", 0o644)
    assert a != b and str(os.getpid()) not in (a.name, b.name)
    assert write.TMP_NAME.fullmatch(a.name) and a.parent == tmp_path


def test_a_deeply_nested_sibling_spec_is_passed_over(tmp_path: Path) -> None:
    """Another .toml beside the spec, nested past tomllib's recursion limit: the neighbour
    check reads it as no spec (it used to be an internal RecursionError)."""
    (tmp_path / "zones.toml").write_text(EXAMPLE.read_text())
    (tmp_path / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "zones.toml")])
    assert result.exit_code == 0, result.output
    assert "internal error" not in result.output
