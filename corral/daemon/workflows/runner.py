"""A workflow's run planned on the durable engine (supervisor/durable/): each step ready
(its dependencies ended) is started, each a task of its agent or a run of its nested
workflow (a map step one per item, so many at a time), its outcome kept by the engine,
which runs each at most once (a nested run made only when its row is not in the store)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ...jsonrpc import RpcError
from ...supervisor.durable import STEP_ENDED, WHOLE, StepEnd, StepRow
from ...supervisor.durable.calls import StepFailed
from ...supervisor.durable.engine import StepEngine, Work
from ...supervisor.durable.record import Durable
from ...supervisor.durable.tasks import AgentTask, StepTasks, StepWork
from ...supervisor.tasks import TaskManager
from ...supervisor.workflows import PlanStep, WorkflowError
from ...supervisor.workflows.plan import items, runs
from ...supervisor.workflows.refs import Missing, Scope, build
from ...taskoptions import step_options
from .runevents import RunEnded, StepEnded, StepStarted
from .runstore import Run, RunStore
from .signals import RunSignals, SignalWait

if TYPE_CHECKING:
    from .runtraces import RunTraces


def _all_started(run: Run, started: set[str], ended: set[str]) -> bool:
    """With none running, the step started last is the run's last: nothing is left."""
    return all(s.name in started or s.name in ended for s in run.wf.steps)


class Children(Protocol):
    """Where a nested step's run is started, waited for and cancelled (the service)."""

    async def child(self, name: str, run_id: str, run_input: Any) -> Run: ...

    async def cancel_child(self, run_id: str, why: str) -> None: ...

    def stopped(self, run: Run, why: str) -> None: ...


class Runner:
    """The workflows' planner (durable/calls.Planner)."""

    def __init__(self, engine: TaskManager, rows: RunStore, children: Children,
                 signals: RunSignals, traced: RunTraces | None = None,
                 tasks: StepWork | None = None) -> None:
        """`tasks`: how its steps' tasks run, when not on `engine` (a cluster's)."""
        self.rows = rows
        self.children = children
        self.signals = signals  # what a signal step waits for
        self.traced = traced  # with [tracing]: a step's task started in its run's trace
        self.stream = engine.stream
        self.tasks: StepWork = tasks if tasks is not None else StepTasks(engine)
        self.steps = StepEngine(rows.calls, self.tasks, self._told)

    def _told(self, call: Durable, row: StepRow) -> None:
        assert isinstance(call, Run)
        self.stream.emit(StepStarted(call, row) if row.status == "running"
                         else StepEnded(call, row))

    def timed_out(self, run: Run) -> str:
        return f"the run's timeout ({run.wf.spec.timeout:g}s) passed"

    def ended(self, run: Run) -> None:
        self.stream.emit(RunEnded(run))

    def stopped(self, run: Run, why: str) -> None:
        self.children.stopped(run, why)

    async def drive(self, run: Run) -> None:
        """The run's steps to the end; the run's status is set, not saved (the caller's)."""
        ended = {n for (n, i), r in run.rows.items() if i == WHOLE and r.status in
                 ("succeeded", "skipped")}
        started: set[str] = set()
        pending: dict[asyncio.Task[None], str] = {}
        try:
            while True:
                ready = run.wf.ready(ended, started)
                if len(ready) == 1 and not pending:
                    # nothing else can start before it ends: run in the driver, not as a
                    # task of its own (its making and its wait, two turns of the loop)
                    st = ready[0]
                    started.add(st.name)
                    await self._step(run, st, _all_started(run, started, ended))
                    ended.add(st.name)
                    continue
                for st in ready:
                    started.add(st.name)
                    last = not pending and _all_started(run, started, ended)
                    pending[asyncio.ensure_future(self._step(run, st, last))] = st.name
                if not pending:
                    break
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    name = pending.pop(t)
                    t.result()  # StepFailed ends the run
                    ended.add(name)
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        run.status = "succeeded"

    async def _step(self, run: Run, st: PlanStep, last: bool) -> None:
        """`last`: the run ends when this step does, and its end is kept with the run's
        (StepEngine.end)."""
        whole = run.rows.get((st.name, WHOLE))
        scope = Scope(run.input, self.rows.outputs(run))
        if whole is None:
            if not runs(st, scope):
                now = time.time()
                await self.steps.save(run, [StepRow(st.name, WHOLE, "skipped",
                                                    started=now, ended=now)])
                return
            if st.mapped:
                await self.steps.save(run, [StepRow(st.name, WHOLE, "running",
                                                    started=time.time())])
        if not st.mapped:
            await self._task(run, st, WHOLE, scope, last)
            return
        try:
            listed = items(st, scope)
        except (Missing, WorkflowError) as exc:
            await self.steps.end(run, (st.name, WHOLE), StepEnd("failed", None, str(exc)))
            raise StepFailed(f"step {st.name}: {exc}") from None
        try:
            await self._map(run, st, scope, listed)
        except StepFailed as exc:
            await self.steps.end(run, (st.name, WHOLE), StepEnd("failed", None, str(exc)))
            raise
        await self.steps.end(run, (st.name, WHOLE), StepEnd("succeeded", None, None),
                             last=last)

    async def _map(self, run: Run, st: PlanStep, scope: Scope, listed: list[Any]) -> None:
        """One task per item, `concurrency` at a time, in their order."""
        todo = iter(range(len(listed)))

        async def lane() -> None:
            for i in todo:
                await self._task(run, st, i, Scope(scope.input, scope.outputs, listed[i], i))

        lanes = [asyncio.ensure_future(lane())
                 for _ in range(min(st.spec.concurrency, len(listed)))]
        try:
            done, _ = await asyncio.wait(lanes, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in lanes:
                t.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    async def _task(self, run: Run, st: PlanStep, item: int, scope: Scope,
                    last: bool = False) -> None:
        key = (st.name, item)
        at = st.name if item == WHOLE else f"{st.name}[{item}]"
        row = run.rows.get(key)
        if row is None or row.status not in STEP_ENDED:
            try:
                task_input = build(st.input, scope)
            except Missing as exc:
                await self.steps.end(run, (st.name, item), StepEnd("failed", None, str(exc)))
                raise StepFailed(f"step {at}: {exc}") from None
            try:
                row = await self.steps.step(run, key, self._work(run, st, item, task_input),
                                            last=last)
            except RpcError as exc:
                ended = run.rows.get(key)
                if ended is None or ended.status not in STEP_ENDED:
                    raise  # its row not ended: its store or the cluster's Redis away (stop)
                raise StepFailed(f"step {at}: {exc.message}") from None  # refused: failed
            if last and run.answer is not None:
                run.answer[:] = [key, None if row.output is None
                                 else msgspec.json.encode(row.output)]
        if row.status == "skipped" and st.spec.signal is not None:
            return  # (its signal did not come in time, and the step says go on)
        if row.status != "succeeded":
            if st.spec.signal is not None:
                raise StepFailed(f"step {at}: {row.status}: {row.error}")
            what = f"run {row.task_id}" if st.spec.workflow is not None \
                else f"task {row.task_id}"
            raise StepFailed(f"step {at}: {what} {row.status}"
                             + (f": {row.error}" if row.error else ""))

    def _work(self, run: Run, st: PlanStep, item: int, task_input: Any) -> Work:
        """The step's work: its nested run, its task, or its wait for a signal."""
        if st.spec.signal is not None:
            return self._signal(run, st, st.spec.signal)
        workflow = st.spec.workflow
        if workflow is None:
            agent = st.spec.agent
            assert agent is not None  # (a nested step's is a run)
            tp, ts = (None, None) if self.traced is None \
                else self.traced.step_context(run, st.name, item)
            return self.tasks.work(AgentTask(agent, task_input, step_options(
                st.spec.timeout, st.spec.retries), run.tenant, tp, ts))

        async def nested(run_id: str) -> StepEnd:
            if self.traced is not None:
                self.traced.nested(run_id, run, st.name, item)
            try:
                return await self._nested(workflow, run_id, task_input)
            finally:  # (taken as the child was made; not, when it was not made here)
                if self.traced is not None:
                    self.traced.forget_parent(run_id)
        return nested

    def _signal(self, run: Run, st: PlanStep, name: str) -> Work:
        """A signal step's wait, its deadline counted from its row's start (kept: a
        resumed wait ends when the first would have)."""
        async def wait(step_id: str) -> StepEnd:
            row = run.rows[(st.name, WHOLE)]
            timeout = st.spec.timeout
            began = row.started if row.started is not None else time.time()
            return await self.signals.wait(SignalWait(
                run.run_id, name, step_id, None if timeout is None else began + timeout,
                timeout, st.spec.on_timeout == "skip"))
        return wait

    async def _nested(self, workflow: str, run_id: str, run_input: Any) -> StepEnd:
        """A nested step's run (its id recorded in this run's rows before it is made):
        its status, output (its last step's) and error."""
        child = await self.children.child(workflow, run_id, run_input)
        output = self.rows.outputs(child).get(child.wf.steps[-1].name) \
            if child.status == "succeeded" else None
        return StepEnd(child.status, output, child.error)

    async def abandon(self, run: Run) -> None:
        """A run ended otherwise than by its steps: its nested runs and its step rows still
        running ended as it did, their tasks cancelled."""
        why = run.error or run.status if run.status != "failed" else "the run failed"
        for r in list(run.rows.values()):
            if r.status == "running" and r.task_id is not None \
                    and run.wf.step(r.step).spec.workflow is not None:
                await self.children.cancel_child(r.task_id, why)
        await self.steps.abandon(run, StepEnd(
            "timed_out" if run.status == "timed_out" else "cancelled", None,
            run.error if run.status != "failed" else "the run failed"))
