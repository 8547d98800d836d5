"""Push notification configs (spec 3.5.3) and their delivery: each status change of the
task POSTed to each config's URL as a StreamResponse, with its token, at least once with
backoff. A URL must name a public address unless the operator allows private ones
(`[a2a] push_private`): a caller's URL is no way into the daemon's own network. A task's
configs are records of its home (supervisor/pushstore.py: the node's state database, or
the cluster's Redis, with who made them), so that a restarted daemon, or another node,
delivers what its task does next, its end at least."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET

from ...jsonrpc import RpcError
from ...supervisor.pushstore import PushStore
from ..askwebhook import post
from . import wire as w

if TYPE_CHECKING:
    import aiohttp

RETRIES = 8  # each after twice the wait of the one before (askwebhook.post)
TIMEOUT = 10.0
MAX_CONFIGS = 16  # per task
# events of one config waiting for its receiver (its posts are one at a time, in order);
# past it the oldest that is not the task's end is dropped, counted and said: a receiver
# that never answers, 16 configs of a task and a task of many chunks held a post each
MAX_QUEUED = 64
MAX_POSTING = 256  # posts in flight at once, every config's together
LEAD = 15.0  # seconds a daemon's word that it delivers a task's events holds (a cluster's)
# a config's strings: each is kept in its task's home while the task lives
# (and after it ends, until its configs are delivered to)
MAX_URL = 2048
MAX_SECRET = 4096  # its token, its authentication's scheme and credentials
MAX_CONFIG_ID = 128
TOKEN_HEADER = "X-A2A-Notification-Token"
# why a config's maker would not make it now (None: they would): the door's word on them
Refusal = Callable[[dict[str, Any]], str | None]


class PushRecord(msgspec.Struct):
    """A config as its task's home keeps it, and who made it (its deliveries are made as
    that caller: what it may no longer see is not delivered)."""

    caller: dict[str, Any]
    config: w.PushConfig


def made_by(kept: PushRecord, maker: dict[str, Any]) -> bool:
    """Whether `maker` (a kept caller) made the config: the same token, or no token's
    both (a config's secrets and its deletion are its maker's alone, as a key is its
    caller's, decision 1792; one kept before its token's creation time was: by name)."""
    since = maker.get("since")
    return kept.caller.get("token") == maker.get("token") and \
        kept.caller.get("since", since) == since


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's prefix: an IPv4 address behind it


def _global(address: str) -> bool:
    """A public address, and so is the IPv4 one an IPv6 address carries: mapped, 6to4,
    Teredo's, IPv4-compatible (`::10.0.0.5`) or NAT64's (`64:ff9b::10.0.0.5`, which a
    NAT64 gateway connects to in its own network; Python calls them global)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        carried = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None,
                   low if int(ip) >> 32 == 0 or ip in NAT64 else None]
        return all(v4 is None or v4.is_global for v4 in carried)
    return True


async def _private(host: str) -> bool:
    """Whether `host` is, or resolves to, an address that is not public (unresolved:
    refused as one)."""
    try:
        return not _global(host)
    except ValueError:
        pass  # a name
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return True
    return not infos or any(not _global(str(info[4][0])) for info in infos)


def _names_private(url: str) -> bool:
    """Whether the URL's host is an address literal that is not public (a name's
    addresses are the public resolver's to judge at the post)."""
    try:
        return not _global(urlsplit(url).hostname or "")
    except ValueError:
        return False


async def check_url(url: str, private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise w.A2aError(w.INVALID_PARAMS, f"invalid params: push url {url!r} is not an "
                         "http:// or https:// URL")
    if not private and await _private(parts.hostname):
        raise w.A2aError(w.INVALID_PARAMS, f"invalid params: push url {url!r} names a "
                         "private, loopback or unresolved address (the operator allows "
                         "these with [a2a] push_private = true)")


def bounded(config: w.PushConfig) -> None:
    """A config's strings within their bounds, and what is sent as a header printable
    ASCII (a line break in a token was an exception at each delivery, none said)."""
    auth = config.authentication
    given: list[tuple[str, Any, int, bool]] = [
        ("url", config.url, MAX_URL, False), ("id", config.id, MAX_CONFIG_ID, False),
        ("token", config.token, MAX_SECRET, True)]
    if not isinstance(auth, msgspec.UnsetType):
        given += [("authentication.scheme", auth.scheme, MAX_SECRET, True),
                  ("authentication.credentials", auth.credentials, MAX_SECRET, True)]
    for name, value, bound, header in given:
        if not isinstance(value, str):
            continue
        if len(value) > bound:
            raise w.A2aError(w.INVALID_PARAMS, f"invalid params: the push config's {name} "
                             f"is {len(value)} characters, past its {bound}")
        if header and not (value.isascii() and value.isprintable()):
            raise w.A2aError(w.INVALID_PARAMS, f"invalid params: the push config's {name} "
                             "is sent as an HTTP header: printable ASCII only")


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """The home not reached (the cluster's Redis): the call's error, said as A2A's."""
    try:
        yield
    except RpcError as exc:
        raise w.A2aError(w.UNAVAILABLE, exc.message) from None


def public_resolver() -> Any:
    """aiohttp's resolver, answering a name's public addresses alone: a name that
    resolved to a public address when its config was made and to a private one at
    delivery (DNS rebinding) is not connected to."""
    from aiohttp.resolver import ThreadedResolver

    class Public(ThreadedResolver):
        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> Any:
            found = [r for r in await super().resolve(host, port, family)
                     if _global(r["host"])]
            if not found:
                raise OSError(f"{host} resolves to no public address")
            return found

    return Public()


class _Sender:
    """One config of one task: the events it is to be sent, one post at a time in
    their order, and the job sending them (None: idle); its maker, and the door's word on
    them, asked before each post."""

    __slots__ = ("config", "dropped", "job", "maker", "queue", "refusal")

    def __init__(self, kept: PushRecord, refusal: Refusal) -> None:
        self.config = kept.config
        self.maker = kept.caller
        self.refusal = refusal
        self.queue: collections.deque[bytes] = collections.deque()
        self.job: asyncio.Task[None] | None = None
        self.dropped = 0


class PushConfigs:
    """The configs of each task, kept by the tasks' home, and their deliveries."""

    def __init__(self, private: bool, report: Callable[[str], None], store: PushStore
                 ) -> None:
        self.private = private
        self.report = report
        self.store = store  # the home's (supervisor/pushstore.py)
        self.delivered = 0
        self.given_up = 0
        self.dropped = 0  # events not sent: their config's receiver was MAX_QUEUED behind
        self.refused = 0  # events not sent: their config would not be made now (`_refusal`)
        self._refused: dict[str, set[str]] = {}  # task -> its configs refused, said
        self._http: aiohttp.ClientSession | None = None
        self._work: set[asyncio.Task[None]] = set()
        self._senders: dict[tuple[str, str], _Sender] = {}
        self._posting = asyncio.Semaphore(MAX_POSTING)
        # tasks whose end is handed to delivery, until their configs are forgotten (one
        # whose forgetting failed stays, its configs kept: not to be taken up again here)
        self.ending: set[str] = set()

    async def check(self, config: w.PushConfig) -> None:
        bounded(config)
        await check_url(config.url, self.private)

    # -- kept ------------------------------------------------------------------------------
    async def records(self, task_id: str) -> list[PushRecord]:
        """The task's configs as its home keeps them (one not read: said, and skipped)."""
        found: list[PushRecord] = []
        with _unavailable():
            kept = await self.store.of(task_id)
        for cid, raw in kept.items():
            try:
                found.append(msgspec.json.decode(raw, type=PushRecord))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.report(f"a2a push config {cid} of task {task_id} not read: {exc}")
        return found

    async def tasks(self) -> list[str]:
        """The tasks whose configs the home keeps (a task of `ending` whose configs it
        no longer keeps, another daemon's forgetting, let go)."""
        with _unavailable():
            kept = await self.store.tasks()
        self.ending &= set(kept)
        return kept

    async def caller(self, task_id: str) -> dict[str, Any] | None:
        """Who made the task's first config (its deliveries are made as them)."""
        kept = await self.records(task_id)
        return kept[0].caller if kept else None

    @property
    def shared(self) -> bool:
        """Whether other daemons deliver from the home too (PushStore.shared)."""
        return self.store.shared

    async def lead(self, task_id: str, holder: str) -> bool:
        """Whether `holder` delivers the task's events now (PushStore.lead)."""
        with _unavailable():
            return await self.store.lead(task_id, holder, LEAD)

    async def add(self, task_id: str, config: w.PushConfig,
                  caller: dict[str, Any]) -> w.PushConfig:
        await self.check(config)
        cid = config.id if config.id is not UNSET and config.id else uuid.uuid4().hex
        if cid == config.id and any(kept.config.id == cid and not made_by(kept, caller)
                                    for kept in await self.records(task_id)):
            raise w.A2aError(w.INVALID_PARAMS, f"invalid params: task {task_id} has a "
                             f"push config {cid} of another caller")
        made = msgspec.structs.replace(config, id=cid, task_id=task_id)
        with _unavailable():
            kept = await self.store.put(task_id, cid, msgspec.json.encode(
                PushRecord(caller, made)), MAX_CONFIGS)
        if not kept:
            raise w.A2aError(w.INVALID_PARAMS, f"invalid params: task {task_id} has "
                             f"{MAX_CONFIGS} push configs, the most it may")
        return made

    async def get(self, task_id: str, cid: str, maker: dict[str, Any]) -> w.PushConfig:
        for config in await self.of(task_id, maker):
            if config.id == cid:
                return config
        raise w.A2aError(w.TASK_NOT_FOUND, f"task {task_id} has no push config {cid}")

    async def of(self, task_id: str, maker: dict[str, Any]) -> list[w.PushConfig]:
        """The task's configs `maker` made (another's are none of theirs)."""
        return [kept.config for kept in await self.records(task_id) if made_by(kept, maker)]

    async def delete(self, task_id: str, cid: str, maker: dict[str, Any]) -> None:
        """Gone, whether it was there or not (a delete is idempotent: spec 3.1.10); one
        another made is not the caller's to delete."""
        if any(config.id == cid for config in await self.of(task_id, maker)):
            with _unavailable():
                await self.store.delete(task_id, cid)

    async def deliver(self, task_id: str, event: dict[str, Any], final: bool,
                      refusal: Refusal = lambda _: None) -> None:
        """POST `event` to each config of the task (in the background: each config's
        events one at a time, in order), while `refusal` does not refuse its maker; after
        its end, its configs are forgotten by its home once delivered (a daemon killed
        before: delivered again by the next)."""
        body = msgspec.json.encode(event)
        jobs = [self._queued(task_id, kept, body, final, refusal)
                for kept in await self.records(task_id)]
        if final:
            self.ending.add(task_id)
            job = asyncio.get_running_loop().create_task(self._forget(task_id, jobs))
            self._work.add(job)
            job.add_done_callback(self._work.discard)

    def _queued(self, task_id: str, kept: PushRecord, body: bytes, final: bool,
                refusal: Refusal) -> asyncio.Task[None]:
        """`body` queued for the config, its sender started if idle; the sender's job."""
        config = kept.config
        key = (task_id, config.id if isinstance(config.id, str) else "")
        sender = self._senders.get(key)
        if sender is None:
            sender = self._senders[key] = _Sender(kept, refusal)
        sender.config = config  # (one replaced meanwhile: its URL and token now)
        if len(sender.queue) >= MAX_QUEUED:
            sender.queue.popleft()  # (the end is only ever last: never dropped)
            sender.dropped += 1
            self.dropped += 1
            if sender.dropped == 1:
                self.report(f"a2a push to {config.url} of task {task_id}: its receiver is "
                            f"{MAX_QUEUED} events behind; the oldest not sent are dropped "
                            "(counted), its end is sent")
        sender.queue.append(body)
        if sender.job is None:
            sender.job = asyncio.get_running_loop().create_task(self._send(key, sender))
        return sender.job

    async def _send(self, key: tuple[str, str], sender: _Sender) -> None:
        try:
            while sender.queue:
                why = self._refusal(sender)
                if why is not None:
                    self._refuse(key[0], sender.config, why, len(sender.queue))
                    sender.queue.clear()
                    break
                if not await self._post(sender.config, sender.queue.popleft()) and \
                        len(sender.queue) > 1:
                    # its receiver did not take one in all its attempts: what waits goes
                    # but the newest (the task's end, when it has come), not each after
                    # another's minutes of attempts
                    skipped = len(sender.queue) - 1
                    for _ in range(skipped):
                        sender.queue.popleft()
                    sender.dropped += skipped
                    self.dropped += skipped
        finally:
            sender.job = None
            if not sender.queue and self._senders.get(key) is sender:
                del self._senders[key]

    def _refusal(self, sender: _Sender) -> str | None:
        """Why a config is not posted to now, as it would not be made now (None: it is),
        asked before each post, so that what waited in its queue meanwhile is judged
        too: its maker refused by the door (a token revoked or expired), or one kept
        while the operator allowed private addresses naming an address literal the
        public resolver never sees."""
        url = sender.config.url
        if not self.private and _names_private(url):
            return (f"its url {url!r} names a private or loopback address, which "
                    "[a2a] push_private no longer allows")
        return sender.refusal(sender.maker)

    def _refuse(self, task_id: str, config: w.PushConfig, why: str, events: int) -> None:
        """A config's events not sent, counted, and said once for it."""
        self.refused += events
        cid = config.id if isinstance(config.id, str) else ""
        said = self._refused.setdefault(task_id, set())
        if cid not in said:
            said.add(cid)
            self.report(f"a2a push config {cid} of task {task_id} refused: {why}; "
                        "its events are not sent")

    async def _forget(self, task_id: str, jobs: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*jobs, return_exceptions=True)
        try:
            with _unavailable():
                await self.store.drop(task_id)
        except w.A2aError as exc:
            self.report(f"a2a push configs of task {task_id} not forgotten: {exc.message}")
            return
        self.ending.discard(task_id)
        self._refused.pop(task_id, None)  # (its end: not every refused key read again)

    async def _post(self, config: w.PushConfig, body: bytes) -> bool:
        """Whether its receiver took it, within its attempts."""
        import aiohttp

        if self._http is None:
            connector = None if self.private else aiohttp.TCPConnector(
                resolver=public_resolver())
            self._http = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        headers = {"Content-Type": "application/json"}
        if isinstance(config.token, str):
            headers[TOKEN_HEADER] = config.token
        auth = config.authentication
        if not isinstance(auth, msgspec.UnsetType) and isinstance(auth.credentials, str):
            headers["Authorization"] = f"{auth.scheme} {auth.credentials}"
        why = await post(self._http, config.url, body, headers, RETRIES, self._posting)
        if why is None:
            self.delivered += 1
            return True
        self.given_up += 1
        self.report(f"a2a push to {config.url} given up after {RETRIES + 1} attempts "
                    f"({why})")
        return False

    async def close(self) -> None:
        jobs = [*self._work, *(s.job for s in self._senders.values() if s.job is not None)]
        for job in jobs:
            job.cancel()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        if self._http is not None:
            await self._http.close()
