"""castle's iptables chains and rules: names within iptables' limits, comment matches, and the
iptables-restore text of a ruleset, kept as the pieces it is joined from."""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

from castle.errors import CastleError
from castle.io.render import comment, quoted_comment

MAX_CHAIN = 28  # iptables' limit on chain names (29 bytes with the NUL)
MAX_COMMENT = 255  # the comment match keeps at most 256 bytes with the NUL


class Rule(NamedTuple):
    """One `-A CHAIN ...` line; src/dst name the peers an allowing rule lets through."""

    chain: str
    spec: str
    src: str = ""
    dst: str = ""

    @property
    def line(self) -> str:
        """The iptables-restore line."""
        return f"-A {self.chain} {self.spec}"


class Ruleset:
    """castle's chains (in order, the first is the one hooked) and their rules (a plain
    class: a dataclass costs each run a fraction of a millisecond to define)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.hooks: list[tuple[str, str, bool]] = []  # builtin, chain, wanted
        self.chains: list[str] = []
        self.notes: dict[str, str] = {}  # chain -> what it is for
        # chain -> its `# CHAIN: note` line, then its `-A` lines so far; chains declared
        # whole at once (the dispatch tree's) are a piece each, all under the first one's
        # name. A big stack has tens of thousands of lines: text() only joins the pieces, in
        # the order of `chains`
        self._body: dict[str, list[str]] = {}
        self._said: dict[str, str] = {}  # note -> comment(note)
        # (chain, index of a piece in its body, what starts with the (src, dst) of it and of
        # each piece after it) for the rules that let peers through: the script needs no Rule
        # objects, so `rules` makes them only when asked
        self._peers: list[tuple[str, int, Sequence[tuple[Any, ...]]]] = []
        self._rules: list[Rule] | None = None

    def __repr__(self) -> str:
        return f"Ruleset(tag={self.tag!r}, chains={len(self.chains)})"

    def chain(self, suffix: str, note: str) -> str:
        """Declare a chain named after the tag and return its name."""
        name = sub_chain(self.tag, suffix)
        if name in self.notes:
            raise CastleError(f"iptables: two chains are both named {name}")
        self.open(name, note)
        return name

    def heading(self, note: str) -> str:
        """What a chain's `#` line says for `note`."""
        said = self._said.get(note)
        if said is None:
            said = self._said[note] = comment(note)
        return said

    def open(self, name: str, note: str) -> list[str]:
        """Declare the next chain by its full name; return the list its lines go in."""
        self.chains.append(name)
        self.notes[name] = note
        self._rules = None
        body = [f"# {name}: {self.heading(note)}"]
        self._body[name] = body
        return body

    def declare(self, names: list[str], note: str, pieces: list[str]) -> None:
        """Declare chains made whole at once (they take no more rules): `pieces` hold each
        one's `#` line, as open() makes it, then its rules, in the order of `names`."""
        self.chains += names
        self.notes.update(dict.fromkeys(names, note))
        self._body[names[0]] = pieces
        self._rules = None

    def add(self, chain: str, spec: str, text: str = "", src: str = "", dst: str = "") -> None:
        """Append a rule, with a comment when `text` is given."""
        if text:  # the comment goes just before the verdict, where iptables-save puts it
            note = _note(text)
            at = max(spec.rfind(" -j "), spec.rfind(" -g "))
            spec = f"{spec[:at]} {note}{spec[at:]}" if at >= 0 else f"{note} {spec}"
        body = self._body[chain]
        if src or dst:
            self._peers.append((chain, len(body), [(src, dst)]))
        body.append(f"-A {chain} {spec}")
        self._rules = None

    def extend(self, chain: str, lines: list[str],
               peers: Sequence[tuple[Any, ...]] = ()) -> None:
        """Append whole `-A CHAIN ...` lines (comments in place); when they allow peers, each
        with a tuple that starts with the (src, dst) it lets through (a Conn does)."""
        body = self._body[chain]
        if peers:
            self._peers.append((chain, len(body), peers))
        body += lines
        self._rules = None

    @property
    def rules(self) -> list[Rule]:
        """Every rule, chain by chain in the order of `chains`, with the peers it lets through
        (made once, on the first access after a change)."""
        if self._rules is None:
            peers = {(chain, at + i): (pair[0], pair[1]) for chain, at, pairs in self._peers
                     for i, pair in enumerate(pairs)}
            rules: list[Rule] = []
            for key, body in self._body.items():  # each line names its chain
                for i, piece in enumerate(body):
                    src, dst = peers.get((key, i), ("", ""))
                    for line in piece.split("\n"):
                        if line.startswith("-A "):
                            chain, spec = line[3:].split(" ", 1)
                            rules.append(Rule(chain, spec, src, dst))
            self._rules = rules
        return self._rules

    def pieces(self) -> list[str]:
        """`text` before its lines are joined: a piece holds one line or several."""
        return list(itertools.chain.from_iterable(self._body.values()))

    def text(self) -> str:
        """Rules grouped by chain, each group after a `#` line saying what the chain is for."""
        return "\n".join(self.pieces())

    def lines(self) -> list[str]:
        """`text`, line by line."""
        return self.text().split("\n")


def _hash(text: str, size: int = 4) -> str:
    """`size` base-32 characters (5 bits each) of the text's SHA-256."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:size].lower()


def main_chain(stack: str) -> str:
    """CASTLE-<stack>, or for long names CASTLE-<4 chars>~<40-bit hash>, so that every
    sub-chain still fits 28 chars and two long names practically never meet (the script
    also refuses a chain whose first rule names another stack)."""
    name = f"CASTLE-{stack}"
    return name if len(name) <= 20 else f"CASTLE-{stack[:4]}~{_hash(stack, 8)}"


def sub_chain(tag: str, suffix: str) -> str:
    """<tag>_<suffix>; stack names hold no '_', so no stack's chains match another's prefix."""
    if not suffix:
        return tag
    name = f"{tag}_{suffix}"
    if len(name) <= MAX_CHAIN:
        return name
    room = MAX_CHAIN - len(tag) - 6
    return f"{tag}_{suffix[:room]}~{_hash(suffix)}"


def _note(text: str) -> str:
    """The comment match of a rule."""
    return f"-m comment --comment {ipt_comment(text)}"


def ipt_comment(text: str) -> str:
    """A double-quoted iptables-restore word: one line, no quotes or backslashes, <=255 bytes."""
    return quoted_comment(text, MAX_COMMENT)
