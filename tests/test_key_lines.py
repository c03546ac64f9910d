"""A bad service or compose object name is reported at the line of its own key.

The key is spelled every way TOML allows (bare, "basic" with escapes, 'literal', dotted,
spaced, inside an inline table); the expected line is the one the test marks with `# HERE`,
found in the text by the test itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from castle.cli import app

HEAD = """version = 1

[stack]
name = "t"

[[tiers]]
name = "a"

[services.fine]
tier = "a"
image = "x:1"
"""

SERVICE_SPELLINGS = {
    "bare": ("[services.Bad_Name]  # HERE\ntier = \"a\"\nimage = \"x:1\"\n", "Bad_Name"),
    "basic": ('[services."a b"]  # HERE\ntier = "a"\nimage = "x:1"\n', "a b"),
    "literal": ("[services.'x$(y)']  # HERE\ntier = \"a\"\nimage = \"x:1\"\n", "x$(y)"),
    "escaped quote": ('[services."a\\"b"]  # HERE\ntier = "a"\nimage = "x:1"\n', 'a"b'),
    "unicode escape": ('[services."\\u00e9t\\u00e9"]  # HERE\ntier = "a"\nimage = "x:1"\n',
                       "été"),
    "spaced": ('[ services . "sp ace" ]  # HERE\ntier = "a"\nimage = "x:1"\n', "sp ace"),
    "bracket inside": ('[services."a]b"]  # HERE\ntier = "a"\nimage = "x:1"\n', "a]b"),
    "dot inside": ('[services."a.b"]  # HERE\ntier = "a"\nimage = "x:1"\n', "a.b"),
    "dotted key": ('\n[services]\n"a;b".tier = "a"  # HERE\n"a;b".image = "x:1"\n', "a;b"),
    "inline table": ('\n[services]\n"a&b" = { tier = "a", image = "x:1" }  # HERE\n', "a&b"),
    "subtable first": ('[services."p q".compose]\nuser = "1"\n\n'
                       '[services."p q"]  # HERE\ntier = "a"\nimage = "x:1"\n', "p q"),
}

VOLUME_SPELLINGS = {
    "bare key": ("[compose.volumes]\nBad_Vol-ok = {}\n'my vol' = {}  # HERE\n", "my vol"),
    "basic key": ('[compose.volumes]\n"a`b`" = {}  # HERE\n', "a`b`"),
    "own table": ('[compose.volumes."v w"]  # HERE\ndriver = "local"\n', "v w"),
    "dotted": ('[compose]\nvolumes."x;y".driver = "local"  # HERE\n', "x;y"),
    "inline": ('[compose]\nvolumes = { ok = {}, "sh $x" = {} }  # HERE\n', "sh $x"),
    "configs": ('[compose.configs]\n"c f" = { content = "x" }  # HERE\n', "c f"),
}


def marked_line(text: str) -> int:
    """The line number of the `# HERE` mark."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.endswith("# HERE"))


def errors(tmp_path: Path, text: str) -> tuple[int, str]:
    """Validate a spec text: (exit code, output)."""
    spec = tmp_path / "zones.toml"
    spec.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", str(spec)])
    return result.exit_code, result.output


@pytest.mark.parametrize(("kind", "table"), [("service", SERVICE_SPELLINGS),
                                             ("volume", VOLUME_SPELLINGS)])
def test_bad_name_points_at_its_key(kind: str, table: dict[str, tuple[str, str]],
                                    tmp_path: Path) -> None:
    """Every spelling: exit 2, the error on the marked line, naming the key."""
    wrong = []
    for spelling, (body, name) in table.items():
        text = HEAD + "\n" + body
        code, output = errors(tmp_path, text)
        line = marked_line(text)
        found = re.findall(r"zones\.toml:(\d+)(?::\d+)?: error: (.*)", output)
        hits = [msg for n, msg in found if int(n) == line and repr(name)[1:-1] in msg]
        if code != 2 or not hits:
            wrong.append(f"{spelling}: want line {line}, got {output.strip()!r}")
    assert not wrong, "\n".join(wrong)


def test_all_bad_names_at_once(tmp_path: Path) -> None:
    """A bad volume name does not hide a bad service name: both reported, each at its line."""
    text = HEAD + '\n[services."a b"]  # S\ntier = "a"\nimage = "x:1"\n\n' \
        '[compose.volumes]\n"v w" = {}  # V\n'
    code, output = errors(tmp_path, text)
    lines = {tag: n for n, line in enumerate(text.splitlines(), 1)
             for tag in ("S", "V") if line.endswith(f"# {tag}")}
    assert code == 2
    assert f"zones.toml:{lines['S']}: error: services.\"a b\"" in output, output
    assert f"zones.toml:{lines['V']}: error: compose.volumes.\"v w\"" in output, output


def test_good_names_pass(tmp_path: Path) -> None:
    """Negative control: the same spellings with valid names are accepted (exit 0), so the
    errors above come from the names alone."""
    for body in ('[services."ok-1"]\ntier = "a"\nimage = "x:1"\n',
                 "[services.'ok-2']\ntier = \"a\"\nimage = \"x:1\"\n",
                 '[compose.volumes]\n"ok.vol_1" = {}\n'):
        code, output = errors(tmp_path, HEAD + "\n" + body)
        assert code == 0, output
