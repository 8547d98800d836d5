"""A server's log messages passed on to the client a call was made for, on that call's
stream, at its level or above. Over a pipe nothing ties a log message to a request, so one
goes to a call only when no other could have caused it (client.py `_log_caller`): a
message sent to the wrong client would leak one caller's call to another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
# RFC 5424's severities, least first, as MCP's LoggingLevel names them
LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


class LogRelay:
    """The caller of one call: its level, and how a message reaches it."""

    __slots__ = ("level", "send")

    def __init__(self, level: str, send: Callable[[dict[str, Any]], None]) -> None:
        self.level = level
        self.send = send

    def __call__(self, params: dict[str, Any]) -> None:
        """Passed on at the caller's level or above (a level MCP does not name is not)."""
        level = params.get("level")
        if level in LEVELS and LEVELS.index(level) >= LEVELS.index(self.level):
            self.send(params)


def valid_level(level: Any) -> str | None:
    return level if isinstance(level, str) and level in LEVELS else None
