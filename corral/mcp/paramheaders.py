"""MCP's HTTP headers: the transport's own names (here, with no import of an HTTP
library, for `corral mcp serve`'s start), and tool arguments said again as headers
(SEP-2243, revision 2026-07-28): a property marked `x-mcp-header: NAME` is sent as
`Mcp-Param-NAME` with every call of the tool. A definition that breaks the rules
(`designations`) is left out, alone; a null or missing argument sends no header.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgspec

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
METHOD_HEADER = "Mcp-Method"
NAME_HEADER = "Mcp-Name"
PREFIX = "Mcp-Param-"
MARK = "x-mcp-header"
PRIMITIVE = ("string", "integer", "boolean")
# RFC 9110's token: the characters a header's name may have
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def header_value(text: str) -> str:
    """A value as a header carries it: base64-wrapped when it is not printable ASCII or
    has whitespace at either end (a header would lose it)."""
    if text.isascii() and text.isprintable() and text == text.strip():
        return text
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


def designations(tool: dict[str, Any]) -> dict[str, str]:
    """The tool's argument -> header name marks; ValueError saying which rule a mark
    breaks."""
    schema = tool.get("inputSchema")
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return {}
    found: dict[str, str] = {}
    seen: set[str] = set()
    for arg, prop in props.items():
        if not isinstance(prop, dict) or MARK not in prop:
            continue
        name = prop[MARK]
        if not isinstance(name, str) or not name:
            raise ValueError(f"property {arg!r}: {MARK} is empty")
        if not TOKEN.match(name):
            raise ValueError(f"property {arg!r}: {MARK} {name!r} is not an HTTP token")
        if name.lower() in seen:
            raise ValueError(f"property {arg!r}: {MARK} {name!r} is used twice")
        if prop.get("type") not in PRIMITIVE:
            raise ValueError(f"property {arg!r}: {MARK} on a {prop.get('type')!r} value "
                             f"(only {', '.join(PRIMITIVE)} may be mirrored)")
        seen.add(name.lower())
        found[arg] = name
    return found


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    return None  # null, or a value of another type than its schema's: no header


class ParamHeaders:
    """The header marks of one server's tools, as its last `tools/list` gave them, and
    the protocol version its client negotiated: what a client shares with its HTTP
    transport."""

    def __init__(self) -> None:
        self._marks: dict[str, dict[str, str]] = {}
        self.protocol_version: str | None = None

    def learn(self, marks: dict[str, dict[str, str]]) -> None:
        self._marks = {tool: m for tool, m in marks.items() if m}

    def headers(self, tool: str | None, arguments: msgspec.Raw) -> dict[str, str]:
        marks = self._marks.get(tool or "")
        if not marks or not arguments:
            return {}
        try:
            args = msgspec.json.decode(arguments)
        except msgspec.DecodeError:  # valid JSON, but not Python's (a number out of range)
            return {}
        if not isinstance(args, dict):
            return {}
        return {PREFIX + name: header_value(text) for arg, name in marks.items()
                if (text := _text(args.get(arg))) is not None}
