"""Tracing (docs/tracing.md): a task's trace from its caller's context through its
attempts and tool calls to the MCP server, exported to a real OTLP/HTTP receiver (an
aiohttp server here, decoding with the official opentelemetry-proto package), kept in
the local store and shown by `corral trace`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from corral import jsonrpc, tracecontext
from corral.cli.trace import waterfall
from corral.daemon.traces import HANDOVER, PIPE_BOUND, PIPE_SIZE, Traces, settings, traces_of
from corral.daemon.traces import start as start_traces
from corral.jsonrpc import RpcError
from corral.supervisor import McpServerSpec, State, Supervisor
from corral.supervisor.config import TracingSettings
from corral.supervisor.tasks import TaskStatus
from corral.supervisor.tracerecords import TEXT_MAX, Span, expand
from corral.supervisor.tracing import Sampling, Tracer
from corral.taskviews import Attempt

from .conftest import SPARED, agent
from .daemon_harness import free_port
from .intercepted import Engines, engines

__all__ = ["engines"]  # the fixture, used by name

PY = sys.executable
SCRIPTED = Path(__file__).with_name("scripted_mcp.py")
CALLER_TRACE = "ab" * 16
CALLER_SPAN = "cd" * 8


class Receiver:
    """An OTLP/HTTP traces endpoint: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[Any] = []
        self.service: dict[bytes, str] = {}  # span id -> its resource's service.name
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        req = ExportTraceServiceRequest.FromString(await request.read())
        for rs in req.resource_spans:
            self.resources.append(rs.resource)
            service = {kv.key: kv.value.string_value
                       for kv in rs.resource.attributes}.get("service.name", "")
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)
                self.service.update((s.span_id, service) for s in ss.spans)
        self.changed.set()
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def wait(self, enough: Callable[[list[Any]], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not enough(self.spans):
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield rec, f"http://127.0.0.1:{port}/v1/traces"
    finally:
        await runner.cleanup()


def scripted(name: str, record: Path) -> McpServerSpec:
    return McpServerSpec(name=name, command=[PY, str(SCRIPTED)], args=["v2025-11"],
                         env={"SCRIPTED_RECORD": str(record)}, start_timeout=5.0,
                         timeout=5.0, backoff_initial=0.05, stop_timeout=1.0)


def hexid(b: bytes) -> str:
    return b.hex()


def attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def otlp_request(spans: list[Span], service: str, node: str, version: str = "") -> bytes:
    """An ExportTraceServiceRequest of `spans` written one by one by otlp.py's `span`, as
    the exporter writes a record no template fits."""
    from corral.daemon.otlp import encode_spans, span, varint

    body: list[bytes] = []
    for s in spans:
        one = span(*s[:10])
        body += (b"\x12", varint(len(one)), one)
    return encode_spans(body, service, node, version)


def spans_of(tracer: Tracer) -> list[Span]:
    """The spans of what the tracer buffered, made as the exporter makes them (from the
    records as the pipe carries them)."""
    return [span for record in tracer.pending() for span in expand(record)]


def tracing(endpoint: str | None, **kw: Any) -> TracingSettings:
    return TracingSettings(endpoint=endpoint, **kw)


def traced(engines: Engines, cfg: TracingSettings, state: Path) -> tuple[Supervisor, Traces]:
    """An engine given the tracer of `cfg`'s traces at its construction, as the daemon's
    is (their exporter not started)."""
    traces = traces_of(cfg, state, SPARED)
    assert traces is not None
    return engines([traces.tracer]), traces


# -- one task, three tool calls, one trace ----------------------------------------------------
async def test_a_task_its_attempt_and_its_tool_calls_are_one_trace_with_the_server(
        engines: Engines, tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    record = tmp_path / "meta.jsonl"
    cfg = tracing(url, export_interval=0.05)
    sup, traces = traced(engines, cfg, tmp_path)
    sup.add_mcp_server(scripted("notes", record))
    sup.add(agent("user", "misbehave.py", tools=["notes__echo"]))
    await start_traces(traces)
    assert traces is not None
    try:
        await sup.wait_state("user", State.READY)
        res = await sup.tasks.run("user", {"do": "tools", "tool": "notes__echo",
                                           "arguments": {"text": "a"}, "times": 3},
                                  traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
        assert res.status == "succeeded"
        await rec.wait(lambda spans: len(spans) >= 6)
        view = await traces.trace(res.task_id)
    finally:
        await traces.close()
    spans = {s.name: s for s in rec.spans}
    assert sorted(spans) == ["corral.queue", "invoke_agent user", "task/run user",
                             "tools/call echo"]
    assert {hexid(s.trace_id) for s in rec.spans} == {CALLER_TRACE}
    task, queue, attempt = spans["invoke_agent user"], spans["corral.queue"], \
        spans["task/run user"]
    assert hexid(task.parent_span_id) == CALLER_SPAN
    assert queue.parent_span_id == attempt.parent_span_id == task.span_id
    tools = [s for s in rec.spans if s.name == "tools/call echo"]
    assert len(tools) == 3
    assert {t.parent_span_id for t in tools} == {attempt.span_id}
    a = attrs(tools[0])
    assert (a["mcp.method.name"], a["gen_ai.tool.name"], a["network.transport"],
            a["gen_ai.operation.name"], a["corral.mcp.server"]) == (
        "tools/call", "echo", "pipe", "execute_tool", "notes")
    assert tools[0].kind == 3 and task.kind == 2  # client, server
    assert attrs(task)["gen_ai.agent.name"] == "user"
    assert attrs(task)["corral.task.tool_calls"] == 3
    assert attrs(attempt)["process.pid"] == sup.agent("user").replicas[0].pid
    assert task.start_time_unix_nano <= queue.start_time_unix_nano <= \
        attempt.start_time_unix_nano <= tools[0].start_time_unix_nano
    assert tools[0].end_time_unix_nano <= attempt.end_time_unix_nano <= \
        task.end_time_unix_nano
    resource = {kv.key: kv.value.string_value for kv in rec.resources[0].attributes}
    assert resource["service.name"] == "corral"
    # the server was told each call's client span, in params._meta, under its request id
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(seen) == 3
    by_id = {str(s["id"]): s["meta"]["traceparent"] for s in seen}
    assert by_id == {attrs(t)["jsonrpc.request.id"]:
                     f"00-{CALLER_TRACE}-{hexid(t.span_id)}-01" for t in tools}
    assert all(s["meta"]["progressToken"] for s in seen)  # corral's own _meta kept
    # the local store has the same spans, and `corral trace` draws them
    assert view.trace_id == CALLER_TRACE
    assert len(view.spans) == 6
    lines = waterfall(view)
    assert lines[0].startswith(f"trace {CALLER_TRACE}  task {res.task_id}")
    names = [line.split("|")[0].rstrip() for line in lines[1:]]
    assert names == ["invoke_agent user", "  corral.queue", "  task/run user",
                     "    tools/call echo", "    tools/call echo", "    tools/call echo"]
    assert "replica=user#0" in lines[3]


async def test_the_worker_is_given_the_attempts_context(engines: Engines,
                                                       tmp_path: Path) -> None:
    """task/run's _meta: the SDK's ctx.traceparent is the attempt span's."""
    tracer = Tracer()
    sup = engines([tracer])
    script = tmp_path / "ctx_agent.py"
    script.write_text("from corral.worker import run\n"
                      "run(lambda task, ctx: [ctx.traceparent, ctx.trace_meta()])\n")
    sup.add(agent("w", command=[PY, str(script)]))
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", None, traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                            tracestate="k=v")
    await task.done
    trace = task.trace
    assert trace is not None
    given = f"00-{CALLER_TRACE}-{trace.attempt_span(1):016x}-01"
    assert task.output == [given, {"traceparent": given, "tracestate": "k=v"}]
    (attempt,) = [s for s in spans_of(tracer) if s[3] == "task/run w"]
    assert attempt[1] == trace.attempt_span(1)


async def test_a_task_that_starts_its_trace_is_traced_from_its_id(engines: Engines,
                                                                 tmp_path: Path) -> None:
    """No caller's context: the trace id is the task's id, the worker's parent is the
    attempt's span as exported, and a tool call (which makes the task a TaskTrace) keeps
    the same ids."""
    tracer = Tracer()
    sup = engines([tracer])
    script = tmp_path / "ctx_agent.py"
    script.write_text("from corral.worker import run\n"
                      "run(lambda task, ctx: ctx.traceparent)\n")
    sup.add(agent("w", command=[PY, str(script)]))
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", None)
    await task.done
    hex_id = task.id.replace("-", "")
    spans = {s[3]: s for s in spans_of(tracer)}
    attempt, root = spans["task/run w"], spans["invoke_agent w"]
    assert task.output == f"00-{hex_id}-{attempt[1]:016x}-01"
    assert {s[0] for s in spans.values()} == {int(hex_id, 16)}
    assert root[2] == 0 and attempt[2] == root[1] and spans["corral.queue"][2] == root[1]
    assert len({s[1] for s in spans.values()}) == 3
    # the same ids once a tool call or an exit needs the task's TaskTrace
    full = tracecontext.of_id(task.id, True)
    assert (full.trace_id, full.span_id, full.attempt_span(1)) == (int(hex_id, 16),
                                                                   root[1], attempt[1])
    assert full.run_meta(1) == tracecontext.FROM_ID[True].run_meta(1, task.id)
    assert full.run_meta(2) == tracecontext.FROM_ID[True].run_meta(2, task.id)


# -- a retried attempt --------------------------------------------------------------------------
async def test_a_retried_task_shows_both_attempts(engines: Engines, tmp_path: Path) -> None:
    tracer = Tracer()
    sup = engines([tracer])
    sup.add(agent("flaky", "misbehave.py", retries=1))
    await sup.wait_state("flaky", State.READY)
    res = await sup.tasks.run("flaky", {"do": "crash-once",
                                        "marker": str(tmp_path / "m")})
    assert res.status == "succeeded"
    spans = spans_of(tracer)
    attempts = [s for s in spans if s[3] == "task/run flaky"]
    assert len(attempts) == 2
    (task,) = [s for s in spans if s[3] == "invoke_agent flaky"]
    first, second = sorted(attempts, key=lambda s: s[8]["corral.attempt"])
    assert first[2] == second[2] == task[1]
    assert first[1] != second[1]
    assert first[8]["corral.attempt.outcome"] == "lost" and first[7]
    assert second[8]["corral.attempt.outcome"] == "succeeded" and second[7] is None
    assert [e[1] for e in first[9]] == ["corral.replica.exited"]
    assert [e[1] for e in task[9]] == ["corral.task.retried"]
    assert len([s for s in spans if s[3] == "corral.queue"]) == 2


# -- a collector that is away --------------------------------------------------------------------
# (its port is the harness's free_port, of this worker's band: one the kernel hands out, as
# it did here, may be bound meanwhile by any server listening on port 0, another test's
# daemon among them, and the collector would not be away)
async def test_a_collector_that_is_down_costs_no_task_and_counts_its_drops(
        engines: Engines, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/traces"
    # the timer far away: each batch goes to the exporter when the test says
    cfg = tracing(url, export_interval=3600, batch=100_000, buffer=2)
    sup, traces = traced(engines, cfg, tmp_path)
    await start_traces(traces)
    assert traces is not None
    try:
        sup.add(agent("a"))
        await sup.wait_state("a", State.READY)
        results = [await sup.tasks.run("a", {"name": str(i)}) for i in range(3)]
        assert [r.status for r in results] == ["succeeded"] * 3
        # a task's record (its 3 spans) a task, into a buffer of 2: the third task's
        # dropped on the loop, its spans counted
        assert traces.tracer.dropped == 3
        await traces.sync(sent=True)
        assert traces.export_failures == 1
        assert traces.dropped == 9  # and the 6 spans of the failed export
        assert traces.exported == 0
        assert traces.last_error is not None and "refused" in traces.last_error.lower()
        # the store still has what was taken (for `corral trace`)
        view = await traces.trace(results[0].task_id)
        assert len(view.spans) == 3
        assert not (await traces.trace(results[2].task_id)).spans
    finally:
        await traces.close()


async def test_tracing_starts_before_the_state_directory_exists(engines: Engines,
                                                                 tmp_path: Path) -> None:
    # a first start with [tracing]: tracing starts before the state database makes its
    # directory (a new user's trial: "unable to open database file")
    state = tmp_path / "fresh" / "state"
    url = f"http://127.0.0.1:{free_port()}/v1/traces"
    cfg = tracing(url, export_interval=3600)
    _sup, traces = traced(engines, cfg, state)
    await start_traces(traces)
    assert traces is not None
    try:
        assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o700
        # the store is the daemon's alone, as the state database is (every tenant's
        # spans: their errors, agents, tools), its WAL files made of its mode
        await traces.ready.wait()  # the exporter has it open
        assert {p.name: p.stat().st_mode & 0o777 for p in state.iterdir()} == {
            "traces.db": 0o600, "traces.db-wal": 0o600, "traces.db-shm": 0o600}
        assert not (await traces.trace("01a209c3-0000-7000-8000-000000000000")).spans
    finally:
        await traces.close()


async def test_an_export_is_cut_at_export_timeout(engines: Engines, tmp_path: Path) -> None:
    """[tracing] export_timeout 0.5 against a collector that answers after 2 s: the export
    fails at its timeout and is counted (the default 5 s would have waited for it)."""
    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(2)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
    sup, traces = traced(engines, tracing(url, export_interval=3600, export_timeout=0.5),
                         tmp_path)
    await start_traces(traces)
    try:
        sup.add(agent("a"))
        await sup.wait_state("a", State.READY)
        assert (await sup.tasks.run("a", {"name": "x"})).status == "succeeded"
        await traces.sync(sent=True)
        assert (traces.export_failures, traces.exported) == (1, 0)
        assert traces.last_error is not None and "timed out" in traces.last_error, (
            traces.last_error)
    finally:
        await traces.close()
        await runner.cleanup()


async def test_the_store_keeps_the_newest_keep_spans(engines: Engines, tmp_path: Path
                                                     ) -> None:
    """[tracing] keep_spans 3 (a task's three spans): the store, pruned as an exporter
    starts writing (and once a minute after), keeps the last task's trace alone."""
    cfg = tracing(None, keep_spans=3, export_interval=3600)
    ids = []
    for runs in (2, 1):  # two daemons' lives on one state directory
        sup, traces = traced(engines, cfg, tmp_path)
        await start_traces(traces)
        try:
            sup.add(agent("a"))
            await sup.wait_state("a", State.READY)
            for i in range(runs):
                ids.append((await sup.tasks.run("a", {"name": str(i)})).task_id)
                await traces.sync()
            assert len((await traces.trace(ids[-1])).spans) == 3
            if runs == 2:  # nothing pruned yet: the first prune saw one task's
                assert len((await traces.trace(ids[0])).spans) == 3
        finally:
            await traces.close()
        await sup.close(graceful=False)
    traces = traces_of(cfg, tmp_path, SPARED)
    assert traces is not None
    await start_traces(traces)
    try:
        assert [len((await traces.trace(t)).spans) for t in ids] == [0, 0, 3]
    finally:
        await traces.close()


# -- sampling -------------------------------------------------------------------------------------
def test_the_head_decision() -> None:
    s = Sampling(ratio=0.5)
    assert s.head(1, None) is True  # a low trace id is under the ratio
    assert s.head((1 << 64) - 1, None) is False
    assert s.head((1 << 64) - 1, True) is True  # the caller's flag decides
    assert s.head(1, False) is False
    assert Sampling(ratio=0.0, parent_based=False).head(1, True) is False
    assert Sampling(ratio=1.0).head((1 << 64) - 1, None) is True


def test_the_otel_variables_fill_what_the_table_leaves_out() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/", "OTEL_SERVICE_NAME": "svc",
           "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
           "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%20ecret,x=1"}
    got = settings(TracingSettings(), env)
    assert got.endpoint == "http://c:4318/v1/traces"
    assert got.service == "svc"
    assert got.sampling == Sampling(0.25, False, 10.0)
    assert got.headers == {"api-key": "s ecret", "x": "1"}
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://t:1/x"
    assert settings(TracingSettings(), env).endpoint == "http://t:1/x"
    mine = settings(TracingSettings(endpoint="http://me/v1/traces", sample=1.0,
                                    parent_based=True, service_name="me"), env)
    assert (mine.endpoint, mine.sampling.ratio, mine.sampling.parent_based, mine.service) \
        == ("http://me/v1/traces", 1.0, True, "me")
    assert settings(TracingSettings(), {}).sampling == Sampling(1.0, True, 10.0)


async def test_unsampled_tasks_leave_no_spans_but_failed_and_slow_ones_do(
        engines: Engines, tmp_path: Path) -> None:
    tracer = Tracer(Sampling(ratio=0.0, slow=30.0))
    sup = engines([tracer])
    sup.add(agent("m", "misbehave.py"))
    await sup.wait_state("m", State.READY)
    ok = await sup.tasks.run("m", {"do": "echo"})
    assert ok.status == "succeeded" and not tracer.buffered
    failed = await sup.tasks.run("m", {"do": "fail"})
    assert failed.status == "failed"
    assert {s[10] for s in spans_of(tracer)} == {failed.task_id}  # the tail rule
    (task,) = [s for s in spans_of(tracer) if s[3] == "invoke_agent m"]
    assert task[7] and task[8]["error.type"] == "failed"
    # a caller that does not sample: honoured, and said on in the worker's context
    tracer.take()
    tracer.sampling = Sampling(ratio=1.0, slow=0.0)  # every task slow: kept by the tail
    t = sup.tasks.submit("m", {"do": "echo"}, traceparent=f"00-{CALLER_TRACE}-"
                                                           f"{CALLER_SPAN}-00")
    assert t.trace is not None and t.trace.sampled is False
    assert t.trace.run_meta(1)["traceparent"].endswith("-00")
    await t.done
    assert {s[0] for s in spans_of(tracer)} == {int(CALLER_TRACE, 16)}


async def test_a_bad_traceparent_is_refused_with_the_reason(engines: Engines) -> None:
    sup = engines([Tracer()])
    sup.add(agent("a"))
    with pytest.raises(RpcError) as err:
        sup.tasks.submit("a", {}, traceparent="00-nope")
    assert err.value.code == jsonrpc.INVALID_PARAMS
    assert err.value.message == ("traceparent must be the W3C format 00-<32 hex>-<16 hex>-"
                                 "<2 hex>, not '00-nope'")


async def test_an_adopted_tasks_bad_context_starts_a_trace_of_its_own(
        engines: Engines) -> None:
    """Attacker's pass: a cluster task's context comes through Redis (whoever writes it):
    one that does not parse is never a reason to refuse the task where it runs; it is
    traced from its id, as one that came with none; a good one is its parent."""
    from corral.cluster.records import trace_field, trace_of
    from corral.supervisor.tasks.model import Task

    tracer = Tracer()
    sup = engines([tracer])
    sup.add(agent("a"))
    await sup.wait_state("a", State.READY)
    good = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    assert trace_of(trace_field(good, "k=v").encode()) == (good, "k=v")
    assert trace_of(trace_field(good, None).encode()) == (good, None)
    assert trace_of(b"") == trace_of(False) == (None, None)
    made = []
    for context in (trace_of(b"00-nope\nx=y"), trace_of(b"\xff" * 600),
                    trace_of(trace_field(good, "k=v").encode())):
        task = Task("a", msgspec.Raw(b"{}"), 0, 30.0, 0, 0)
        sup.tasks.intake.adopt(task, *context)
        made.append(task)
    for task in made:
        await asyncio.wait_for(asyncio.shield(task.done), 30)
    assert [t.status for t in made] == ["succeeded"] * 3
    spans = {s[10]: s for s in spans_of(tracer) if s[3] == "invoke_agent a"}
    for bad in made[:2]:
        assert (spans[bad.id][0], spans[bad.id][2]) == (int(bad.id.replace("-", ""), 16), 0)
    assert (spans[made[2].id][0], spans[made[2].id][2]) == (int(CALLER_TRACE, 16),
                                                             int(CALLER_SPAN, 16))


def test_a_rogues_100_kb_trace_field_on_a_queued_cluster_task_is_none() -> None:
    """Attacker's pass (issue 88): a Redis writer's 100 KB trace field on a queued
    cluster task was decoded and handed on by every node that claimed it. Longer than
    any node writes (a traceparent, a line break, a tracestate at its bound), it is no
    context: the task is traced from its id."""
    from corral.cluster.records import MAX_TRACE_FIELD, trace_field, trace_of

    good = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    longest = trace_field(good, "k=" + "v" * 5000).encode()
    assert len(longest) == MAX_TRACE_FIELD
    assert trace_of(longest) == (good, "k=" + "v" * (MAX_TRACE_FIELD - 58))
    assert trace_of(f"{good}\nk=".encode() + b"v" * 100_000) == (None, None)
    assert trace_of(b"0" * 100_000) == (None, None)


async def test_a_task_given_back_by_a_journal_is_traced_from_its_id(engines: Engines) -> None:
    """A journal's unfinished task after a restart (and one an upgrade hands over): with
    [tracing], traced from its id as a task that came with no context, where it was not
    traced at all before."""
    import time

    from corral.supervisor.tasks.ids import new_id
    from corral.supervisor.tasks.model import TaskRecord

    tracer = Tracer()
    sup = engines([tracer])
    sup.add(agent("a"))
    await sup.wait_state("a", State.READY)
    rec = TaskRecord(task_id=new_id(), agent="a", input=msgspec.Raw(b"{}"), priority=0,
                     timeout=30.0, retries_left=0, created=time.time(), started=None,
                     status="queued")
    (task,) = sup.tasks.recovery.restore([rec])
    await asyncio.wait_for(asyncio.shield(task.done), 30)
    assert task.status == "succeeded"
    (span,) = [s for s in spans_of(tracer) if s[3] == "invoke_agent a"]
    assert (span[0], span[2], span[10]) == (int(rec.task_id.replace("-", ""), 16), 0,
                                            rec.task_id)


def test_a_full_buffer_drops_and_counts() -> None:
    tracer = Tracer(capacity=2)
    record: Any = (1, 1, 2, 0, "s__x", "t", 1, "pipe", 7, 0.0, 1.0, None)
    for _ in range(5):
        tracer.put(record, spans=3)
    assert (tracer.buffered, tracer.dropped, tracer.recorded) == (2, 9, 2)


def test_a_record_is_encoded_as_it_is_put_and_not_kept() -> None:
    """Decision 426: the buffer holds a record's bytes, not the record (a tuple kept until
    its batch left brought the collector's full passes on the loop); batches of `batch`
    records each, the last one partial; nothing waits after `take`."""
    tracer = Tracer(batch=2)
    attempts = [{"replica": 0, "started": 1.0}]
    held = sys.getrefcount(attempts)
    for i in range(5):
        tracer.put((0, None, None, None, 0, "a", f"t{i}", "succeeded", None, 0, 0, 1.0,
                    2.0, None, attempts, None), 3)
    assert sys.getrefcount(attempts) == held
    assert (tracer.buffered, tracer.batches, tracer.recorded) == (5, 2, 5)
    assert [r[6] for r in tracer.pending()] == ["t0", "t1", "t2", "t3", "t4"]
    frames = tracer.take()
    assert [(n, spans) for n, spans, _ in frames] == [(2, 6), (2, 6), (1, 3)]
    assert [[r[6] for r in msgspec.msgpack.decode(body)] for _, _, body in frames] == [
        ["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert (tracer.buffered, tracer.batches, tracer.pending(), tracer.take()) == (0, 0, [], [])


def test_a_record_msgpack_cannot_carry_is_dropped_and_counted_alone() -> None:
    """A value no msgpack integer holds (a worker's usage of 2**70 tokens, say) drops its
    record, counted, and leaves the batch's bytes as they were."""
    tracer = Tracer()
    tool: Any = (1, 1, 2, 3, 0, "s__x", "t", 1, "pipe", 7, 0.0, 1.0, None)
    tracer.put(tool)
    tracer.put((*tool[:9], 2 ** 70, *tool[10:]))
    tracer.put((*tool[:6], "u", *tool[7:]))
    assert (tracer.buffered, tracer.dropped, tracer.recorded) == (2, 1, 2)
    assert [r[6] for r in tracer.pending()] == ["t", "u"]


def test_a_task_is_counted_for_the_spans_it_makes_kept_or_dropped() -> None:
    """A task's record is counted, buffered or dropped, for the spans `expand` makes of
    it: two for one that ended before any attempt (cancelled while queued), three for
    one attempt, and two more each attempt after."""
    from corral.supervisor.tracerecords import spans_of as record_spans

    from .test_tracing_export import task as made

    for attempts in (0, 1, 3):
        kept, full = Tracer(), Tracer(capacity=0)
        t = made(attempts=attempts, status=TaskStatus.SUCCEEDED if attempts
                 else TaskStatus.CANCELLED)
        for tracer in (kept, full):
            tracer.finished(t)
        (record,) = kept.pending()
        assert record_spans(record) == len(expand(record)) == (2 if not attempts
                                                                 else 1 + 2 * attempts)
        ((_, spans, _),) = kept.take()
        assert spans == full.dropped == record_spans(record)


def test_a_long_text_is_cut_on_the_loop_and_the_buffer_bounded_in_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's long texts are cut before they are buffered (as the exporter would cut
    them), and past BUFFER_BYTES records are dropped and counted."""
    from corral.supervisor import tracing as tracing_module

    tracer = Tracer()
    name = "s__" + "x" * 200_000
    tracer.put((1, 1, 2, 3, 0, name, "t", 1, "pipe", 7, 0.0, 1.0, "e" * 50_000))
    (record,) = tracer.pending()
    assert record[5] == name[:TEXT_MAX] + "…" and record[12] == "e" * TEXT_MAX + "…"
    tracer.take()
    # an attempt's error, inside the task's record (a struct: made plain to be cut)
    attempt = Attempt(0, 7, 1.0, 2.0, "failed", "z" * 50_000)
    tracer.put((0, None, None, None, 0, "a", "t", "failed", "y" * 30_000, 0, 0, 1.0, 2.0,
                None, (attempt,), None), 3)
    (record,) = tracer.pending()
    assert record[8] == "y" * TEXT_MAX + "…"
    assert record[14] == [{"replica": 0, "pid": 7, "started": 1.0, "finished": 2.0,
                           "outcome": "failed", "error": "z" * TEXT_MAX + "…"}]
    monkeypatch.setattr(tracing_module, "BUFFER_BYTES", 4096)
    small = Tracer(batch=4)
    tool: Any = (1, 1, 2, 3, 0, "s__x" * 100, "t", 1, "pipe", 7, 0.0, 1.0, None)
    for _ in range(20):
        small.put(tool)
    size = len(tracing_module.msgspec.msgpack.encode(tool))
    assert small.buffered == 4096 // size
    assert small.dropped == 20 - small.buffered
    assert sum(len(body) for _, _, body in small.take()) <= 4096 + 8


async def test_long_records_are_handed_over_by_their_bytes_before_any_is_dropped(
        tmp_path: Path) -> None:
    """Attacker's pass: a worker's tool calls of ~15 KB each (under the cut) would fill
    the buffer's bytes long before HANDOVER batches of 512 records: a batch is full at
    FRAME_BYTES, so the hand-over is asked for at a quarter of BUFFER_BYTES (and at half,
    whatever the batch), before a record is dropped."""
    from corral.daemon.traces import HANDOVER, Traces
    from corral.supervisor import tracing as tracing_module

    cfg = TracingSettings()
    traces = Traces(cfg, settings(cfg, {}), tmp_path, "n")
    tracer = traces.tracer
    name = "s__" + "x" * 15_000
    put = 0
    while not traces._soon and put < 20_000:
        tracer.put((1, 1, 2, 3, 0, name, "t", 1, "pipe", put, 0.0, 1.0, None))
        put += 1
    assert tracer.dropped == 0
    # HANDOVER batches of FRAME_BYTES each: a quarter of the buffer's bytes
    assert tracer.batches == HANDOVER
    assert HANDOVER * tracing_module.FRAME_BYTES <= tracer.waiting_bytes < (
        tracing_module.BUFFER_BYTES // 2)
    assert put < cfg.batch * 3  # not at HANDOVER batches of 512 records
    frames = tracer.take()
    assert all(len(body) < tracing_module.FRAME_BYTES + 16_000 for _, _, body in frames)
    assert sum(n for n, _, _ in frames) == put
    await asyncio.sleep(0)  # the hand-over asked for runs (no exporter: kept for it)
    assert not traces._soon


# -- a worker's own span ----------------------------------------------------------------------
async def test_a_tool_call_is_parented_on_the_workers_own_span(engines: Engines,
                                                               tmp_path: Path) -> None:
    """The worker sent a traceparent of its own span (same trace) in tools/call's _meta:
    the tool span is its child, not the attempt's; one of another trace is not used."""
    tracer = Tracer()
    sup = engines([tracer])
    record = tmp_path / "meta.jsonl"
    sup.add_mcp_server(scripted("notes", record))
    script = tmp_path / "own_span.py"
    script.write_text(
        "from corral.worker import run\n"
        "def handle(task, ctx):\n"
        "    given = ctx.traceparent\n"
        "    ctx.traceparent = given[:36] + 'ee' * 8 + given[-3:]  # its own span\n"
        "    ctx.call_tool('notes__echo', {'text': 'a'})\n"
        "    ctx.traceparent = '00-' + '11' * 16 + '-' + 'ff' * 8 + '-01'  # another trace\n"
        "    ctx.call_tool('notes__echo', {'text': 'b'})\n"
        "    return 'ok'\n"
        "run(handle)\n")
    sup.add(agent("w", command=[PY, str(script)], tools=["notes__echo"]))
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", None, traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
    await task.done
    assert task.output == "ok"
    trace = task.trace
    assert trace is not None
    tools = [s for s in spans_of(tracer) if s[3] == "tools/call echo"]
    assert [t[2] for t in tools] == [int("ee" * 8, 16), trace.attempt_span(1)]
    assert {t[0] for t in tools} == {int(CALLER_TRACE, 16)}
    # the server was told each call's own client span, in the task's trace
    seen = [json.loads(line)["meta"]["traceparent"] for line in
            record.read_text().splitlines()]
    assert seen == [f"00-{CALLER_TRACE}-{t[1]:016x}-01" for t in tools]


# -- the exporter process -------------------------------------------------------------------------
async def test_the_exporter_holds_no_fd_of_the_daemons(engines: Engines,
                                                       tmp_path: Path) -> None:
    """An fd the daemon has inheritable (one it was started with, or one kept open for an
    upgrade's exec) is not held by the exporter: uvloop's spawn ignores close_fds, and the
    exporter, which outlives the agents at a stop, kept an MCP server's stdin open."""
    read, write = os.pipe()
    os.set_inheritable(write, True)  # as an upgrade's keep_open leaves it
    try:
        cfg = tracing(None, export_interval=3600)
        _sup, traces = traced(engines, cfg, tmp_path)
        await start_traces(traces)
        assert traces is not None
        try:
            await traces.ready.wait()  # its main has run
            assert traces.proc is not None
            ours = os.readlink(f"/proc/self/fd/{write}")
            held = {os.readlink(f"/proc/{traces.proc.pid}/fd/{fd}")
                    for fd in os.listdir(f"/proc/{traces.proc.pid}/fd")}
            assert ours not in held
        finally:
            await traces.close()
    finally:
        os.close(read)
        os.close(write)


async def test_a_dead_exporter_costs_no_task_and_is_restarted(
        engines: Engines, tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    cfg = tracing(url, export_interval=0.05)
    sup, traces = traced(engines, cfg, tmp_path)
    await start_traces(traces)
    assert traces is not None
    try:
        sup.add(agent("a"))
        await sup.wait_state("a", State.READY)
        first = traces.proc
        assert first is not None and traces.started == 1
        first.kill()
        # once its death is seen (spans written to its pipe before that die with it,
        # counted: under load the three tasks' spans all did, r1 of this sitting)...
        async with asyncio.timeout(20):
            await traces.until(lambda: traces.last_error is not None)
        # ...tasks go on while it is dead (their spans wait in the engine's buffer)
        results = [await sup.tasks.run("a", {"name": str(i)}) for i in range(3)]
        assert [r.status for r in results] == ["succeeded"] * 3
        async with asyncio.timeout(20):  # the restart is on a backoff timer
            await traces.until(lambda: traces.started == 2 and traces.ready.is_set())
        assert traces.proc is not None and traces.proc.pid != first.pid
        assert traces.last_error is not None and "exited (status -9)" in traces.last_error
        await rec.wait(lambda spans: len({s.trace_id for s in spans}) >= 3)
        view = await traces.trace(results[2].task_id)
        assert [s.name for s in view.spans] == ["invoke_agent a", "corral.queue",
                                                "task/run a"]
    finally:
        await traces.close()
    assert traces.proc is None


def two_attempts(task_id: str, error: str | None = None) -> tuple[Any, ...]:
    """A finished task's record with two attempts: five spans (the task's, and a queue
    wait and an attempt each)."""
    from corral.supervisor.tracerecords import TASK

    attempts = [Attempt(0, 1, 1.0, 2.0, "lost"), Attempt(0, 2, 3.0, 4.0, "failed")]
    return (TASK, None, None, None, 0, "a", task_id, "failed", error, 0, 0, 1.0, 4.0,
            None, attempts, None, None)


async def test_batches_the_pipe_cannot_take_are_counted_in_spans(
        engines: Engines, tmp_path: Path) -> None:
    """An exporter that stops reading: the batches past PIPE_BOUND are dropped, and
    `corral_trace_spans_dropped_total` counts their spans, not their records."""
    import signal

    from corral.supervisor.tasks.ids import new_id
    from corral.supervisor.tracerecords import spans_of as record_spans

    cfg = tracing(None, export_interval=3600, batch=1)
    _sup, traces = traced(engines, cfg, tmp_path)
    await start_traces(traces)
    assert traces is not None
    proc = traces.proc
    assert proc is not None
    try:
        await traces.ready.wait()
        os.kill(proc.pid, signal.SIGSTOP)
        record = two_attempts(new_id(), "x" * (TEXT_MAX - 24))
        assert record_spans(record) == 5
        wide = len(msgspec.msgpack.encode(record))
        # more than the pipe and PIPE_BOUND hold, in hand-overs of HANDOVER batches
        total = ((PIPE_BOUND + PIPE_SIZE) // wide // HANDOVER + 4) * HANDOVER
        for i in range(total):
            traces.tracer.put(two_attempts(new_id(), "x" * (TEXT_MAX - 24)), 5)
            if i % HANDOVER == HANDOVER - 1:
                await asyncio.sleep(0)  # the hand-over, called soon
        await asyncio.sleep(0)
        written = traces.stats()["recorded"] - traces.tracer.buffered
        assert traces.tracer.buffered == 0 and written == total
        assert traces.dropped == traces.pipe_dropped > 0
        os.kill(proc.pid, signal.SIGCONT)
        await traces.sync()
        # the rest read and stored: the spans in the exporter's store, up to its last batch
        with contextlib.closing(sqlite3.connect(traces.path)) as db:
            (stored,) = db.execute("SELECT coalesce(max(spans), 0) FROM batches").fetchone()
        unread = total - stored // 5  # (records: each makes 5 spans)
        assert unread > 0
        assert traces.pipe_dropped == 5 * unread
        assert traces.dropped == 5 * unread
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await traces.close()


async def test_what_the_exporter_says_out_of_its_protocol_is_one_line_lost(
        engines: Engines, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A line of the exporter's that is not its protocol (a count that is not a count,
    a negative one, not JSON) is dropped with a warning: the reader that reaps and
    restarts the exporter lives on, and no count goes back."""
    cfg = tracing(None, export_interval=3600)
    _sup, traces = traced(engines, cfg, tmp_path)
    await start_traces(traces)
    assert traces is not None
    try:
        await traces.ready.wait()
        traces._heard(b'{"done": 10, "exported": 4, "dropped": 6, "failures": 1}')
        for line in (b'{"done": "7"}', b'{"done": null, "exported": -1}', b'{"done": -3}',
                     b"[1, 2]", b"not json", b'{"flushed": "x"}'):
            with caplog.at_level("WARNING", logger="corral.daemon"):
                traces._heard(line)
            assert caplog.records[-1].getMessage() == (
                f"tracing: the exporter said what is not its protocol: {line!r}")
        traces._heard(b'{"done": 8, "exported": 2, "dropped": 6, "failures": 1}')  # older
        live = traces._live
        assert (live["done"], live["exported"], live["dropped"], live["failures"]) == (
            10, 4, 6, 1)
        traces._heard(b'{"done": 12}')  # the rest as they were
        assert (live["done"], live["exported"], live["dropped"]) == (12, 4, 6)
        await traces.sync()  # the reader still answers
    finally:
        await traces.close()


async def test_an_exporter_that_dies_with_batches_unread_counts_their_spans_lost(
        engines: Engines, tmp_path: Path) -> None:
    import signal

    from corral.supervisor.tasks.ids import new_id

    cfg = tracing(None, export_interval=3600, batch=1)
    _sup, traces = traced(engines, cfg, tmp_path)
    await start_traces(traces)
    assert traces is not None
    try:
        proc = traces.proc
        assert proc is not None
        await traces.ready.wait()
        os.kill(proc.pid, signal.SIGSTOP)  # it reads nothing more
        for _ in range(HANDOVER):
            traces.tracer.put(two_attempts(new_id()), 5)
        await asyncio.sleep(0)  # the hand-over, called soon
        # all of it written to the pipe (none dropped there): 5 * HANDOVER spans
        assert (traces.tracer.buffered, traces.pipe_dropped) == (0, 0)
        proc.kill()
        async with asyncio.timeout(20):
            await traces.until(lambda: traces.started == 2)
        assert traces.lost == 5 * HANDOVER
        assert traces.dropped == 5 * HANDOVER
        assert traces.last_error == (
            f"the exporter process exited (status -9); {5 * HANDOVER} spans lost")
    finally:
        await traces.close()


# -- a real daemon: the CLI, the control socket, the gateway --------------------------------------
def _mcp_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


async def test_a_daemon_traces_corral_trace_and_the_gateways_meta(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    from .daemon_harness import Daemon, hello, shared_tmpdir

    rec, url = receiver
    record = tmp_path / "meta.jsonl"
    extra = f"""
[mcp_servers.sc]
command = ["{PY}", "{SCRIPTED}", "v2025-11"]
env = {{ SCRIPTED_RECORD = "{record}" }}
start_timeout = 30.0

[tracing]
endpoint = "{url}"
export_interval = 0.05

[workflows.w]
steps = [{{ name = "s", agent = "hello", input = {{ name = "x" }} }}]
"""
    d = Daemon(shared_tmpdir(), hello("hello") + extra)  # (a short socket path)
    try:
        await asyncio.to_thread(d.start)
        ran = await asyncio.to_thread(
            d.cli, "run", "hello", "--input", '{"name": "t"}', "--json",
            "--traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
        assert ran.returncode == 0, ran.stderr
        task_id = json.loads(ran.stdout)["task_id"]
        shown = await asyncio.to_thread(d.cli, "trace", task_id)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith(f"trace {CALLER_TRACE}  task {task_id}  ")
        assert [line.split("|")[0].rstrip() for line in lines[1:]] == [
            "invoke_agent hello", "  corral.queue", "  task/run hello"]
        assert "replica=hello#0" in lines[3]
        as_json = json.loads((await asyncio.to_thread(d.cli, "trace", task_id,
                                                      "--json")).stdout)
        assert as_json["trace_id"] == CALLER_TRACE
        assert as_json["spans"][0]["parent_id"] == CALLER_SPAN
        # an id that is no task's (none at all, a session's) is told as `corral task` tells
        # it, not as a task whose trace was not sampled; a workflow run's is its trace
        session = await asyncio.to_thread(d.cli, "run", "hello", "--session", "s1")
        assert session.returncode == 0, session.stderr
        unsampled = await asyncio.to_thread(  # its caller does not sample: no span kept
            d.cli, "run", "hello", "--json", "--traceparent",
            f"00-{CALLER_TRACE}-{CALLER_SPAN}-00")
        unsampled_id = json.loads(unsampled.stdout)["task_id"]
        nothing = await asyncio.to_thread(d.cli, "trace", unsampled_id)
        assert (nothing.returncode, nothing.stderr) == (1, (
            f"corral: no trace kept for task {unsampled_id} (not sampled, not finished yet, "
            "or pruned from the local store)\n"))
        for other in ("01NOSUCHTASK", "s1"):
            nothing = await asyncio.to_thread(d.cli, "trace", other)
            assert (nothing.returncode, nothing.stderr) == (1, f"corral: no such task: {other}\n")
            assert (await asyncio.to_thread(d.cli, "task", other)).stderr == nothing.stderr
        run = await asyncio.to_thread(d.cli, "workflows", "run", "w", "--wait", "30", "--json")
        run_id = json.loads(run.stdout)["run_id"]
        shown = await asyncio.to_thread(d.cli, "trace", run_id)
        assert shown.stdout.startswith(f"trace {run_id.replace('-', '')}  task {run_id}  "), \
            shown.stdout

        # the gateway: an MCP client's context in params._meta is the call span's parent
        serve = await asyncio.create_subprocess_exec(
            PY, "-m", "corral", "--socket", str(d.sock), "mcp", "serve",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert serve.stdin is not None and serve.stdout is not None
        try:
            serve.stdin.write(_mcp_line({
                "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}}))
            serve.stdin.write(_mcp_line({"jsonrpc": "2.0",
                                         "method": "notifications/initialized"}))
            client_span = "12" * 8
            serve.stdin.write(_mcp_line({
                "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                    "name": "sc__echo", "arguments": {"text": "hi"}, "_meta": {
                        "traceparent": f"00-{CALLER_TRACE}-{client_span}-01",
                        "tracestate": "k=v"}}}))
            async with asyncio.timeout(30):
                while True:
                    answer = json.loads(await serve.stdout.readline())
                    if answer.get("id") == 2:
                        break
            assert "error" not in answer, answer
        finally:
            serve.stdin.close()
            await serve.wait()
        await rec.wait(lambda spans: any(s.name == "tools/call echo" for s in spans))
        (call,) = [s for s in rec.spans if s.name == "tools/call echo"]
        assert (hexid(call.trace_id), hexid(call.parent_span_id), call.kind) == (
            CALLER_TRACE, client_span, 3)
        a = attrs(call)
        assert (a["corral.gateway.client"], a["corral.mcp.server"], a["gen_ai.tool.name"]) \
            == ("operator", "sc", "echo")
        (seen,) = [json.loads(line) for line in record.read_text().splitlines()]
        assert seen["meta"]["traceparent"] == f"00-{CALLER_TRACE}-{hexid(call.span_id)}-01"
        assert seen["meta"]["tracestate"] == "k=v"
        assert a["jsonrpc.request.id"] == str(seen["id"])
        assert await asyncio.to_thread(d.stop) == 0
    finally:
        await asyncio.to_thread(d.close)
        shutil.rmtree(d.dir, ignore_errors=True)


# -- over HTTP ------------------------------------------------------------------------------------
@pytest.mark.deadline(120)
async def test_the_trace_over_http_from_the_callers_header_and_only_for_its_tenant(
        tmp_path: Path) -> None:
    from .daemon_harness import hello, problem
    from .test_http_api import SOCKET, serving

    agents = hello("a-hello") + 'tenant = "acme"\n' + hello("b-hello") + 'tenant = "beta"\n'
    toml = "[tenants.acme]\n[tenants.beta]\n[tracing]\nexport_interval = 0.05\n"
    async with serving(tmp_path, agents, toml) as api:
        for name, tenant in (("acme", "acme"), ("beta", "beta")):
            made = await api.d.dispatcher.call(SOCKET, "tokens.create", {
                "name": name, "scopes": ["tasks:run", "tasks:read"], "tenant": tenant})
            api.tokens[name] = made.token
        status, body, _ = await api.ask(
            "POST", "/tasks?wait=30", "acme", {"agent": "a-hello", "input": {"name": "x"}},
            headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                     "tracestate": "vendor=1"})
        assert (status, body["status"]) == (200, "succeeded")
        task_id = body["task_id"]
        status, trace, _ = await api.ask("GET", f"/tasks/{task_id}/trace", "acme")
        assert status == 200
        assert (trace["task_id"], trace["trace_id"]) == (task_id, CALLER_TRACE)
        # the submission's span (REST's: decision 1251), the caller's child, the task's parent
        assert [(s["name"], s["kind"]) for s in trace["spans"]] == [
            ("tasks.submit a-hello", "server"), ("invoke_agent a-hello", "server"),
            ("corral.queue", "internal"), ("task/run a-hello", "client")]
        submitted, task_span = trace["spans"][:2]
        assert submitted["parent_id"] == CALLER_SPAN
        assert task_span["parent_id"] == submitted["span_id"]
        assert task_span["attributes"]["corral.task.id"] == task_id
        assert {s["parent_id"] for s in trace["spans"][2:]} == {task_span["span_id"]}
        # another tenant's token: the task is not there for it, nor its trace
        status, body, _ = await api.ask("GET", f"/tasks/{task_id}/trace", "beta")
        assert (status, body) == (404, problem(404, "not found",
                                               f"no such task: {task_id}",
                                               jsonrpc.NOT_FOUND))
        # a header that is not the W3C format starts a new trace (the Recommendation)
        status, body, _ = await api.ask(
            "POST", "/tasks?wait=30", "acme", {"agent": "a-hello", "input": {"name": "y"}},
            headers={"traceparent": "00-nope"})
        assert status == 200
        status, trace, _ = await api.ask("GET", f"/tasks/{body['task_id']}/trace", "acme")
        assert trace["trace_id"] not in (None, CALLER_TRACE)
        assert trace["spans"][0]["parent_id"] is None


async def raw_post(url: str, path: str, token: str, body: dict[str, Any],
                   header: bytes) -> tuple[int, Any]:
    """A POST with one header line given as its bytes (an HTTP client library encodes
    text: these may be none of UTF-8's)."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    data = json.dumps(body).encode()
    writer.write(f"POST {parts.path}{path} HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n".encode()
                 + header + b"\r\n\r\n" + data)
    answer = await reader.read()
    writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(rest) if rest else None


async def test_a_tracestate_header_not_of_printable_ascii_is_ignored(tmp_path: Path) -> None:
    """Attacker's pass: a `tracestate` header whose bytes are not UTF-8 (aiohttp gives
    them as lone surrogates, which no store can write) on a task and on a workflow run:
    the caller's `traceparent` is kept, its `tracestate` is not; the task and the run
    succeed (a task was accepted, then answered 500 and held its replica for good; a run
    answered 500 naming the state database's path)."""
    from .daemon_harness import hello
    from .test_http_api import serving

    workflow = ('[workflows.w]\nsteps = [{ name = "s", agent = "a-hello", '
                'input = { name = "x" } }]\n')
    async with serving(tmp_path, hello("a-hello"), "[tracing]\nexport_interval = 0.05\n"
                       + workflow) as api:
        token = await api.token("t", "tasks:run", "tasks:read", "admin")
        header = (f"traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\n".encode()
                  + b"tracestate: a=\xff\xfe")
        status, body = await raw_post(api.base, "/tasks?wait=30", token,
                                      {"agent": "a-hello", "input": {"name": "x"}}, header)
        assert (status, body["status"]) == (200, "succeeded"), body
        status, trace, _ = await api.ask("GET", f"/tasks/{body['task_id']}/trace", "t")
        assert (status, trace["trace_id"]) == (200, CALLER_TRACE)
        assert trace["spans"][0]["parent_id"] == CALLER_SPAN
        status, body = await raw_post(api.base, "/workflows/w/runs?wait=30", token,
                                      {"input": None}, header)
        assert (status, body["status"]) == (200, "succeeded"), body
        run = api.d.services.workflows.rows.load(body["run_id"])
        assert run is not None
        assert (run.traceparent, run.tracestate) == (
            f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", None)


@pytest.mark.deadline(120)
async def test_without_tracing_a_trace_is_refused_with_the_reason(tmp_path: Path) -> None:
    from .daemon_harness import hello, problem
    from .test_http_api import serving

    async with serving(tmp_path, hello("web")) as api:
        await api.token("reader", "tasks:read")
        status, body, _ = await api.ask("GET", "/tasks/01X/trace", "reader")
        # the daemon's config, not a passing state: a conflict, as a cluster's method
        # on a daemon that is no node (a 5xx would say the server failed)
        assert (status, body) == (409, problem(
            409, "conflict", "tracing is off in this daemon: add a [tracing] table to "
            "the config (docs/tracing.md); it is read at start: restart the daemon or "
            "`corral upgrade`", jsonrpc.CONFLICT))


def test_the_otlp_encoding_decodes_with_the_official_package() -> None:
    """The hand-written encoding (otlp.py), as a collector reads it with the official
    package: reused attribute messages, events, an error status, negative and large
    values, texts past one byte's length and not ASCII."""
    from corral.daemon.otlp import KEPT_VALUES

    span: Span = (int(CALLER_TRACE, 16), 7, 9, "task/run a", 3, 1.5, 2.25, "lost",
                  {"corral.attempt": 1, "corral.replica": "a#0", "ok": True, "x": 0.5},
                  [[2.0, "corral.replica.exited", {"corral.exit.reason": "killed"}]], "t")
    for _ in range(2):  # the second time from the cache
        req = ExportTraceServiceRequest.FromString(otlp_request([span, span], "svc", "host", "1"))
        (rs,) = req.resource_spans
        assert {kv.key: kv.value.string_value for kv in rs.resource.attributes}[
            "service.name"] == "svc"
        (ss,) = rs.scope_spans
        assert (ss.scope.name, ss.scope.version) == ("corral", "1")
        pb = ss.spans[1]
        assert (hexid(pb.trace_id), pb.span_id.hex(), pb.parent_span_id.hex(), pb.name,
                pb.kind) == (CALLER_TRACE, f"{7:016x}", f"{9:016x}", "task/run a", 3)
        assert (pb.start_time_unix_nano, pb.end_time_unix_nano) == (1_500_000_000,
                                                                    2_250_000_000)
        assert attrs(pb) == {"corral.attempt": 1, "corral.replica": "a#0", "ok": True,
                             "x": 0.5}
        assert (pb.status.code, pb.status.message) == (2, "lost")
        (event,) = pb.events
        assert (event.name, event.time_unix_nano, attrs(event)) == (
            "corral.replica.exited", 2_000_000_000, {"corral.exit.reason": "killed"})
    long = "é" * 300  # a length of two bytes' varint
    odd: Span = ((1 << 128) - 1, (1 << 64) - 1, 0, long, 1, 0.0, 0.5, long,
                 {"neg": -5, "big": 1 << 62, "text": long, "no": False}, [], "t")
    (pb,) = ExportTraceServiceRequest.FromString(otlp_request([odd], "s", "h")).resource_spans[
        0].scope_spans[0].spans
    assert (pb.trace_id, pb.span_id, pb.parent_span_id, pb.name, pb.status.message) == (
        b"\xff" * 16, b"\xff" * 8, b"", long, long)
    assert attrs(pb) == {"neg": -5, "big": 1 << 62, "text": long, "no": False}
    # the reused messages are bounded: one made before KEPT_VALUES others is made again
    from corral.daemon.otlp import attribute
    kept = attribute(b"\x42", "bound", 1)
    assert attribute(b"\x42", "bound", 1) is kept  # (reused)
    many: list[Span] = [(1, i + 1, 0, "x", 1, 0.0, 1.0, None, {"i": i}, [], "t")
                        for i in range(KEPT_VALUES + 10)]
    req = ExportTraceServiceRequest.FromString(otlp_request(many, "svc", "host"))
    assert [attrs(s)["i"] for s in req.resource_spans[0].scope_spans[0].spans] == list(
        range(KEPT_VALUES + 10))
    again = attribute(b"\x42", "bound", 1)
    assert again == kept and again is not kept


# -- an MCP server's own spans in the same trace ------------------------------------------------
INSTRUMENTED = """
import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "notes-server"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=os.environ["OTLP"])))
trace.set_tracer_provider(provider)

from mcp.server import MCPServer  # noqa: E402

server = MCPServer("notes")


@server.tool()
def echo(text: str) -> str:
    with trace.get_tracer("notes").start_as_current_span("echo.work"):
        return text


server.run()
"""


async def test_an_instrumented_mcp_servers_spans_join_the_tasks_trace(
        engines: Engines, tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    """The official MCP SDK's own OpenTelemetry instrumentation (a server span per request,
    its parent read from params._meta) in a server exporting to the same receiver: one
    trace, the server's spans under corral's client spans, its own span under those."""
    pytest.importorskip("opentelemetry.sdk.trace")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    rec, url = receiver
    server = tmp_path / "instrumented.py"
    server.write_text(INSTRUMENTED)
    cfg = tracing(url, export_interval=0.05)
    sup, traces = traced(engines, cfg, tmp_path)
    sup.add_mcp_server(McpServerSpec(name="notes", command=[PY, str(server)],
                                     env={"OTLP": url}, start_timeout=30.0, timeout=10.0))
    sup.add(agent("user", "misbehave.py", tools=["notes__echo"]))
    await start_traces(traces)
    assert traces is not None
    try:
        await sup.wait_state("user", State.READY)
        res = await sup.tasks.run("user", {"do": "tools", "tool": "notes__echo",
                                           "arguments": {"text": "a"}, "times": 3},
                                  traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
        assert res.status == "succeeded"
        assert [r["structuredContent"] for r in res.output] == [{"result": "a"}] * 3

        def complete(spans: list[Any]) -> bool:
            names = [(s.name, s.kind) for s in spans]
            return (names.count(("tools/call echo", 3)) == 3 and names.count(
                ("tools/call echo", 2)) == 3 and names.count(("echo.work", 1)) == 3
                and ("invoke_agent user", 2) in names)

        await rec.wait(complete)
    finally:
        await traces.close()
    in_trace = [s for s in rec.spans if hexid(s.trace_id) == CALLER_TRACE]
    # the server's other spans are corral's own requests to it, for no task (its start,
    # its lists): each a trace of its own
    others = {(rec.service[s.span_id], s.name) for s in rec.spans if s not in in_trace}
    assert others and {service for service, _ in others} == {"notes-server"}
    assert not any(name.startswith("tools/call") for _, name in others), others
    ours = {s.span_id: s for s in in_trace if rec.service[s.span_id] == "corral"}
    theirs = [s for s in in_trace if rec.service[s.span_id] == "notes-server"]
    clients = {i for i, s in ours.items() if s.name == "tools/call echo"}
    assert len(clients) == 3
    # SERVER spans: one under each call of corral's (and the tool list the pool fetched
    # for the first call, made under that call's span too)
    assert {s.parent_span_id for s in theirs if s.kind == 2} == clients
    served = [s for s in theirs if s.kind == 2 and s.name == "tools/call echo"]
    assert {s.parent_span_id for s in served} == clients
    assert {s.name for s in theirs if s.kind == 2} <= {"tools/call echo", "tools/list"}
    assert attrs(served[0])["mcp.method.name"] == "tools/call"
    work = [s for s in theirs if s.name == "echo.work"]
    assert len(work) == 3
    assert {s.parent_span_id for s in work} == {s.span_id for s in served}
