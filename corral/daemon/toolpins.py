"""The tools' pins in the node's database (mcp/pins.py's home where there is no cluster;
the table `tool_pins`, storeschema.py): a first pin committed before the call it admits
goes on, an approval written behind."""

from __future__ import annotations

import msgspec

from ..mcp.pins import Pin, Table
from .sqlwrites import statement
from .store import StateStore


class NodePins:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def load(self) -> Table:
        table: Table = {}
        for server, tool, pin in self.store.db.execute(
                "SELECT server, tool, pin FROM tool_pins"):
            table.setdefault(server, {})[tool] = msgspec.json.decode(pin, type=Pin)
        return table

    async def first(self, server: str, tool: str, pin: Pin) -> Pin:
        # one node: no other pins it meanwhile
        await self.store.commit([statement(
            "INSERT OR IGNORE INTO tool_pins (server, tool, pin) VALUES (?, ?, ?)",
            (server, tool, msgspec.json.encode(pin)))])
        return pin

    async def newest(self, server: str, tool: str) -> Pin | None:
        return None

    def replace(self, server: str, tool: str, pin: Pin) -> None:
        assert self.store.writer is not None  # opened with the store, before any server
        self.store.writer.submit(statement(
            "INSERT OR REPLACE INTO tool_pins (server, tool, pin) VALUES (?, ?, ?)",
            (server, tool, msgspec.json.encode(pin))), "tool pin", key=("pin", server, tool))
