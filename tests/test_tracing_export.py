"""The exporter process's own work, off the daemon: a batch of the engine's records written
as OTLP from templates (daemon/otlprecords.py) — byte for byte what otlp.py writes span by
span, read back with the official opentelemetry-proto package — and kept in the local
store a row a batch (daemon/tracestore.py)."""

from __future__ import annotations

import http.server
import io
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from corral.daemon import otlprecords
from corral.daemon.otlpcollector import Collector
from corral.daemon.traceexport import _RAWS, ExportConfig, Exporter
from corral.daemon.tracestore import CUT_PAST, TraceStore, key_of, of_task
from corral.supervisor.tasks import Task, TaskFailure, TaskStatus
from corral.supervisor.tasks.ids import new_id
from corral.supervisor.tracerecords import TEXT_MAX, TOOL, expand, spans_of
from corral.supervisor.tracing import Tracer
from corral.taskviews import Attempt, ModelUsage
from corral.tracecontext import FROM_ID, TaskTrace, new_span_id, new_trace_id
from corral.traceids import MASK64

from .test_tracing import otlp_request as encode_spans


def task(agent: str = "echo", *, trace: Any = None, status: TaskStatus =
         TaskStatus.SUCCEEDED, attempts: int = 1, pid: int = 4242, tool_calls: int = 0,
         priority: int = 0, error: str | None = None, node: str | None = None,
         usage: bool = False, exits: bool = False, session: str | None = None) -> Task:
    """A finished task as the engine leaves it for the tracer."""
    t = Task(agent, msgspec.Raw(b"{}"), priority, 60.0, 0, 0)
    now = time.time()
    outcome = "succeeded" if status == TaskStatus.SUCCEEDED else str(status)
    made = []
    for i in range(attempts):
        last = i == attempts - 1
        a = Attempt(i, pid + i, now + i, now + i + 0.001, outcome if last else "failed",
                    error if not last or error else None)
        if node is not None:
            a.node = node
        made.append(a)
    t.attempts = tuple(made)
    t.started, t.finished, t.status = now, now + attempts, status
    t.tool_calls = tool_calls
    if error is not None:
        t.error = TaskFailure(1, error)
    if usage:
        u = ModelUsage()
        u.add_model("m1", 10, 20, 0.5)
        t.usage = u
    t.trace = trace if trace is not None else FROM_ID[True]
    t.session = session
    if exits:
        assert isinstance(t.trace, TaskTrace)
        t.trace.events = [(now + 0.5, 1, "corral.cap_kill", "memory limit")]
    return t


def piped(tasks: list[Task], tool: bool = False) -> tuple[bytes, list[Any], list[int]]:
    """The tasks' records as the exporter takes them: one msgpack frame, decoded at once,
    each record's length."""
    tracer = Tracer(capacity=1000, batch=1000)
    for t in tasks:
        tracer.finished(t)
    ((_, _, frame),) = tracer.take()
    return frame, msgspec.msgpack.decode(frame), list(map(len, _RAWS.decode(frame)))


def both(tasks: list[Task]) -> list[Any]:
    """The batch as otlprecords writes it, checked equal to otlp.py's spans one by one, as
    the official package reads it."""
    _, records, sizes = piped(tasks)
    batch = [(r, n <= TEXT_MAX) for r, n in zip(records, sizes, strict=True)]
    spans = [s for r, short in batch for s in expand(r, short)]
    body, n = otlprecords.encode(batch, "svc", "host", "1")
    assert body == encode_spans(spans, "svc", "host", "1")
    assert n == len(spans) == sum(map(spans_of, records))
    (rs,) = ExportTraceServiceRequest.FromString(body).resource_spans
    (ss,) = rs.scope_spans
    return list(ss.spans)


def attrs(pb: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in pb.attributes}


def test_every_shape_of_record_is_written_as_otlp_writes_it_span_by_span() -> None:
    parent = TaskTrace(new_trace_id(), 0xCD, True, None)
    shapes = [task(), task(trace=parent), task(trace=TaskTrace(new_trace_id(), 0, True, None)),
              task(status=TaskStatus.FAILED, error="boom"), task(attempts=2),
              task(usage=True), task(node="n1"),
              task(trace=TaskTrace(new_trace_id(), 0, True, None), exits=True),
              task("other"), task()]
    spans = both(shapes)
    assert len(spans) == 3 * 9 + 5  # the retried task: a queue wait and an attempt each
    first = spans[:3]
    assert [s.name for s in first] == ["invoke_agent echo", "corral.queue", "task/run echo"]
    tid = int(shapes[0].id.replace("-", ""), 16)
    assert {s.trace_id for s in first} == {tid.to_bytes(16, "big")}
    assert first[1].parent_span_id == first[2].parent_span_id == first[0].span_id
    assert attrs(first[0])["corral.task.id"] == shapes[0].id
    with_parent = spans[3]
    assert with_parent.parent_span_id == (0xCD).to_bytes(8, "big")
    assert spans[-3:][0].span_id != first[0].span_id  # the same shape, its own ids
    assert attrs(spans[-3])["corral.task.id"] == shapes[-1].id


def test_an_attribute_that_changes_between_two_tasks_of_one_agent_shows_in_each() -> None:
    a = task(tool_calls=0, priority=1, pid=100)
    b = task(tool_calls=3, priority=5, pid=200)
    c = task(tool_calls=0, priority=1, pid=100)  # a's shape again: a's template
    otlprecords._templates.clear()
    spans = both([a, b, c])
    # a's and b's shapes, each a template that held (c written from a's)
    assert len(otlprecords._templates) == 2
    assert None not in otlprecords._templates.values()
    tasks_, attempts = spans[0::3], spans[2::3]
    assert [attrs(s)["corral.task.tool_calls"] for s in tasks_] == [0, 3, 0]
    assert [attrs(s)["corral.task.priority"] for s in tasks_] == [1, 5, 1]
    assert [attrs(s)["process.pid"] for s in attempts] == [100, 200, 100]
    assert [attrs(s)["corral.task.id"] for s in tasks_] == [a.id, b.id, c.id]
    # times are each task's own, an end before its start written as the start
    assert tasks_[0].start_time_unix_nano == int(a.created * 1e9)
    assert attempts[1].end_time_unix_nano == int(b.attempts[0].finished * 1e9)  # type: ignore


def test_a_long_text_is_cut_as_before() -> None:
    long = "é" * (TEXT_MAX + 50)
    failed = task(status=TaskStatus.FAILED, error=long)
    named = task("a" * (TEXT_MAX + 5))
    spans = both([failed, named, task()])
    assert spans[0].status.message == long[:TEXT_MAX] + "…"
    assert spans[2].status.message == long[:TEXT_MAX] + "…"  # its attempt's error
    assert spans[3].name == ("invoke_agent " + "a" * (TEXT_MAX + 5))[:TEXT_MAX] + "…"
    assert attrs(spans[3])["gen_ai.agent.name"] == "a" * TEXT_MAX + "…"
    assert attrs(spans[6])["gen_ai.agent.name"] == "echo"


def test_a_batch_is_one_row_read_back_by_its_task_and_bounded(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db", 7, 5)
    first = [task(), task()]
    second = [task(status=TaskStatus.FAILED, error="x" * (CUT_PAST * 2))]
    for batch in (first, second):
        frame, records, sizes = piped(batch)
        store.write(frame, records, max(sizes), sum(map(spans_of, records)), time.time())
    assert store.db.execute("SELECT count(*) FROM batches").fetchone() == (2,)
    got = of_task(tmp_path / "t.db", first[1].id)
    assert [s.name for s in got] == ["invoke_agent echo", "corral.queue", "task/run echo"]
    assert {s.trace_id for s in got} == {first[1].id.replace("-", "")}
    (cut,) = [s for s in of_task(tmp_path / "t.db", second[0].id) if s.kind == "server"]
    assert cut.error == "x" * TEXT_MAX + "…"  # kept within TEXT_MAX in the store
    # 9 spans stored, 5 kept: the first batch's 6 are needed; a third batch's 3: not
    store.prune(time.time())
    keys = len({key_of(t.id) for t in first}) + 1
    assert store.db.execute("SELECT count(*) FROM batch_keys").fetchone() == (keys,)
    third = [task()]
    frame, records, sizes = piped(third)
    store.write(frame, records, max(sizes), 3, time.time())
    store.prune(time.time())
    assert store.db.execute("SELECT count(*) FROM batches").fetchone() == (2,)
    assert store.db.execute("SELECT count(*) FROM batch_keys").fetchone() == (2,)
    assert of_task(tmp_path / "t.db", first[0].id) == []
    assert [s.name for s in of_task(tmp_path / "t.db", third[0].id)] == [
        "invoke_agent echo", "corral.queue", "task/run echo"]
    # past keep_days, every batch
    store.keep_days = 1
    store.prune(time.time() + 2 * 86400)
    assert store.db.execute("SELECT count(*) FROM batch_keys").fetchone() == (0,)
    store.close()


def test_the_index_holds_a_row_a_millisecond_and_reads_each_task_alone(
        tmp_path: Path) -> None:
    """Decision 429: tasks whose UUIDv7 ids were made in one millisecond share an index
    row (their first 13 characters); a read still gives each task its own spans, across
    batches; an id of another form is its own key (a store of the index before is not
    converted: decision 1521)."""
    base = new_id()
    same = [task(), task(), task()]
    for i, t in enumerate(same):  # made in one millisecond: the ids' first 13 the same
        t.id = base[:13] + t.id[13:-1] + str(i)
    other = task(trace=TaskTrace(new_trace_id(), 0, True, None))
    other.id = "my-own-task-id"
    store = TraceStore(tmp_path / "t.db", 7, 1000)
    for batch in (same[:2], [same[2], other]):
        frame, records, sizes = piped(batch)
        store.write(frame, records, max(sizes), sum(map(spans_of, records)), time.time())
    assert store.db.execute("SELECT key, batch FROM batch_keys ORDER BY batch, key"
                            ).fetchall() == [(base[:13], 1), (base[:13], 2),
                                             ("my-own-task-id", 2)]
    for t in (*same, other):
        got = of_task(tmp_path / "t.db", t.id)
        assert len(got) == 3
        assert [s.attributes["corral.task.id"] for s in got if s.kind == "server"] == [t.id]
    assert of_task(tmp_path / "t.db", base[:13] + "-0000-0000-000000000000") == []
    assert (key_of(base), key_of("my-own-task-id"), key_of("x" * 36)) == (
        base[:13], "my-own-task-id", "x" * 36)
    store.close()


def test_a_shape_whose_template_would_not_hold_is_written_span_by_span() -> None:
    """A template cuts out the task's id where it finds it once; an agent named as its
    task's id has it twice more (the span's name, the agent's attribute): no template,
    and its spans written one by one, the same bytes."""
    t = task()
    odd = task(t.id)
    odd.id = t.id  # the agent's name is its task's id
    otlprecords._templates.clear()
    spans = both([odd, odd])
    assert list(otlprecords._templates.values()) == [None]
    assert spans[0].name == f"invoke_agent {t.id}"
    assert attrs(spans[0])["corral.task.id"] == t.id


def test_every_field_a_template_keeps_is_in_its_key() -> None:
    """Records of one shape but for one field each, side by side in a batch: were a field
    that the spans read missing from the template's key, a record would come out with its
    neighbour's value, and the batch's bytes would differ from otlp.py's."""
    _, (base,), _ = piped([task()])
    variants: list[Any] = []
    for index, value in ((5, "other"), (7, "cancelled"), (8, "gone"), (9, 7), (10, 4)):
        r = list(base)
        r[index] = value
        variants.append(r)
    for key, value in (("replica", 3), ("pid", 99), ("pid", None), ("outcome", "failed"),
                       ("error", "boom"), ("finished", None)):
        r = list(base)
        r[14] = [{**base[14][0], key: value}]
        variants.append(r)
    failed = list(base)
    failed[14] = [{**base[14][0], "outcome": "failed", "error": "one"}]
    other = list(base)
    other[14] = [{**base[14][0], "outcome": "failed", "error": "two"}]
    pairs = [(base, v) for v in variants] + [(failed, other)]
    batch = [(r, True) for pair in pairs for r in pair]
    spans = [s for r, short in batch for s in expand(r, short)]
    otlprecords._templates.clear()
    body, n = otlprecords.encode(batch, "svc", "host")
    assert body == encode_spans(spans, "svc", "host") and n == len(spans)


def tool(name: str = "notes__echo", *, task_id: str | None = None, attempt: int = 1,
         transport: str = "pipe", rid: Any = 7, error: str | None = None,
         took: float = 0.001) -> list[Any]:
    """A tool call's record as the tracer buffers it and the pipe brings it."""
    tid, now = new_trace_id(), time.time()
    return [TOOL, tid >> 64, tid & MASK64, new_span_id(64) or 1, new_span_id(64) or 1, name,
            task_id or task().id, attempt, transport, rid, now, now + took, error]


def tools_both(records: list[list[Any]]) -> list[Any]:
    """Tool records written by otlprecords, checked equal to otlp.py's spans one by one
    and read by the official package."""
    frame = msgspec.msgpack.encode(records)
    records = msgspec.msgpack.decode(frame)
    sizes = list(map(len, _RAWS.decode(frame)))
    batch = [(r, n <= TEXT_MAX) for r, n in zip(records, sizes, strict=True)]
    spans = [s for r, short in batch for s in expand(r, short)]
    body, n = otlprecords.encode(batch, "svc", "host", "1")
    assert body == encode_spans(spans, "svc", "host", "1")
    assert n == len(spans) == len(records)
    (rs,) = ExportTraceServiceRequest.FromString(body).resource_spans
    (ss,) = rs.scope_spans
    return list(ss.spans)


def test_a_tool_calls_span_from_its_template_is_otlps_span() -> None:
    """Every shape of a tool call, twice each (the second from the first's template) and
    with its ids, times, task id and request id its own (decision 423)."""
    otlprecords._tools.clear()
    shapes = [tool(), tool(rid=12345), tool(rid=None), tool(rid=0), tool(rid=9),
              tool(rid="s-1"), tool(rid=-3), tool(attempt=2), tool(transport="tcp"),
              tool(error="tool_error"), tool(error="server gone"), tool("plain"),
              tool(task_id="0123456789ab"), tool(task_id="gateway:cli-1"),
              tool(task_id="gateway:cli-2"), tool(took=-1.0), tool("x" * 2000)]
    again = [tool(r[5], task_id=r[6] if r[6].startswith("gateway:") or len(r[6]) == 12
                  else None, attempt=r[7], transport=r[8], rid=r[9], error=r[12])
             for r in shapes]
    spans = tools_both(shapes + again + shapes)
    assert None not in otlprecords._tools.values()
    # one a shape: request ids 7, 0 and 9 and a call that ends before it starts share the
    # first's; a string or negative request id and a long name go span by span
    assert len(otlprecords._tools) == 11
    for record, pb in zip(shapes + again, spans, strict=False):
        assert pb.trace_id == (record[1] << 64 | record[2]).to_bytes(16, "big")
        assert pb.parent_span_id == record[4].to_bytes(8, "big")
        a = attrs(pb)
        assert a.get("corral.task.id", a.get("corral.gateway.client")) in (
            record[6], record[6][len("gateway:"):])
        if record[9] is not None:
            assert a["jsonrpc.request.id"] == str(record[9])


def test_a_tool_templates_cut_is_its_attributes_own_value() -> None:
    """A task id that is also the tool's name (in the span's name and two attributes):
    the template cuts the id where its attribute is, so two such calls of different tasks
    each come out with their own id, the same bytes as otlp.py's."""
    otlprecords._tools.clear()
    a, b = task().id, task().id
    spans = tools_both([tool(a, task_id=a), tool(a, task_id=b)])
    assert None not in otlprecords._tools.values() and len(otlprecords._tools) == 1
    assert [s.name for s in spans] == [f"tools/call {a}"] * 2
    assert [attrs(s)["corral.task.id"] for s in spans] == [a, b]


def test_a_chain_calls_span_from_its_template_has_its_own_call_id_and_agent() -> None:
    """A tool call's record with the trace link's fields (its agent, its door, its call
    id), of a task, of a replica on the worker link and of a gateway client, an agent
    called as a tool among them: from its template, the same bytes as otlp.py's, each
    call with its own call id; the GenAI attributes as the conventions name them."""
    otlprecords._tools.clear()

    def linked(name: str = "notes__echo", task_id: str | None = None,
               call_id: str | None = None, door: str = "worker") -> list[Any]:
        return [*tool(name, task_id=task_id), "caller", door, call_id]

    def key() -> str:
        return f"{new_span_id(128):032x}"

    shapes = [linked(call_id=key()), linked(), linked(task_id="replica:caller#0"),
              linked(task_id="gateway:caller#0", door="/mcp"),
              linked("corral__target", call_id=key(), door="/mcp/corral")]
    again = [linked(r[5], r[6] if ":" in r[6] else None,
                    key() if r[15] is not None else None, r[14]) for r in shapes]
    spans = tools_both(shapes + again)
    assert None not in otlprecords._tools.values() and len(otlprecords._tools) == 5
    for record, pb in zip(shapes + again, spans, strict=True):
        a = attrs(pb)
        assert a["gen_ai.tool.call.id"] == (record[15] or f"{record[3]:016x}")
        assert a["corral.call.door"] == record[14] and a["mcp.method.name"] == "tools/call"
        if record[5] == "corral__target":
            assert (a["gen_ai.operation.name"], a["gen_ai.agent.name"],
                    a["gen_ai.tool.name"]) == ("invoke_agent", "target", "target")
        else:
            assert (a["gen_ai.operation.name"], a["gen_ai.agent.name"],
                    a["gen_ai.tool.name"]) == ("execute_tool", "caller", "echo")
    assert attrs(spans[2])["corral.replica"] == "caller#0"
    assert attrs(spans[3])["corral.gateway.client"] == "caller#0"


class _Answers(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps the connection, as collectors do
    status = 200
    seen: list[tuple[int, bytes]] = []  # (client port, body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Answers.seen.append((self.client_address[1], body))
        self.send_response(_Answers.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


def test_the_collector_is_posted_to_on_one_connection_and_its_refusals_raise() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        collector = Collector(f"http://127.0.0.1:{port}/v1/traces?x=1", {"k": "v"}, 5.0)
        _Answers.seen.clear()
        collector.post(b"one")
        collector.post(b"two")
        assert [b for _, b in _Answers.seen] == [b"one", b"two"]
        assert len({p for p, _ in _Answers.seen}) == 1  # one connection for both
        _Answers.status = 503
        with pytest.raises(urllib.error.HTTPError) as refused:
            collector.post(b"three")
        assert refused.value.code == 503
        _Answers.status = 200
        collector.post(b"four")  # after a refusal, on a connection of its own
        assert _Answers.seen[-1][1] == b"four"
    finally:
        _Answers.status = 200
        server.shutdown()
        server.server_close()
    with pytest.raises(OSError):  # nobody there: what urllib raised too
        Collector(f"http://127.0.0.1:{port}/v1/traces", {}, 5.0).post(b"five")


def test_a_batch_that_cannot_be_encoded_is_dropped_and_counted_not_the_sender(
        tmp_path: Path) -> None:
    """Attacker's pass: a record the OTLP encoding refuses (an id of a traced-from-its-id
    task that is not hex) costs its own batch, counted dropped with the error; the
    sending thread lives on and the next batch is exported."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _Answers.seen.clear()
        out = io.BytesIO()
        before = set(threading.enumerate())
        exporter = Exporter(ExportConfig(store=str(tmp_path / "t.db"), endpoint=(
            f"http://127.0.0.1:{server.server_address[1]}/v1/traces")), out)
        bad = task()
        bad.id = "zzzzzzzz-zzzz-7zzz-8zzz-zzzzzzzzzzzz"
        exporter.batch(piped([bad])[0])
        exporter.batch(piped([task(), task()])[0])
        (sender,) = [t for t in set(threading.enumerate()) - before if t.name == "otlp-send"]
        exporter.close()
        assert not sender.is_alive()  # ended by close, not by the bad batch
        # (done: every span it took, dropped or exported, as the daemon counts them)
        assert (exporter.failures, exporter.dropped, exporter.exported, exporter.done) == (
            1, 3, 6, 9)
        assert exporter.error is not None and exporter.error.startswith(
            "a batch could not be encoded: ValueError(")
        assert len(_Answers.seen) == 1
        last = msgspec.json.decode(out.getvalue().splitlines()[-1])
        assert last["dropped"] == 3 and last["exported"] == 6 and last["failures"] == 1
    finally:
        server.shutdown()
        server.server_close()


def test_a_read_decodes_only_the_batches_that_hold_its_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacker's pass: the tasks of one millisecond (a map's, any tenant's) share an
    index key; reading one of them decodes only the batches its id is in, not every
    batch of the key."""
    from corral.daemon import tracestore

    base = new_id()
    store = TraceStore(tmp_path / "t.db", 7, 100_000)
    tasks = []
    for i in range(50):  # each in a batch of its own, all under one key
        t = task()
        t.id = base[:13] + t.id[13:-2] + f"{i:02d}"
        tasks.append(t)
        frame, records, sizes = piped([t])
        store.write(frame, records, max(sizes), sum(map(spans_of, records)), time.time())
    assert store.db.execute("SELECT count(DISTINCT key), count(*) FROM batch_keys"
                            ).fetchone() == (1, 50)
    decoded: list[int] = []
    real = msgspec.msgpack.decode

    def counting(frame: Any, *a: Any, **kw: Any) -> Any:
        decoded.append(len(frame))
        return real(frame, *a, **kw)

    monkeypatch.setattr(tracestore.msgspec.msgpack, "decode", counting)
    got = of_task(tmp_path / "t.db", tasks[17].id)
    assert [s.attributes["corral.task.id"] for s in got if s.kind == "server"] == [
        tasks[17].id]
    assert len(decoded) == 1
    store.close()


def test_a_sessions_turn_carries_its_conversation_and_an_older_record_reads_as_before(
        tmp_path: Path) -> None:
    """Issue 41 item 1: a task that is a turn of a session has `gen_ai.conversation.id`
    (written span by span, equal to otlp.py's); a task of no session has none; a record
    stored before sessions were traced (its last field `events`) is read as it was."""
    turn, plain = task(session="chat-7"), task()
    spans = both([turn, plain, task(session="chat-8", attempts=2)])
    assert attrs(spans[0])["gen_ai.conversation.id"] == "chat-7"
    assert "gen_ai.conversation.id" not in attrs(spans[3])
    assert attrs(spans[6])["gen_ai.conversation.id"] == "chat-8"
    assert "gen_ai.conversation.id" not in attrs(spans[1])  # the task's span alone
    _, records, sizes = piped([plain])
    old = msgspec.msgpack.encode([records[0][:16]])  # as a store of the last format has it
    store = TraceStore(tmp_path / "t.db", 7, 1000)
    store.write(old, [records[0][:16]], max(sizes), 3, time.time())
    store.close()
    got = of_task(tmp_path / "t.db", plain.id)
    assert [s.name for s in got] == ["invoke_agent echo", "corral.queue", "task/run echo"]
    assert "gen_ai.conversation.id" not in got[0].attributes
