"""The one-pass reader of plain TOML agrees with tomllib (data) and SourceMap (the flows'
lines), or steps aside: tomllib is the oracle, on real specs and on random documents of
tricky lines."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.bench import synthetic_spec
from castle.spec import toml_lines
from castle.spec.load import SourceMap, load
from tests.strategies import examples

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted([ROOT / "zones.example.toml", *(ROOT / "tests/data/specs").glob("*.toml")])


def agrees(text: str) -> bool:
    """True when the fast path was taken (and then matched both oracles)."""
    got = toml_lines.read(text)
    try:
        want = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assert got is None, "the fast path accepted what tomllib refuses"
        return False
    if got is None:
        return False
    data, flow_lines = got
    assert data == want
    assert _types(data) == _types(want)  # 1 and True are equal in Python, not in TOML
    source = SourceMap(text)
    flows = want.get("flows")
    count = len(flows) if isinstance(flows, list) else 0
    assert flow_lines == [source.line(("flows", i)) for i in range(len(flow_lines))]
    known = SourceMap(text, flow_lines)  # what the loader builds: the same answers
    assert [known.flow_line(i) for i in range(count + 2)] == [
        source.line(("flows", i)) for i in range(count + 2)]
    return True


def _types(value: object) -> object:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_the_project_specs(path: Path) -> None:
    agrees(path.read_text())


@pytest.mark.parametrize("services", [10, 200])
def test_large_plain_specs_take_the_fast_path(services: int) -> None:
    assert agrees(synthetic_spec(services))


def test_a_plain_spec_loads_the_same_either_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    spec = tmp_path / "zones.toml"
    spec.write_text(synthetic_spec(30))
    fast = load(spec)
    monkeypatch.setattr(toml_lines, "read", lambda text: None)
    slow = load(spec)
    assert fast.spec == slow.spec and fast.source.lines == slow.source.lines
    assert [fast.source.flow_line(i) for i in range(len(fast.spec.flows))] == [
        slow.line_of(("flows", i)) for i in range(len(slow.spec.flows))]
    assert fast.warnings == slow.warnings and fast.edges == slow.edges


# pieces of lines that sit on either side of the subset's border
LINES = [
    "", "  ", "\t", "# note", "# a = b", "  # [x]", "# {x}", "[a]", "[b]", "[a.b]", "[b.a]",
    "[[a]]", "[[b]]", "[[a.b]]", "[[flows]]", "[[flows]]", "flows = [1]", "[flows]",
    "[flows.x]", "from = \"a\"", 'x = ["a]", \'[\']',
    "x = [1] # it's \"[\" or ']", "[ a ]", "[a] # c", "[[a]] # c", "[a]]", "[[a]", "[\"a\"]",
    "x = 1", "y = -0", "z = 0", "x = 01", "x = +1", "x = 1_000", "x = 1.5", "x = 1e3",
    "x = 0x10", "x = 1979-05-27", "x = true", "x = false", "x = falsey", "x = True",
    'x = "s"', "x = 's'", 'x = ""', 'x = "a\\"b"', 'x = "a\\nb"', "x = 'a\"b'", 'x = "a\'b"',
    'x = "tab\there"', 'x = "[x]"', 'x = "{x}"', 'x = "#"', 'x = "s" # c', "x=1",
    "x = [1, 2]", "x = []", "x = [ ]", "x = [1,]", "x = [,]", 'x = [1, "a", true]',
    'x = ["{", "}"]', 'x = ["a", \'b\']', 'x = ["#"]', "x = [1] # {x}", "x = [1] # [",
    "x = [[1], [2]]", "x = [1,", "2]", "x = { y = 1 }", "x.y = 1", '"x" = 1', "y = 2",
    "a = 1", "b = 2", "x = 1 2", "x =", "= 1", 'x = """s"""', "x = '''s'''",
    "x = \"caf\u00e9\"", "# caf\u00e9", "x = 1\r", "# \x0c", "# \u2028", "# \x7f", "x = \"\x01\"",
]


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=14), st.booleans())
def test_random_documents(lines: list[str], newline: bool) -> None:
    agrees("\n".join(lines) + ("\n" if newline else ""))


def test_the_random_documents_reach_both_paths() -> None:
    """Negative control: the line pieces above do exercise the fast path and the fallback."""
    assert agrees("[a]\nx = 1\n[[b]]\ny = [\"s\", 2]\n")
    assert not agrees("[a]\nx = 1.5\n")
    assert not agrees("[a]\n[a]\n")


@pytest.mark.parametrize(("line", "plain"), [
    # blanks after the last item, then no `]`; plain: the same line closed
    ("a = [1" + " " * 100_000 + "x", "a = [1" + " " * 100_000 + "]"),
    ("a = [1," + " \t" * 50_000 + "x", "a = [1," + " \t" * 50_000 + "]"),
    ("a = [" + "1, " * 50_000 + "1" + " " * 1_000 + "x", "a = [" + "1, " * 50_000 + "1]"),
    ('a = ["s"' + " " * 100_000 + "]x", 'a = ["s"' + " " * 100_000 + "]"),
    ("a = [" + "1" * 100_000 + "x", None),
])
def test_a_long_hostile_line_is_read_in_linear_time(line: str, plain: str | None) -> None:
    """A spec is hostile input: a line the reader refuses costs it a pass, not a
    backtracking search (blanks that two patterns could share took minutes)."""
    import time

    start = time.process_time()
    assert toml_lines.read(line) is None
    if plain is not None:  # the control: what makes the line refused is its tail alone
        assert toml_lines.read(plain) == (tomllib.loads(plain), [])
    assert time.process_time() - start < 2.0


def test_an_odd_character_steps_aside_wherever_it_stands() -> None:
    """A control character, CR or Unicode line separator, in a comment or a string, sends the
    text to tomllib (they change what tomllib and str.splitlines() see); nothing else does."""
    odd = re.compile(f"[{toml_lines._ODD}{''.join(toml_lines._SEPARATORS)}]")
    for code in [*range(0x0a), *range(0x0b, 0x100), 0x2028, 0x2029, 0xfeff]:  # \n ends a line
        char = chr(code)
        want = odd.match(char) is not None
        assert (toml_lines.read(f"a = 1 # {char} caf\u00e9\n") is None) is want, hex(code)
        if want:
            assert toml_lines.read(f'a = "{char}"\n') is None, hex(code)
            assert toml_lines.read(f"a = ['{char}']\n[b]\n") is None, hex(code)
    assert toml_lines.read("a = 1 # \u00e9\n") == ({"a": 1}, [])  # the control: plain
