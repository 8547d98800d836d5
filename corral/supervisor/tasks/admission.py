"""Whether a task is accepted: every refusal is at once, with its reason, before the task
is journaled or queued."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...ratelimit import TokenBucket
from ...text import plural
from ..quotas import retry_after, tenant_queue_full

if TYPE_CHECKING:
    from ..quotas import Tenancy
    from .host import AgentLike


MAX_INPUT_BYTES = 16 * 1024 * 1024 - 4096  # it must fit one 16 MiB protocol line


def refusal(agent: AgentLike) -> str | None:
    """Why `agent` cannot take a task now (no replica will run it), or None."""
    reps = agent.replicas
    for r in reps:  # (one that will run again is never failed: the usual answer, first)
        if r.machine.will_run_again:
            return None
    if not reps:
        # an elastic agent asleep takes the task: it waits while a replica wakes
        return None if agent.spec.elastic else f"agent {agent.name} has no replicas"
    if all(r.machine.failed for r in reps):
        return f"agent {agent.name} is failed: {reps[0].reason}"
    if not any(r.machine.will_run_again for r in reps):
        return f"agent {agent.name} is stopped"
    return None


def check_takes_tasks(agent: AgentLike) -> None:
    """A plain program (protocol = "none") never takes a task: a conflict, not a refusal."""
    if agent.spec.protocol == "none":
        raise RpcError(jsonrpc.CONFLICT, f"agent {agent.name} runs a plain program "
                                         '(protocol = "none"): it takes no tasks')


def check_input(size: int) -> None:
    if size > MAX_INPUT_BYTES:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"input too large: {size} bytes is over "
                                               f"the {MAX_INPUT_BYTES}-byte limit")


def queue_full(agent: str, depth: int, most: int) -> RpcError:
    """The refusal of a task past its agent's max_queue, in every home's words: `depth`,
    what waits (to start, or for its time)."""
    return RpcError(jsonrpc.REFUSED, f"queue full: agent {agent} has "
                                     f"{plural(depth, 'task')} waiting (max_queue {most})")


class QueueBound(NamedTuple):
    """What a cluster task's queue is bounded by: `most` waiting (0: none), its agent's
    max_queue, or its tenant's when that is the tighter (`tenant` names it)."""

    most: int
    tenant: str | None = None


def cluster_refusal(agent: str, got: object, bound: QueueBound) -> RpcError | None:
    """The refusal a cluster's submit script answered, in the words of the bound it met
    (queue_full's, or the tenant's): {'full', what waits}, or -1 for a session's line
    (its length is its bound)."""
    if isinstance(got, list) and got[:1] == [b"full"]:
        waiting = int(got[1])
    elif got == -1:
        waiting = bound.most
    else:
        return None
    if bound.tenant is not None:
        return tenant_queue_full(bound.tenant, bound.most, waiting, agent)
    return queue_full(agent, waiting, bound.most)


def asks_size_only(timeout: float | None, bucket: TokenBucket | None,
                   tenancy: Tenancy | None) -> bool:
    """Whether `admit` of a task with these asks only its input's size (a batch's check)."""
    return bucket is None and tenancy is None and (timeout is None or timeout > 0)


def admit(agent: AgentLike | None, size: int, timeout: float | None, *,
          bucket: TokenBucket | None = None, tenancy: Tenancy | None = None,
          depth: Callable[[str], int] = lambda name: 0) -> float | None:
    """The one admission step every task passes wherever it is to run: its input's size, its
    timeout and, for an agent this node runs, its rate and tenant's quotas. Raises the refusal;
    answers the timeout it runs with (None: the agent's task_timeout, applied where it runs)."""
    check_input(size)
    if timeout is not None and timeout <= 0:
        raise RpcError(jsonrpc.INVALID_PARAMS, "timeout must be > 0")
    if agent is None:
        return timeout  # an agent this node does not run: the node that claims it judges
    if bucket is not None and not bucket.take():
        raise RpcError(jsonrpc.REFUSED, f"rate limit: agent {agent.name} takes "
                                        f"{plural(agent.spec.rate_per_minute, 'task')} a "
                                        "minute", retry_after(bucket.wait()))
    if tenancy is None:
        return timeout
    refused = tenancy.task_refusal(agent, depth)
    if refused is not None:
        raise refused
    asked = timeout or agent.spec.task_timeout
    capped = tenancy.timeout(agent, asked)
    return timeout if capped == asked else capped
