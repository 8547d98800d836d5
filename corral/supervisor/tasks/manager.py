"""Tasks: work given to agents, each ending in exactly one terminal outcome (docs/tasks.md).

The TaskManager composes the parts, each a role of its own made with it (intake, the
Queue, the TaskDispatch, endings, the person loop, recovery, Retention, the workers'
methods), and answers the API.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import TYPE_CHECKING, Any

from ... import jsonrpc
from ...taskoptions import NO_FILTERS, NO_OPTIONS, TaskFilters, TaskOptions, admits
from ...taskviews import TaskFailure, TaskInfo, TaskResult, TaskSummary
from ...text import ordinal
from ...timeouts import waited
from ...workerproto import SessionCheckpointParams, UsageReportParams
from ..config import DEFAULT_TENANT
from ..labels import Labels, LabelStore, MemoryLabels
from ..pushstore import MemoryPush, PushStore
from ..quotas import QuotasChanged
from ..stream import Roster
from ..workercalls import on_notification, on_request
from .budget import Budgets, no_group
from .chunks import START, OutputChunk
from .counters import AgentTasks, RetiredCounts, totals
from .delays import Delays
from .dispatch import TaskDispatch, TenantGate, why_delayed
from .durable import Sees, TaskJournal, unknown_cursor
from .elicitations import Elicitations
from .endings import Endings
from .inbox import Inbox
from .intake import Intake
from .interceptors import (
    NO_INTERCEPTORS,
    Interceptors,
    TaskInterceptor,
    TaskPath,
    ToolPorts,
    TraceStart,
)
from .lanes import Lanes
from .model import Task, TaskHome
from .nodehome import NodeHome
from .output import position_of
from .payload import acyclic
from .personloop import PersonLoop
from .questions import Questions
from .queue import LocalQueue, Queue
from .quotahooks import QuotaHooks
from .recovery import Recovery, rebuilt
from .replicacalls import ReplicaCalls
from .retention import KEEP_FINISHED, KEEP_FINISHED_BYTES, Retention
from .sessions import Sessions
from .spawn import Spawns
from .stepjournal import StepJournal
from .suspension import Suspensions
from .taskmachine import TaskCause, TaskStatus, cancel_failure, cancelled
from .waitclock import WaitClock
from .worker import WorkerMethods, report_progress

if TYPE_CHECKING:
    from ..quotas import Tenancy
    from ..replica import Replica
    from .host import AgentLike, TaskHost


def _note_first(agent: AgentLike, text: str) -> None:
    """A line of corral's own about the agent, in its first replica's log."""
    if agent.replicas:
        agent.replicas[0].note(text)


class TaskManager:
    def __init__(self, sup: TaskHost, *, tools: ToolPorts, journal: TaskJournal | None = None,
                 kept: int = KEEP_FINISHED, kept_bytes: int = KEEP_FINISHED_BYTES,
                 queue: Queue | None = None, tenancy: Tenancy | None = None,
                 interceptors: Interceptors = NO_INTERCEPTORS,
                 clock: WaitClock | None = None, labels: Labels | None = None) -> None:
        """`tools`: where a worker's tool calls end (the pool's); `interceptors`: the
        concerns around the task path, in their order; `clock`: a person's waits';
        `labels`: the policy's (labels.py): a child's its parent reads are the parent's."""
        self.sup = sup
        self.tenancy = tenancy  # the tenants' quotas; None: no tenants
        self.journal = journal
        self.active: dict[str, Task] = {}  # queued and running
        self.retention = Retention(kept, kept_bytes)
        self.finished = self.retention.finished  # in the order they ended
        self.memory = self.retention.memory  # the payloads let go go back to the system
        self._running: asyncio.AbstractEventLoop | None = None  # the loop it works in
        self.by_agent: dict[str, AgentTasks] = {}
        self.retired = RetiredCounts()  # removed agents' counts: totals never go backwards
        # the agents' queue behind the sessions' lines (one task of a session at a time)
        self.sessions = Sessions(sup.stream, queue if queue is not None else LocalQueue(), sup,
                                 tenancy, self.pump)
        self.queue: Queue = self.sessions
        self.quotas = QuotaHooks(self)  # the tenants' quotas' admission check and gates
        self.budgets = Budgets(self._task_known, self.quotas.reopen, self.queue.depth, _note_first,
                               tenancy.budget if tenancy is not None else no_group)
        self.endings = Endings(self)  # a task's end, a retry, an agent's waiting tasks ended
        self.dispatch = TaskDispatch(
            sup, self.queue, self.by_agent, self.endings, self.budgets, self.sessions,
            TenantGate(self.quotas.tenant_full, self.quotas.freed) if tenancy is not None else None)
        self.delays = Delays(self.endings.due)  # tasks not to start before a time
        self.stream = sup.stream  # TaskFinished, TaskProgress, AttemptEnded go on it
        self.stream.subscribe(self._roster, Roster)
        if tenancy is not None:
            self.stream.subscribe(self.quotas.changed, QuotasChanged)
            self.quotas.changed()
        self._seq = itertools.count()  # arrival order in this process (Task.seq)
        self.recovery = Recovery(self)  # tasks taken back after a restart or an upgrade
        self.intake = Intake(self)  # tasks submitted, a map's turns, a cluster's claimed
        self.person = PersonLoop(self)  # a running task's call asks a person, and waits
        self.labelled = labels if labels is not None else Labels()  # (the policy's)
        self.spawns = Spawns(self)  # task/spawn and task/wait, an agent called as a tool
        self.worker = WorkerMethods(sup, self.active, tools, interceptors, self.live,
                                    self.person.asks_pending, self.spawns.as_tool)
        # each task's start and end as the interceptors hear them (tracing's), or None
        self.trace_begin = interceptors.notify(TaskInterceptor.intercept_task_start)
        self.trace_end = interceptors.notify(TaskInterceptor.intercept_task_end)
        self.outputs = self.worker.outputs  # its journal is the daemon's (outputjournal.py)
        self.steps = self.worker.steps  # its journal is the daemon's (steps.py)
        on_request(sup.worker_methods, SessionCheckpointParams, self._on_session_checkpoint)
        on_notification(sup.worker_notifications, UsageReportParams, self._on_usage,
                        refused=self.budgets.refused)
        # what tasks ask of a person (inbox.py): its store is the daemon's database's
        self.clock = clock if clock is not None else WaitClock()
        self.inbox = Inbox(self.stream, clock=self.clock)
        # where the tasks it accepts are kept (nodehome.py)
        # its memory's, its state database's once opened (labeljournal.py, pushjournal.py)
        self.labels: LabelStore = MemoryLabels()
        self.push: PushStore = MemoryPush()
        self.home: TaskHome = NodeHome(self, self.sessions, self.spawns.node, self.inbox)
        self.suspensions = Suspensions(self, self.clock, self.endings.again)
        self.questions = Questions(self, self.person.ask_person)  # task/ask
        self.elicitations = Elicitations(self, self.person.ask_person)
        self.replica_calls = ReplicaCalls(self.inbox, self.stream)
        interceptors.bind(TaskPath(self.active, self.stream, self.person.ask_person,
                                   self.person.fail_task, self.replica_calls, self.budgets,
                                   lambda name: sup.agents.get(name)))

    def _on_session_checkpoint(self, r: Replica, p: SessionCheckpointParams) -> Any:
        task = self.worker.running_on(r, "session/checkpoint", p.task_id)
        if task.session is None:  # (a turn's, on either home)
            raise jsonrpc.RpcError(jsonrpc.INVALID_PARAMS, f"session/checkpoint: task "
                                                           f"{task.id} has no session")
        return task.home.turns.checkpoint(task, p.state)

    def agent_tasks(self, agent: AgentLike) -> AgentTasks:
        q = self.by_agent.get(agent.name)
        if q is None:
            q = self.by_agent[agent.name] = AgentTasks(agent.spec.rate_per_minute)
            self.retired.take(agent.name, q)
        return q

    # -- the engine's calls -----------------------------------------------------------
    def journal_to(self, journal: TaskJournal, steps: StepJournal) -> None:
        """The daemon's journals, once its state database is open (before any task is
        accepted): tasks and their steps are durable from then on."""
        self.journal = journal
        self.steps.journal_to(steps)

    def replica_ready(self, r: Replica) -> None:
        if r.kind == "agent":
            self.dispatch.pump(r.name)

    def replica_down(self, r: Replica) -> None:
        """A replica failed or terminated: if its agent will not run again, its waiting
        tasks end (looked at once the restart policy has decided)."""
        if r.kind == "agent":
            asyncio.get_running_loop().call_soon(self.endings.drain_if_down, r.name)

    def pump(self, agent_name: str) -> None:
        self.dispatch.pump(agent_name)

    # -- holding: a drain (and later an upgrade) takes no new task to a worker ---------
    def hold(self, why: str) -> None:
        """Take no new task to a worker: what is accepted waits (journaled), what runs goes on."""
        self.dispatch.held = why

    def release(self) -> None:
        """Take tasks to workers again: every agent's waiting ones may start."""
        self.dispatch.held = None
        for name in list(self.by_agent):
            self.dispatch.pump(name)  # (at once when none waits)

    @property
    def held(self) -> str | None:
        return self.dispatch.held

    def running_tasks(self) -> list[Task]:
        return [t for t in self.active.values() if t.running]

    def waiting(self) -> int:
        return sum(self.queue.depth(name) for name in self.by_agent)

    def running(self, agent_name: str) -> int:
        q = self.by_agent.get(agent_name)
        return q.running if q is not None else 0

    # -- admission ------------------------------------------------------------------------
    def submit(self, agent_name: str, task_input: Any, options: TaskOptions = NO_OPTIONS,
               *, traceparent: str | None = None, tracestate: str | None = None,
               task_id: str | None = None) -> Task:
        """Intake.submit: the engine's public face (the Python API's `sup.tasks.submit`)."""
        return self.intake.submit(agent_name, task_input, options, traceparent=traceparent,
                                  tracestate=tracestate, task_id=task_id)

    def _loop(self) -> asyncio.AbstractEventLoop:
        # asked once: get_running_loop() is a getpid(2) each time
        loop = self._running
        if loop is None:
            loop = self._running = asyncio.get_running_loop()
        return loop

    # -- after a restart (recovery.py) ----------------------------------------------------
    def next_seq(self) -> int:
        return next(self._seq)

    def live(self, task_id: str) -> Task | None:
        """An unfinished task of this engine; one suspended and kept compact is rebuilt
        whole from its journal row (and stays whole until it ends)."""
        task = self.active.get(task_id)
        if task is not None or self.journal is None:
            return task
        seq = self.suspensions.compact.get(task_id)
        if seq is None:
            return None
        rec = self.journal.record(task_id)  # (a StoreError: it stays compact)
        if rec is None:  # (pruned rows are finished tasks': a suspended one's is kept)
            return None
        del self.suspensions.compact[task_id]
        task = rebuilt(rec, seq, None, self.home)
        task.restored(rec.status)
        self.traced_again(task)
        self.active[task_id] = task
        return task

    def holds(self, task_id: str) -> bool:
        """Whether the task is unfinished in this engine (kept compact or not)."""
        return task_id in self.active or task_id in self.suspensions.compact

    def knows(self, task_id: str) -> bool:
        """Whether a task of this id was ever accepted here: in memory, or in the journal
        (committed or waiting to be), without waiting for a commit or a thread."""
        return (self.holds(task_id) or task_id in self.finished
                or (self.journal is not None and self.journal.knows(task_id)))

    def traced_again(self, task: Task) -> None:
        """A task this process did not accept, traced from its id (no caller's context is kept)."""
        if self.trace_begin is not None and task.trace is None:
            self.trace_begin(TraceStart(task, None, None))

    # -- the API --------------------------------------------------------------------------
    async def run(self, agent: str, task_input: Any, options: TaskOptions = NO_OPTIONS, *,
                  traceparent: str | None = None, tracestate: str | None = None
                  ) -> TaskResult:
        task = self.submit(agent, task_input, options, traceparent=traceparent,
                           tracestate=tracestate)
        task.decoded = True  # (before its answer can be read: that is on a later turn)
        if self.journal is not None and self.journal.behind():
            # a journal that writes slower than tasks finish must not gather an unbounded
            # backlog in memory: wait for it (the task runs meanwhile)
            await self.journal.committed()
        if not task.ended:
            # its own future, not the shared `done` (no shield, one wake-up fewer); a
            # cancelled run() cancels only this
            task.waiter = waiter = self._loop().create_future()
            await waiter
        if not task.output_dropped:
            return task.result(decode=True)
        return await self.outcome(task, decode=True)

    async def output(self, task_id: str, after: str | None = None
                     ) -> AsyncIterator[OutputChunk]:
        """The task's live output chunk by chunk as it comes (after the chunk whose id is
        `after`), until the task has ended and every chunk kept is read."""
        start = START if after is None else position_of(after)
        async for chunks in self.outputs.follow(task_id, start):
            for chunk in chunks:
                yield chunk

    async def outcome(self, task: Task, *, decode: bool = False) -> TaskResult:
        """A finished task's result, its output read back from the journal if memory dropped it."""
        if task.output_dropped and self.journal is not None:
            info = await self.journal.load(task.id)
            if info is not None and info.output is not None:
                out = acyclic(info.output) if decode else info.output
                return TaskResult(task.id, task.status, out, task.error, tuple(task.attempts))
        return task.result(decode=decode)

    def committed(self) -> Awaitable[None]:
        """The journal's own wait for what is written so far (no frame of this one at
        each of its resumes: a submission waits on it once, twice when it waits for its outcome)."""
        journal = self.journal
        return journal.committed() if journal is not None else _nothing()

    async def map(self, agent: str, inputs: Iterable[Any], options: TaskOptions = NO_OPTIONS,
                  *, concurrency: int = 8) -> list[TaskResult]:
        """Run many tasks with at most `concurrency` at once; results in input order.
        A refused task is a result with status "refused" rather than an exception."""
        return await Lanes(self, agent, iter(inputs), concurrency=concurrency,
                           options=options).run()

    def get(self, task_id: str) -> Task:
        """A task in memory (every unfinished one, the last `kept` finished ones)."""
        task = self.live(task_id) or self.finished.get(task_id)
        if task is None:
            raise jsonrpc.not_found("task", task_id)
        return task

    def why_waiting(self, task: Task) -> str:
        """Why a queued task has not started: its time not come, or what holds its
        agent's tasks, and its place among them."""
        delayed = why_delayed(task.not_before, task.attempts, self.delays.holds(task))
        if delayed is not None:
            return delayed
        turn = self.sessions.why_waiting(task)
        if turn is not None:
            return turn
        place = self.queue.position(task)
        depth = self.queue.depth(task.agent)
        where = (f"{ordinal(place)} of {depth} waiting for {task.agent}" if place
                 else f"waiting for {task.agent}")
        held = self.dispatch.why_waiting(task.agent)
        return f"{where}: {held}" if held else f"{where}: starting"

    async def info(self, task_id: str, *, wait: bool = False) -> TaskInfo:
        """What `corral task ID` shows, from memory or else from the journal."""
        task = (self.live(task_id) if wait else self.active.get(task_id)) or \
            self.finished.get(task_id)
        if task is not None and wait:
            await waited(task.done, None)
        if task is not None and not (task.output_dropped and self.journal is not None):
            shown = task.info()
            if task.queued:
                shown.waiting = self.why_waiting(task)
            elif task.waiting or task.suspended:
                shown.asks = self.inbox.waiting_for(task.id)
            return shown
        info = await self.journal.load(task_id) if self.journal is not None else None
        if info is None:
            raise jsonrpc.not_found("task", task_id)
        if info.status == TaskStatus.SUSPENDED:  # kept compact: what it waits for
            info.asks = self.inbox.waiting_for(task_id)
        return info

    async def query(self, *, agent: str | None = None, status: str | None = None,
                    since: float | None = None, limit: int = 100,
                    before: str | None = None, sees: Sees | None = None,
                    filters: TaskFilters = NO_FILTERS) -> list[TaskSummary]:
        """Tasks created since `since` (wall time), newest last, from the journal if there is one,
        else memory; `before`, `sees` and `filters` as TaskJournal.query's."""
        if limit <= 0:
            return []
        if self.journal is not None:
            return await self.journal.query(agent=agent, status=status, since=since,
                                            limit=limit, before=before, sees=sees,
                                            filters=filters)
        last = None
        if before is not None:
            cursor = self.active.get(before) or self.finished.get(before)
            if cursor is None or (sees is not None and not sees(cursor.agent, cursor.tenant)):
                raise unknown_cursor(before)
            last = cursor.seq
        tasks = sorted([*self.active.values(), *self.finished.values()], key=lambda t: t.seq)
        return [t.summary() for t in tasks
                if (agent is None or t.agent == agent) and (status is None or t.status == status)
                and (since is None or t.created >= since)
                and (last is None or t.seq < last)
                and (sees is None or sees(t.agent, t.tenant))
                and admits(filters, t.options)][-limit:]

    def cancel(self, task_id: str) -> Task:
        task = self.get(task_id)
        failure = cancel_failure(task.status, task_id)  # (as the cluster's CANCEL)
        if not task.running:  # queued (for a slot or for its time) or suspended
            if task.queued:
                self.queue.remove(task) or self.delays.remove(task)
            self.endings.finish(task, TaskCause.CANCEL, failure)
            return task
        attempt, replica = task.attempts[-1], task.replica
        assert replica is not None
        cancelled(attempt)
        self.dispatch.deadlines.discard(task, task.timeout)
        self.endings.finish(task, TaskCause.CANCEL, failure)
        self.dispatch.stop_attempt(task, replica, attempt, "was cancelled")
        return task

    def stats(self) -> dict[str, Any]:
        # every agent has an entry, zeros until its first task (its counters are made then)
        per_agent = {name: (self.by_agent.get(name) or AgentTasks(0)).stats(
                         self.queue.depth(name))
                     for name in self.sup.agents}
        return {"total": totals([*per_agent.values(), self.retired.stats()]),
                "agents": per_agent,
                "steps": self.steps.stats(), "sessions": self.sessions.stats(),
                "output": self.outputs.stats(), "suspensions": self.suspensions.stats()}

    def forget_agent(self, name: str) -> None:
        """An agent's removal begins: its queued tasks are cancelled."""
        if name in self.by_agent:
            self.endings.drain(name, TaskCause.CANCEL, TaskFailure(
                jsonrpc.REQUEST_CANCELLED, f"agent {name} was removed"))
            agent = self.sup.agents.get(name)
            self.retired.keep(name, agent.spec.tenant if agent is not None else
                              DEFAULT_TENANT, self.by_agent.pop(name))
        # agents come and go under new names: lines kept for every name ever queued
        # for would be a map that only grows
        if isinstance(self.sessions.inner, LocalQueue):
            self.sessions.inner.forget(name)

    def _roster(self, e: Roster) -> None:
        """A removed agent's budgets are forgotten once its removal is over, not as it
        begins: its replicas' stops, between the two, may still count (a worker's last
        usage/report, a model call answered), and counted under a name already forgotten
        they were kept for ever, or the next agent's of the name (decision 2011)."""
        if e.agent not in self.sup.agents:
            self.budgets.forget(e.agent)

    # -- from workers ---------------------------------------------------------------------
    def _task_known(self, task_id: str) -> Task | None:
        return self.active.get(task_id) or self.finished.get(task_id)

    def _on_usage(self, r: Replica, params: UsageReportParams) -> None:
        """usage/report: counted (budget.py). The task's journal row carries it from the
        task's next change; a report after its end is written at once."""
        task = self.budgets.on_report(r, params)
        if task is not None and task.ended:
            task.home.record(task)

    def report_progress(self, task: Task, progress: dict[str, Any]) -> None:
        report_progress(self.stream, task, progress)


async def _nothing() -> None:
    """The wait of an engine with no journal: nothing to wait for."""
