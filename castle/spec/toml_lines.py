"""A one-pass reader for the plain TOML most specs are written in: data and flow lines at once.

tomllib is pure Python and, with the line map for error messages, it was a third of a
1,000-service run. Most specs use a small part of TOML: `[table]` and `[[array]]` headers of
bare keys, and `key = value` lines whose value is a string without escapes, an integer, a
boolean or a one-line array of those. For such a file this reader returns the same data as
`tomllib.loads`, and the line of each `[[flows]]` table (what `SourceMap.line(("flows", i))`
says; the firewall comments cite them), in one pass over the lines. Anything
else (escapes, floats, dates, inline tables, dotted or quoted keys, arrays over several
lines, a table defined twice, a duplicate key, CR line ends...) returns None, and the caller
reads the file with tomllib as before; errors are always tomllib's own.
"""

from __future__ import annotations

import re
import sys
from typing import Any

# Characters that make tomllib or str.splitlines() see the file differently from a plain
# split on "\n": control characters (tab aside), CR, and Unicode line separators. No part
# of a line's pattern matches one of _ODD (strings and comments exclude them), so a line
# holding one leaves the subset; the two separators beyond Latin-1 are looked for in the
# text instead (free in a Latin-1 text, and in a pattern they double its compile time).
_ODD = r"\x00-\x08\x0b-\x1f\x7f\x85"
_SEPARATORS = ("\u2028", "\u2029")
_STR = rf'"[^"\\\n{_ODD}]*"|\'[^\'\n{_ODD}]*\''
_COMMENT = rf"#[^\n{_ODD}]*"
_SCALAR = (rf"{_STR}|-?(?:0|[1-9][0-9]*)(?![0-9A-Za-z_.:+-])"
           r"|true(?![A-Za-z0-9_-])|false(?![A-Za-z0-9_-])")
_KEY = r"[A-Za-z0-9_-]+"
_TAIL = rf"[ \t]*(?:{_COMMENT})?$"
_LINE = re.compile(  # groups: key, scalar, items, array header, table header, blank
    rf"[ \t]*(?:"
    rf"({_KEY})[ \t]*=[ \t]*(?:({_SCALAR})"
    # blanks go to one pattern only: `[ \t]*,?[ \t]*` made a refused long line quadratic;
    # each item ends in a comma or the `]`
    rf"|\[([ \t]*(?:(?:{_SCALAR})[ \t]*(?:,[ \t]*|(?=\])))*)\])"
    rf"{_TAIL}"
    rf"|\[\[({_KEY}(?:\.{_KEY})*)\]\]{_TAIL}"
    rf"|\[({_KEY}(?:\.{_KEY})*)\]{_TAIL}"
    rf"|((?:{_COMMENT})?)$)"
)
_ITEM = re.compile(_SCALAR)

class _Fallback(Exception):
    """The text leaves the plain subset."""


def _scalar(text: str) -> str | int | bool:
    first = text[0]
    if first in "\"'":
        return sys.intern(text[1:-1])  # a big spec names each service in many flows
    if first == "t":
        return True
    if first == "f":
        return False
    return int(text)


def read(text: str) -> tuple[dict[str, Any], list[int]] | None:
    """(tomllib.loads(text), the [[flows]] lines), or None when the text is not plain."""
    if any(separator in text for separator in _SEPARATORS):
        return None
    try:
        return _read(text)
    except (_Fallback, ValueError):  # ValueError: an integer past int()'s digit limit
        return None


def _read(text: str) -> tuple[dict[str, Any], list[int]]:
    root: dict[str, Any] = {}
    flows: list[int] = []
    arrays: set[int] = set()  # ids of the lists [[headers]] made (the only ones they extend)
    table: dict[str, Any] = root
    match = _LINE.match
    # a big spec repeats its lines (`[[flows]]`, `tier = "data"`, `ports = [8080]`): each
    # distinct line is matched once. A value line keeps (key, value, is-a-list); an
    # [[array]] header keeps (None, the list it extends, is-it-flows): once made, that
    # list is the one every later copy of the line extends.
    seen: dict[str, tuple[str | None, Any, bool]] = {}
    for n, line in enumerate(text.split("\n"), start=1):
        known = seen.get(line)
        if known is not None:
            key, value, flag = known
            if key is None:
                table = {}
                value.append(table)
                if flag:
                    flows.append(n)
                continue
            if key in table:
                raise _Fallback
            table[key] = value[:] if flag else value  # each table its own list
            continue
        m = match(line)
        if m is None:
            raise _Fallback
        key, scalar, items, header, name, _ = m.groups()
        if key is not None:
            if key in table:
                raise _Fallback
            if scalar is not None:
                value = _scalar(scalar)
                seen[line] = (key, value, False)
            else:
                value = [_scalar(x) for x in _ITEM.findall(items)]
                seen[line] = (key, value, True)
            table[key] = value
            continue
        if header is None and name is None:
            continue  # blank or a comment
        keys = tuple((header or name).split("."))
        parent = _parent(root, keys)
        last = keys[-1]
        if header is not None:
            found = parent.get(last)
            if found is None:
                found = parent[last] = []
                arrays.add(id(found))
            elif id(found) not in arrays:
                raise _Fallback
            table = {}
            found.append(table)
            is_flows = keys == ("flows",)
            if is_flows:
                flows.append(n)
            seen[line] = (None, found, is_flows)
        else:
            if last in parent:  # defined before, even implicitly: tomllib decides
                raise _Fallback
            table = parent[last] = {}
    return root, flows


def _parent(root: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The table that holds a header's last key, making missing parents (tables only)."""
    node = root
    for part in keys[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise _Fallback  # a value, or an array of tables ([a.b] after [[a]]): tomllib
        node = child
    return node
