"""The node's Redis client: redis-py's asyncio client (hiredis parses its replies where
installed), one pool per node. It reconnects by itself on the next command after a lost
connection; only reads are tried again here (`read`): the callers know whether a write
may be. With [cluster] `sentinels`, each new connection asks the Sentinels which Redis
is the primary, so that a node follows a failover without a restart."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from .. import jsonrpc, redact
from ..jsonrpc import RpcError
from ..supervisor.config import ClusterSettings

T = TypeVar("T")


class _PackedByHiredis(AbstractConnection):
    """Commands packed by hiredis, in C, not by redis-py's asyncio connection in Python
    (which does so only for its synchronous one): that packing was the largest part of a
    node's CPU per cluster task (its script calls carry a dozen arguments). Each
    connection loads its client's scripts as it is made (`_Loading`)."""

    def __init__(self, *, scripts: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scripts = {} if scripts is None else scripts

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        """A Redis without the scripts (new, restarted, or a replica just promoted:
        scripts are not replicated) has them all before the connection's first command:
        a batch's call answered NOSCRIPT is run again after the calls behind it, which
        ran, and a call that reads what it wrote (a step's submit after the end of the
        step before it) saw it not yet written (decision 1802)."""
        await super().on_connect_check_health(check_health)
        loads = list(self.scripts.values())
        if loads:
            await self.send_packed_command(
                [self.pack_command("SCRIPT LOAD", src)[0] for src in loads],
                check_health=False)
            for _ in loads:
                await self.read_response()

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "SCRIPT LOAD": a command of two words
            args = (*args[0].encode().split(), *args[1:])
        return [hiredis.pack_command(args)]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """A connection closed under the command before its write (Redis gone while the
        pool handed it out) is a lost connection, as an OS error at the write is to
        redis-py: uvloop's transport refuses the write with a RuntimeError, which reached
        the caller as an internal error. No byte was written: the caller's path for Redis
        not answering applies (decision 1801)."""
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            if "closed" not in str(exc):
                raise
            raise RedisConnectionError(f"Error while writing to {self._host_error()}: "
                                       f"the connection was closed") from exc


# each kind of connection redis-py makes (tcp, TLS, unix; of a Sentinels' primary), packed
_PACKED: dict[type, type] = {
    kind: type(f"Packed{kind.__name__}", (_PackedByHiredis, kind), {})
    for kind in (Connection, SSLConnection, UnixDomainSocketConnection,
                 SentinelManagedConnection, SentinelManagedSSLConnection)}


class _Loading(Redis):
    """A client whose scripts each of its connections loads as it is made."""

    def register_script(self, script: Any) -> Any:
        made = super().register_script(script)
        self.connection_pool.connection_kwargs["scripts"][made.sha] = made.script
        return made


# A node's connections to Redis at most: what is in Redis at once beyond them (a wide
# map's step submits) waits for one to come back (BlockingConnectionPool) rather than
# fail, as redis-py's plain pool makes it ("Too many connections")
POOL = 100
# ... and for its pullers' blocking reads, one an idle agent with a free slot, each held
# for a beat: a pool of their own, so that a node of many agents never keeps its beat's
# renewal (due within a beat) nor its tasks' writes waiting behind them
WAITS = 1000


class _SentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinels' pool, waiting as the blocking pool does."""


def connect(settings: ClusterSettings, node: str, pool: int = POOL) -> Any:
    """A client of at most `pool` connections (typed Any: redis-py's asyncio annotations
    say every reply may be an awaitable or not)."""
    # a reply may take a blocking read's `beat` plus the network: a TTL is the most any
    # call waits for a Redis that does not answer, and for a connection of the pool, made
    # or handed (a connect is timed on the node's loop, at load busier than a beat)
    most = settings.node_ttl + settings.beat
    # maintenance notifications off: on, redis-py's pool hands out a connection that
    # Redis closed without its checkout's look at the socket, and that connection's first
    # command fails, never tried again here (decision 1770)
    options: dict[str, Any] = {
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        "decode_responses": False, "retry": Retry(NoBackoff(), 0),
        "socket_timeout": most, "socket_connect_timeout": most,
        "client_name": f"corral:{node}", "max_connections": pool, "timeout": most,
        "scripts": {}}
    client = (_primary_of(settings, options) if settings.sentinels
              else _Loading.from_pool(BlockingConnectionPool.from_url(settings.redis,
                                                                      **options)))
    # the URL chose the kind of connection (tcp, TLS, unix); its packing is hiredis's
    made = client.connection_pool
    made.connection_class = _PACKED.get(made.connection_class, made.connection_class)
    return client


def _primary_of(settings: ClusterSettings, options: dict[str, Any]) -> Any:
    """A client of the primary the Sentinels name, asked at every connection. The URL
    gives the password, the database and TLS; the Sentinels, host and port."""
    parsed: dict[str, Any] = dict(parse_url(settings.redis))
    tls = parsed.pop("connection_class", None) is SSLConnection
    url = {k: v for k, v in parsed.items() if k not in ("host", "port", "path")}
    sentinels = [(host, int(port)) for host, _, port in
                 (a.rpartition(":") for a in settings.sentinels)]
    asked = Sentinel(sentinels, sentinel_kwargs={  # type: ignore[no-untyped-call]
        "socket_timeout": settings.beat, "socket_connect_timeout": settings.beat})
    assert settings.sentinel_master is not None  # (ClusterSettings.check)
    return asked.master_for(settings.sentinel_master, connection_pool_class=_SentinelPool,
                            redis_class=_Loading, **url, **options, ssl=tls)


def place(settings: ClusterSettings) -> str:
    """Where the cluster's Redis is, as messages say it (never with its password)."""
    if settings.sentinels:
        return (f"{settings.sentinel_master} (the primary Sentinel "
                f"{', '.join(settings.sentinels)} names)")
    return redact.url(settings.redis)


def why(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).rstrip(".")


async def read(call: Callable[[], Awaitable[T]]) -> T:
    """A read, tried once more on a connection error: one lost while the read was on
    it, as Redis went away or came back (no retries are configured, since not every
    write may be repeated; a read may)."""
    try:
        return await call()
    except (RedisConnectionError, RedisTimeoutError):
        return await call()


async def read_all(redis: Any, fill: Callable[[Any], object], *,
                   transaction: bool = False) -> list[Any]:
    """`read` of a pipeline `fill` puts its commands in, made again for each try: one
    executed is emptied, whatever the outcome."""
    async def once() -> list[Any]:
        pipe = redis.pipeline(transaction=transaction)
        fill(pipe)
        return list(await pipe.execute())
    return await read(once)


def never_sent(exc: RedisError) -> bool:
    """The command cannot have reached Redis: no connection could be made (nor a primary
    found: the Sentinels name none while one fails over)."""
    return isinstance(exc, MasterNotFoundError) or (
        isinstance(exc, RedisConnectionError) and "connecting to" in str(exc))


def unavailable(settings: ClusterSettings, exc: RedisError, what: str) -> RpcError:
    return RpcError(jsonrpc.UNAVAILABLE, f"the cluster's Redis at {place(settings)} is "
                                         f"unreachable ({why(exc)}): {what}")


@contextlib.contextmanager
def said(settings: ClusterSettings, what: str) -> Iterator[None]:
    """Redis not answering, as the command's error (`what` did not happen)."""
    try:
        yield
    except RedisError as exc:
        raise unavailable(settings, exc, what) from None


@contextlib.contextmanager
def unanswered(what: str, then: str = "") -> Iterator[None]:
    """Redis not answering, as a part's error: `what` did not happen, why, and `then`."""
    try:
        yield
    except RedisError as exc:
        raise RpcError(jsonrpc.UNAVAILABLE, f"{what} ({why(exc)}){then}") from None

