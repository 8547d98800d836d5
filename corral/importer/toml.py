"""corral's config as TOML text: the agent tables an import made, with a header saying
where they came from (tomllib reads TOML; nothing in the standard library writes it)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .model import Conversion

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def key(k: str) -> str:
    return k if _BARE.fullmatch(k) else string(k)


def string(s: str) -> str:
    """A TOML basic string of any text, in ASCII: each character beyond it escaped by its
    code point (\\uXXXX, or \\UXXXXXXXX past the BMP: JSON's surrogate pairs are no
    TOML), control characters and DEL too; a lone surrogate (no character) is U+FFFD."""
    out = ['"']
    for c in s:
        n = ord(c)
        if c in _SHORT:
            out.append(_SHORT[c])
        elif 0x20 <= n < 0x7F:
            out.append(c)
        elif 0xD800 <= n <= 0xDFFF:
            out.append("\\uFFFD")
        elif n <= 0xFFFF:
            out.append(f"\\u{n:04X}")
        else:
            out.append(f"\\U{n:08X}")
    out.append('"')
    return "".join(out)


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
          "\f": "\\f", "\r": "\\r"}


def value(v: Any) -> str:
    """A TOML value (a float as JSON writes it: TOML's own, but for what no config
    holds: an infinity or NaN, written as TOML's inf and nan)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return string(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")  # pragma: no cover - ours only


def render(imports: list[Conversion]) -> str:
    """The agent tables of every import, then its MCP servers', in order; a nested table
    (limits, env) after its owner's keys."""
    out: list[str] = []
    for imp in imports:
        # the path escaped as a string is: a newline in a file name would end the comment
        out.append(f"# imported from {string(imp.source)[1:-1]} ({imp.kind}) by corral "
                   "import")
        for kind, tables in (("agents", imp.agents), ("mcp_servers", imp.servers)):
            for name, table in tables.items():
                out.append(f"\n[{kind}.{key(name)}]")
                nested = {k: v for k, v in table.items() if isinstance(v, dict) and v}
                out += [f"{key(k)} = {value(v)}" for k, v in table.items()
                        if k not in nested]
                for sub, inner in nested.items():
                    out.append(f"\n[{kind}.{key(name)}.{key(sub)}]")
                    out += [f"{key(k)} = {value(v)}" for k, v in inner.items()]
        out.append("")
    return "\n".join(out)
