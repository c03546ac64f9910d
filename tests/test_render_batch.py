"""The batch quoting functions and castle's code generator change speed, never text.

`yaml_strings` and `nft_strings` must give, string for string, what the `yq` and `nftstr`
filters give; a template compiled by castle's generator (castle/io/codegen.py) must
render what Jinja's own generator renders, errors included.
"""

from __future__ import annotations

import jinja2
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from castle.io import codegen, render

# characters each quoting function treats specially, and the batch separator itself
TRICKY = ['"', "\\", "\n", "\t", "\x00", "\x1e", "\x1f", "\x7f", "\x85", "\x9f", "\u2028", "\u2029",
          "\ufeff", "\ud800", "\udfff", "\ufffe", "\uffff", "\ue000", "é", "🐍", "%", "'", " "]
texts = st.text(alphabet=st.sampled_from(TRICKY) | st.characters(), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(texts, max_size=12))
def test_yaml_strings_are_yaml_scalar(values: list[str]) -> None:
    """Quoted in one batch or one at a time: the same text, reading back as the string."""
    got = render.yaml_strings(values)
    assert got == [render.yaml_scalar(v) for v in values]
    for v, q in zip(values, got, strict=True):
        if not any("\ud800" <= c <= "\udfff" for c in v):  # PyYAML cannot load those
            assert yaml.safe_load(q) == v


@settings(max_examples=300, deadline=None)
@given(st.lists(texts | st.text(min_size=100, max_size=200), max_size=12))
def test_nft_strings_are_nft_string(values: list[str]) -> None:
    """Cleaned and cut in one batch or one at a time: the same comment words."""
    assert render.nft_strings(values) == [render.nft_string(v) for v in values]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(TRICKY[:8]) | st.characters(max_codepoint=127),
                        max_size=300), max_size=12))
def test_ascii_comments_are_comment_words(values: list[str]) -> None:
    """An all-ASCII batch (castle's own comments, mostly) is cleaned by another way: the
    same words, cut at either limit."""
    assert render.nft_strings(values) == [render.nft_string(v) for v in values]
    assert render.quoted_comments(values, 255) == [render.quoted_comment(v, 255) for v in values]


# all-ASCII batches take their own path (joined at DEL): control characters, quotes,
# backslashes, DEL itself and words past nft's limit
ascii_texts = st.text(alphabet=st.sampled_from(['"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f",
                                                "%", "'", " ", "a", "0"]), max_size=130)


@settings(max_examples=300, deadline=None)
@given(st.lists(ascii_texts, max_size=12))
def test_ascii_batches_quote_as_one_at_a_time(values: list[str]) -> None:
    """An ASCII batch, with or without DEL: the same text as each string's filter."""
    assert render.yaml_strings(values) == [render.yaml_scalar(v) for v in values]
    assert render.nft_strings(values) == [render.nft_string(v) for v in values]


def test_a_string_holding_the_separator_is_quoted_alone() -> None:
    """A value holding the batch separator cannot be cut back out of the joined text: the
    batch falls back to one string at a time and still splits into one result a value."""
    values = ["a\ue000b", "c", "\ue000"]
    assert render.yaml_strings(values) == ['"a\ue000b"', '"c"', '"\ue000"']
    assert render.nft_strings(values) == ['"a\ue000b"', '"c"', '"\ue000"']
    ascii_values = ["a\x7fb", "c", "\x7f"]  # the ASCII batches' separator, likewise
    assert render.yaml_strings(ascii_values) == ['"a\\u007fb"', '"c"', '"\\u007f"']
    assert render.nft_strings(ascii_values) == ['"a b"', '"c"', '" "']
    assert render.yaml_strings([]) == [] and render.nft_strings([]) == []


TEMPLATES = {
    "base.j2": "head {{ title }} %s %%\n{% block body %}default{% endblock %}\n",
    "child.j2": "{% extends 'base.j2' %}ignored {{ title }}\n"
                "{% block body %}[{{ super() }}] {{ rows | length }}{% endblock %}",
    "loops.j2": "{% macro cell(x) %}<{{ x }}|{{ x | yq }}>{% endmacro %}"
                "{% set kept %}kept {{ title }}{% endset %}"
                "{% for k, v in rows %}  {{ k }}: {{ v }} %d {{ cell(v) }}\n"
                "{% else %}none\n{% endfor %}{{ kept }} {{ 7 }} {{ 'x%sy' }} {{ none }}\n",
    "strict.j2": "ok {{ missing }} after\n",
}


def environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    """Two environments alike in all but the code generator: Jinja's and castle's."""
    made = []
    for generator in (jinja2.compiler.CodeGenerator, codegen.JoinedOutput):
        env = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES),
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                 trim_blocks=True, lstrip_blocks=True)
        env.code_generator_class = generator
        env.filters["yq"] = render.yaml_scalar
        made.append(env)
    return made[0], made[1]


@pytest.mark.parametrize("name", ["child.j2", "loops.j2"])
@pytest.mark.parametrize("rows", [[], [("a", 1), ("b%s", "c\n%%")]])
def test_generator_renders_as_jinja(name: str, rows: list[tuple[str, object]]) -> None:
    """Text, `%` signs, loops, macros, set blocks and inheritance come out byte for byte."""
    jinja, castle = environments()
    context = {"title": "t%s", "rows": rows}
    want = jinja.get_template(name).render(context)
    assert castle.get_template(name).render(context) == want
    assert "yield" in jinja.compile(TEMPLATES[name], raw=True)
    source = castle.compile(TEMPLATES[name], raw=True)
    if name == "loops.j2":  # negative control: the generator did join this template's output
        assert " % (" in source


def test_generator_keeps_undefined_errors() -> None:
    """A missing variable still fails loudly, with the same error."""
    for env in environments():
        with pytest.raises(jinja2.UndefinedError, match="'missing' is undefined"):
            env.get_template("strict.j2").render()


def test_castle_environment_uses_the_generator() -> None:
    """The shared environment compiles with castle's generator."""
    assert render.environment().code_generator_class is codegen.JoinedOutput
