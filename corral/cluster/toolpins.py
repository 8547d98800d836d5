"""The tools' pins in the cluster's Redis (mcp/pins.py's home with [cluster]): one hash,
`[server, tool]` -> the pin and its MAC, so that a tool is pinned once for every node (the
first to see it pins it, HSETNX) and a person's approval on one node holds on all. A pin
whose MAC does not verify is as none: refused, said, and pinned over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from .. import jsonrpc, timeouts
from ..jsonrpc import RpcError
from ..mcp.pins import Pin, Table
from .keys import Keys
from .trust import PIN, Trust


class SignedPin(msgspec.Struct, frozen=True):
    pin: Pin
    mac: str


def field(server: str, tool: str) -> bytes:
    return msgspec.json.encode([server, tool])


class ClusterPins:
    def __init__(self, redis: Any, keys: Keys, trust: Trust,
                 report: Callable[[str], None]) -> None:
        self.redis = redis
        self.key = keys.tool_pins
        self.trust = trust
        self.report = report
        self._writes: set[asyncio.Task[None]] = set()  # approvals on their way

    def _kept(self, at: bytes, pin: Pin) -> bytes:
        encoded = msgspec.json.encode(pin)
        return msgspec.json.encode(SignedPin(pin, self.trust.sign(PIN, at, encoded)))

    def _read(self, at: bytes, raw: bytes | None) -> Pin | None:
        """A kept pin, or None where there is none or its MAC does not verify."""
        if raw is None:
            return None
        try:
            kept = msgspec.json.decode(raw, type=SignedPin)
        except msgspec.ValidationError:
            kept = None
        if kept is None or not self.trust.valid(kept.mac, PIN, at,
                                                msgspec.json.encode(kept.pin)):
            self.trust.refuse(PIN, at.decode(errors="replace"),
                              kept.mac if kept is not None else None,
                              "the tool is pinned anew at its next sight")
            return None
        return kept.pin

    async def load(self) -> Table:
        table: Table = {}
        for at, raw in (await self.redis.hgetall(self.key)).items():
            pin = self._read(at, raw)
            if pin is not None:
                server, tool = msgspec.json.decode(at, type=tuple[str, str])
                table.setdefault(server, {})[tool] = pin
        return table

    async def first(self, server: str, tool: str, pin: Pin) -> Pin:
        at = field(server, tool)
        try:
            if await self.redis.hsetnx(self.key, at, self._kept(at, pin)):
                return pin
            kept = self._read(at, await self.redis.hget(self.key, at))
            if kept is not None:
                return kept  # another node's first sight
            await self.redis.hset(self.key, at, self._kept(at, pin))
            return pin
        except (RedisError, OSError) as exc:
            raise RpcError(jsonrpc.UNAVAILABLE,
                           f"tool {server}__{tool} is not pinned yet, and cannot be: the "
                           f"cluster's Redis is away ({type(exc).__name__}: {exc})"
                           ) from None

    async def newest(self, server: str, tool: str) -> Pin | None:
        at = field(server, tool)
        try:
            return self._read(at, await self.redis.hget(self.key, at))
        except (RedisError, OSError):
            return None  # this node's pin judges meanwhile: a drift stays one

    def replace(self, server: str, tool: str, pin: Pin) -> None:
        timeouts.kept(self._writes, asyncio.ensure_future(self._replace(server, tool, pin)))

    async def _replace(self, server: str, tool: str, pin: Pin) -> None:
        at = field(server, tool)
        try:
            await self.redis.hset(self.key, at, self._kept(at, pin))
        except (RedisError, OSError) as exc:
            self.report(f"cluster: the approved pin of tool {server}__{tool} was not kept "
                        f"in Redis ({type(exc).__name__}: {exc}): the other nodes ask again")
