"""A task's way in: submitted here (one, or a map's turn of them), or claimed by this node.
Every refusal is at once, with its reason (admission.py), before the task is journaled or
queued."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...taskoptions import NO_OPTIONS, TaskOptions, options_of
from .admission import (
    MAX_INPUT_BYTES,
    admit,
    asks_size_only,
    check_input,
    check_takes_tasks,
    queue_full,
    refusal,
)
from .endings import EndingEngine
from .ids import new_ids
from .interceptors import TraceStart
from .model import Task, TaskHome
from .payload import encode_input
from .spawn import REACH

if TYPE_CHECKING:
    from ..replica import Replica
    from .budget import Budgets
    from .counters import AgentTasks
    from .host import AgentLike
    from .quotahooks import QuotaHooks
    from .spawn import Spawns


# the options a map's tasks do not take (submit_many)
_NOT_MAPPED = frozenset({"delay", "not_before", "session"})


class AdmittingEngine(EndingEngine, Protocol):
    """What intake needs of the TaskManager, besides what a task's end does."""

    home: TaskHome
    quotas: QuotaHooks
    budgets: Budgets
    spawns: Spawns
    trace_begin: Callable[[TraceStart], None] | None

    def next_seq(self) -> int: ...

    def agent_tasks(self, agent: AgentLike) -> AgentTasks: ...


class Intake:
    """Admits tasks into its engine (made with it, one each)."""

    def __init__(self, engine: AdmittingEngine) -> None:
        self.engine = engine

    def submit(self, agent_name: str, task_input: Any, options: TaskOptions = NO_OPTIONS,
               *, traceparent: str | None = None, tracestate: str | None = None,
               task_id: str | None = None) -> Task:
        """Accept a task or refuse it at once with the reason. `task_id`: an id made and
        recorded by the caller before (a workflow's step)."""
        e = self.engine
        try:  # one clock read, its `created` too: a delay counts from it (decision 1004)
            not_before = options.start_at(now := time.time())
        except ValueError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {exc}") from None
        options = options_of(options)
        timeout, session = options.timeout, options.session
        agent = e.sup.agent(agent_name)
        q = e.agent_tasks(agent)
        try:
            check_takes_tasks(agent)
            why = refusal(agent)
            if why:
                raise RpcError(jsonrpc.REFUSED, why)
        except RpcError:
            q.counts["refused"] += 1
            raise
        raw = task_input if isinstance(task_input, msgspec.Raw) else msgspec.Raw(
            encode_input(task_input))
        try:
            timeout = admit(agent, len(raw), timeout, bucket=q.bucket, tenancy=e.quotas.admitting,
                            depth=e.queue.depth)
            # the tasks that wait for their time count against max_queue too
            depth = e.queue.depth(agent.name) + e.delays.count(agent.name)
            later = not_before is not None
            if depth >= agent.spec.max_queue and (later or e.dispatch.free_replica(agent) is None
                                                  or e.dispatch.held is not None
                                                  or e.budgets.holds(agent)):
                raise queue_full(agent.name, depth, agent.spec.max_queue)
            if session is not None and (full := e.sessions.refusal(agent.name, session)):
                raise full
        except RpcError:
            q.counts["refused"] += 1
            raise
        retries = options.retry.retries if options.retry is not None else None
        # (a caller's id given as the task is made: an id made there and then replaced
        # cost each step's run its clock read and formatting)
        task = Task(agent.name, raw, options.priority, timeout or agent.spec.task_timeout,
                    agent.spec.retries if retries is None else retries, e.next_seq(),
                    task_id, now)
        task.home, task.options = e.home, options
        if session is not None:
            task.session = session
        task.tenant = agent.spec.tenant
        reach = REACH.get()
        if reach is not None and getattr(agent.spec, "spawns", None):
            e.spawns.node.limit(task, *reach)  # a caller limited to some agents: so is its tree
        if e.trace_begin is not None:
            e.trace_begin(TraceStart(task, traceparent, tracestate))  # (a bad one refuses)
        q.counts["accepted"] += 1
        e.active[task.id] = task
        if session is not None:
            e.sessions.accept(task)
        if not_before is not None:
            task.not_before = task.due = not_before
            task.home.record(task)
            e.delays.add(task)
            return task
        task.home.record(task)
        e.queue.put(task)
        e.dispatch.pump(agent.name)
        return task

    def submit_many(self, agent_name: str, inputs: Sequence[Any],
                    options: TaskOptions = NO_OPTIONS, *, decoded: bool = False
                    ) -> list[Task | RpcError]:
        """`submit` of a map's turn of inputs: the agent looked at once, ids made in one call, its
        queue pumped once (one write to a worker). `decoded`: a Python caller takes values."""
        e = self.engine
        unmapped = [n for n in options.given() if n in _NOT_MAPPED]
        if unmapped:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: a map's tasks take no "
                                                   f"{', '.join(unmapped)} (they start at "
                                                   "once, outside any session)")
        agent = e.sup.agent(agent_name)
        name, spec = agent.name, agent.spec
        q = e.agent_tasks(agent)
        counts = q.counts
        try:
            check_takes_tasks(agent)
            why = refusal(agent)
            if why:
                raise RpcError(jsonrpc.REFUSED, why)
        except RpcError as exc:
            counts["refused"] += len(inputs)
            return [exc] * len(inputs)
        dispatch, depth_of = e.dispatch, e.queue.depth
        delayed = e.delays.count(name)
        waiting = depth_of(name) + delayed  # (counted on here: only this loop adds)
        reach = REACH.get() if getattr(spec, "spawns", None) else None
        # a map's tasks have no session: they go to the agents' queue behind the lines
        trace_begin, active, put = e.trace_begin, e.active, e.sessions.inner.put
        record = e.home.record if e.journal is not None else None
        next_seq, tenancy, bucket = e.next_seq, e.quotas.admitting, q.bucket
        ids, now = new_ids(len(inputs)), time.time()
        options = options_of(options)
        timeout, priority = options.timeout, options.priority
        size_only = asks_size_only(timeout, bucket, tenancy)
        retries = options.retry.retries if options.retry is not None else None
        if retries is None:
            retries = spec.retries
        raw_type, max_queue, tenant = msgspec.Raw, spec.max_queue, spec.tenant
        out: list[Task | RpcError] = []
        for x, task_id in zip(inputs, ids, strict=True):
            try:
                raw = x if isinstance(x, raw_type) else raw_type(encode_input(x))
                if size_only:
                    if len(raw) > MAX_INPUT_BYTES:
                        check_input(len(raw))
                    t = timeout
                else:
                    t = admit(agent, len(raw), timeout, bucket=bucket, tenancy=tenancy,
                              depth=depth_of)
                if waiting >= max_queue:
                    dispatch.pump(name)  # what may start starts, as `submit`'s had
                    waiting = depth_of(name) + delayed
                    if waiting >= max_queue and (
                            dispatch.free_replica(agent) is None
                            or dispatch.held is not None or e.budgets.holds(agent)):
                        raise queue_full(name, waiting, max_queue)
                task = Task(name, raw, priority, t or spec.task_timeout, retries, next_seq(),
                            task_id, now)
                task.tenant, task.options, task.decoded = tenant, options, decoded
                task.home = e.home
                if reach is not None:
                    e.spawns.node.limit(task, *reach)
                if trace_begin is not None:
                    trace_begin(TraceStart(task, None, None))
            except RpcError as exc:
                counts["refused"] += 1
                out.append(exc)
                continue
            counts["accepted"] += 1
            active[task_id] = task
            if record is not None:
                record(task)
            put(task)
            waiting += 1
            out.append(task)
        dispatch.pump(name)
        return out

    def adopt(self, task: Task, traceparent: str | None = None, tracestate: str | None = None,
              running: tuple[Replica, jsonrpc.Id] | None = None) -> None:
        """A task accepted elsewhere (claimed by this node) waits here, its admission done, or
        runs on (`running`: the worker an upgrade kept and its request); traced from its id
        when its caller's context does not parse (never a reason to refuse it)."""
        e = self.engine
        agent = e.sup.agent(task.agent)
        if e.trace_begin is not None:
            try:
                e.trace_begin(TraceStart(task, traceparent, tracestate))
            except RpcError:
                e.trace_begin(TraceStart(task, None, None))
        task.seq = e.next_seq()
        e.agent_tasks(agent).counts["accepted"] += 1
        e.active[task.id] = task
        if running is not None:
            e.dispatch.adopt(task, *running)
            return
        task.home.record(task)
        e.queue.put(task)
        e.dispatch.pump(agent.name)
