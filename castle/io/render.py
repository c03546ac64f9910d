"""The one Jinja environment: template search path, strict undefined, quoting filters."""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring  # json.dumps(s, ensure_ascii=False), minus its setup
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: a run that renders nothing never loads them
    import jinja2

_UNSAFE_COMMENT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]")
# What YAML reads as a line break or refuses as unprintable, even inside double quotes.
_YAML_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]")


def templates_dir() -> Path:
    """Where templates live: inside the wheel (castle/_templates) or the source tree."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_templates", package.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("castle's templates folder is missing from this installation")


def _escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


# a big stack repeats its labels, names and namespaces thousands of times: one quoted copy
# each (a rendered file holds every fragment at once before joining them)
@functools.lru_cache(maxsize=1 << 16)
def _yaml_string(value: str) -> str:
    quoted: str = encode_basestring(value)
    return _YAML_UNSAFE.sub(_escape, quoted) if _YAML_UNSAFE.search(quoted) else quoted


def yaml_scalar(value: Any) -> str:
    """A YAML flow scalar that reads back as exactly `value` (strings always quoted)."""
    if isinstance(value, str):
        return _yaml_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):  # the common numbers, without the YAML writer's overhead
        return str(value)
    import yaml

    text: str = yaml.safe_dump(value, default_flow_style=True, width=2**31).strip()
    return text.removesuffix("...").strip()


def yaml_pairs(pairs: Iterable[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """`yaml_scalar` of both sides of each (key, value) pair: labels, annotations, env."""
    return [(yaml_scalar(k), yaml_scalar(v)) for k, v in pairs]


# joins a batch of strings for one pass of a quoting function: no quoting function changes
# this private-use character and no filter's character class holds it
_SEP = "\ue000"


def _joined(values: Sequence[str]) -> str | None:
    """The batch joined at the separator; None when it is empty or a string holds the
    separator itself (then each is quoted on its own)."""
    text = _SEP.join(values)
    return text if values and text.count(_SEP) == len(values) - 1 else None


# ASCII text holds no character of either filter's class but the control characters and
# DEL: a batch (names, addresses, most comments) that is ASCII and holds no DEL needs no
# regular expression (YAML: encode_basestring escapes every control character; comments:
# one table turns them into spaces). DEL then joins such a batch for one pass of the table.
_DEL = "\x7f"
_ASCII_COMMENT = str.maketrans({**dict.fromkeys(range(0x20), " "), ord('"'): "'",
                                ord("\\"): "/"})


def yaml_strings(values: Sequence[str]) -> list[str]:
    """`yaml_scalar` of each string, the batch checked in one pass (a big stack has
    thousands of names and addresses): encode_basestring alone quotes each string of an
    ASCII batch without DEL; any other batch is quoted joined (the escapes work character
    by character, so quoting the joined text and cutting it at the separators gives each
    string's own quoted form)."""
    whole = "".join(values)
    if whole.isascii() and _DEL not in whole:  # _YAML_UNSAFE matches nothing in it
        return list(map(encode_basestring, values))
    text = _joined(values)
    if text is None:
        return [_yaml_string(v) for v in values]
    quoted: str = encode_basestring(text)
    if _YAML_UNSAFE.search(quoted):
        quoted = _YAML_UNSAFE.sub(_escape, quoted)
    return quoted.replace(_SEP, '"' + _SEP + '"').split(_SEP)


def yaml_block(value: Any, indent: int = 0) -> str:
    """A YAML block for a mapping or list, indented by `indent` spaces after the first line.

    Every scalar, keys included, goes through yaml_scalar: strings are always quoted, so no
    YAML 1.1 or 1.2 reader takes `yes`, `1e3` or `0o17` for anything but a string.
    """
    pad = " " * indent
    return "\n".join(pad + line if i else line for i, line in enumerate(_block(value)))


_KEY_LIMIT = 1000


def _block(value: Any) -> list[str]:
    """The lines of a block mapping or sequence (keys sorted), at indentation zero."""
    if isinstance(value, dict) and value:
        lines: list[str] = []
        for key in sorted(value, key=str):
            item, name = value[key], yaml_scalar(str(key))
            # YAML allows 1024 characters for a plain `key:`; longer ones need `? key`
            head, colon = (f"? {name}", ":") if len(name) > _KEY_LIMIT else ("", f"{name}:")
            lines += [head] if head else []
            if isinstance(item, dict | list) and item:
                lines.append(colon)
                lines += ["  " + line for line in _block(item)]
            else:
                lines.append(f"{colon} {yaml_scalar(item)}")
        return lines
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = _block(item)
                lines += ["- " + inner[0]] + ["  " + line for line in inner[1:]]
            else:
                lines.append(f"- {yaml_scalar(item)}")
        return lines
    return [yaml_scalar(value)]


def shell_quote(value: Any) -> str:
    """A single POSIX shell word that expands to exactly str(value)."""
    return shlex.quote(str(value))


def comment(value: Any) -> str:
    """Text safe on one comment line of any target: control characters become spaces."""
    return _UNSAFE_COMMENT.sub(" ", str(value))


def quoted_comment(value: Any, limit: int) -> str:
    """A double-quoted comment word for nft and iptables-restore: one line, no quotes or
    backslashes (neither tool has a safe escape for them), at most `limit` bytes."""
    return _word(comment(value).replace('"', "'").replace("\\", "/"), limit)


def quoted_comments(values: Sequence[str], limit: int) -> list[str]:
    """`quoted_comment` of each string, the batch cleaned in one pass (as `yaml_strings`)."""
    whole = _DEL.join(values)
    if values and whole.isascii() and whole.count(_DEL) == len(values) - 1:
        # one byte a character: only a long word needs cutting
        return [f'"{t}"' if len(t) <= limit else _word(t, limit)
                for t in whole.translate(_ASCII_COMMENT).split(_DEL)]
    text = _joined(values)
    if text is None:
        return [quoted_comment(v, limit) for v in values]
    text = _UNSAFE_COMMENT.sub(" ", text).replace('"', "'").replace("\\", "/")
    return [_word(t, limit) for t in text.split(_SEP)]


def _word(text: str, limit: int) -> str:
    """Cleaned `text` double-quoted, cut to `limit` bytes of UTF-8 (never inside a
    character)."""
    if len(text) <= limit and text.isascii():  # one byte a character: nothing to cut
        return f'"{text}"'
    return '"' + text.encode("utf-8")[:limit].decode("utf-8", "ignore") + '"'


_NFT_LIMIT = 120  # nft refuses a comment past 128 bytes


def nft_string(value: Any) -> str:
    """An nftables quoted string (comments are limited to 128 bytes)."""
    return quoted_comment(value, _NFT_LIMIT)


def nft_strings(values: Sequence[str]) -> list[str]:
    """`nft_string` of each string, the batch cleaned in one pass."""
    return quoted_comments(values, _NFT_LIMIT)


_UNIT_WORD = re.compile(r"^[A-Za-z0-9_./:@+=-]+$")


def unit_word(value: Any) -> str:
    """One word of a systemd unit line: only characters systemd never interprets ('%', '$',
    quotes, backslashes and spaces are refused rather than escaped)."""
    text = str(value)
    if not _UNIT_WORD.fullmatch(text):
        raise ValueError(f"not a safe systemd unit word: {text!r}")
    return text


def xml_text(value: Any) -> str:
    """Text safe inside an XML element or a double-quoted attribute."""
    return (comment(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _loader(folder: Path) -> jinja2.BaseLoader:
    """templates/ read from disk, each taken precompiled (castle/_jinja) while it matches."""
    import jinja2

    from castle.io.compiled import precompiled

    class Loader(jinja2.FileSystemLoader):
        """The folder's templates; the compiled module of one when its key still holds."""

        def load(self, environment: jinja2.Environment, name: str,
                 globals: Any = None) -> jinja2.Template:
            source, _, _ = self.get_source(environment, name)
            namespace = precompiled(environment, name, source)
            if namespace is None:
                return super().load(environment, name, globals)
            return environment.template_class.from_module_dict(environment, namespace,
                                                               globals or {})

    return Loader(str(folder))


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The shared, cached Jinja environment."""
    import jinja2

    from castle.io.codegen import JoinedOutput

    try:
        # compiling the templates is a fifth of a small run; Jinja keeps the compiled code in
        # a per-user 0700 folder of the temp dir, checked against each template's source
        cache: jinja2.BytecodeCache | None = jinja2.FileSystemBytecodeCache(
            pattern=f"__jinja2_castle{JoinedOutput.VERSION}_%s.cache")
    except RuntimeError:  # no private temp folder to be had: compile every time
        cache = None
    env = jinja2.Environment(
        loader=_loader(templates_dir()),
        bytecode_cache=cache,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    if JoinedOutput.fits():  # Jinja's own generator otherwise: the same text, more yields
        env.code_generator_class = JoinedOutput
    env.filters.update(
        yq=yaml_scalar, yblock=yaml_block, sh=shell_quote, comment=comment, nftstr=nft_string,
        xml=xml_text, unit=unit_word,
    )
    return env


def render(template: str, **context: Any) -> str:
    """Render a template of templates/ with the given context."""
    return environment().get_template(template).render(**context)
