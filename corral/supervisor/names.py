"""The one rule for agent and MCP server names: a name becomes a log file name, a process
title, a key in SQLite and part of SERVER__TOOL, so it is checked wherever one comes in (a
name an older corral stored is reported and skipped, not fatal).
"""

from __future__ import annotations

import re

# fullmatch: `$` would also match before a trailing newline
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED = "corral"  # the daemon's own log source
RULE = "1-64 characters of [A-Za-z0-9_-], starting with a letter or digit"


def shown(name: str) -> str:
    """A name as messages show it: as is when it is tame, else quoted and cut short."""
    if NAME_RE.fullmatch(name):
        return name
    if len(name) > 64:
        return f"{name[:20]!r}... ({len(name)} characters)"
    return repr(name)


def name_problem(name: str, *, server: bool = False) -> str | None:
    """Why `name` may not name an agent (or an MCP server), or None if it may."""
    if not NAME_RE.fullmatch(name):
        return f"name must be {RULE}"
    if name == RESERVED:
        return f"the name {RESERVED!r} is reserved for the daemon's own log"
    if server and "__" in name:
        return "a server name may not contain '__' (it separates server and tool in " \
            "SERVER__TOOL)"
    if server and name.endswith("_"):
        # `a___x` is read as server a's tool `_x`: a server `a_` beside `a` would have
        # its `x` unreachable, and one added later would take `a`'s `_x` (issue 88)
        return (f"a server name may not end with '_' ({name}__TOOL reads as server "
                f"{name.rstrip('_')}'s tool)")
    return None
