"""corral's config as TOML text: the agent tables an import made, with a header saying
where they came from (tomllib reads TOML; nothing in the standard library writes it)."""

from __future__ import annotations

import json
import re
from typing import Any

from .model import Conversion

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def key(k: str) -> str:
    return k if _BARE.fullmatch(k) else json.dumps(k)


def value(v: Any) -> str:
    """A TOML value: a JSON string is a valid TOML basic string (its escapes are TOML's)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")  # pragma: no cover - ours only


def render(imports: list[Conversion]) -> str:
    """The agent tables of every import, in order; a nested table (limits, env) after
    its agent's keys."""
    out: list[str] = []
    for imp in imports:
        out.append(f"# imported from {imp.source} ({imp.kind}) by corral import")
        for name, table in imp.agents.items():
            out.append(f"\n[agents.{key(name)}]")
            nested = {k: v for k, v in table.items() if isinstance(v, dict) and v}
            out += [f"{key(k)} = {value(v)}" for k, v in table.items() if k not in nested]
            for sub, inner in nested.items():
                out.append(f"\n[agents.{key(name)}.{key(sub)}]")
                out += [f"{key(k)} = {value(v)}" for k, v in inner.items()]
        out.append("")
    return "\n".join(out)
