"""Pins of tool definitions (docs/security.md#tool-pins): a server's tool is pinned by
digest when first seen; a later definition that differs blocks calls of that tool until a
person approves it. One JSON file in the state directory, written whole: the pins outlive
the daemon and the server.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError

PINS_FILE = "tool-pins.json"  # in the daemon's state directory
# what a definition is, for its pin: what a model reads and what it may send
PINNED_KEYS = ("name", "description", "inputSchema", "annotations")
MEMO = 4096  # listed definitions whose digest is remembered (Pins.seen)


class Pin(msgspec.Struct, frozen=True):
    digest: str
    definition: dict[str, Any]
    pinned_at: float


def definition_of(tool: dict[str, Any]) -> dict[str, Any]:
    return {k: tool[k] for k in PINNED_KEYS if k in tool}


def digest_of(definition: dict[str, Any]) -> str:
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def difference(was: dict[str, Any], now: dict[str, Any]) -> str:
    def lines(d: dict[str, Any]) -> list[str]:
        return json.dumps(d, sort_keys=True, indent=2).splitlines()

    return "\n".join(difflib.unified_diff(lines(was), lines(now), "pinned", "now",
                                          lineterm=""))


class Drift(NamedTuple):
    server: str
    tool: str
    pinned: Pin
    now: dict[str, Any]
    digest: str

    def changed(self) -> list[str]:
        return [k for k in PINNED_KEYS
                if self.pinned.definition.get(k) != self.now.get(k)]

    def reason(self, qualified: str) -> str:
        return (f"tool {qualified} is blocked: its definition changed since it was pinned "
                f"({', '.join(self.changed())} differ; pinned {self.pinned.digest[:12]}, "
                f"now {self.digest[:12]}): a person's approval of the change pins the new "
                "one (corral approvals)")

    def subject(self) -> dict[str, Any]:
        """What the person is shown."""
        return {"was": self.pinned.definition, "now": self.now,
                "diff": difference(self.pinned.definition, self.now),
                "digest": self.digest}


class ToolDrifted(RpcError):
    """A call of a drifted tool, refused: what the task path's pin gate (tasks/pingate.py)
    turns into a person's approval, and approves with its `pins`."""

    def __init__(self, qualified: str, drift: Drift, pins: Pins) -> None:
        super().__init__(jsonrpc.TOOL_NOT_ALLOWED, drift.reason(qualified))
        self.qualified, self.drift, self.pins = qualified, drift, pins


class Pins:
    """Every server's pinned tools, kept in `path` (None: in memory only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.pins: dict[str, dict[str, Pin]] = {}
        # (server, tool) -> the digest of the drifted definition seen last (not kept: a
        # server seen again says it again)
        self.drifted: dict[tuple[str, str], str] = {}
        # a listed definition's digest, by the identity of the dict a server's listing
        # made (held here, so that no other object takes its id): hashed anew at every
        # call it was a visible part of a gateway call's CPU. A listing is never changed
        # in place, so a new definition is always hashed.
        self._memo: dict[int, tuple[dict[str, Any], dict[str, Any], str]] = {}
        if path is not None:
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                raw = b"{}"
            self.pins = msgspec.json.decode(raw, type=dict[str, dict[str, Pin]])

    def seen(self, server: str, tool: dict[str, Any]) -> Drift | None:
        """A definition seen now: pinned if its tool has no pin, else its drift (None when
        it is the pinned one)."""
        definition, digest = self._digest(tool)
        pin = self.pins.get(server, {}).get(tool["name"])
        if pin is None:
            self._pin(server, tool["name"], digest, definition)
            return None
        if pin.digest == digest:
            if self.drifted:  # (most calls: none drifted, no key made to look)
                self.drifted.pop((server, tool["name"]), None)
            return None
        self.drifted[(server, tool["name"])] = digest
        return Drift(server, tool["name"], pin, definition, digest)

    def _digest(self, tool: dict[str, Any]) -> tuple[dict[str, Any], str]:
        known = self._memo.get(id(tool))
        if known is not None and known[0] is tool:
            return known[1], known[2]
        definition = definition_of(tool)
        digest = digest_of(definition)
        if len(self._memo) >= MEMO:
            self._memo.clear()
        self._memo[id(tool)] = (tool, definition, digest)
        return definition, digest

    def approve(self, drift: Drift) -> None:
        self._pin(drift.server, drift.tool, drift.digest, drift.now)
        self.drifted.pop((drift.server, drift.tool), None)

    def listing(self) -> list[dict[str, Any]]:
        return [{"server": server, "tool": name, "digest": pin.digest,
                 "pinned_at": pin.pinned_at, "drifted": self.drifted.get((server, name))}
                for server, tools in sorted(self.pins.items())
                for name, pin in sorted(tools.items())]

    def _pin(self, server: str, tool: str, digest: str, definition: dict[str, Any]) -> None:
        self.pins.setdefault(server, {})[tool] = Pin(digest, definition, time.time())
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        part = self.path.with_name(self.path.name + ".part")
        part.write_bytes(msgspec.json.encode(self.pins))
        os.replace(part, self.path)
