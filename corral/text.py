"""How corral words things for people, shared by the CLI and the daemon's messages."""

from __future__ import annotations


def plural(n: int, word: str) -> str:
    """`1 agent`, `2 agents`: counts as a person would write them."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
