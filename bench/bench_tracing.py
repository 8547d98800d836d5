"""Issue 41: what tracing costs a tiny task, and a span on the loop, beside the
OpenTelemetry SDK's own path.

    .venv/bin/python -m bench.bench_tracing [--quick] [--tasks N] [--rounds R]
                                            [--pinned] [--tasks-only]
                                            [--modes off,context] [--tools K]

- tiny tasks (`{"n": i}` echoed by the SDK worker, 2 replicas, 256 in flight through
  `tasks.map`) in three modes taking turns in each round: off; `context`: [tracing] with
  nothing sampled (each task's context made and sent to its worker, no span kept); on:
  every task sampled, its record (three spans: task, queue wait, attempt) handed to the
  exporter process, which stores the spans in the local SQLite store and POSTs them as
  OTLP/HTTP protobuf to a receiver in a process of its own; throughput and task latency
  (created to finished, median and p99), and the CPU time a task costs the loop's
  process, the workers and the exporter process;
- `--tools K`: each task makes K tool calls to the minimal MCP server
  (`bench/tool_agent.py`, `bench/min_mcp_server.py`): a client span each, traced;
- `--modes off,context`: only these modes, taking turns (each round's order reversed
  in the next), for more pairs of two in the same time;
- the mode `otel` (`--modes off,on,otel`): corral's tracing off, every task traced by
  the OpenTelemetry SDK instead (a span started as the task is accepted and ended with
  it, its queue wait and attempt as child spans, the SDK's BatchSpanProcessor and its
  official OTLP/HTTP exporter to the same receiver): the peer's own path, side by side;
- the mode `idle` (`--modes off,idle,on`): tracing off, with a process beside it at the
  scheduler's idle priority, as the exporter is, busy `--idle-share` of each 4 ms
  (default 0.3) doing nothing for the tasks: what any process of that priority and
  about the exporter's CPU costs the tasks on this machine, whatever it computes
  (its CPU a task is reported as `exporter_cpu_us`);
- `--pinned`: the same modes with the daemon (this process), its workers and the client
  (`tasks.map`, in this process) on the first core and the exporter process and the
  receiver on the second (`os.sched_setaffinity`; the exporter found by its pid among the
  daemon's children): what tracing costs the tasks on a machine with a core to spare;
- `--split`: the daemon's loop (this process) alone on the first core, its workers, the
  exporter and the receiver on the second: what tracing costs the loop itself when
  nothing else the bench runs is placed on its core (what a machine of more cores than
  the daemon's loop and its workers fill gives it);
- in every mode, after the throughput window, `--serial N` tasks (default 1,000) one at
  a time: a tiny task's own latency (created to finished, median and p99), unqueued;
- `--daemon`: the same modes through the operator's path instead of the engine alone: a
  `corral daemon` a mode (its config's `[tracing]` absent, `sample = 0.0`, or `sample =
  1.0` with the receiver as its endpoint; the echo agent's 2 replicas; its task journal,
  as configured by default), all three started at once and taking turns, each round
  `--tasks` `tasks.run` through its control socket 256 in flight (bench/harness.py's
  `pipelined_tasks`), then `--serial` one at a time (sent to answered, at the client);
  the CPU a task of the daemon's process, its workers and its exporter;
- the loop's cost per span: a finished task's record made and buffered (`TaskFinished`
  with one attempt: three spans), a tool call's record likewise, and each one's share of
  the hand-over (msgpack frames down a pipe); against the OpenTelemetry SDK's
  `start_as_current_span`, bare and with seven attributes (a TracerProvider with a
  BatchSpanProcessor, the SDK's default pipeline, exporting nowhere);
- the exporter process's cost per task (a tiny task's record: three spans), off the
  daemon: a batch decoded, stored (a row a batch) and encoded as OTLP as the exporter
  does (daemon/otlprecords.py: a template per shape), and beside it the spans made one
  by one and encoded by daemon/otlp.py, and by the official opentelemetry-proto
  messages; a tool call's span likewise, from its template and span by span.
  `--tasks-only` leaves out these and the loop's costs (the tiny tasks alone:
  what runs against an older tree, with `PYTHONPATH` on it, for an A/B).
"""

from __future__ import annotations

import gc
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil
import uvloop

from corral.daemon.otlp import encode_spans, span, varint
from corral.daemon.traces import start as start_traces
from corral.daemon.traces import traces_of
from corral.daemon.tracestore import TraceStore
from corral.supervisor import AgentSpec, McpServerSpec, Supervisor
from corral.supervisor.config import TracingSettings
from corral.supervisor.tasks import Task, TaskInterceptor, TaskStatus
from corral.supervisor.tasks.interceptors import TraceStart
from corral.supervisor.tracerecords import TOOL, Span, expand
from corral.supervisor.tracing import Tracer
from corral.taskviews import Attempt
from corral.tracecontext import FromId, TaskTrace, new_span_id, new_trace_id
from corral.traceids import MASK64

from .bench_payload import add_echo, scale_echo
from .harness import (
    PY,
    ROOT,
    CorralDaemon,
    cleanup,
    corral_agents,
    pipelined_tasks,
    report,
    workdir,
)

QUICK = "--quick" in sys.argv
TASKS = 3_000 if QUICK else 10_000
ROUNDS = 3 if QUICK else 5
PINNED = "--pinned" in sys.argv
SPLIT = "--split" in sys.argv
DAEMON = "--daemon" in sys.argv
SERIAL = 1_000
TASKS_ONLY = "--tasks-only" in sys.argv
MODES: tuple[str, ...] = ("off", "context", "on")
TOOLS = 0
IDLE_SHARE = 0.3
LOOP_CORE, EXPORT_CORE = 0, 1  # --pinned: the daemon's side, the exporter's side
for i, a in enumerate(sys.argv):
    if a == "--tasks":
        TASKS = int(sys.argv[i + 1])
    elif a == "--rounds":
        ROUNDS = int(sys.argv[i + 1])
    elif a == "--tools":  # each task makes this many tool calls (bench/tool_agent.py)
        TOOLS = int(sys.argv[i + 1])
    elif a == "--modes":  # e.g. off,context: a pair of modes alone, taking turns
        MODES = tuple(sys.argv[i + 1].split(","))
    elif a == "--idle-share":
        IDLE_SHARE = float(sys.argv[i + 1])
    elif a == "--serial":  # tasks run one at a time after the window, for latency
        SERIAL = int(sys.argv[i + 1])
IN_FLIGHT = 256
SPANS = 200_000

# the `idle` mode's process: at idle priority, busy SHARE of each 4 ms period
IDLE_LOAD = textwrap.dedent("""
    import os, sys, time
    share = float(sys.argv[1])
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    print("ready", flush=True)
    d = {}
    while True:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.004 * share:
            for i in range(200):
                d[i] = str(i)
        time.sleep(0.004 * (1 - share))
""")

RECEIVER = textwrap.dedent("""
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # a connection kept, as a collector keeps it
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *a):
            pass
    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(s.server_address[1], flush=True)
    s.serve_forever()
""")


# -- the loop's cost per span ---------------------------------------------------------------
def finished_task(trace: TaskTrace | FromId) -> Task:
    task = Task("echo", msgspec.Raw(b"{}"), 0, 60.0, 0, 0)
    now = time.time()
    task.attempts = (Attempt(0, 4242, now, now + 0.001, "succeeded"),)
    task.started, task.finished, task.status = now, now + 0.001, TaskStatus.SUCCEEDED
    task.trace = trace
    return task


def handed(tracer: Tracer) -> float:
    """Seconds the tracer's batches take to hand over: taken and written to a pipe, as
    the daemon does, whose reader (a child draining it) keeps it from filling."""
    drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert drain.stdin is not None
    t0 = time.perf_counter()
    for _, _, body in tracer.take():
        drain.stdin.write(len(body).to_bytes(4, "big"))
        drain.stdin.write(body)
    took = time.perf_counter() - t0
    drain.stdin.close()
    drain.wait()
    return took


def loop_cost() -> dict[str, float]:
    """Per span: a finished task's record (3 spans: task, queue wait, attempt) made and
    buffered, and handed over; a tool call's record (1 span) likewise."""
    tracer = Tracer(capacity=SPANS * 4)
    tasks = [finished_task(TaskTrace(new_trace_id(), 0, True, None))
             for _ in range(SPANS // 3)]
    t0 = time.perf_counter()
    for task in tasks:
        tracer.finished(task)
    per_task_span = (time.perf_counter() - t0) / (len(tasks) * 3)
    task_fed = handed(tracer) / (len(tasks) * 3)
    trace = tasks[0].trace
    assert trace is not None
    t0 = time.perf_counter()
    for _ in range(SPANS):
        start = time.time()
        tracer.put((TOOL, trace.trace_id >> 64, trace.trace_id & MASK64, new_span_id(64),
                    trace.attempt_span(1), "notes__echo", "01JTASKIDTASKIDTASKIDTASKI", 1,
                    "pipe", 7, start, time.time(), None))
    per_tool_span = (time.perf_counter() - t0) / SPANS
    tool_fed = handed(tracer) / SPANS
    return {"task_spans_us": round(per_task_span * 1e6, 3),
            "task_spans_handed_us": round(task_fed * 1e6, 3),
            "tool_span_us": round(per_tool_span * 1e6, 3),
            "tool_span_handed_us": round(tool_fed * 1e6, 3)}


def otel_sdk_cost() -> dict[str, float]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Nowhere(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Nowhere(), max_queue_size=SPANS * 2))
    tracer = provider.get_tracer("bench")
    attrs = {"mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool",
             "gen_ai.tool.name": "echo", "corral.mcp.server": "notes",
             "network.transport": "pipe", "corral.task.id": "t", "corral.attempt": 1}
    t0 = time.perf_counter()
    for _ in range(SPANS):
        with tracer.start_as_current_span("x"):
            pass
    bare = (time.perf_counter() - t0) / SPANS
    t0 = time.perf_counter()
    for _ in range(SPANS):
        with tracer.start_as_current_span("tools/call echo", attributes=attrs):
            pass
    seven = (time.perf_counter() - t0) / SPANS
    provider.shutdown()
    return {"sdk_bare_span_us": round(bare * 1e6, 3),
            "sdk_span_7_attributes_us": round(seven * 1e6, 3)}


def exporter_cost(tmp: Path) -> dict[str, float]:
    """Per task (a record of three spans: FromId tasks, as `tasks.map` makes them), in
    batches of 512 as the daemon sends them."""
    from corral.daemon.otlprecords import encode as encode_records
    from corral.daemon.traceexport import _RAWS
    from corral.supervisor.tracerecords import TEXT_MAX, spans_of
    from corral.tracecontext import FROM_ID

    tracer = Tracer(capacity=SPANS)
    tasks = 20_000 // 3
    for _ in range(tasks):
        tracer.finished(finished_task(FROM_ID[True]))
    frames = [body for _, _, body in tracer.take()]
    store = TraceStore(tmp / "bench-traces.db", 7, 200_000)
    c0 = time.process_time()
    batches = []
    for frame in frames:  # as Exporter.batch: decoded at once, stored, queued
        recs = msgspec.msgpack.decode(frame)
        sizes = list(map(len, _RAWS.decode(frame)))
        store.write(frame, recs, max(sizes), sum(map(spans_of, recs)), time.time())
        batches.append([(r, n <= TEXT_MAX) for r, n in zip(recs, sizes, strict=True)])
    c1 = time.process_time()
    for batch in batches:
        encode_records(batch, "corral", "bench")
    c2 = time.process_time()
    spans: list[list[Span]] = [[s for r, short in b for s in expand(r, short)]
                               for b in batches]
    c3 = time.process_time()
    for b in spans:
        encode(b, "corral", "bench")
    c4 = time.process_time()
    for b in spans:
        official_encode(b)
    c5 = time.process_time()
    store.close()
    k = 1e6 / tasks
    return {**tool_cost(), "decoded_and_stored_us": round((c1 - c0) * k, 2),
            "otlp_template_encode_us": round((c2 - c1) * k, 2),
            "exporter_total_us": round((c2 - c0) * k, 2),
            "spans_made_us": round((c3 - c2) * k, 2),
            "otlp_encode_span_by_span_us": round((c4 - c3) * k, 2),
            "official_otlp_encode_us": round((c5 - c4) * k, 2)}


def tool_cost() -> dict[str, float]:
    """Per tool call's span (the exporter's side): from its shape's template, against
    otlp.py span by span; calls of one tool, request ids counting up as a client's do."""
    from corral.daemon.otlprecords import encode as encode_records
    from corral.supervisor.tasks.ids import new_id

    calls, now = 20_000, time.time()
    records = []
    for i in range(calls):
        tid = new_trace_id()
        records.append((TOOL, tid >> 64, tid & MASK64, new_span_id(64) or 1,
                        new_span_id(64) or 1, "notes__echo", new_id(), 1, "pipe", i % 1000,
                        now, now + 0.001, None))
    batches = [[(r, True) for r in msgspec.msgpack.decode(msgspec.msgpack.encode(
        records[i:i + 512]))] for i in range(0, calls, 512)]
    c0 = time.process_time()
    for batch in batches:
        encode_records(batch, "corral", "bench")
    c1 = time.process_time()
    for batch in batches:
        encode([s for r, short in batch for s in expand(r, short)], "corral", "bench")
    c2 = time.process_time()
    return {"tool_span_template_us": round((c1 - c0) * 1e6 / calls, 2),
            "tool_span_span_by_span_us": round((c2 - c1) * 1e6 / calls, 2)}


def encode(spans: list[Span], service: str, node: str) -> bytes:
    """otlp.py's request of `spans` written one by one (the exporter's way for a record no
    template fits)."""
    body: list[bytes] = []
    for s in spans:
        one = span(*s[:10])
        body += (b"\x12", varint(len(one)), one)
    return encode_spans(body, service, node)


def official_encode(spans: list[Span]) -> bytes:
    """The same request built with the official opentelemetry-proto messages."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def kv(k: str, v: Any) -> KeyValue:
        if isinstance(v, bool):
            return KeyValue(key=k, value=AnyValue(bool_value=v))
        if isinstance(v, int):
            return KeyValue(key=k, value=AnyValue(int_value=v))
        if isinstance(v, float):
            return KeyValue(key=k, value=AnyValue(double_value=v))
        return KeyValue(key=k, value=AnyValue(string_value=str(v)))

    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for tid, sid, parent, name, kind, start, end, error, attrs, _events, _ in spans:
        pb = scope.spans.add(trace_id=tid.to_bytes(16, "big"), span_id=sid.to_bytes(8, "big"),
                             name=name, kind=kind, start_time_unix_nano=int(start * 1e9),
                             end_time_unix_nano=int(end * 1e9))
        pb.attributes.extend([kv(k, v) for k, v in attrs.items()])
        if parent:
            pb.parent_span_id = parent.to_bytes(8, "big")
        if error is not None:
            pb.status.code = 2  # STATUS_CODE_ERROR
            pb.status.message = error
    return bytes(request.SerializeToString())


# -- tiny tasks, tracing off and on ----------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exporter_of(pid: int) -> int:
    """The exporter's pid, checked to be one of this process's (the daemon's) children
    running corral.daemon.traceexport."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    assert str(pid) in children, (pid, children)
    assert b"corral.daemon.traceexport" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return pid


def pin(pid: int, core: int) -> None:
    """Each thread of `pid` on `core` (a process's affinity is its threads' own: its
    sending thread has started by now)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {core})


def machine_ticks() -> list[int]:
    """The machine's CPU time by kind so far (/proc/stat's first line, in ticks)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def loop_wait() -> float:
    """Seconds this thread (the loop) has waited runnable for a core (schedstat)."""
    return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def job(i: int) -> dict[str, int]:
    return {"calls": TOOLS} if TOOLS else {"n": i}


class SdkTasks(TaskInterceptor):
    """The `otel` mode: every task traced by the OpenTelemetry SDK as an instrumentation
    of the engine would trace it (an interceptor of its task path), corral's own tracing
    off: the task's span started when it is accepted (`start_span`) and ended with it,
    its queue wait and its attempt as child spans of the same attributes as corral's,
    with their times; the SDK's default pipeline, a BatchSpanProcessor (its queue
    large enough that none is dropped: every task traced and exported) and the official
    OTLP/HTTP protobuf exporter to the same receiver. No context is sent to the worker
    (corral's modes send it): what this leaves out is the SDK's cost, not corral's."""

    def __init__(self, endpoint: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import set_span_in_context

        self.provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
        self.provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint), max_queue_size=(TASKS + SERIAL) * 3 + 8192))
        self.tracer = self.provider.get_tracer("corral-bench")
        self.in_context = set_span_in_context
        self.spans: dict[str, Any] = {}

    def intercept_task_start(self, start: TraceStart, next: Callable[[TraceStart], None]
                             ) -> None:
        task = start.task
        self.spans[task.id] = self.tracer.start_span(
            f"invoke_agent {task.agent}", start_time=int(task.created * 1e9),
            attributes={"gen_ai.operation.name": "invoke_agent",
                        "gen_ai.agent.name": task.agent, "corral.task.id": task.id,
                        "corral.task.priority": task.priority})

    def intercept_task_end(self, task: Task, next: Callable[[Task], None]) -> None:
        span = self.spans.pop(task.id, None)
        if span is None:
            return
        parent = self.in_context(span)
        queued = task.created
        for i, a in enumerate(task.attempts, 1):
            self.tracer.start_span(
                "corral.queue", context=parent, start_time=int(queued * 1e9),
                attributes={"corral.attempt": i}).end(end_time=int(a.started * 1e9))
            self.tracer.start_span(
                f"task/run {task.agent}", context=parent, start_time=int(a.started * 1e9),
                attributes={"corral.attempt": i, "corral.replica": a.replica,
                            "process.pid": a.pid or 0, "corral.attempt.outcome": a.outcome}
            ).end(end_time=int((a.finished or a.started) * 1e9))
            queued = a.finished or a.started
        span.set_attribute("corral.task.status", task.status._value_)
        span.end(end_time=int((task.finished or time.time()) * 1e9))


async def tiny(mode: str, endpoint: str, tmp: Path, spared: set[int]) -> dict[str, float]:
    """`context`: [tracing] with nothing sampled (the context made and sent with every
    task, no span kept); `on`: every task's spans kept and exported; `otel`: corral's
    tracing off, every task traced by the OpenTelemetry SDK (SdkTasks)."""
    # the receiver is the bench's own child: spared by the engine's containment
    sdk = SdkTasks(endpoint) if mode == "otel" else None
    cfg = TracingSettings(endpoint=endpoint, sample=1.0 if mode == "on" else 0.0, slow=3600.0)
    traces = traces_of(cfg, tmp, spared) if mode not in ("off", "idle", "otel") else None
    interceptors = [i for i in (sdk, traces.tracer if traces else None) if i is not None]
    async with Supervisor(spared=spared, interceptors=interceptors) as sup:
        if traces is not None:
            await start_traces(traces)
            assert traces is not None
            await traces.ready.wait()  # its start-up (imports) is not the tasks' cost
            if PINNED:
                pin(exporter_of(traces.proc.pid if traces.proc else 0), EXPORT_CORE)
        if TOOLS:  # each task's calls to the minimal MCP server, through the engine
            sup.add_mcp_server(McpServerSpec(name="min", command=[PY, str(
                ROOT / "bench" / "min_mcp_server.py")], start="eager"))
            sup.add(AgentSpec(name="echo", command=[PY, str(ROOT / "bench" / "tool_agent.py")],
                              env={"PYTHONPATH": str(ROOT)}, tools=["min__*"],
                              max_tool_calls_per_task=TOOLS, max_concurrent_tasks=64,
                              max_queue=100_000))
        else:
            add_echo(sup, max_concurrent_tasks=64, max_queue=100_000)
        await scale_echo(sup, 2)
        await sup.tasks.map("echo", (job(i) for i in range(500)), concurrency=IN_FLIGHT)
        sup.tasks.finished.clear()
        workers = [r.pid for r in sup.agent("echo").replicas if r.pid is not None]
        if SPLIT:  # started on this process's core: all but the loop moved off it
            for pid in workers + ([exporter_of(traces.proc.pid)] if traces is not None
                                  and traces.proc is not None else []):
                pin(pid, EXPORT_CORE)
        exporter = traces.proc.pid if traces is not None and traces.proc is not None else None
        idle = None
        if mode == "idle":  # its own child, killed by pid below
            idle = subprocess.Popen([sys.executable, "-c", IDLE_LOAD, str(IDLE_SHARE)],
                                    stdout=subprocess.PIPE, text=True)
            spared.add(idle.pid)
            assert idle.stdout is not None and idle.stdout.readline() == "ready\n"
            exporter = idle.pid
        # each mode's window starts from a collected heap: a full collection landing in
        # one run and not its pair's was the runs' largest swing (1.5-17 µs a task)
        gc.collect()
        ticks0, wait0 = machine_ticks(), loop_wait()
        cpu0 = (own_cpu(), sum(cpu_seconds(p) for p in workers),
                cpu_seconds(exporter) if exporter else 0.0)
        t0 = time.perf_counter()
        results = await sup.tasks.map("echo", (job(i) for i in range(TASKS)),
                                      concurrency=IN_FLIGHT)
        dt = time.perf_counter() - t0
        ticks = [b - a for a, b in zip(ticks0, machine_ticks(), strict=True)]
        waited = loop_wait() - wait0
        cpu1 = (own_cpu(), sum(cpu_seconds(p) for p in workers),
                cpu_seconds(exporter) if exporter else 0.0)
        assert all(r.status == "succeeded" for r in results)
        xs = sorted(t.finished - t.created for t in sup.tasks.finished.values()
                    if t.finished is not None)
        if SERIAL:  # one at a time: a task's own latency, no queue before it
            sup.tasks.finished.clear()
            serial = await sup.tasks.map("echo", (job(i) for i in range(SERIAL)),
                                         concurrency=1)
            assert all(r.status == "succeeded" for r in serial)
            ys = sorted(t.finished - t.created for t in sup.tasks.finished.values()
                        if t.finished is not None)
        if idle is not None:
            out_idle = (cpu1[2] - cpu0[2]) / TASKS * 1e6  # over the window alone
            idle.kill()
            idle.wait()
            spared.discard(idle.pid)
        out = {"per_s": TASKS / dt, "p50_ms": xs[len(xs) // 2] * 1e3,
               "p99_ms": xs[int(len(xs) * 0.99)] * 1e3,
               "loop_cpu_us": (cpu1[0] - cpu0[0]) / TASKS * 1e6,
               "workers_cpu_us": (cpu1[1] - cpu0[1]) / TASKS * 1e6,
               # the share of both cores nothing ran on (idle and iowait): what the
               # exporter could have had without taking from the tasks
               "machine_idle": (ticks[3] + ticks[4]) / max(sum(ticks), 1),
               "loop_wait_us": waited / TASKS * 1e6}
        if SERIAL:
            out["serial_p50_us"] = ys[len(ys) // 2] * 1e6
            out["serial_p99_us"] = ys[int(len(ys) * 0.99)] * 1e6
        if idle is not None:
            out["exporter_cpu_us"] = out_idle
        if sdk is not None:  # its last batches sent, outside the window as corral's are
            flushed = time.process_time()
            sdk.provider.force_flush(120_000)
            sdk.provider.shutdown()
            out["sdk_flush_cpu_ms"] = (time.process_time() - flushed) * 1e3
        if traces is not None:
            await traces.sync(sent=True, timeout=120)
            if exporter:  # what it took for these tasks' spans (the serial ones' too), its
                # last batches included
                out["exporter_cpu_us"] = ((cpu_seconds(exporter) - cpu0[2])
                                          / (TASKS + SERIAL) * 1e6)
            await traces.close()
            out["exported"] = traces.exported
            out["dropped"] = traces.dropped
        return out


async def tiny_rounds(endpoint: str, tmp: Path, spared: set[int]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in MODES}
    for r in range(ROUNDS):
        for name in MODES if r % 2 == 0 else MODES[::-1]:
            d = tmp / f"{name}{r}"
            d.mkdir()
            runs[name].append(await tiny(name, endpoint, d, spared))
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        keys = ["per_s", "p50_ms", "p99_ms", "loop_cpu_us", "workers_cpu_us", "machine_idle",
                "loop_wait_us"] + (["serial_p50_us", "serial_p99_us"] if SERIAL else [])
        out[name] = {k: round(statistics.median(x[k] for x in rs), 2) for k in keys}
        # each round's own ratio (its runs side by side), then their median
        if name != "off":
            out[name]["exporter_cpu_us"] = round(statistics.median(
                x.get("exporter_cpu_us", 0.0) for x in rs), 2)
        out[name]["per_s_vs_off_by_round"] = [
            round(x["per_s"] / o["per_s"], 3) for x, o in zip(rs, runs["off"], strict=True)]
        if name == "on":
            out[name]["exported_last_round"] = rs[-1]["exported"]
            out[name]["dropped_total"] = sum(x["dropped"] for x in rs)
    for name in MODES:  # the least disturbed run of each (the machine is shared)
        out[name]["best_per_s"] = round(max(x["per_s"] for x in runs[name]), 2)
        out[name]["least_loop_cpu_us"] = round(min(x["loop_cpu_us"] for x in runs[name]), 2)
    for name in (m for m in MODES if m != "off"):
        ratios = out[name]["per_s_vs_off_by_round"]
        out[f"throughput_{name}_vs_off"] = round(statistics.median(ratios), 3)
        out[f"best_throughput_{name}_vs_off"] = round(
            out[name]["best_per_s"] / out["off"]["best_per_s"], 3)
        out[f"least_loop_cpu_{name}_minus_off_us"] = round(
            out[name]["least_loop_cpu_us"] - out["off"]["least_loop_cpu_us"], 2)
        out[f"loop_cpu_{name}_minus_off_us"] = round(
            out[name]["loop_cpu_us"] - out["off"]["loop_cpu_us"], 2)
    for name in ("on", "otel"):
        if name not in out:
            continue
        out[f"p50_{name}_vs_off"] = round(out[name]["p50_ms"] / out["off"]["p50_ms"], 3)
        if SERIAL:  # each round's pair, then their median
            out[f"serial_p50_{name}_vs_off"] = round(statistics.median(
                x["serial_p50_us"] / o["serial_p50_us"]
                for x, o in zip(runs[name], runs["off"], strict=True)), 3)
    return out


# -- the operator's path: a daemon a mode ----------------------------------------------------
def call(sock: socket.socket, method: str, params: dict[str, Any]) -> Any:
    """One request through a control socket, its result (notifications skipped)."""
    sock.sendall(msgspec.json.encode({"jsonrpc": "2.0", "id": -1, "method": method,
                                      "params": params}) + b"\n")
    f = sock.makefile("rb")
    while True:
        said = msgspec.json.decode(f.readline())
        if "method" not in said:
            assert "result" in said, said
            return said["result"]


def serial_socket(sock: socket.socket, n: int) -> list[float]:
    """`n` echo tasks through a control socket one at a time: each one's seconds from its
    `tasks.run` sent to its answer read (its `task.accepted` notification skipped)."""
    f = sock.makefile("rb")
    out = []
    for i in range(n):
        request = msgspec.json.encode({"jsonrpc": "2.0", "id": i, "method": "tasks.run",
                                       "params": {"agent": "echo", "input": {"n": i}}})
        t0 = time.perf_counter()
        sock.sendall(request + b"\n")
        while True:
            line = f.readline()
            if b'"method"' not in line[:40]:
                break
        out.append(time.perf_counter() - t0)
        assert b'"succeeded"' in line, line[:300]
    return out


def tree_cpu(pid: int) -> tuple[float, float, float]:
    """CPU seconds so far of the daemon `pid`, of its children but the exporter, and of
    the exporter."""
    daemon = psutil.Process(pid)
    kids = daemon.children(recursive=True)
    spent = [0.0, 0.0]
    for k in kids:
        try:
            t = k.cpu_times()
            spent["corral.daemon.traceexport" in " ".join(k.cmdline())] += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    t = daemon.cpu_times()
    return t.user + t.system, spent[0], spent[1]


def daemon_rounds(endpoint: str) -> dict[str, Any]:
    tables = {"off": "", "context": "\n[tracing]\nsample = 0.0\nslow = 3600\n",
              "on": f'\n[tracing]\nendpoint = "{endpoint}"\nsample = 1.0\nslow = 3600\n'}
    daemons: dict[str, CorralDaemon] = {}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in MODES}
    try:
        for name in MODES:
            c = CorralDaemon(workdir(f"tracing-{name}"), corral_agents(
                2, [PY, str(ROOT / "bench" / "echo_agent.py")], name="echo",
                extra="max_concurrent_tasks = 64\nmax_queue = 1000000") + tables[name])
            c.start()
            daemons[name] = c
        for r in range(ROUNDS):
            for name in MODES if r % 2 == 0 else MODES[::-1]:
                c = daemons[name]
                assert c.proc is not None
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(c.sock))
                    serial_socket(sock, 100)  # the connection's first tasks: not counted
                    cpu0 = tree_cpu(c.proc.pid)
                    rate = pipelined_tasks(sock, TASKS)
                    t0 = time.perf_counter()
                    if name != "off":  # the exporter done storing this round's spans
                        # (traces.get waits for it): its work not left to the next round
                        last = call(sock, "tasks.run", {"agent": "echo", "input": {}})
                        call(sock, "traces.get", {"task_id": last["task_id"]})
                    stored = time.perf_counter() - t0
                    cpu1 = tree_cpu(c.proc.pid)
                    ys = sorted(serial_socket(sock, SERIAL)) if SERIAL else [0.0]
                spent = [(b - a) / TASKS * 1e6 for a, b in zip(cpu0, cpu1, strict=True)]
                runs[name].append({"per_s": rate, "stored_ms": stored * 1e3,
                                   "daemon_cpu_us": spent[0],
                                   "workers_cpu_us": spent[1], "exporter_cpu_us": spent[2],
                                   "serial_p50_us": ys[len(ys) // 2] * 1e6,
                                   "serial_p99_us": ys[int(len(ys) * 0.99)] * 1e6})
    finally:
        for c in daemons.values():
            c.stop()
            cleanup(c.dir)
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        out[name] = {k: round(statistics.median(x[k] for x in rs), 2) for k in rs[0]}
        out[name]["per_s_vs_off_by_round"] = [
            round(x["per_s"] / o["per_s"], 3) for x, o in zip(rs, runs["off"], strict=True)]
        out[name]["serial_p50_vs_off_by_round"] = [
            round(x["serial_p50_us"] / o["serial_p50_us"], 3)
            for x, o in zip(rs, runs["off"], strict=True)]
    for name in (m for m in MODES if m != "off"):
        out[f"throughput_{name}_vs_off"] = round(statistics.median(
            out[name]["per_s_vs_off_by_round"]), 3)
        out[f"serial_p50_{name}_vs_off"] = round(statistics.median(
            out[name]["serial_p50_vs_off_by_round"]), 3)
        out[f"daemon_cpu_{name}_minus_off_us"] = round(
            out[name]["daemon_cpu_us"] - out["off"]["daemon_cpu_us"], 2)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE,
                                    text=True)
        try:
            assert receiver.stdout is not None
            port = int(receiver.stdout.readline())
            endpoint = f"http://127.0.0.1:{port}/v1/traces"
            data: dict[str, Any] = {"tasks": TASKS, "rounds": ROUNDS, "cpus": os.cpu_count(),
                                    "pinned": PINNED, "split": SPLIT, "load": os.getloadavg()[0]}
            if PINNED or SPLIT:  # this process's children start with its core
                pin(receiver.pid, EXPORT_CORE)
                os.sched_setaffinity(0, {LOOP_CORE})
            if not TASKS_ONLY:
                data["loop_per_span"] = {**loop_cost(), **otel_sdk_cost()}
                data["exporter_process_per_task"] = exporter_cost(tmp)
            if DAEMON:
                data["daemon_tasks"] = daemon_rounds(endpoint)
            else:
                data["tiny_tasks"] = uvloop.run(tiny_rounds(endpoint, tmp, {receiver.pid}))
        finally:
            receiver.kill()
            receiver.wait()
    data["load_after"] = os.getloadavg()[0]
    report("tracing-daemon" if DAEMON else "tracing-pinned" if PINNED else "tracing-split"
           if SPLIT else "tracing", data)


if __name__ == "__main__":
    main()
