"""Dispatch: a waiting task goes to the least-loaded serving replica of its agent with a
free slot, taken from the Queue only then; how its attempt ended, and whether it runs
again, are the task's machine's (taskmachine.py). Timeouts, `cancel_grace` (a paused
replica's counts once it is resumed) and the drain's hold: docs/tasks.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from ... import jsonrpc
from ...taskviews import Attempt
from ...text import iso_time
from ...tracecontext import FromId
from .budget import Budgets
from .counters import AgentTasks
from .deadlines import Deadlines
from .model import AttemptEnded, Task
from .payload import Output, output_of, read_raw, read_values
from .queue import Queue
from .taskmachine import AttemptOutcome, TaskCause, TaskStep, attempt_end, timed_out

if TYPE_CHECKING:
    from ..replica import Replica
    from .host import AgentLike, TaskHost
    from .sessions import Sessions

CANCEL_GRACE = 5.0
# (a module's name: an enum's member read through its class costs its metaclass's lookup)
_START = TaskCause.START
# the least input sent as a piece of its own beside its task/run: below it, the copy into
# the message is cheaper than the message's split around it
SPLICED_INPUT = 4096


class Outcomes(Protocol):
    """What dispatch tells of a task (the task manager)."""

    def ended(self, task: Task, end: AttemptOutcome, result: Output | None = None) -> TaskStep:
        """Its running attempt ended as `end` says (`result`: the output it answered):
        the step the task's machine took (a retry is then told to `retry`)."""

    def retry(self, task: Task) -> None: ...

    def stopped(self, task: Task) -> None: ...

    def again(self, task: Task) -> None:
        """A retry that waited for its timed-out attempt to stop waits for its time."""


class TenantGate(NamedTuple):
    """A bound shared with other agents (a tenant's max_concurrent_tasks): while `full`
    says so, the agent's tasks wait; `freed` is told of each task's end."""

    full: Callable[[AgentLike], bool]
    freed: Callable[[str], None]


class TaskDispatch:
    def __init__(self, sup: TaskHost, queue: Queue, by_agent: Mapping[str, AgentTasks],
                 outcomes: Outcomes, budgets: Budgets, sessions: Sessions,
                 gate: TenantGate | None = None) -> None:
        """`gate`: the tenants' (None: no tenants), consulted only while `gated` (some
        tenant bounds its tasks), so that a host bounding none pays nothing per task."""
        self.sup = sup
        self.budgets = budgets
        self.queue = queue
        self.by_agent = by_agent
        self.outcomes = outcomes
        self.deadlines: Deadlines[Task] = Deadlines(self._on_timeout)
        self.gate = gate
        self.gated = False
        # why no task goes to a worker now (the daemon drains), or None
        self.held: str | None = None
        # running tasks being handed over to the next daemon: task id -> why
        self.handed: dict[str, str] = {}
        self.stream = sup.stream  # every attempt's end (AttemptEnded): a drain counts them
        # the request id of each running task's task/run (handed over by corral upgrade)
        self.requests: dict[str, jsonrpc.Id] = {}
        self.sessions = sessions
        # agents whose slots the answers of the read being handled freed, pumped at its end
        self.freed: dict[str, None] = {}
        # each stopped attempt's cancel-grace timer by its id(), cancelled as it ends: the
        # attempt is let go then, not at its grace (suspensions stop thousands at once)
        self.stopping: dict[int, asyncio.TimerHandle] = {}

    def free_replica(self, agent: AgentLike) -> Replica | None:
        best, fewest = None, agent.spec.max_concurrent_tasks
        for r in agent.replicas:
            # (whether it takes tasks, the dearer question, asked of a better one only)
            if r.tasks_running < fewest and r.takes_tasks:
                best, fewest = r, r.tasks_running
        return best

    def why_waiting(self, agent_name: str) -> str | None:
        """Why the agent's waiting tasks do not start now, as pump would find it."""
        agent = self.sup.agents.get(agent_name)
        if agent is None:
            return None
        if held := self.budgets.waiting(agent_name):
            return held
        if not agent.replicas:
            return "the agent is asleep (scaled to zero): a replica is waking for it"
        if self.free_replica(agent) is None:
            limit = agent.spec.max_concurrent_tasks
            taking = [r for r in agent.replicas if r.takes_tasks]
            if taking:
                return (f"every replica that takes tasks is busy ({len(taking)} at "
                        f"max_concurrent_tasks {limit})")
            return "no replica takes tasks: " + "; ".join(
                f"{r.name}#{r.index} {_not_taking(r)}" for r in agent.replicas)
        if self.gated and self.gate is not None and self.gate.full(agent):
            return f"its tenant {agent.spec.tenant} is at its max_concurrent_tasks"
        return None

    def pump(self, agent_name: str) -> None:
        queue = self.queue
        left = queue.depth(agent_name)
        if not left:
            return  # (a task's end pumps too: most often nothing waits)
        q = self.by_agent.get(agent_name)
        if q is None or self.held is not None:
            return
        try:  # (a mapping's get is two calls more, on every task's end)
            agent = self.sup.agents[agent_name]
        except KeyError:
            return
        replicas = agent.replicas
        limit = agent.spec.max_concurrent_tasks
        now = time.time()  # (one reading for the starts of one pump: one instant)
        while True:  # until no replica is free, or no task waits (take's None)
            # (free_replica, written out: asked twice at every task's end)
            r, fewest = None, limit
            for candidate in replicas:
                if candidate.tasks_running < fewest and candidate.takes_tasks:
                    r, fewest = candidate, candidate.tasks_running
            if r is None:
                # an elastic agent asleep: the task wakes it (unless a budget holds its
                # tasks: the budget's timer pumps again, and wakes it, when they may go)
                if not replicas and not self.budgets.holds(agent, now):
                    self.sup.wake(agent_name)
                return
            # over a token or cost budget: the tasks wait, and its timer pumps again
            if self.budgets.holds(agent, now):
                return
            if self.gated and self.gate is not None:
                if self.gate.full(agent):
                    return
                room = 1  # (each start counts against its tenant's bound: asked again)
            else:
                # the starts that go to `r` while it stays the one found, all at once (no
                # start frees a slot, changes a budget or a replica's taking tasks)
                room = _room(r, replicas, limit)
            for _ in range(room):
                task = queue.take(agent_name)
                if task is None:
                    return
                if task.session is not None:
                    # (another replica's count only grows: `r` stays the one found)
                    self._start(task, self.sessions.prefer(task, r, agent), q, now)
                else:
                    self._start(task, r, q, now)
                left -= 1
            # the last that waited started: no scan of the replicas again for none (a task
            # put while these started, by whatever put it, pumped then)
            if left <= 0:
                return

    # the replica is told of each task it starts and ends here, and only here
    def _start(self, task: Task, r: Replica, q: AgentTasks, now: float) -> None:
        assert r.peer is not None
        task.fire(_START)
        task.started = task.started or now
        task.replica = r
        attempt = Attempt(r.index, r.pid, now)
        task.attempts = (*task.attempts, attempt)
        # the task's own count (a cluster task's counts earlier nodes' attempts too)
        number = task.attempt
        q.running += 1
        r.task_started(task.id)
        task.home.record(task)
        # (SPLICED_INPUT: a large input is a piece of its own in one writev)
        piece = task.input if len(task.input) >= SPLICED_INPUT else None
        params: dict[str, Any] = {"task_id": task.id, "attempt": number,
                                  "input": task.input if piece is None else jsonrpc.SPLICE,
                                  "deadline": now + task.timeout}
        trace = task.trace
        if trace is not None:  # the attempt's span: the worker's parent (tracing.py)
            if trace.__class__ is FromId and r.trace_from_id and number == 1:
                # its worker derives the context from the task id
                params["trace"] = trace.bit
            else:
                params["_meta"] = trace.run_meta(number, task.id)
        if task.checkpoint is not None:  # a retry, given the task's last state (steps.py)
            params["resumed"], params["task_state"] = True, task.checkpoint
        if task.session is not None:
            params["session"] = task.session
            params["session_state"] = task.home.turns.started(task, r)
        run = _Run(self, task, r, attempt)
        # (a task known to be decoded at its start is read by read_values itself)
        decode = read_values if task.decoded else run.decode
        self.requests[task.id] = r.peer.request_pending("task/run", params, run,
                                                        decode=decode, piece=piece)
        self.deadlines.add(task, task.timeout)

    def answers_read(self) -> None:
        """One read of a worker's stdout handled: the agents whose slots it freed pump once each."""
        freed = self.freed
        if freed:
            self.freed = {}
            for agent_name in freed:
                self.pump(agent_name)

    def _on_reply(self, task: Task, r: Replica, attempt: Attempt, result: Any,
                  exc: BaseException | None, read: bool = False) -> None:
        """`read`: the answer came in a read of the worker's stdout, whose end starts
        the next tasks (`answers_read`); else they start here."""
        # (a timed-out or cancelled attempt's deadline is gone already: no other is there,
        # a task's next attempt starting only once this one has ended)
        self.deadlines.discard(task, task.timeout)
        self.requests.pop(task.id, None)
        attempt.finished = time.time()
        stopping = self.stopping
        if stopping:
            timer = stopping.pop(id(attempt), None)
            if timer is not None:
                timer.cancel()
        q = self.by_agent.get(task.agent)
        if q is not None:
            q.running -= 1
        r.task_finished(task.id)
        handed = self.handed
        end = attempt_end(task, attempt, task.attempts[-1], exc,
                          handed.pop(task.id, None) if handed else None)
        if end.cause is not None:
            # an output is kept as its bytes, not looked into here: a 10 MB output costs
            # one decode for a Python caller, or a scan and a copy for a socket client
            if exc is None and result.__class__ is not Output:
                result = output_of(result)  # (the answer took the usual way)
            if self.outcomes.ended(task, end, result if exc is None else None).retried:
                self.outcomes.retry(task)
        else:  # timed out or cancelled before the worker answered
            if end.again:
                self.outcomes.again(task)  # its retry waited for this attempt to stop
            task.home.record(task)  # the attempt's end, on a task already moved on
            if task.suspended:
                self.outcomes.stopped(task)
        if self.gated and self.gate is not None:
            self.pump(task.agent)  # (before the other agents of its tenant, as it was)
            self.gate.freed(task.agent)
        elif read:
            self.freed[task.agent] = None
        else:
            self.pump(task.agent)
        if AttemptEnded in self.stream.wanted:
            self.stream.emit(AttemptEnded(task))

    def adopt(self, task: Task, r: Replica, rid: jsonrpc.Id) -> None:
        """A task running on a worker `corral upgrade` handed over: the worker's answer to request
        `rid` ends it as `_start`'s would. Its deadline counts afresh from now."""
        assert r.peer is not None
        attempt = task.attempts[-1]
        task.fire(_START)
        task.replica = r
        q = self.by_agent.get(task.agent)
        if q is not None:
            q.running += 1
        r.task_started(task.id)
        self.requests[task.id] = rid
        r.peer.expect(rid, _Run(self, task, r, attempt).answered, decode=read_raw)
        self.deadlines.add(task, task.timeout)

    def _on_timeout(self, task: Task) -> None:
        if not task.running:
            return
        # (one attempt at a time: its last is the one the deadline is for)
        r, attempt = task.replica, task.attempts[-1]
        assert r is not None
        end = timed_out(attempt, task.timeout)
        if self.outcomes.ended(task, end).retried:
            self.outcomes.retry(task)
            # retried once the worker has stopped this attempt (its slot is busy until)
            attempt.error = end.error.message if end.error is not None else None
        self.stop_attempt(task, r, attempt, "timed out")

    def hand_over(self, task: Task, why: str) -> None:
        """A running task the daemon stops under: its worker is asked to stop it, and
        its attempt's end, unless a success, hands it over (`why`: the attempt's error)."""
        r = task.replica
        if not task.running or r is None or task.id in self.handed:
            return
        self.handed[task.id] = why
        if r.peer is not None:
            r.peer.notify("task/cancel", {"task_id": task.id})

    def stop_attempt(self, task: Task, r: Replica, attempt: Attempt, why: str) -> None:
        """Ask the worker to stop; if it has not answered within the grace, it is hung."""
        task_id = task.id  # not the Task: a suspended one is let go as it is kept compact
        if r.peer is not None:
            r.peer.notify("task/cancel", {"task_id": task_id})

        grace = getattr(r.spec, "cancel_grace", CANCEL_GRACE)
        if attempt.finished is not None or id(attempt) in self.stopping:
            return  # (ended already; or its grace counts from the first stop)
        # the timer's arguments, not a closure: a closure that schedules itself is a
        # cycle (its cell holds it), garbage until a full collection
        self.stopping[id(attempt)] = asyncio.get_running_loop().call_later(
            grace, _stopped_in_time, self.stopping, task_id, r, attempt, why, grace)


def _stopped_in_time(stopping: dict[int, asyncio.TimerHandle], task_id: str, r: Replica,
                     attempt: Attempt, why: str, grace: float) -> None:
    if attempt.finished is not None:  # (its end cancels this timer: a guard)
        stopping.pop(id(attempt), None)
        return
    if r.machine.paused:  # it cannot read the cancel: its grace is after
        stopping[id(attempt)] = asyncio.get_running_loop().call_later(
            grace, _stopped_in_time, stopping, task_id, r, attempt, why, grace)
        return
    del stopping[id(attempt)]
    if r.machine.takes_work:
        r.take_down(f"hung: task {task_id} {why}, and did not stop within "
                    f"{grace:g} s of task/cancel", graceful=False)


class _Run(msgspec.Struct):
    """An attempt's `task/run` request as its peer holds it until the answer: one Struct per
    attempt, in place of a relay and closures (fewer objects for the collector)."""

    dispatch: TaskDispatch
    task: Task
    replica: Replica
    attempt: Attempt
    settled: bool = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, result: Any, /) -> None:
        # (only ever as the answer is read: the peer's lines come from its replica's read)
        self.settled = True
        self.dispatch._on_reply(self.task, self.replica, self.attempt, result, None, True)

    def set_exception(self, exc: BaseException, /) -> None:
        # on the next turn, as a relay's (a closing peer fails every pending request
        # while its owner is still half torn down)
        self.settled = True
        asyncio.get_running_loop().call_soon(self.answered, None, exc)

    def answered(self, result: Any, exc: BaseException | None) -> None:
        self.dispatch._on_reply(self.task, self.replica, self.attempt, result, exc)

    def decode(self, line: bytes) -> tuple[int, Output]:
        # a Python caller's task (decoded) is marked after its start: asked at its answer
        return (read_values if self.task.decoded else read_raw)(line)


def _room(r: Replica, replicas: list[Replica], limit: int) -> int:
    """How many tasks `r`, the least loaded taker, takes before pump's scan would find another:
    fewer than each taker before it, no more than each after it, and under `limit`."""
    cap, before = limit, True
    for c in replicas:
        if c is r:
            before = False
            continue
        # (whether it takes tasks, the dearer question, asked of a nearer one only)
        bound = c.tasks_running if before else c.tasks_running + 1
        if bound < cap and c.takes_tasks:
            cap = bound
    return cap - r.tasks_running


def why_delayed(not_before: float | None, attempts: Sequence[Attempt], delayed: bool
                ) -> str | None:
    """Why a queued task is not in its agent's queue (None: it is), on either home: it
    waits for its time, or its retry waits for its timed-out attempt to stop."""
    last = attempts[-1] if attempts else None
    retry = (f"retry {len(attempts)} after attempt {len(attempts)} "
             f"{str(last.outcome).replace('_', ' ')}" if last is not None else None)
    if delayed and not_before is not None:
        until = f"delayed until {iso_time(not_before)}"
        if retry is None or last is None:
            return until
        return f"{until}: {retry} (backoff {last.backoff if last.backoff else 0:g} s)"
    if last is not None and last.finished is None and retry is not None:
        return (f"{retry}: waiting for its worker to stop that attempt (task/cancel; "
                "restarted as hung after cancel_grace)")
    return None


def _not_taking(r: Replica) -> str:
    """Why a replica takes no task, as `corral status` would say it."""
    st = r.status()
    if st.ready is False:
        return f"unready ({st.health})" if st.health else "unready"
    return f"{st.state}: {st.reason}" if st.reason else str(st.state)
