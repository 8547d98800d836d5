"""The workflows and their runs: a run started (its row committed before it is answered),
driven by the Runner until it ends, resumed after a restart where its rows say it stopped,
cancelled with its steps' tasks and nested runs; the runs shown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...supervisor.agents import Agents
from ...supervisor.durable import CallHandover
from ...supervisor.durable.calls import Calls
from ...supervisor.durable.tasks import Durables
from ...supervisor.errors import refused_definition
from ...supervisor.tasks import TaskManager
from ...supervisor.tasks.ids import new_id
from ...supervisor.tracing import Tracer
from ...supervisor.workflows import Workflow, WorkflowError, WorkflowSpec, compile_workflow
from ...supervisor.workflows.plan import check_agents
from ...text import plural
from ..store import StateStore
from ..storeschema import StoreError
from .catalog import Catalog, against, table_of
from .runevents import RunStarted
from .runner import Runner
from .runstore import KIND, RUN_ENDED, Run, RunStore, Sees
from .runtraces import RunTraces
from .signals import RunSignals, Signal, SignalReceipt

PRUNE_EVERY = 60.0  # seconds between two prunings of ended runs (as the task journal's)


class WorkflowService:
    def __init__(self, agents: Agents, engine: TaskManager, store: StateStore,
                 report: Callable[[str], None], tracer: Tracer | None = None,
                 durables: Durables | None = None) -> None:
        """`durables`: where runs are kept and their steps run when not in `store` and on
        `engine` alone (a cluster node's: Redis and the cluster's tasks)."""
        self.agents = agents
        self.agent_tenant = agents.tenancy.tenant_of  # None: no such agent
        self.rows = RunStore(store, durables.store if durables is not None else None)
        self.shared = durables.store if durables is not None else None
        self.traces = None if tracer is None else RunTraces(tracer, engine.stream)
        self.signals = RunSignals(store)  # what a run's signal steps wait for
        self.runner = Runner(engine, self.rows, self, self.signals, self.traces,
                             durables.tasks if durables is not None else None)
        self.stream = engine.stream  # the runs' events (runevents.py)
        self.report = report
        self.catalog = Catalog(store)
        self.catalog.restore(report)
        self.calls: Calls[Run] = Calls(self.runner, self.runner.steps, self.shared)
        self.live = self.calls.live
        # no step is submitted before the task journal's tasks are back in the engine
        # (a run started meanwhile waits): a recorded step's task is found, not doubled
        self.recovered = self.calls.recovered
        # ended runs are kept as the task journal keeps finished tasks (set at start)
        self.max_age = 0.0
        self.max_runs: int | None = None
        self._pruning: asyncio.Task[None] | None = None
        self.stream.subscribe(self._handed_over, CallHandover)

    def configure(self, specs: Mapping[str, WorkflowSpec]) -> None:
        """The config's workflows (a reload replaces them; a run keeps its own)."""
        self.catalog.configure(specs)

    def tenant(self, name: str) -> str | None:
        """Whose a workflow is: what its runs are stamped with, and what a caller's
        tenant must be to see it."""
        return self.catalog.tenant(name, self.agent_tenant)

    @property
    def definitions(self) -> dict[str, Workflow]:
        return {n: self.catalog.workflow(n) for n in sorted(self.catalog.specs())}

    # -- the Python API (as AgentOS's add_workflow; docs/workflows.md) -----------------------
    async def add_workflow(self, name: str, definition: WorkflowSpec | dict[str, Any], *,
                           who: str = "python api") -> int:
        """Kept and revisioned as `corral workflows add` keeps it; its revision."""
        table = table_of(definition) if isinstance(definition, WorkflowSpec) else definition
        await self.catalog.add({name: table}, who, None,
                               against(self.agent_tenant, self.catalog.specs()))
        rev = self.catalog.revision_of(name)
        assert rev is not None
        return rev.revision

    async def remove_workflow(self, name: str, *, who: str = "python api") -> None:
        await self.catalog.remove([name], who, None)

    # -- runs -------------------------------------------------------------------------------
    async def start(self, name: str, run_input: Any, run_id: str | None = None, *,
                    traceparent: str | None = None, tracestate: str | None = None) -> Run:
        """A run started (its row committed first); `run_id`: a nested step's, recorded
        in its parent's rows before this."""
        specs = self.catalog.specs()
        spec = specs.get(name)
        if spec is None:
            raise jsonrpc.not_found("workflow", name)
        tenant = self.tenant(name)

        def known(agent: str) -> bool:
            # a tenant's workflow runs its tenant's agents alone: a name another tenant
            # took since is no agent of it
            return agent in self.agents and (tenant is None or self.agent_tenant(agent) == tenant)

        wf = self.catalog.whole(name)  # (compiled once for every run, but for its agents)
        try:
            if wf is None:
                wf = compile_workflow(name, spec, known, specs)  # what is wrong, said
            else:
                check_agents(wf, known)
        except WorkflowError as exc:
            raise refused_definition(exc) from None
        rev = self.catalog.revision_of(name)
        now = time.time()
        run = Run(run_id or new_id(), name, wf, run_input, "running", now,
                  deadline=now + wf.spec.timeout if wf.spec.timeout else None,
                  revision=rev.revision if rev is not None else None,
                  nested_agents=wf.agents, tenant=tenant)
        if self.traces is not None:
            if traceparent:
                self.traces.caller(run.run_id, traceparent, tracestate)
            self.traces.context(run)  # its parent taken now, as it is made
        try:
            await self.rows.calls.save_call(run.record())  # durable before it is answered
        except BaseException:
            if self.traces is not None:
                self.traces.forget(run.run_id)
            raise
        self.stream.emit(RunStarted(run))
        self.calls.drive(run)
        return run

    async def child(self, name: str, run_id: str, run_input: Any) -> Run:
        """A nested step's run to its end: waited for where it is (driven, or ended),
        else started under the id its parent recorded."""
        live = self.live.get(run_id)
        if live is None:
            run = self.rows.load(run_id)
            if run is None:
                run = await self.start(name, run_input, run_id)
            elif run.status not in RUN_ENDED:
                self.calls.drive(run)  # its driver stopped (the store failed): on again
            live = self.live.get(run_id)
            if live is None:
                return run
        await asyncio.shield(live[1])
        return live[0]

    async def cancel_child(self, run_id: str, why: str) -> None:
        live = self.live.get(run_id)
        if live is not None and live[0].status not in RUN_ENDED:
            await self.calls.cancel(run_id, why)

    def _handed_over(self, e: CallHandover) -> None:
        if e.record.kind == KIND and e.record.call_id not in self.live:
            self.calls.drive(Run.kept(e.record))
            self.report(f"workflows: run {e.record.call_id} taken over from {e.holder}")

    def recover(self) -> None:
        """Every run the previous daemon left running, driven on from its rows (once the
        task journal's tasks are back in the engine, so a recorded task is found)."""
        # (a run started since the services are served is driven already)
        runs = [r for r in self.rows.unfinished() if r.run_id not in self.live]
        for run in runs:
            self.calls.drive(run)
        self.recovered.set()
        if runs:
            self.report(f"workflows: {plural(len(runs), 'unfinished run')} resumed")
        if self.max_runs is not None and self._pruning is None:
            self._pruning = asyncio.ensure_future(self._prune_every())

    async def _prune_every(self) -> None:
        assert self.max_runs is not None
        while True:
            try:
                await self.rows.prune(self.max_age, self.max_runs)
            except StoreError as exc:  # told, and tried again at the next
                self.report(f"workflows: ended runs could not be pruned: {exc}")
            await asyncio.sleep(PRUNE_EVERY)

    def stopped(self, run: Run, why: str) -> None:
        """A run's driver stopped with the run running (the store failed)."""
        self.report(f"workflows: run {run.run_id} ({run.workflow}) stopped: {why}")
        if self.traces is not None:  # made again from its row when it is driven again
            self.traces.forget(run.run_id)

    async def wait(self, run_id: str, timeout: float | None) -> None:
        await self.calls.wait(run_id, timeout)

    async def kept(self, run_id: str) -> None:
        """A run shown ended is shown as kept: one whose driver is keeping its end (with its
        last step's: StepEngine.end) is waited for, a commit's time."""
        live = self.live.get(run_id)
        if live is not None and live[0].status in RUN_ENDED:
            await asyncio.shield(live[1])

    async def read(self, run_id: str | None = None, newest: int = 0) -> None:
        """On a cluster: this node's copies of a run or the `newest` runs refreshed from
        Redis, whichever node drives them."""
        if self.shared is None:
            return
        ids = [run_id] if run_id is not None else await self.shared.newest(KIND, newest)
        await self.shared.copy([i for i in ids if i not in self.live])

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """The reads within it (a run, its rows, their outputs) one snapshot of the state
        database: a commit of the writer thread (a node's copy of a run, a prune) lands
        before them all or after, never between two."""
        with (db := self.rows.store.db):
            db.execute("BEGIN")
            yield

    def get(self, run_id: str) -> Run:
        live = self.live.get(run_id)
        if live is not None:
            return live[0]
        run = self.rows.load(run_id)
        if run is None:
            raise jsonrpc.not_found("run", run_id)
        return run

    def list(self, workflow: str | None, status: str | None, since: float | None,
             limit: int, before: str | None, sees: Sees | None = None
             ) -> tuple[list[Run], str | None]:
        """A page of runs, newest first, and the cursor of the next (older runs), or
        None when there is none."""
        if limit <= 0:
            return [], None
        page = self.rows.listing(workflow, status, since, limit + 1, before, sees)
        if page is None:
            assert before is not None
            raise RpcError(jsonrpc.NOT_FOUND, f"no such run: {before} (the cursor `before` "
                                              "names no run kept: pruned, or never started; "
                                              "list again from the newest)")
        older = page[limit - 1].run_id if len(page) > limit else None
        return [self.live[r.run_id][0] if r.run_id in self.live else r
                for r in page[:limit]], older

    async def cancel(self, run_id: str) -> Run:
        run = self.get(run_id)
        if run.status in RUN_ENDED or run_id not in self.live \
                or not await self.calls.cancel(run_id, "cancelled"):
            raise RpcError(jsonrpc.CONFLICT, f"run {run_id} already ended ({run.status})")
        return run

    async def signal(self, run_id: str, signal: Signal) -> SignalReceipt:
        return await self.signals.send(self.get(run_id), signal)

    async def close(self) -> None:
        """Each driver stops where it is (its run resumed at the next start)."""
        if self._pruning is not None:
            self._pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruning
        await self.calls.close()
