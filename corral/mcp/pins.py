"""Pins of tool definitions (docs/security.md#tool-pins): a server's tool is pinned by
digest when first seen; a later definition that differs, or a new name that differs from a
pinned one only by case or Unicode form (a look-alike that may shadow it), blocks calls of
that tool until a person approves it. The pins outlive the daemon and the server in the
home (`PinHome`): the node's database, or with [cluster] the cluster's Redis, where a
tool is pinned once for every node and a person's approval holds on each.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError

PINS_FILE = "tool-pins.json"  # in the state directory: the pins before they had a home
# what a definition is, for its pin: what a model reads, what it may send and be sent
PINNED_KEYS = ("name", "title", "description", "inputSchema", "outputSchema",
               "annotations", "_meta")
# the keys pins were made of before (a Pin's `keys` 0): such a pin still matching on them
# is made again of PINNED_KEYS, not taken for a drift
FIRST_KEYS = ("name", "description", "inputSchema", "annotations")
KEYS = 1  # the version of PINNED_KEYS a new pin is made of
MEMO = 4096  # listed definitions whose digest is remembered (Pins.seen)


class Pin(msgspec.Struct, frozen=True):
    digest: str
    definition: dict[str, Any]
    pinned_at: float
    keys: int = 0  # the version of PINNED_KEYS it was made of (KEYS)


def definition_of(tool: dict[str, Any], keys: tuple[str, ...] = PINNED_KEYS
                  ) -> dict[str, Any]:
    return {k: tool[k] for k in keys if k in tool}


def folded(name: str) -> str:
    """A name as a reader may take it: case and Unicode compatibility forms undone."""
    return unicodedata.normalize("NFKC", name).casefold()


def digest_of(definition: dict[str, Any]) -> str:
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def difference(was: dict[str, Any], now: dict[str, Any]) -> str:
    import difflib  # here: only a drifted tool's ask pays for it, not a daemon's start

    def lines(d: dict[str, Any]) -> list[str]:
        return json.dumps(d, sort_keys=True, indent=2).splitlines()

    return "\n".join(difflib.unified_diff(lines(was), lines(now), "pinned", "now",
                                          lineterm=""))


class Drift(NamedTuple):
    server: str
    tool: str
    pinned: Pin  # its own pin, or the pin of the tool its name looks like (`shadows`)
    now: dict[str, Any]
    digest: str
    shadows: str | None = None  # a pinned tool's name this new one differs from by case

    def changed(self) -> list[str]:
        return [k for k in PINNED_KEYS
                if self.pinned.definition.get(k) != self.now.get(k)]

    def reason(self, qualified: str) -> str:
        if self.shadows is not None:
            return (f"tool {qualified} is blocked: its name differs from the pinned tool "
                    f"{self.server}__{self.shadows} only by case or Unicode form (a "
                    "look-alike may shadow it): a person's approval pins it as a tool of "
                    "its own (corral approvals)")
        return (f"tool {qualified} is blocked: its definition changed since it was pinned "
                f"({', '.join(self.changed())} differ; pinned {self.pinned.digest[:12]}, "
                f"now {self.digest[:12]}): a person's approval of the change pins the new "
                "one (corral approvals)")

    def subject(self) -> dict[str, Any]:
        """What the person is shown."""
        return {"was": self.pinned.definition, "now": self.now,
                "diff": difference(self.pinned.definition, self.now),
                "digest": self.digest, "shadows": self.shadows}


class ToolDrifted(RpcError):
    """A call of a drifted tool, refused: what the task path's pin gate (tasks/pingate.py)
    turns into a person's approval, and approves with its `pins`."""

    def __init__(self, qualified: str, drift: Drift, pins: Pins) -> None:
        super().__init__(jsonrpc.TOOL_NOT_ALLOWED, drift.reason(qualified))
        self.qualified, self.drift, self.pins = qualified, drift, pins


Table = dict[str, dict[str, Pin]]  # server -> tool -> its pin


class PinHome(Protocol):
    """Where the pins are kept: the node's database (daemon/toolpins.py) or the cluster's
    Redis (cluster/toolpins.py)."""

    async def load(self) -> Table:
        """Every pin kept."""

    async def first(self, server: str, tool: str, pin: Pin) -> Pin:
        """`pin` kept unless the tool has one already (another node's): the one kept."""

    async def newest(self, server: str, tool: str) -> Pin | None:
        """The tool's pin as kept now, where another node may have made or replaced it
        since this one read it (None: no other node)."""

    def replace(self, server: str, tool: str, pin: Pin) -> None:
        """A person's approval: `pin` kept in place of the tool's, written behind."""


class Pins:
    """Every server's pinned tools, in memory and in their home (`keep_in`; none: in
    memory only)."""

    def __init__(self) -> None:
        self.home: PinHome | None = None
        self.pins: Table = {}
        # (server, tool) -> the digest of the drifted definition seen last (not kept: a
        # server seen again says it again)
        self.drifted: dict[tuple[str, str], str] = {}
        # a listed definition's digest, by the identity of the dict a server's listing
        # made (held here, so that no other object takes its id): hashed anew at every
        # call it was a visible part of a gateway call's CPU. A listing is never changed
        # in place, so a new definition is always hashed.
        self._memo: dict[int, tuple[dict[str, Any], dict[str, Any], str]] = {}

    async def keep_in(self, home: PinHome, legacy: Path | None = None) -> None:
        """The pins `home` keeps, before any server is seen; a `legacy` file (the JSON file
        pins were kept in before they had a home) stops the start, untouched (decision
        1470: the bridge of decision 1420 moves it in)."""
        if legacy is not None and legacy.exists():
            raise ValueError(f"{legacy}: the tools' pins of an earlier corral are no longer "
                             "moved in (decision 1470); it was not changed. Start corral "
                             "0.1.0 at commit 53eaacf8 once to move them into the state "
                             "database, or move the file aside to start without them")
        self.home = home  # (a load that fails leaves each pin to be asked of it)
        self.pins = await home.load()

    async def seen(self, server: str, tool: dict[str, Any]) -> Drift | None:
        """A definition seen now: pinned if its tool has no pin (nor a look-alike), else
        its drift (None when it is the pinned one)."""
        definition, digest = self._digest(tool)
        name = tool["name"]
        pin = self.pins.get(server, {}).get(name)
        if pin is None or pin.digest != digest:
            pin = await self._newest(server, name, pin)
        if pin is not None and pin.digest != digest and pin.keys < KEYS and \
                digest_of(definition_of(tool, FIRST_KEYS)) == pin.digest:
            pin = self._pin(server, name, digest, definition)  # of the keys pinned now
        if pin is None:
            shadowed = self._lookalike(server, name)
            if shadowed is None:
                pin = await self._first(server, name, digest, definition)
            else:
                self.drifted[(server, name)] = digest
                return Drift(server, name, self.pins[server][shadowed], definition, digest,
                             shadowed)
        if pin.digest == digest:
            if self.drifted:  # (most calls: none drifted, no key made to look)
                self.drifted.pop((server, name), None)
            return None
        self.drifted[(server, name)] = digest
        return Drift(server, name, pin, definition, digest)

    async def _newest(self, server: str, name: str, pin: Pin | None) -> Pin | None:
        """The home's pin where this node's differs or is missing: another node may have
        pinned the tool, or a person approved its new definition there."""
        if self.home is None:
            return pin
        newer = await self.home.newest(server, name)
        if newer is None or newer == pin:
            return pin
        self.pins.setdefault(server, {})[name] = newer
        return newer

    async def _first(self, server: str, name: str, digest: str,
                     definition: dict[str, Any]) -> Pin:
        pin = Pin(digest, definition, time.time(), KEYS)
        if self.home is not None:
            pin = await self.home.first(server, name, pin)
        self.pins.setdefault(server, {})[name] = pin
        return pin

    def _lookalike(self, server: str, name: str) -> str | None:
        """A pinned tool of `server` whose name reads as `name` does, but is not it."""
        pinned = self.pins.get(server)
        if not pinned:
            return None
        mine = folded(name)
        return next((other for other in pinned if other != name and folded(other) == mine),
                    None)

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

    def _pin(self, server: str, tool: str, digest: str, definition: dict[str, Any]) -> Pin:
        """A pin made in place of the tool's (an approval, an old pin made again)."""
        pin = Pin(digest, definition, time.time(), KEYS)
        self.pins.setdefault(server, {})[tool] = pin
        if self.home is not None:
            self.home.replace(server, tool, pin)
        return pin
