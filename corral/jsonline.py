"""A JSON text made one line of corral's line-delimited protocols (the control socket, a
worker's link): a pretty-printed input's newlines would end its message midway."""

from __future__ import annotations


def one_line(text: bytes) -> bytes:
    """`text`, valid JSON, with its line breaks made spaces: JSON allows a raw CR or LF only
    as whitespace between tokens (in a string they are escaped), so nothing else changes."""
    if b"\n" not in text and b"\r" not in text:
        return text
    return text.replace(b"\r", b" ").replace(b"\n", b" ")
