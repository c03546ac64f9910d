"""Counted nouns for castle's messages: "1 file", "2 files"."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun, singular for exactly one: count(1, "file") == "1 file"."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
