"""One run driven to its end: each step ready (its dependencies ended) is started, each
a task of its agent or a run of its nested workflow (a map step one per item, so many
at a time), and its outcome recorded. The rule that makes a step succeed at most once:
its task id (a nested step's run id) is committed in the run's rows before the task is
submitted (the run made), and a row that names a task is only ever waited for (submitted
again with the same id only when the engine never had it: the daemon stopped between
the two writes; a nested run likewise made only when its row is not in the store)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ...jsonrpc import RpcError
from ...supervisor.tasks import TERMINAL, TaskManager
from ...supervisor.tasks.ids import new_id
from ...supervisor.tasks.recorded import RecordedTask, outcome
from ...supervisor.workflows import PlanStep, WorkflowError
from ...supervisor.workflows.plan import items, runs, step_input
from ...supervisor.workflows.refs import Missing, Scope
from ...taskoptions import step_options
from ...taskviews import TaskInfo
from .runevents import StepEnded, StepStarted
from .runstore import STEP_ENDED, WHOLE, Run, RunStore, StepRow

if TYPE_CHECKING:
    from .runtraces import RunTraces


class StepFailed(Exception):
    """A step that did not succeed: the run fails with this text."""


class Children(Protocol):
    """Where a nested step's run is started, waited for and cancelled (the service)."""

    async def child(self, name: str, run_id: str, run_input: Any) -> Run: ...

    async def cancel_child(self, run_id: str, why: str) -> None: ...


class Runner:
    def __init__(self, engine: TaskManager, rows: RunStore, children: Children,
                 traced: RunTraces | None = None) -> None:
        self.engine = engine
        self.rows = rows
        self.children = children
        self.traced = traced  # with [tracing]: a step's task started in its run's trace

    async def drive(self, run: Run) -> None:
        """The run's steps to the end; the run's status is set, not saved (the caller's)."""
        ended = {n for (n, i), r in run.rows.items() if i == WHOLE and r.status in
                 ("succeeded", "skipped")}
        started: set[str] = set()
        pending: dict[asyncio.Task[None], str] = {}
        try:
            while True:
                for st in run.wf.ready(ended, started):
                    started.add(st.name)
                    pending[asyncio.ensure_future(self._step(run, st))] = st.name
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

    async def _step(self, run: Run, st: PlanStep) -> None:
        whole = run.rows.get((st.name, WHOLE))
        scope = Scope(run.input, self.rows.outputs(run))
        if whole is None:
            if not runs(st, scope):
                now = time.time()
                await self._save(run, [StepRow(st.name, WHOLE, "skipped", started=now,
                                               ended=now)])
                return
            if st.mapped:
                await self._save(run, [StepRow(st.name, WHOLE, "running",
                                               started=time.time())])
        if not st.mapped:
            await self._task(run, st, WHOLE, scope)
            return
        try:
            listed = items(st, scope)
        except (Missing, WorkflowError) as exc:
            await self._end(run, st.name, WHOLE, "failed", None, str(exc))
            raise StepFailed(f"step {st.name}: {exc}") from None
        try:
            await self._map(run, st, scope, listed)
        except StepFailed as exc:
            await self._end(run, st.name, WHOLE, "failed", None, str(exc))
            raise
        await self._end(run, st.name, WHOLE, "succeeded", None, None)

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

    async def _task(self, run: Run, st: PlanStep, item: int, scope: Scope) -> None:
        key = (st.name, item)
        at = st.name if item == WHOLE else f"{st.name}[{item}]"
        row = run.rows.get(key)
        if row is not None and row.status in STEP_ENDED:
            if row.status != "succeeded":
                raise StepFailed(f"step {at}: {row.error or row.status}")
            return
        try:
            task_input = step_input(st, scope)
        except Missing as exc:
            await self._end(run, st.name, item, "failed", None, str(exc))
            raise StepFailed(f"step {at}: {exc}") from None
        if row is None:
            row = StepRow(st.name, item, "running", new_id(), time.time())
            await self._save(run, [row])  # the id is the run's before the task exists
        assert row.task_id is not None
        try:
            if st.spec.workflow is not None:
                if self.traced is not None:
                    self.traced.nested(row.task_id, run, st.name, item)
                try:
                    status, output, error = await self._nested(st.spec.workflow,
                                                               row.task_id, task_input)
                finally:  # (taken as the child was made; not, when it was not made here)
                    if self.traced is not None:
                        self.traced.forget_parent(row.task_id)
                what = f"run {row.task_id}"
            else:
                info = await self._outcome(
                    run, st, row.task_id, task_input, None if self.traced is None
                    else self.traced.step_context(run, st.name, item))
                status = str(info.status)
                output = (msgspec.json.decode(info.output)
                          if isinstance(info.output, msgspec.Raw) else info.output)
                error = info.error.message if info.error is not None else None
                what = f"task {row.task_id}"
        except RpcError as exc:  # refused by the engine: the step fails
            await self._end(run, st.name, item, "failed", None, exc.message)
            raise StepFailed(f"step {at}: {exc.message}") from None
        await self._end(run, st.name, item, status, output, error)
        if status != "succeeded":
            raise StepFailed(f"step {at}: {what} {status}" + (f": {error}" if error else ""))

    async def _nested(self, workflow: str, run_id: str, run_input: Any
                      ) -> tuple[str, Any, str | None]:
        """A nested step's run (its id recorded in this run's rows before it is made):
        its status, output (its last step's) and error."""
        child = await self.children.child(workflow, run_id, run_input)
        output = self.rows.outputs(child).get(child.wf.steps[-1].name) \
            if child.status == "succeeded" else None
        return child.status, output, child.error

    async def _outcome(self, run: Run, st: PlanStep, task_id: str, task_input: Any,
                       parent: tuple[str, str | None] | None) -> TaskInfo:
        """The step's task to its end (recorded.outcome): waited for where the engine has
        it, else submitted under the id the run recorded, to its agent only while that is
        of the run's tenant (`parent`: its step's trace context, `traceparent` and
        `tracestate`)."""
        agent = st.spec.agent
        assert agent is not None  # (a nested step's is a run)
        tp, ts = parent if parent is not None else (None, None)
        recorded = RecordedTask(task_id, agent, run.tenant)
        return await outcome(self.engine, recorded, lambda: self.engine.submit(
            agent, task_input, step_options(st.spec.timeout, st.spec.retries),
            task_id=task_id, traceparent=tp, tracestate=ts))

    async def _end(self, run: Run, step: str, item: int, status: str, output: Any,
                   error: str | None) -> None:
        row = run.rows.get((step, item))
        started = row.started if row is not None else time.time()
        task_id = row.task_id if row is not None else None
        await self._save(run, [StepRow(step, item, status, task_id, started, time.time(),
                                       output, error)])

    async def _save(self, run: Run, rows: list[StepRow]) -> None:
        await self.rows.save_steps(run.run_id, rows)
        stream = self.engine.stream
        for r in rows:
            # its output is the store's alone, read back when a reference names it
            run.rows[(r.step, r.item)] = replace(r, output=None) if r.output is not None else r
            stream.emit(StepStarted(run, r) if r.status == "running" else StepEnded(run, r))

    async def abandon(self, run: Run) -> None:
        """A run that ended otherwise than by its steps (cancelled, timed out, a step
        failed): its steps' tasks still queued or running cancelled, and every step row
        still running ended as the run did."""
        ended: list[StepRow] = []
        now = time.time()
        for r in run.rows.values():
            if r.status != "running":
                continue
            if r.task_id is not None and run.wf.step(r.step).spec.workflow is not None:
                await self.children.cancel_child(
                    r.task_id, "the run failed" if run.status == "failed"
                    else run.error or run.status)
            elif r.task_id is not None:
                task = self.engine.active.get(r.task_id)
                if task is not None and task.status not in TERMINAL:
                    with contextlib.suppress(RpcError):
                        self.engine.cancel(r.task_id)
            status = "timed_out" if run.status == "timed_out" else "cancelled"
            ended.append(StepRow(r.step, r.item, status, r.task_id, r.started, now,
                                 None, run.error if run.status != "failed" else
                                 "the run failed"))
        if ended:
            await self._save(run, ended)
