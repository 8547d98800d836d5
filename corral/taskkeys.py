"""A submission's idempotency key (TaskOptions.idempotency_key), its rule written once above
the home: a key is its tenant's for KEEP_SECONDS and names one task; sent again with the
same request (its digest) it is that task, with another it is refused. A home only keeps
keys (`KeyStore`: put if absent, return what is there), the node's journal
(daemon/taskjournal.py) and a cluster's Redis (cluster/submitkeys.py); decision 1390,
docs/tasks.md#idempotency-keys says what a client sees. A key is kept as its holder's (its
caller's, decision 1792), an input of its submission (decision 1805), counted in its
tenant's bound. A tenant past its bound of live
keys is refused a new one rather than have an old one forgotten early: that key's
client's retry would run the work twice."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol, TypeVar

import msgspec

from . import jsonrpc
from .jsonrpc import RpcError, visible
from .methods import TaskParams
from .taskoptions import TaskOptions, encoded, options_of

KEEP_SECONDS = 24 * 3600.0  # a key names its task at least this long
MAX_KEYS_PER_TENANT = 10_000  # keys younger than KEEP_SECONDS a tenant holds (default)
BOUND_NAME = "idempotency_keys_per_tenant"  # [supervisor]'s setting of the bound
T = TypeVar("T")
CLAIMED = "p"  # a key's task may not be submitted yet: a retry submits it under its id
ACCEPTED = "a"  # its task acknowledged: a retry submits nothing


class KeyClaim(NamedTuple):
    """A tenant's key as its home holds it: the task id it names, the digest of its
    request, its state; `new`: this call claimed it; `held`: the tenant's count when
    refused."""

    tenant: str
    key: str
    task_id: str
    digest: str
    state: str
    new: bool
    held: int | None = None


class KeyStore(Protocol):
    """A home's idempotency keys: atomic primitives, no rule."""

    bound: int  # the keys younger than KEEP_SECONDS a tenant may hold

    async def claim(self, tenant: str, key: str, task_id: str, digest: str) -> KeyClaim:
        """Put if absent: the key claimed for `task_id`, or what holds it; refused (its
        `held`) when the tenant holds `bound` keys younger than KEEP_SECONDS."""

    async def accepted(self, claim: KeyClaim) -> None:
        """Its task acknowledged: kept KEEP_SECONDS from now."""

    async def release(self, claim: KeyClaim) -> None:
        """A new claim let go of (its submission refused): the key names nothing."""


async def claimed(store: KeyStore, tenant: str, p: TaskParams, task_id: str,
                  holder: str | None) -> KeyClaim:
    """`p`'s key claimed for `task_id` (a new task's) as `holder`'s (`kept_as`), or the
    task it names; refused past the tenant's bound, or when it was sent with another
    request."""
    key = p.idempotency_key
    assert key is not None
    asked = digest(p.agent, bytes(p.input), p, p.local)
    claim = await store.claim(tenant, kept_as(key, holder), task_id, asked)
    if claim.held is not None:
        raise bound_reached(tenant, claim.held, store.bound)
    if claim.digest != asked:
        raise other_request(key)
    return claim


async def submitted(store: KeyStore, claim: KeyClaim, put: Callable[[str], Awaitable[T]]
                    ) -> tuple[T | None, bool]:
    """The task of a claimed key submitted (`put` under its id: what it made), unless the
    key says it was accepted (None); whether it was submitted before. A refused submission
    lets go of a new claim; one whose answer was lost (the home away) keeps it for the
    retry."""
    if claim.state == ACCEPTED:
        return None, True
    try:
        made = await put(claim.task_id)
    except RpcError as exc:
        if claim.new and exc.code != jsonrpc.UNAVAILABLE:
            await store.release(claim)
        raise
    await store.accepted(claim)
    return made, not claim.new


def kept_as(key: str, holder: str | None) -> str:
    """The key as its home keeps it: its holder's own (`Caller.holder`, said by the door
    the submission came by; None: no caller's, the daemon's own), so that another caller
    of its tenant sending it makes a task of its own and is told nothing of the first's
    (its request, its agent, that it was sent at all); the holder's length first, so no
    two holders' keys are one."""
    return key if holder is None else f"{len(holder)}:{holder}:{key}"


def digest(agent: str, raw_input: bytes, options: TaskOptions, local: bool) -> str:
    """What a submission asked, as its key remembers it: the agent, the input (as its
    JSON's values: its spacing and the order of its objects' keys are a client's, and
    the same request from another client is the same request), the options (the key
    among them) and `local`; not how its caller waits (`wait`, run or submit) nor its
    trace context, which a client's retry may send anew. (Decoded only when a key is
    given: a submission without one pays nothing.)"""
    values = msgspec.json.encode(msgspec.json.decode(raw_input), order="sorted")
    return hashlib.sha256(b"\0".join((
        agent.encode(), values, encoded(options_of(options)) or b"",
        b"local" if local else b"cluster"))).hexdigest()


def other_request(key: str) -> RpcError:
    """The key was first sent with another request (409: the same request with a new key
    is accepted). Its task is not named: a key is its tenant's, and the first request may
    be another caller's, whose task this one may not read (issue 88)."""
    return RpcError(jsonrpc.CONFLICT, f"idempotency key {visible(key)} was used for "
                                      "another request: send a new key")


def answer_of(claim: KeyClaim, p: TaskParams, task_agent: str, task_tenant: str) -> None:
    """A key sent again (by `p`) is answered by its tenant's task of the agent asked
    alone; a task of another (a home's word for the task a key names may be unsigned: a
    Redis writer's key naming another tenant's task) makes it another request's key."""
    if task_agent != p.agent or task_tenant != claim.tenant:
        assert p.idempotency_key is not None
        raise other_request(p.idempotency_key)


def bound_reached(tenant: str, held: int, bound: int) -> RpcError:
    return RpcError(jsonrpc.QUOTA_EXCEEDED, (
        f"tenant {tenant} holds {held} idempotency keys of the last "
        f"{KEEP_SECONDS / 3600:g} h ({BOUND_NAME} = {bound}): a new key is refused until "
        "the oldest is that old (the same key sent again is still answered; a task "
        "submitted with no key is accepted)"))
