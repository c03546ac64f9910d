"""generate's TLS step answered from the manifest's record: taken when nothing changed, never wrong.

The oracle is the full check itself (castle.tls.certs.ensure, which loads cryptography),
run on a copy of the same folder: wherever the record is declined, generate must give
what the full check gives; where it is taken, the answer must be the full check's, word
for word, and no file may change.
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

from castle.errors import WriteRefused
from castle.io import manifest
from castle.targets.generate import build, generate
from castle.tls import known
from castle.tls.certs import ensure

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "zones.example.toml"
PROBE = ("import sys, runpy; sys.argv = ['castle', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('castle', run_name='__main__')\n"
         "finally:\n    print('CRYPTOGRAPHY', 'cryptography' in sys.modules, file=sys.stderr)\n")


def probe(*args: str) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run the console entry in a fresh interpreter; (the run, whether it loaded cryptography)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-P", "-c", PROBE, *args], capture_output=True,
                          text=True, env=env, check=False)
    flag = [x for x in done.stderr.splitlines() if x.startswith("CRYPTOGRAPHY")]
    return done, flag == ["CRYPTOGRAPHY True"]


@pytest.fixture
def stack(tmp_path: Path) -> tuple[Path, Path]:
    """The example spec generated once into out/ (the record written)."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text())
    out = tmp_path / "out"
    generate(spec, out)
    assert "tls" in manifest.previous(out)
    return spec, out


def certs_of(out: Path) -> Path:
    return out / "k8s" / "certs"


def fast(spec: Path, out: Path) -> object:
    _, plan, _ = build(spec, None, out)
    return known.answer(plan, out, manifest.previous(out), manifest.fingerprint())


def outcome(run: Callable[[], str], out: Path) -> tuple[str, str]:
    """('ok', report) or ('refused', message), with the output folder's path taken out."""
    try:
        return "ok", run().replace(str(out), "OUT")
    except WriteRefused as exc:
        return "refused", str(exc).replace(str(out), "OUT")


def full_on_copy(spec: Path, out: Path) -> tuple[str, str]:
    """What the full check makes of a copy of out (the record plays no part)."""
    copy = out.parent / "copy"
    shutil.copytree(out, copy, symlinks=True)
    _, plan, _ = build(spec, None, copy)

    def run() -> str:
        result = ensure(plan, copy)
        assert result is not None
        return result.report

    return outcome(run, copy)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_unchanged_run_skips_cryptography_and_answers_as_the_full_check(
        stack: tuple[Path, Path]) -> None:
    spec, out = stack
    before = snapshot(certs_of(out))
    taken = fast(spec, out)
    assert isinstance(taken, known.CertsResult)
    oracle = full_on_copy(spec, out)
    assert ("ok", taken.report.replace(str(out), "OUT")) == oracle
    assert "0 files written, 0 certificates issued" in taken.report
    assert taken.facts == manifest.previous(out)["tls"]  # the record is written again as is
    assert snapshot(certs_of(out)) == before  # the answer wrote nothing


def test_console_run_loads_cryptography_only_when_the_record_is_declined(tmp_path: Path) -> None:
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text())
    out = tmp_path / "out"
    first, loaded_first = probe("generate", str(spec), "-o", str(out))
    assert first.returncode == 0, first.stderr
    assert loaded_first  # negative control: the first run (no record) needs cryptography
    second, loaded_second = probe("generate", str(spec), "-o", str(out))
    assert second.returncode == 0, second.stderr
    assert not loaded_second
    assert f"TLS: {out}/k8s/certs: 0 files written, 0 certificates issued" in second.stdout
    (certs_of(out) / "db-server.crt").unlink()
    third, loaded_third = probe("generate", str(spec), "-o", str(out))
    assert third.returncode == 0, third.stderr
    assert loaded_third and "1 file written, 1 certificate issued" in third.stdout
    fourth, loaded_fourth = probe("generate", str(spec), "-o", str(out))
    assert not loaded_fourth and second.stdout == fourth.stdout


def _edit_cert(spec: Path, out: Path) -> None:
    path = certs_of(out) / "db-server.crt"
    path.write_bytes(path.read_bytes() + b"\n")  # still a certificate, other bytes


def _garble_cert(spec: Path, out: Path) -> None:
    (certs_of(out) / "app-client.crt").write_bytes(b"not a certificate\n")


def _swap_keys(spec: Path, out: Path) -> None:
    a, b = certs_of(out) / "app-client.key", certs_of(out) / "db-server.key"
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def _delete_cert(spec: Path, out: Path) -> None:
    (certs_of(out) / "db-server.crt").unlink()


def _delete_secret(spec: Path, out: Path) -> None:
    (certs_of(out) / "db-postgres-password.secret").unlink()


def _link_cert(spec: Path, out: Path) -> None:
    path = certs_of(out) / "db-server.crt"
    keep = out.parent / "db-server.crt"
    path.rename(keep)
    path.symlink_to(keep)  # the same bytes, through a link: castle does not follow it


def _tls_flow_added(spec: Path, out: Path) -> None:
    text = spec.read_text().replace('to = "app"\nports = [8000]\n',
                                    'to = "app"\nports = [8000]\ntls = true\n', 1)
    assert "tls = true\n" in text
    spec.write_text(text)


def _days_changed(spec: Path, out: Path) -> None:
    spec.write_text(spec.read_text() + "\n[tls]\ndays = 200\n")


def _dir_changed(spec: Path, out: Path) -> None:
    spec.write_text(spec.read_text() + '\n[tls]\ndir = "k8s/tls"\n')


def _record(out: Path, change: Callable[[dict[str, object]], None]) -> None:
    path = out / manifest.NAME
    data = json.loads(path.read_text())
    change(data["tls"])
    path.write_text(json.dumps(data))


def _record_hash(spec: Path, out: Path) -> None:
    def change(tls: dict[str, object]) -> None:
        files = tls["files"]
        assert isinstance(files, dict)
        files["db-server.crt"] = "0" * 64
    _record(out, change)


def _record_days_as_text(spec: Path, out: Path) -> None:
    _record(out, lambda tls: tls.update(days="365"))


def _record_extra_file(spec: Path, out: Path) -> None:
    def change(tls: dict[str, object]) -> None:
        files = tls["files"]
        assert isinstance(files, dict)
        files["../../victim"] = "0" * 64
    _record(out, change)


def _record_dates_forged(spec: Path, out: Path) -> None:
    def change(tls: dict[str, object]) -> None:
        valid = tls["valid"]
        assert isinstance(valid, dict)
        valid["db-server.crt"] = [0, True]
    _record(out, change)


def _record_garbage(spec: Path, out: Path) -> None:
    (out / manifest.NAME).write_text("{garbage")


def _record_is_a_link(spec: Path, out: Path) -> None:
    path = out / manifest.NAME
    keep = out.parent / "manifest.json"
    path.rename(keep)
    path.symlink_to(keep)


def _stray_temporary(spec: Path, out: Path) -> None:
    (certs_of(out) / ".ca.key.castle-tmp-x").write_bytes(b"half a key")


def _record_missing(spec: Path, out: Path) -> None:
    (out / manifest.NAME).unlink()


DECLINED: dict[str, Callable[[Path, Path], None]] = {
    "certificate edited": _edit_cert, "certificate garbled": _garble_cert,
    "keys swapped": _swap_keys, "certificate deleted": _delete_cert,
    "secret deleted": _delete_secret, "certificate is a link": _link_cert,
    "tls flow added": _tls_flow_added, "tls days changed": _days_changed,
    "tls dir changed": _dir_changed, "record hash edited": _record_hash,
    "record days as text": _record_days_as_text, "record names another file": _record_extra_file,
    "record dates forged": _record_dates_forged, "manifest garbage": _record_garbage,
    "manifest is a link": _record_is_a_link, "manifest missing": _record_missing,
    "a crashed run's temporary file": _stray_temporary,
}


@pytest.mark.parametrize("name", list(DECLINED))
def test_any_doubt_runs_the_full_check(stack: tuple[Path, Path], name: str) -> None:
    spec, out = stack
    victim = out.parent / "victim"
    victim.write_text("mine\n")
    DECLINED[name](spec, out)
    assert fast(spec, out) is None
    oracle = full_on_copy(spec, out)

    def run() -> str:
        return generate(spec, out).tls

    assert outcome(run, out) == oracle
    assert victim.read_text() == "mine\n"


def test_a_service_without_tls_keeps_the_record(stack: tuple[Path, Path]) -> None:
    """Only what decides the certificates counts: a new plain service changes none of it."""
    spec, out = stack
    spec.write_text(spec.read_text() + '\n[services.lonely]\ntier = "data"\n'
                    'image = "busybox:1.36"\n')
    taken = fast(spec, out)
    assert isinstance(taken, known.CertsResult)
    assert ("ok", taken.report.replace(str(out), "OUT")) == full_on_copy(spec, out)


def test_expiry_within_the_margin_declines(stack: tuple[Path, Path]) -> None:
    """The clock moved on: near a leaf's or the CA's renewal margin the record is declined."""
    spec, out = stack
    _, plan, _ = build(spec, None, out)
    inputs = known.inputs_of(plan, out, known.tlsplan.leaves(plan))
    record = manifest.previous(out)["tls"]
    leaf_end = record["valid"]["db-server.crt"][1]
    margin = known.renew_margin(inputs.days)
    assert known._answer(inputs, record, leaf_end - margin - 3600) is not None  # control
    assert known._answer(inputs, record, leaf_end - margin + 1) is None
    start = record["valid"]["ca.crt"][0]
    assert known._answer(inputs, record, start - 1) is None  # not valid yet
    ca_end = record["valid"]["ca.crt"][1]
    short = {**record, "valid": {**record["valid"], "ca.crt": [start, ca_end]}}
    assert known._answer(inputs, short, ca_end - 29 * known.DAY) is None


def _leftover_leaf(spec: Path, out: Path) -> None:
    shutil.copy(certs_of(out) / "db-server.crt", certs_of(out) / "old-server.crt")


def _loose_key(spec: Path, out: Path) -> None:
    (certs_of(out) / "ca.key").chmod(0o644)


def _foreign_gitignore(spec: Path, out: Path) -> None:
    (certs_of(out) / ".gitignore").write_text("*.key\n")


@pytest.mark.parametrize("edit", [_leftover_leaf, _loose_key, _foreign_gitignore],
                         ids=["leftover leaf", "loose key", "own gitignore"])
def test_what_the_record_does_not_cover_is_read_live(stack: tuple[Path, Path],
                                                     edit: Callable[[Path, Path], None]) -> None:
    """A leaf the spec no longer needs, a key others can read, a user's .gitignore: the
    answer reads them as the full check does, and says the same."""
    spec, out = stack
    plain = fast(spec, out)
    assert isinstance(plain, known.CertsResult)
    edit(spec, out)
    taken = fast(spec, out)
    assert isinstance(taken, known.CertsResult)
    assert taken.report != plain.report  # the edit shows in the answer
    assert ("ok", taken.report.replace(str(out), "OUT")) == full_on_copy(spec, out)
