"""Tool search (`[gateway] tool_search`): a client's `tools/list` is `search_tools` and the
tools it pinned; `search_tools` finds the rest in the client's own list, so it sees nothing
the client could not list. A query is bounded before it is scored (`score`): scoring runs
on the daemon's loop, at the list's size times the query's words.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from typing import Any

from .. import jsonrpc
from ..jsonrpc import RpcError

TOOL = "search_tools"  # no pool tool has this name: theirs are SERVER__NAME
LIMIT = 10
MAX_LIMIT = 50
MAX_QUERY = 1024  # characters of a query: what a model writes to find a tool
MAX_TERMS = 32  # distinct words of one
DEFINITION: dict[str, Any] = {
    "name": TOOL,
    "title": "Search tools",
    "description": "Find the tools this gateway offers beyond those listed, by words of "
                   "their names and descriptions. Returns the best matches with their "
                   "input schemas; call one by its name as any listed tool.",
    "inputSchema": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "maxLength": MAX_QUERY,
                      "description": "words of what the tool should do or be called"},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                      "description": f"at most this many tools ({LIMIT})"}},
        "required": ["query"]},
    "annotations": {"readOnlyHint": True, "openWorldHint": False},
}
_WORD = re.compile(r"[a-z0-9]+")


def listed(tools: list[dict[str, Any]], pinned: list[str]) -> list[dict[str, Any]]:
    """A searching client's list: `search_tools`, then its tools matching a `pinned` glob."""
    return [DEFINITION, *(t for t in tools
                          if any(fnmatchcase(str(t.get("name")), p) for p in pinned))]


def answer(tools: list[dict[str, Any]], arguments: dict[str, Any]) -> dict[str, Any]:
    """`search_tools`'s result over `tools` (the client's own list): the matches, best
    first, as JSON text and as `structuredContent`; bad arguments are INVALID_PARAMS."""
    query = arguments.get("query")
    limit = arguments.get("limit", LIMIT)
    if isinstance(query, str) and len(query) > MAX_QUERY:
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       f"invalid params: {TOOL}'s query is {len(query)} characters, past "
                       f"its bound of {MAX_QUERY} (MAX_QUERY)")
    terms = _words(query) if isinstance(query, str) else []
    if len(terms) > MAX_TERMS:
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       f"invalid params: {TOOL}'s query has {len(terms)} words, past its "
                       f"bound of {MAX_TERMS} (MAX_TERMS)")
    if not terms:
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       f"invalid params: {TOOL} needs a query of at least one word")
    if not isinstance(limit, int) or isinstance(limit, bool) or \
            not 1 <= limit <= MAX_LIMIT:
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       f"invalid params: {TOOL}'s limit must be an integer from 1 to "
                       f"{MAX_LIMIT}")
    found = search(tools, terms)[:limit]
    return {"content": [{"type": "text", "text": json.dumps({"tools": found})}],
            "structuredContent": {"tools": found}, "isError": False}


def search(tools: list[dict[str, Any]], terms: list[str]) -> list[dict[str, Any]]:
    scored = [(s, str(t.get("name")), t) for t in tools if (s := score(t, terms)) > 0]
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [t for _, _, t in scored]


def score(tool: dict[str, Any], terms: list[str]) -> float:
    name = str(tool.get("name", "")).lower()
    text = " ".join(str(tool.get(k) or "") for k in ("title", "description")).lower()
    name_words, text_words = set(_WORD.findall(name)), set(_WORD.findall(text))
    total = 0.0
    for term in terms:
        if term in name_words:
            total += 4
        elif term in name:
            total += 2
        elif term in text_words:
            total += 1
        elif term in text:
            total += 0.5
    return total


def _words(text: str) -> list[str]:
    return list(dict.fromkeys(_WORD.findall(text.lower())))
