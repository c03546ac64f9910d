"""Safety of files (castle/io/write.py): all-or-nothing sets, no clobbering, locks, no links.

A crash mid-write leaves the old set, or a journal that the NEXT castle run (any
`castle generate` into that folder, or write.recover) finishes into the new set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from castle.cli import app
from castle.errors import WriteRefused
from castle.io import write
from castle.io.write import Output, header, write_outputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "zones.example.toml"
# recovery only ever renames files of castle's layout
PATHS = ["compose.yaml", "firewall/castle.nft", "firewall/iptables.sh", "k8s/networkpolicies.yaml"]


def file_set(tag: str) -> list[Output]:
    """Four generated files, every one naming its set `tag` in the header and the body."""
    return [Output(p, header("zones.toml", tag * 64) + f"set {tag}\n" + f"{tag}\n" * 1000,
                   0o755 if p.endswith(".sh") else 0o644) for p in PATHS]


def state(root: Path) -> dict[str, str]:
    """Every file below root (temporary and journal files included) with its content."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


def which_set(root: Path) -> str:
    """'a' or 'b' when the folder holds exactly one complete set and nothing else."""
    files = state(root)
    for tag in ("a", "b"):
        if files == {o.path: o.content for o in file_set(tag)}:
            return tag
    return f"mixed: {sorted(files)}"


def crash_on_replace(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make os.replace in castle.io.write raise after `after` successful calls."""
    real = os.replace
    calls = {"n": 0}

    def replace(src: object, dst: object) -> None:
        if calls["n"] >= after:
            raise OSError("simulated crash")
        calls["n"] += 1
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)  # castle.io.write calls os.replace


# -- interrupted writes -----------------------------------------------------------------------


@pytest.mark.parametrize("after", range(0, len(PATHS) + 1))
def test_crash_between_renames_recovers_to_one_set(after: int, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash after N renames (the journal is rename 0): recovery gives set a or set b."""
    write_outputs(tmp_path, file_set("a"))
    crash_on_replace(monkeypatch, after)
    with pytest.raises(OSError, match="simulated"):
        write_outputs(tmp_path, file_set("b"))
    monkeypatch.undo()
    write.recover(tmp_path)
    # no journal yet: the old set; journal written: the new set is finished
    assert which_set(tmp_path) == ("a" if after == 0 else "b")


def test_next_castle_run_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery happens on the next `castle generate` into the folder, before it writes."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text())
    out = tmp_path / "out"
    write_outputs(out, file_set("a"))
    crash_on_replace(monkeypatch, 2)
    with pytest.raises(OSError):
        write_outputs(out, file_set("b"))
    monkeypatch.undo()
    assert (out / write.JOURNAL).exists()
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out), "-t", "compose"])
    assert result.exit_code == 0, result.output
    files = state(out)
    assert write.JOURNAL not in files and not [f for f in files if write.TMP_TAG in f]
    for path in PATHS[1:]:
        assert files[path] == {o.path: o.content for o in file_set("b")}[path]
    assert "\nservices:\n" in files["compose.yaml"]  # then rewritten from the spec


CRASHER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from castle.io import write
    from tests.test_write_safety import file_set
    real, n = os.replace, [0]
    def replace(src, dst):
        if n[0] == {after}:
            os.kill(os.getpid(), 9)  # no cleanup, no finally: a real crash
        n[0] += 1
        real(src, dst)
    write.os.replace = replace
    write.write_outputs(write.Path({out!r}), file_set("b"))
""")


@pytest.mark.parametrize("after", [0, 1, 3])
def test_killed_process_recovers(after: int, tmp_path: Path) -> None:
    """SIGKILL in the middle of the renames: the next run's recovery leaves one whole set."""
    write_outputs(tmp_path, file_set("a"))
    code = CRASHER.format(root=str(ROOT), after=after, out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if after:
        assert which_set(tmp_path).startswith("mixed")  # the crash really interrupted it
    write.recover(tmp_path)
    assert which_set(tmp_path) == ("a" if after == 0 else "b")


def test_failed_staging_leaves_the_old_set(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing temporary files (disk full) changes nothing."""
    write_outputs(tmp_path, file_set("a"))
    real = write.write_tmp
    calls = {"n": 0}

    def flaky(path: Path, content: str, mode: int) -> Path:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(path, content, mode)

    monkeypatch.setattr(write, "write_tmp", flaky)
    with pytest.raises(OSError):
        write_outputs(tmp_path, file_set("b"))
    assert which_set(tmp_path) == "a"


# -- never clobber a file castle did not write ------------------------------------------------


def test_foreign_file_is_not_overwritten_without_force(tmp_path: Path) -> None:
    """A compose.yaml without castle's header: exit 2, untouched; --force replaces it."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text())
    mine = tmp_path / "compose.yaml"
    mine.write_text("services: {hand: {image: x}}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(spec), "-t", "compose"])
    assert result.exit_code == 2 and "--force" in result.output
    assert mine.read_text() == "services: {hand: {image: x}}\n"
    result = runner.invoke(app, ["generate", str(spec), "-t", "compose", "--force"])
    assert result.exit_code == 0, result.output
    assert write.is_generated(mine.read_text())


# -- two runs at once -------------------------------------------------------------------------


def without_tls(manifest: str | None) -> object:
    """A manifest's content without its TLS record (whole JSON, or the test fails)."""
    if manifest is None:
        return None
    data = json.loads(manifest)
    data.pop("tls", None)
    return data


def test_concurrent_generate_runs_do_not_corrupt(tmp_path: Path) -> None:
    """Six `castle generate` processes (two specs) into one folder: every file is whole and
    comes from one run."""
    a = tmp_path / "a.toml"
    a.write_text(EXAMPLE.read_text())
    b = tmp_path / "b.toml"
    b.write_text(EXAMPLE.read_text().replace('name = "shop"', 'name = "shop2"'))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "castle", "generate", str(s), "-o",
                               str(out), "-t", "compose", "-t", "nftables", "-t", "k8s"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for s in (a, b) * 3]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    expected = {}
    for s in (a, b):
        single = tmp_path / f"single-{s.stem}"
        subprocess.run([sys.executable, "-m", "castle", "generate", str(s), "-o", str(single),
                        "-t", "compose", "-t", "nftables", "-t", "k8s"], env=env, check=True,
                       capture_output=True)
        expected[s.stem] = state(single)
    got = state(out)
    # the systemd unit is named after the stack: each spec's own unit is there too
    assert set(got) == set(expected["a"]) | set(expected["b"])
    for path, content in got.items():
        if path.startswith("k8s/certs/"):  # fresh keys each run: checked as a whole below
            continue
        if path == ".castle-manifest.json":  # its TLS record hashes those fresh keys
            content, a_side, b_side = (without_tls(x) for x in (
                content, expected["a"].get(path), expected["b"].get(path)))
            assert content in (a_side, b_side), path
            continue
        assert content in (expected["a"].get(path), expected["b"].get(path)), path
    passed = 0
    for s in (a, b):  # one CA, keys matching their certificates, names of the last run's spec
        check = subprocess.run([sys.executable, "-m", "castle", "certs", str(s), "-o", str(out),
                                "--check"], env=env, capture_output=True, text=True)
        passed += check.returncode == 0
        for torn in ("does not match", "not a PEM", "not signed by", "missing"):
            assert torn not in check.stdout, check.stdout
    assert passed == 1


def test_lock_serializes_writers(tmp_path: Path) -> None:
    """While one process holds the folder's lock, a second writer waits for it."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from castle.io.write import locked, Path
        with locked(Path({str(tmp_path)!r})):
            print("locked", flush=True)
            time.sleep(1.5)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    start = time.monotonic()
    write_outputs(tmp_path, file_set("a"))
    waited = time.monotonic() - start
    holder.wait(timeout=30)
    assert waited > 0.8, "the second writer did not wait for the lock"


# -- symbolic links ---------------------------------------------------------------------------


def test_symlinked_file_is_refused(tmp_path: Path) -> None:
    """A compose.yaml linking out of the folder: exit 2, the link's target untouched."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text())
    outside = tmp_path / "outside.yaml"
    outside.write_text(header("x", "0" * 64) + "precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "compose.yaml").symlink_to(outside)
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out), "-t", "compose"])
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert outside.read_text().endswith("precious\n")
    assert (out / "compose.yaml").is_symlink()


def test_symlinked_folder_is_refused(tmp_path: Path) -> None:
    """A k8s/ folder linking elsewhere: exit 2, nothing written through it."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "k8s").symlink_to(elsewhere, target_is_directory=True)
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out), "-t", "compose",
                                      "-t", "k8s"])
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert list(elsewhere.iterdir()) == []
    assert not (out / "compose.yaml").exists(), "a refused set writes nothing"


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    """A link to a file that does not exist yet is not created through."""
    target = tmp_path / "would-be-created"
    out = tmp_path / "out"
    out.mkdir()
    (out / "compose.yaml").symlink_to(target)
    with pytest.raises(WriteRefused):
        write_outputs(out, file_set("a"))
    assert not target.exists()


# -- writing nothing --------------------------------------------------------------------------


def test_check_writes_nothing(tmp_path: Path) -> None:
    """--check on an empty folder reports drift (exit 1) and creates nothing; on a folder
    with stale files, nothing changes."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text())
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(spec), "-o", str(out), "--check"])
    assert result.exit_code == 1 and not out.exists()
    assert runner.invoke(app, ["generate", str(spec), "-o", str(out)]).exit_code == 0
    (out / "compose.yaml").write_text((out / "compose.yaml").read_text() + "# stale\n")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["generate", str(spec), "-o", str(out), "--check"])
    assert result.exit_code == 1 and "# stale" in result.output
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*")
            if p.is_file()} == before


def test_bad_spec_writes_nothing(tmp_path: Path) -> None:
    """An invalid spec: exit 2, the output folder is not even created."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text().replace('to = "db"', 'to = "dbb"'))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", str(spec), "-o", str(out)])
    assert result.exit_code == 2 and "did you mean 'db'" in result.output
    assert not out.exists()


def test_recovery_negative_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without recovery a crashed run really leaves a mixed set (the tests above can fail)."""
    write_outputs(tmp_path, file_set("a"))
    crash_on_replace(monkeypatch, 2)
    with pytest.raises(OSError):
        write_outputs(tmp_path, file_set("b"))
    assert which_set(tmp_path).startswith("mixed")
