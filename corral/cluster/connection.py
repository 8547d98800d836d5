"""The node's Redis client: redis-py's asyncio client (hiredis parses its replies where
installed), one pool per node. It reconnects by itself on the next command after a lost
connection; only reads are tried again here (`read`): the callers know whether a write
may be."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import jsonrpc, redact
from ..jsonrpc import RpcError
from ..supervisor.config import ClusterSettings

T = TypeVar("T")


class _PackedByHiredis:
    """Commands packed by hiredis, in C, not by redis-py's asyncio connection in Python
    (which does so only for its synchronous one): that packing was the largest part of a
    node's CPU per cluster task (its script calls carry a dozen arguments)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "SCRIPT LOAD": a command of two words
            args = (*args[0].encode().split(), *args[1:])
        return [hiredis.pack_command(args)]


class _Tcp(_PackedByHiredis, Connection):
    pass


class _Tls(_PackedByHiredis, SSLConnection):
    pass


class _Unix(_PackedByHiredis, UnixDomainSocketConnection):
    pass


_PACKED: dict[type, type] = {Connection: _Tcp, SSLConnection: _Tls,
                             UnixDomainSocketConnection: _Unix}


def connect(settings: ClusterSettings, node: str) -> Any:
    """The client (typed Any: redis-py's asyncio annotations say every reply may be an
    awaitable or not)."""
    # a reply may take a blocking read's `beat` plus the network: a TTL is the most any
    # call waits for a Redis that does not answer
    client = Redis.from_url(
        settings.redis, decode_responses=False, retry=Retry(NoBackoff(), 0),
        socket_timeout=settings.node_ttl + settings.beat,
        socket_connect_timeout=settings.beat, client_name=f"corral:{node}")
    # the URL chose the kind of connection (tcp, TLS, unix); its packing is hiredis's
    pool = client.connection_pool
    pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return client


def shown(url: str) -> str:
    """The URL without a password, as messages and `corral nodes` say it."""
    return redact.url(url)


def why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.rstrip(".")


async def read(call: Callable[[], Awaitable[T]]) -> T:
    """A read, tried once more on a connection error: after Redis restarts, every
    connection the pool kept is dead, and the first use of each says so (no retries are
    configured, since not every write may be repeated; a read may)."""
    try:
        return await call()
    except (RedisConnectionError, RedisTimeoutError):
        return await call()


def never_sent(exc: RedisError) -> bool:
    """The command cannot have reached Redis: no connection could be made."""
    return isinstance(exc, RedisConnectionError) and "connecting to" in str(exc)


def unavailable(url: str, exc: RedisError, what: str) -> RpcError:
    return RpcError(jsonrpc.UNAVAILABLE,
                    f"the cluster's Redis at {shown(url)} is unreachable ({why(exc)}): {what}")

