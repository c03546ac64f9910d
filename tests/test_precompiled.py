"""Templates precompiled at build time (castle/_jinja): used while they match, never stale.

Each case runs castle from a copy of the package whose castle/_jinja was made by
compile_all, as hatch_build.py makes it, with Jinja's compiler watched: a run that takes
every template from its module compiles nothing and writes the same files as a run that
compiles every template from source; an edited template is compiled from its source (and
its edit reaches the output) while the others still come from their modules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from castle.io import compiled, render

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "zones.example.toml"
# run castle, and report which templates Jinja compiled from source
PROBE = ("import json, sys, jinja2\nsys.argv[0] = 'castle'\ncompiled = []\n"
         "original = jinja2.Environment.compile\n"
         "def watched(self, source, name=None, *args, **kwargs):\n"
         "    compiled.append(name)\n"
         "    return original(self, source, name, *args, **kwargs)\n"
         "jinja2.Environment.compile = watched\n"
         "try:\n    from castle.entry import main; main()\n"
         "finally:\n    print('COMPILED', json.dumps(compiled), file=sys.stderr)\n")


def copy_of_castle(where: Path, precompile: bool) -> Path:
    """castle and its templates copied to `where`, with castle/_jinja made or left out."""
    shutil.copytree(ROOT / "castle", where / "castle",
                    ignore=shutil.ignore_patterns("__pycache__", "_jinja"))
    shutil.copytree(ROOT / "templates", where / "templates")
    if precompile:
        compiled.compile_all(render.environment(), where / "templates",
                             where / "castle" / "_jinja")
    return where


def generate(path: Path, spec: Path, out: Path) -> list[str]:
    """Run `castle generate` from the copy at `path`; the templates compiled from source."""
    # a private bytecode cache: a warm one would hide what was compiled
    env = {**os.environ, "PYTHONPATH": str(path), "TMPDIR": str(out.parent)}
    done = subprocess.run([sys.executable, "-P", "-c", PROBE, "generate", str(spec), "-o",
                           str(out)], capture_output=True, text=True, env=env, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("COMPILED "))
    names: list[str] = json.loads(line.removeprefix("COMPILED "))
    return names


def outputs(out: Path) -> dict[str, bytes]:
    """The generated files (certificates and keys are random: left out)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "certs" not in p.parts and p.name != ".castle-manifest.json"}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "zones.toml"
    shutil.copy(EXAMPLE, path)
    return path


def test_a_run_compiles_nothing_and_writes_the_same(spec: Path, tmp_path: Path) -> None:
    pre = copy_of_castle(tmp_path / "pre", precompile=True)
    source = copy_of_castle(tmp_path / "source", precompile=False)
    assert generate(pre, spec, tmp_path / "out-pre") == []
    # the negative control: without the modules every rendered template is compiled
    from_source = generate(source, spec, tmp_path / "out-source")
    assert {"compose.yaml.j2", "iptables.sh.j2", "castle.nft.j2"} <= set(from_source)
    assert outputs(tmp_path / "out-pre") == outputs(tmp_path / "out-source")


def test_an_edited_template_is_compiled_from_its_source(spec: Path, tmp_path: Path) -> None:
    pre = copy_of_castle(tmp_path / "pre", precompile=True)
    nft = pre / "templates" / "castle.nft.j2"
    nft.write_text("# edited after the build\n" + nft.read_text())
    assert generate(pre, spec, tmp_path / "out") == ["castle.nft.j2"]
    assert "# edited after the build\n" in (tmp_path / "out" / "firewall" / "castle.nft"
                                            ).read_text()


def test_a_module_another_jinja_made_is_not_run(spec: Path, tmp_path: Path) -> None:
    """A module left by an older Jinja may import what the installed one lacks: the run
    compiles that template from its source instead of failing."""
    pre = copy_of_castle(tmp_path / "pre", precompile=True)
    module = pre / "castle" / "_jinja" / f"{compiled.module_name('castle.nft.j2')}.py"
    text = module.read_text()
    assert "CASTLE_KEY = " in text  # the control: this is the module of castle.nft.j2
    module.write_text("from jinja2.runtime import made_by_another_jinja\n"
                      + text.replace("CASTLE_KEY = '", "CASTLE_KEY = 'stale"))
    assert generate(pre, spec, tmp_path / "out") == ["castle.nft.j2"]
    assert (tmp_path / "out" / "firewall" / "castle.nft").is_file()


def test_the_key_covers_source_jinja_and_options() -> None:
    env = render.environment()
    base = compiled.key(env, "{{ a }}")
    assert compiled.key(env, "{{ a }}") == base
    assert compiled.key(env, "{{ b }}") != base
    other = env.overlay(trim_blocks=False)
    assert compiled.key(other, "{{ a }}") != base
    # every option that changes the code Jinja writes changes the key
    for changed in (env.overlay(finalize=str), env.overlay(enable_async=True)):
        assert changed.compile("{{ a }}", raw=True) != env.compile("{{ a }}", raw=True)
        assert compiled.key(changed, "{{ a }}") != base
    fake = type("FakeJinja", (), {"__version__": "0.0"})  # another Jinja made the module
    real = sys.modules["jinja2"]
    sys.modules["jinja2"] = fake  # type: ignore[assignment]
    try:
        assert compiled.key(env, "{{ a }}") != base
    finally:
        sys.modules["jinja2"] = real


def test_every_template_has_a_module() -> None:
    """compile_all writes one module per template, each carrying its template's key."""
    env = render.environment()
    names = sorted(p.relative_to(ROOT / "templates").as_posix()
                   for p in (ROOT / "templates").rglob("*.j2"))
    assert len(names) >= 10 and "tls/client.cnf.j2" in names
    mods = {compiled.module_name(n) for n in names}
    assert len(mods) == len(names)  # no two templates share a module
    for name in names:
        text = compiled.module_text(env, name, (ROOT / "templates" / name).read_text())
        assert text.startswith(env.compile((ROOT / "templates" / name).read_text(), name,
                                           name, raw=True))
        assert f"CASTLE_KEY = {compiled.key(env, (ROOT / 'templates' / name).read_text())!r}" \
            in text
