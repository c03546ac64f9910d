"""Fuzzing the front door: any bytes given as a spec end in exit 0 or exit 2 with a message.

Never a traceback, never "internal error", never a hang, and never a written file on exit 2.
Inputs: byte-level mutations of zones.example.toml and of random valid specs, random TOML
documents over the spec's own vocabulary, wrong types spliced into valid specs, deep
nesting and huge numbers. Most run in-process (typer's CliRunner); a few as real processes.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from castle.cli import app
from tests.strategies import examples, specs, toml_key, toml_value

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = (ROOT / "zones.example.toml").read_bytes()
SECONDS = 20  # per CLI run: generous on a loaded 2-core machine, still catches a hang


class Hang(Exception):
    """A CLI run took longer than SECONDS."""


@contextmanager
def deadline(seconds: int = SECONDS) -> Iterator[None]:
    """Raise Hang in the main thread when the block runs too long."""

    def ring(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no answer within {seconds}s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def files_in(folder: Path) -> list[str]:
    """Every file below a folder (empty when it does not exist)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def front_door(raw: bytes) -> None:
    """Feed raw bytes to `castle validate` and `castle generate`; assert the contract."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "zones.toml"
        spec.write_bytes(raw)
        out = Path(tmp) / "out"
        runner = CliRunner()
        for argv in (["validate", str(spec)], ["generate", str(spec), "-o", str(out)]):
            with deadline():
                result = runner.invoke(app, argv)
            text = result.output
            assert result.exit_code in (0, 2), (argv[0], result.exit_code, text,
                                                result.exception)
            if result.exception is not None:
                assert isinstance(result.exception, SystemExit), repr(result.exception)
            assert "Traceback" not in text and "internal error" not in text, text
            if result.exit_code == 2:
                assert text.strip(), "exit 2 without a message"
                assert "error" in text, text
                assert files_in(out) == [], "a bad spec wrote files"


# -- mutations --------------------------------------------------------------------------------

_INTERESTING = [b"\x00", b"\xff", b"\"", b"'", b"[", b"]", b"[[", b"{", b"}", b"=", b"\n",
                b"#", b"\\", b"\\u0000", b".", b"-", b"99999999999999999999", b"1e400", b"nan",
                b"inf", b"tier:", b"cidr:", b"internet", b"\xe2\x80\xa8", b"\r", b"\t",
                b"version = 2\n", b"[services.x]\n", b"[[flows]]\n", b"ports = []\n",
                b"from = \"internet\"\n", b"to = \"tier:nope\"\n", b"listen = [\"0-99999/udp\"]\n"]


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` after 1-6 byte-level edits: flip, delete, insert, duplicate or drop a line."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 5))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == 0 and data:
            data[at] = draw(st.integers(0, 255))
        elif op == 1 and data:
            del data[at:at + draw(st.integers(1, 40))]
        elif op == 2:
            data[at:at] = draw(st.sampled_from(_INTERESTING))
        elif op == 3:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            if op == 4:
                lines.insert(i, lines[i])
            else:
                del lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@settings(max_examples=examples(60))
@given(mutated(EXAMPLE))
def test_mutated_example_never_crashes(raw: bytes) -> None:
    """Byte-level mutations of zones.example.toml: exit 0 or 2, a message, nothing written."""
    front_door(raw)


@settings(max_examples=examples(30))
@given(specs(max_services=4).flatmap(lambda ex: mutated(ex[0].encode())))
def test_mutated_random_specs_never_crash(raw: bytes) -> None:
    """Byte-level mutations of random valid specs."""
    front_door(raw)


# -- random TOML over the spec's vocabulary ---------------------------------------------------

_KEYS = ["version", "stack", "name", "subnet_pool", "tiers", "services", "tier", "image",
         "listen", "publish", "flows", "from", "to", "ports", "tls", "waiver", "description",
         "labels", "tls_env", "compose", "firewall", "ssh_port", "kubernetes", "mesh", "kind",
         "targets", "web", "db", "environment", "x"]
_SCALARS = st.one_of(
    st.integers(-2**70, 2**70), st.booleans(), st.floats(allow_nan=True),
    st.sampled_from(["internet", "tier:a", "cidr:10.0.0.0/8", "cidr:10.0.0.1/8", "80",
                     "53/udp", "1-2/tcp", "a", "web", "", "10.89.0.0/16", "istio"]),
    st.text(max_size=20),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
    max_leaves=25,
)


def toml_doc(doc: dict[str, Any]) -> str:
    """A TOML document: every top-level key with an inline value."""
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in doc.items())


@settings(max_examples=examples(60))
@given(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=8))
def test_random_toml_documents_never_crash(doc: dict[str, Any]) -> None:
    """Random well-formed TOML over castle's keys: a clear verdict either way."""
    front_door(toml_doc(doc).encode("utf-8", "surrogatepass"))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def wrong_types(draw: st.DrawFn) -> str:
    """A valid spec with 1-3 values replaced by values of other types."""
    _, data = draw(specs(max_services=4, max_flows=5))
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = draw(_VALUES)
    return toml_doc(data)


@settings(max_examples=examples(60))
@given(wrong_types())
def test_wrong_types_everywhere_never_crash(text: str) -> None:
    """Valid specs with values swapped for other types: exit 2 (or 0), never a crash."""
    front_door(text.encode("utf-8", "surrogatepass"))


# -- the extremes, by hand --------------------------------------------------------------------

VALID_HEAD = 'version = 1\n[stack]\nname = "s"\n[[tiers]]\nname = "t"\n'
EXTREMES = {
    "deep-array": "version = 1\nx = " + "[" * 100_000 + "]" * 100_000 + "\n",
    "deep-table": "version = 1\nx = " + "{a=" * 20_000 + "1" + "}" * 20_000 + "\n",
    "deep-dotted": "version = 1\n" + ".".join(["a"] * 5000) + " = 1\n",
    "deep-passthrough": VALID_HEAD + '[services.a]\ntier = "t"\nimage = "x"\n'
    "[services.a.compose]\nx = " + "[" * 400 + "]" * 400 + "\n",
    "huge-numbers": 'version = 1e400\n[stack]\nname = "s"\nsubnet_pool = "10.0.0.0/99999"\n'
    '[[tiers]]\nname = "t"\n[services.a]\ntier = "t"\nimage = "x"\n'
    "listen = [99999999999999999999999, -1, nan, inf, 0]\n",
    "huge-int": "version = 99999999999999999999999999999999999999\n",
    "many-services": VALID_HEAD + "".join(
        f'[services.s{i}]\ntier = "t"\nimage = "x"\nlisten = [80]\n' for i in range(1500)),
    "wide-range": VALID_HEAD + '[services.a]\ntier = "t"\nimage = "x"\nlisten = ["1-65535/tcp"]'
    '\npublish = ["1-65535:1-65535"]\n[[flows]]\nfrom = "internet"\nto = "a"\n',
    "long-string": VALID_HEAD + 'description = "' + "x" * 2_000_000 + '"\n',
    "empty": "",
    "bom": "\ufeff" + VALID_HEAD,
    "not-utf8": "version = 1\n# \udcff\n",
    "nul": "version = 1\x00\n",
    "crlf": VALID_HEAD.replace("\n", "\r\n"),
    "lone-cr": VALID_HEAD.replace("\n", "\r"),
}


@pytest.mark.parametrize("name", sorted(EXTREMES))
def test_extreme_inputs(name: str) -> None:
    """Deep nesting, huge numbers, huge files and odd encodings: exit 0 or 2, in time."""
    front_door(EXTREMES[name].encode("utf-8", "surrogateescape"))


# -- real processes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deep-array", "huge-numbers", "not-utf8", "deep-passthrough"])
def test_real_process_exit_codes(name: str, tmp_path: Path) -> None:
    """The installed entry point (python -m castle) behaves the same as the CliRunner."""
    spec = tmp_path / "zones.toml"
    spec.write_bytes(EXTREMES[name].encode("utf-8", "surrogateescape"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CASTLE_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "castle", "generate", str(spec), "-o", str(out)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode in (0, 2), text
    assert "Traceback" not in text and "internal error" not in text, text
    if proc.returncode == 2:
        assert "error" in text and files_in(out) == []


def test_front_door_negative_control(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness notices a crash: a bug inside load becomes "internal error" and fails it."""
    import castle.spec.load

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(castle.spec.load, "parse", boom)
    with pytest.raises(AssertionError, match="internal error"):
        front_door(EXAMPLE)


def test_mutation_keeps_toml_valid_sometimes() -> None:
    """Sanity: the example itself passes the door and parses (the mutations start valid)."""
    tomllib.loads(EXAMPLE.decode())
    front_door(EXAMPLE)
