"""Issue 41: a workflow run is one trace (docs/tracing.md): its span, its steps' spans
under it (a map's items under their step's), each step's task under its step's span, and
a nested step's run under its step, in the same trace; exported to a real OTLP receiver
(decoded with the official package) and read back by `corral trace`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.supervisor import Supervisor
from corral.supervisor.tracing import Sampling, Tracer

from .intercepted import Engines, engines
from .test_tracing import Receiver, attrs, hexid, receiver
from .test_workflow_nested import INNER, OUTER
from .test_workflows import FAN, agent_toml

__all__ = ["engines", "receiver"]  # the fixtures, used by name


def by_name(spans: list[Any], name: str) -> list[Any]:
    return [s for s in spans if s.name == name]


def one(spans: list[Any], name: str, **wanted: Any) -> Any:
    (found,) = [s for s in by_name(spans, name)
                if all(attrs(s).get(k) == v for k, v in wanted.items())]
    return found


async def test_a_run_its_steps_their_tasks_and_a_nested_run_are_one_trace(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    from .daemon_harness import Daemon, shared_tmpdir

    rec, url = receiver
    tracing = f'\n[tracing]\nendpoint = "{url}"\nexport_interval = 0.05\n'
    d = Daemon(shared_tmpdir(), agent_toml(tmp_path) + FAN + INNER + OUTER + tracing)
    try:
        await asyncio.to_thread(d.start)

        async def run(name: str, inp: Any) -> dict[str, Any]:
            r = await asyncio.to_thread(d.cli, "workflows", "run", name, "--input",
                                        json.dumps(inp), "--wait", "60", "--json")
            assert r.returncode == 0, r.stderr
            view: dict[str, Any] = json.loads(r.stdout)
            assert view["status"] == "succeeded", view
            return view

        fan = await run("fan", {"n": 3})
        marks = tmp_path / "marks"
        marks.mkdir()
        outer = await run("outer", {"x": 2, "dir": str(marks), "sleep": 0})
        await rec.wait(lambda spans: len(by_name(spans, "invoke_workflow inner")) == 1
                       and len(by_name(spans, "invoke_workflow outer")) == 1
                       and len(by_name(spans, "invoke_workflow fan")) == 1
                       # the fan's five tasks, the outer's two and the inner's two
                       and len(by_name(spans, "invoke_agent wf")) == 5 + 2 + 2)
        spans = rec.spans

        # the fan: the run, its three steps, the map's three items, each step's task
        run_span = one(spans, "invoke_workflow fan")
        trace = hexid(run_span.trace_id)
        assert trace == fan["run_id"].replace("-", "")
        assert run_span.parent_span_id == b""
        a = attrs(run_span)
        assert (a["gen_ai.operation.name"], a["corral.workflow.name"], a["corral.run.id"],
                a["corral.run.status"], a["corral.run.steps"]) == (
            "invoke_workflow", "fan", fan["run_id"], "succeeded", 3)
        rows = {(s["step"], s["item"]): s for s in fan["steps"]}
        assert set(rows) == {("list", None), ("square", None), ("square", 0),
                             ("square", 1), ("square", 2), ("sum", None)}
        wholes = {attrs(s)["corral.workflow.step"]: s for s in spans
                  if s.name.startswith("step ") and attrs(s)["corral.run.id"] == fan["run_id"]
                  and "corral.workflow.item" not in attrs(s)}
        assert sorted(wholes) == ["list", "square", "sum"]
        for s in wholes.values():
            assert (hexid(s.trace_id), s.parent_span_id) == (trace, run_span.span_id)
        square = wholes["square"]
        for (step, item), row in rows.items():
            if row.get("task_id") is None:
                continue  # the map as a whole: its items have the tasks
            step_span = wholes[step] if item is None else one(
                spans, f"step {step}", **{"corral.workflow.item": item,
                                          "corral.run.id": fan["run_id"]})
            if item is not None:
                assert step_span.parent_span_id == square.span_id
            assert attrs(step_span)["corral.task.id"] == row["task_id"]
            task = one(spans, "invoke_agent wf", **{"corral.task.id": row["task_id"]})
            assert (hexid(task.trace_id), task.parent_span_id) == (trace,
                                                                  step_span.span_id)
            # the task's attempt under it, in the same trace
            (attempt,) = [s for s in spans if s.name == "task/run wf"
                          and s.parent_span_id == task.span_id]
            assert hexid(attempt.trace_id) == trace

        # the outer run: its nested step's run is a child of that step, in its trace
        outer_span = one(spans, "invoke_workflow outer")
        inner_span = one(spans, "invoke_workflow inner")
        child_run = next(s for s in outer["steps"] if s["step"] == "child")["run_id"]
        child_step = one(spans, "step child", **{"corral.run.id": outer["run_id"]})
        assert attrs(child_step)["corral.child_run.id"] == child_run
        assert child_step.parent_span_id == outer_span.span_id
        assert attrs(inner_span)["corral.run.id"] == child_run
        assert (inner_span.trace_id, inner_span.parent_span_id) == (
            outer_span.trace_id, child_step.span_id)
        inner_steps = [s for s in spans if s.name.startswith("step ")
                       and attrs(s)["corral.run.id"] == child_run]
        assert sorted(s.name for s in inner_steps) == ["step double", "step sum"]
        for s in inner_steps:
            assert (s.trace_id, s.parent_span_id) == (outer_span.trace_id,
                                                      inner_span.span_id)
            task = one(spans, "invoke_agent wf",
                       **{"corral.task.id": attrs(s)["corral.task.id"]})
            assert (task.trace_id, task.parent_span_id) == (outer_span.trace_id,
                                                            s.span_id)

        # a run started with its caller's context: the run's span is a child of it
        caller_trace, caller_span = "ab" * 16, "cd" * 8
        r = await asyncio.to_thread(d.cli, "workflows", "run", "fan", "--input", '{"n": 1}',
                                    "--wait", "60", "--json", "--traceparent",
                                    f"00-{caller_trace}-{caller_span}-01")
        assert r.returncode == 0, r.stderr
        child = json.loads(r.stdout)
        await rec.wait(lambda spans: any(attrs(s).get("corral.run.id") == child["run_id"]
                                         and s.name == "invoke_workflow fan" for s in spans))
        run_span = one(rec.spans, "invoke_workflow fan", **{"corral.run.id": child["run_id"]})
        assert (hexid(run_span.trace_id), hexid(run_span.parent_span_id)) == (
            caller_trace, caller_span)
        runs_before = len((await asyncio.to_thread(d.json, "runs"))["runs"])
        bad = await asyncio.to_thread(d.cli, "workflows", "run", "fan", "--input",
                                      '{"n": 1}', "--traceparent", "00-nope")
        assert (bad.returncode, bad.stderr) == (1, (
            "corral: traceparent must be the W3C format 00-<32 hex>-<16 hex>-<2 hex>, not "
            "'00-nope'\n"))
        assert len((await asyncio.to_thread(d.json, "runs"))["runs"]) == runs_before

        # `corral trace` of a step's task: its step's span, the task under it
        listed = rows[("list", None)]["task_id"]
        shown = await asyncio.to_thread(d.cli, "trace", listed)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith(f"trace {trace}  task {listed}  ")
        assert [line.split("|")[0].rstrip() for line in lines[1:]] == [
            "step list", "  invoke_agent wf", "    corral.queue", "    task/run wf"]
        assert await asyncio.to_thread(d.stop) == 0
    finally:
        await asyncio.to_thread(d.close)
        shutil.rmtree(d.dir, ignore_errors=True)


def test_an_unsampled_runs_spans_are_kept_only_where_it_failed() -> None:
    """The run's head decision is its steps' tasks' (their traceparent's flag); with
    nothing sampled a run that succeeded leaves no span, a failed step and its failed
    run are kept (the tail rule), and a nested run's parent is forgotten at its end."""
    import msgspec

    from corral.daemon.workflows.runevents import RunEnded, StepEnded
    from corral.daemon.workflows.runstore import Run
    from corral.daemon.workflows.runtraces import RunTraces, run_trace, step_span
    from corral.supervisor.durable import WHOLE, StepRow
    from corral.supervisor.stream import Stream
    from corral.supervisor.tasks.ids import new_id
    from corral.supervisor.tracerecords import expand
    from corral.supervisor.tracing import Sampling, Tracer
    from corral.supervisor.workflows import WorkflowSpec, compile_workflow

    spec = msgspec.convert({"steps": [{"name": "a", "agent": "x"}]}, WorkflowSpec)
    wf = compile_workflow("w", spec, lambda _: True)
    stream = Stream()
    tracer = Tracer(Sampling(0.0))
    traces = RunTraces(tracer, stream)

    def ended(status: str, error: str | None = None) -> Run:
        run = Run(new_id(), "w", wf, None, "running", 1.0)
        parent = traces.step_context(run, "a", WHOLE)
        trace_id, span_id = run_trace(run.run_id)
        assert parent == (f"00-{trace_id:032x}-{step_span(span_id, 'a', WHOLE):016x}-00",
                          None)
        stream.emit(StepEnded(run, StepRow("a", WHOLE, status, new_id(), 1.0, 2.0, None,
                                           error)))
        run.status, run.ended, run.error = status, 3.0, error
        stream.emit(RunEnded(run))
        return run

    ended("succeeded")
    assert tracer.pending() == []
    failed = ended("failed", "step a: task failed")
    spans = [s for r in tracer.pending() for s in expand(r)]
    assert [(s[3], s[7], s[10]) for s in spans] == [
        ("step a", "step a: task failed", spans[0][10]),
        ("invoke_workflow w", "step a: task failed", failed.run_id)]
    assert spans[0][2] == spans[1][1]  # the step under its run
    assert spans[0][8]["error.type"] == spans[1][8]["error.type"] == "failed"
    # a run started with a caller's context: its tracestate goes on to its steps' tasks
    outer = Run(new_id(), "w", wf, None, "running", 1.0)
    traces.caller(outer.run_id, f"00-{'ab' * 16}-{'cd' * 8}-01", "k=v")
    ctx = traces.context(outer)  # as the service makes the run: the parent taken
    assert (ctx.trace_id, ctx.parent_id, ctx.tracestate) == (0xAB * (2**128 - 1) // 0xFF,
                                                             0xCD * (2**64 - 1) // 0xFF,
                                                             "k=v")
    assert traces.step_context(outer, "a", WHOLE)[1] == "k=v"
    # a nested run: its parent named before it is made and taken as it is made; one
    # named and never made (refused) forgotten by its parent's runner
    inner = Run(new_id(), "w", wf, None, "running", 1.0)
    traces.nested(inner.run_id, outer, "a", WHOLE)
    ctx = traces.context(inner)
    assert (ctx.trace_id, ctx.parent_id, ctx.tracestate) == (
        traces.context(outer).trace_id, step_span(run_trace(outer.run_id)[1], "a", WHOLE),
        "k=v")
    traces.nested("never-made", outer, "a", 0)
    traces.forget_parent("never-made")
    assert traces._parents == {}
    for run in (inner, outer):
        run.status = "succeeded"
        stream.emit(RunEnded(run))
    assert inner.run_id not in traces._runs and outer.run_id not in traces._runs


# -- a run whose row cannot be committed: its trace context forgotten (service.start) ------
CALLER_TRACE, CALLER_SPAN = "ab" * 16, "cd" * 8
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
ONE = {"steps": [{"name": "echo", "agent": "wf", "input": {"op": "echo", "x": "$input.x"}}]}
INNER_ONE = {"steps": [{"name": "double", "agent": "wf",
                        "input": {"op": "echo", "x": "$input.x"}}]}
OUTER_ONE = {"steps": [{"name": "child", "workflow": "inner", "input": {"x": "$input.x"}}]}


@contextlib.asynccontextmanager
async def traced_service(tmp_path: Path, sup: Supervisor, tracer: Tracer,
                         monkeypatch: pytest.MonkeyPatch
                         ) -> AsyncIterator[tuple[Any, Tracer, sqlite3.Connection, list[str]]]:
    """A WorkflowService as the daemon builds it (startup.workflows) over the real engine
    of `sup` (agent `wf` Ready), traced by `tracer` (the engine's), on a real StateStore
    whose every commit fails ("database is locked", after 0.1 s) while the connection
    handed over holds the write lock; with what the service reported."""
    from corral.daemon import storeschema
    from corral.daemon.workflows.service import WorkflowService
    from corral.supervisor.workflows import WorkflowSpec

    from .conftest import agent, all_ready
    from .daemon_harness import PY
    from .test_store_faults import lockable_store
    from .test_workflows import AGENT

    monkeypatch.setattr(storeschema, "BUSY_TIMEOUT_MS", 100)  # a lock fails a commit fast
    script = tmp_path / "wfagent.py"
    script.write_text(AGENT)
    sup.add(agent("wf", command=[PY, str(script)]))
    await all_ready(sup, "wf", timeout=30)
    errors: list[str] = []
    async with lockable_store(tmp_path / "corral.db", errors, errors) as (store, _, holder):
        reports: list[str] = []
        service = WorkflowService(sup.agents, sup.tasks, store, reports.append, tracer)
        service.configure({n: msgspec.convert(t, WorkflowSpec) for n, t in
                           (("one", ONE), ("inner", INNER_ONE), ("outer", OUTER_ONE))})
        try:
            yield service, tracer, holder, reports
        finally:
            await service.close()
        assert errors == []  # the store's writer (audit rows, checkpoints) had nothing


def spans_of(tracer: Tracer) -> list[Any]:
    from corral.supervisor.tracerecords import expand

    return [s for r in tracer.pending() for s in expand(r)]


def the_span(spans: list[Any], name: str, run_id: str) -> Any:
    """(trace id, span id, parent, name, kind, start, end, error, attrs, events, key)"""
    (found,) = [s for s in spans if s[3] == name and s[8].get("corral.run.id") == run_id]
    return found


async def test_a_run_whose_row_cannot_be_committed_forgets_its_callers_context(
        tmp_path: Path, engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """`start` with a caller's traceparent while the state database cannot be written:
    the StoreError as the store says it, no run, and nothing of the run's trace left
    (its context and its caller's, taken as it was made, forgotten; no span); once the
    database can be written, a start with the same context runs and is one trace under
    the caller's span."""
    from corral.daemon.storeschema import StoreError
    from corral.supervisor.durable import WHOLE

    tracer = Tracer(Sampling(1.0))
    sup = engines([tracer])
    async with traced_service(tmp_path, sup, tracer, monkeypatch) as (service, _, holder,
                                                                      reports):
        traces = service.traces
        assert traces is not None
        holder.execute("BEGIN EXCLUSIVE")  # every commit fails now
        with pytest.raises(StoreError) as caught:
            await service.start("one", {"x": 1}, traceparent=CALLER, tracestate="k=v")
        assert str(caught.value) == (f"state database {tmp_path / 'corral.db'} cannot be "
                                     "written (database is locked)")
        assert service.list(None, None, None, 10, None) == ([], None)
        assert service.live == {}
        assert (traces._runs, traces._parents) == ({}, {})  # its context, its caller's
        assert tracer.pending() == []

        holder.execute("ROLLBACK")  # the database can be written again
        service.recovered.set()  # (as the daemon's recover(): no journal to wait for)
        run = await service.start("one", {"x": 2}, traceparent=CALLER, tracestate="k=v")
        await service.wait(run.run_id, 60)
        assert (run.status, run.error, dict(service.rows.outputs(run))) == (
            "succeeded", None, {"echo": {"op": "echo", "x": 2}})
        (listed,), _ = service.list(None, None, None, 10, None)
        assert (listed.run_id, listed.status) == (run.run_id, "succeeded")
        assert (traces._runs, traces._parents) == ({}, {})  # ended: nothing kept
        spans = spans_of(tracer)
        run_span = the_span(spans, "invoke_workflow one", run.run_id)
        step = the_span(spans, "step echo", run.run_id)
        (task,) = [s for s in spans if s[3] == "invoke_agent wf"]
        assert task[10] == step[8]["corral.task.id"] == run.rows[("echo", WHOLE)].task_id
        trace = int(CALLER_TRACE, 16)
        assert [(s[0], s[2]) for s in (run_span, step, task)] == [
            (trace, int(CALLER_SPAN, 16)), (trace, run_span[1]), (trace, step[1])]
        assert reports == []


async def test_a_nested_run_whose_row_cannot_be_committed_forgets_its_steps_context(
        tmp_path: Path, engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nested step's run made while the state database cannot be written (the lock
    taken as the step's row is committed, before its run is made): the parent's driver
    stops, saying why; the child run's context (the nested step's, taken as it was made)
    is forgotten, no child run exists, no span was made. Resumed once the database can
    be written (as the next daemon resumes it), the child is made under the id its
    parent recorded, one trace with its parent, under its step's span."""
    from corral.daemon.workflows.runevents import StepStarted
    from corral.supervisor.durable import WHOLE

    tracer = Tracer(Sampling(1.0))
    sup = engines([tracer])
    async with traced_service(tmp_path, sup, tracer, monkeypatch) as (service, _, holder,
                                                                      reports):
        traces = service.traces
        assert traces is not None
        started: list[str] = []

        def lock(e: StepStarted) -> None:
            if (e.run.workflow, e.row.step) == ("outer", "child") and not started:
                assert e.row.task_id is not None
                started.append(e.row.task_id)
                holder.execute("BEGIN EXCLUSIVE")  # the child's row cannot be committed

        sub = sup.stream.subscribe(lock, StepStarted)
        service.recovered.set()
        outer = await service.start("outer", {"x": 3})
        await service.wait(outer.run_id, 60)  # its driver stops: the store failed
        sup.stream.unsubscribe(sub)
        (child_id,) = started
        assert reports == [
            f"workflows: run {outer.run_id} (outer) stopped: state database "
            f"{tmp_path / 'corral.db'} cannot be written (database is locked); it is "
            "resumed at the next start"]
        assert service.live == {}
        assert service.rows.load(child_id) is None
        assert [r.run_id for r in service.list(None, None, None, 10, None)[0]] == [
            outer.run_id]
        assert child_id not in traces._runs and child_id not in traces._parents
        assert tracer.pending() == []
        # the stopped run's context is not kept: it is made again, from the run's row,
        # when the run is driven again (in this process, or by the next daemon)
        assert (traces._runs, traces._parents) == ({}, {})

        holder.execute("ROLLBACK")  # the database can be written again
        service.recover()  # the parent driven on from its rows, as the next daemon does
        await service.wait(outer.run_id, 60)
        resumed = service.get(outer.run_id)
        assert (resumed.status, resumed.error) == ("succeeded", None)
        child = service.get(child_id)
        assert (child.workflow, child.status, dict(service.rows.outputs(child))) == (
            "inner", "succeeded", {"double": {"op": "echo", "x": 3}})
        assert reports[1:] == ["workflows: 1 unfinished run resumed"]
        assert (traces._runs, traces._parents) == ({}, {})
        spans = spans_of(tracer)
        outer_span = the_span(spans, "invoke_workflow outer", outer.run_id)
        child_step = the_span(spans, "step child", outer.run_id)
        inner_span = the_span(spans, "invoke_workflow inner", child_id)
        double = the_span(spans, "step double", child_id)
        (task,) = [s for s in spans if s[3] == "invoke_agent wf"]
        assert task[10] == child.rows[("double", WHOLE)].task_id
        assert child_step[8]["corral.child_run.id"] == child_id
        trace = outer_span[0]
        assert [(s[0], s[2]) for s in (outer_span, child_step, inner_span, double, task)] == [
            (trace, 0), (trace, outer_span[1]), (trace, child_step[1]),
            (trace, inner_span[1]), (trace, double[1])]


# -- a run resumed by the next daemon: in the trace it was started in ------------------------
GATE_AGENT = '''
from corral.worker import run

def handle(inp, ctx):
    with open(inp["gate"]) as gate:  # a FIFO: open and read block until the test writes
        gate.read()
    return inp

run(handle)
'''
INNER_GATE = {"steps": [{"name": "wait", "agent": "gate", "input": {"gate": "$input.gate"}}]}
OUTER_GATE = {"steps": [{"name": "child", "workflow": "inner_gate",
                         "input": {"gate": "$input.gate"}}]}


async def test_a_run_and_its_nested_run_resumed_by_the_next_daemon_stay_in_their_trace(
        tmp_path: Path, engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run started with a caller's context, stopped with its nested run's step's task
    running (the daemon stops), and resumed by the next daemon's service (a tracer of its
    own, sampling nothing new): the run's span is still its caller's child, the nested
    run's still under its step, and both are kept as their traces were sampled when they
    started (the parent's decision, written with each run's row)."""
    import os

    from corral.daemon.workflows.runevents import StepStarted
    from corral.daemon.workflows.runtraces import run_trace, step_span
    from corral.daemon.workflows.service import WorkflowService
    from corral.supervisor.durable import WHOLE
    from corral.supervisor.tracing import Sampling
    from corral.supervisor.workflows import WorkflowSpec

    from .conftest import agent, all_ready
    from .daemon_harness import PY

    tracer = Tracer(Sampling(1.0))
    sup = engines([tracer])
    script = tmp_path / "gate.py"
    script.write_text(GATE_AGENT)
    sup.add(agent("gate", command=[PY, str(script)]))
    await all_ready(sup, "gate", timeout=30)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    specs = {n: msgspec.convert(t, WorkflowSpec) for n, t in
             (("inner_gate", INNER_GATE), ("outer_gate", OUTER_GATE))}
    async with traced_service(tmp_path, sup, tracer, monkeypatch) as (first, _, _, reports):
        first.configure(specs)
        first.recovered.set()
        waiting = asyncio.Event()
        sub = sup.stream.subscribe(
            lambda e: waiting.set() if e.row.step == "wait" else None, StepStarted)
        outer = await first.start("outer_gate", {"gate": str(gate)}, traceparent=CALLER,
                                  tracestate="k=v")
        await waiting.wait()
        sup.stream.unsubscribe(sub)
        await first.close()  # the daemon stops: both runs stop where they are
        (child_id,) = [r.task_id for r in outer.rows.values() if r.step == "child"]
        rows = first.rows
        stored = rows.load(outer.run_id), rows.load(child_id)
        child_step_id = step_span(run_trace(outer.run_id)[1], "child", WHOLE)
        assert [(r.status, r.traceparent, r.tracestate) for r in stored if r] == [
            ("running", CALLER, "k=v"),
            ("running", f"00-{CALLER_TRACE}-{child_step_id:016x}-01", "k=v")]

        # the next daemon's runs' spans: it samples no new trace (its engine's tracer, for
        # the tasks, is given at the engine's construction: the first's serves here)
        runs = Tracer(Sampling(0.0))
        after = WorkflowService(sup.agents, sup.tasks, rows.store, reports.append, runs)
        after.configure(specs)
        try:
            after.recover()
            await asyncio.to_thread(lambda: gate.open("w").close())  # the task ends
            await after.wait(outer.run_id, 60)
            assert (after.get(outer.run_id).status, after.get(child_id).status) == (
                "succeeded", "succeeded")
            spans = spans_of(runs)
            outer_span = the_span(spans, "invoke_workflow outer_gate", outer.run_id)
            child_step = the_span(spans, "step child", outer.run_id)
            inner_span = the_span(spans, "invoke_workflow inner_gate", child_id)
            wait = the_span(spans, "step wait", child_id)
            trace = int(CALLER_TRACE, 16)
            assert [(s[0], s[2]) for s in (outer_span, child_step, inner_span, wait)] == [
                (trace, int(CALLER_SPAN, 16)), (trace, outer_span[1]),
                (trace, child_step[1]), (trace, inner_span[1])]
            assert (outer_span[1], inner_span[1]) == (run_trace(outer.run_id)[1],
                                                      run_trace(child_id)[1])
        finally:
            await after.close()
