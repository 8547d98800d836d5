"""A submission's idempotency key (TaskOptions.idempotency_key), what every home keeps of
it and says of it alike: the node's journal (daemon/taskjournal.py) and a cluster's Redis
(cluster/clustertasks.py); docs/tasks.md#idempotency-keys says what a client sees. A
tenant past its bound of live keys is refused a new one rather than have an old one
forgotten early: that key's client's retry would run the work twice."""

from __future__ import annotations

import hashlib

import msgspec

from . import jsonrpc
from .jsonrpc import RpcError, visible
from .taskoptions import TaskOptions, encoded, options_of

KEEP_SECONDS = 24 * 3600.0  # a key names its task at least this long
MAX_KEYS_PER_TENANT = 10_000  # keys younger than KEEP_SECONDS a tenant holds (default)
BOUND_NAME = "idempotency_keys_per_tenant"  # [supervisor]'s setting of the bound


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


def bound_reached(tenant: str, held: int, bound: int) -> RpcError:
    return RpcError(jsonrpc.QUOTA_EXCEEDED, (
        f"tenant {tenant} holds {held} idempotency keys of the last "
        f"{KEEP_SECONDS / 3600:g} h ({BOUND_NAME} = {bound}): a new key is refused until "
        "the oldest is that old (the same key sent again is still answered; a task "
        "submitted with no key is accepted)"))
