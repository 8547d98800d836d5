"""A task that starts its trace is sampled by its id's last 14 hex digits (the trace id's
low 56 bits) without parsing the rest: the same decision `Sampling.head` makes; the
context a task's `task/run` carries is the bytes it was; tracing off makes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from corral import jsonrpc
from corral.supervisor import State, Supervisor
from corral.supervisor.tasks.ids import new_id
from corral.supervisor.tasks.model import Task
from corral.supervisor.tracing import Sampling, Tracer, own_span
from corral.tracecontext import (
    FROM_ID,
    TaskTrace,
    meta,
    new_trace_id,
    of_id,
    parse_or_none,
)
from corral.traceids import id_trace

from .conftest import agent
from .intercepted import Engines, engines

__all__ = ["engines"]  # the fixture, used by name


def test_a_new_traces_decision_from_its_id_is_the_heads() -> None:
    for ratio in (0.0, 0.1, 0.5, 0.999, 1.0):
        sampling = Sampling(ratio, True, 10.0)
        tracer = Tracer(sampling)
        kept = 0
        for _ in range(4000):
            task = Task("a", msgspec.Raw(b"{}"), 0, 1.0, 0, 0)
            tracer.begin(task, None, None)
            assert task.trace is FROM_ID[sampling.head(id_trace(task.id), None)], (
                ratio, task.id)
            kept += task.trace is FROM_ID[True]
        assert (kept == 0) if ratio == 0.0 else (kept == 4000) if ratio == 1.0 else (
            0.5 * ratio * 4000 < kept < 1.5 * ratio * 4000 + 20)
    # a ratio set later is the one read
    tracer.sampling = Sampling(0.0, True, 10.0)
    task = Task("a", msgspec.Raw(b"{}"), 0, 1.0, 0, 0)
    tracer.begin(task, None, None)
    assert task.trace is FROM_ID[False]


def test_the_decision_at_its_bound_is_the_heads() -> None:
    """The id's tail compared as text with the bound written as one (decision 420): an id
    just below, at and just above the bound, and the ratios at the ends."""
    base = new_id()
    for ratio in (1e-12, 0.25, 0.5, 0.75, 1 - 1e-12, 1.0, 2.0, -1.0):
        sampling = Sampling(ratio, True, 10.0)
        tracer = Tracer(sampling)
        bound = max(0, min(int(ratio * (1 << 56)), (1 << 56) - 1))
        for low in {0, max(bound - 1, 0), bound, min(bound + 1, (1 << 56) - 1),
                    (1 << 56) - 1}:
            digits = f"{low:014x}"
            task = Task("a", msgspec.Raw(b"{}"), 0, 1.0, 0, 0)
            task.id = f"{base[:21]}{digits[:2]}-{digits[2:]}"
            tracer.begin(task, None, None)
            assert task.trace is FROM_ID[sampling.head(id_trace(task.id), None)], (
                ratio, task.id)


def _old_meta(trace_id: int, span_id: int, sampled: bool, state: str | None) -> bytes:
    """`task/run`'s `_meta` as it was encoded before decision 421: the context's
    fields formatted one by one (tracecontext.meta)."""
    return jsonrpc.encode({"_meta": meta(trace_id, span_id, sampled, state)})


def test_a_task_runs_meta_is_the_old_encodings_bytes() -> None:
    """For each way a task is traced (from its id, sampled or not; a caller's context with
    and without tracestate; an id from before UUIDv7) and its first and later attempts,
    the `_meta` written is the bytes the context's fields formatted one by one gave."""
    for _ in range(200):
        task_id = new_id()
        for sampled in (False, True):
            full = of_id(task_id, sampled)
            for attempt in (1, 2, 3):
                want = _old_meta(id_trace(task_id), full.attempt_span(attempt), sampled,
                                 None)
                got = jsonrpc.encode({"_meta": FROM_ID[sampled].run_meta(attempt, task_id)})
                assert got == want, (task_id, sampled, attempt)
                assert jsonrpc.encode({"_meta": full.run_meta(attempt, task_id)}) == want
            for state in (None, "vendor=x,other=y"):
                trace = TaskTrace(new_trace_id(), 7, sampled, state)
                for attempt in (1, 4):
                    assert jsonrpc.encode({"_meta": trace.run_meta(attempt)}) == _old_meta(
                        trace.trace_id, trace.attempt_span(attempt), sampled, state)
    # every way in through the tracer: a caller's context, an id of before, a new trace
    tracer = Tracer(Sampling(0.5, True, 10.0))
    for traceparent, task_id in ((f"00-{'ab' * 16}-{'cd' * 8}-01", new_id()),
                                 (None, "0123456789ab"), (None, new_id())):
        task = Task("a", msgspec.Raw(b"{}"), 0, 1.0, 0, 0)
        task.id = task_id
        tracer.begin(task, traceparent, "k=v" if traceparent else None)
        full = Tracer.full(task)
        assert full is not None and task.trace is not None
        assert jsonrpc.encode({"_meta": task.trace.run_meta(1, task.id)}) == _old_meta(
            full.trace_id, full.attempt_span(1), full.sampled, full.tracestate)


async def test_tracing_off_makes_nothing_for_a_task(sup: Supervisor,
                                                    tmp_path: Path) -> None:
    """No tracer: a task carries no context, its worker gets no `_meta` (its ctx says
    so), and its end records nothing."""
    script = tmp_path / "ctx_agent.py"
    script.write_text("from corral.worker import run\n"
                      "run(lambda task, ctx: [ctx.traceparent, ctx.tracestate])\n")
    sup.add(agent("w", command=[sys.executable, str(script)]))
    await sup.wait_state("w", State.READY)
    assert sup.tasks.trace_begin is None and sup.tasks.trace_end is None
    task = sup.tasks.submit("w", None)
    assert task.trace is None
    await task.done
    assert task.output == [None, None] and task.trace is None


def test_a_workers_context_is_read_as_parse_reads_it() -> None:
    """`own_span` (decision 425) gives what `parse_or_none` gives, for the context a
    worker sends back and for every way one can be wrong."""
    trace = of_id(new_id(), True)
    tid = f"{trace.trace_id:032x}"
    span = f"{trace.attempt_span(1):016x}"
    other = f"{new_trace_id():032x}"
    cases: list[object] = [
        f"00-{tid}-{span}-01", f"00-{tid}-{span}-00", f"00-{tid}-{span}-ff",
        f"00-{tid.upper()}-{span.upper()}-01", f"00-{other}-{span}-01",
        f"00-{tid}-{'0' * 16}-01", f"00-{'0' * 32}-{span}-01", f"ff-{tid}-{span}-01",
        f"01-{tid}-{span}-01", f"01-{tid}-{span}-01-more", f"00-{tid}-{span}-01-more",
        f" 00-{tid}-{span}-01", f"00-{tid}-{span}-01 ", f"00-{tid}-{span[:-2]} 1-01",
        f"00-{tid[:-2]} 1-{span}-01", f"00-{tid}-{span}-0g", f"00-{tid}-{span}- 1",
        f"00-{tid}-{span[:-1]}é-01", f"00-{tid}_{span}-01", f"00-{tid}-{span}", "",
        "garbage", None, 17, f"00-{tid}-+{span[1:]}-01", f"00-{tid}--{span[1:]}-01"]
    for tp in cases:
        own = parse_or_none(tp)
        want = own.span_id if own is not None and own.trace_id == trace.trace_id else 0
        assert own_span(tp, trace.trace_id) == want, tp
    assert own_span(f"00-{tid}-{span}-01", trace.trace_id) == trace.attempt_span(1)


# -- the context derived from the task id (decision 428) ----------------------------------------
RAW_WORKER = """
import json, sys
derives = sys.argv[1] == "yes"
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "initialize":
        result = {"protocol_version": "1", "capabilities": {}}
        if derives:
            result["trace_from_task_id"] = True
        out = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
    elif msg.get("method") == "task/run":
        p = msg["params"]
        if p["attempt"] == 1 and p["input"] == "fail once":
            sys.exit(3)  # a crash: the task is retried
        else:
            out = {"jsonrpc": "2.0", "id": msg["id"], "result": {"output": {
                k: p[k] for k in ("trace", "_meta") if k in p}}}
    elif "id" in msg and "method" in msg:
        out = {"jsonrpc": "2.0", "id": msg["id"], "result": {}}
    else:
        continue
    sys.stdout.write(json.dumps(out) + "\\n")
    sys.stdout.flush()
"""


async def test_a_worker_that_derives_the_context_is_sent_its_flag_alone(
        engines: Engines, tmp_path: Path) -> None:
    """A worker that said `trace_from_task_id` in `initialize` is sent `trace` (the
    sampling bit) for a task traced from its id on its first attempt, and no `_meta`; a
    worker that did not is sent `_meta` as before; a retry and a caller's context are
    sent `_meta` to both."""
    script = tmp_path / "raw.py"
    script.write_text(RAW_WORKER)
    tracer = Tracer(Sampling(ratio=1.0))
    sup = engines([tracer])
    sup.add(agent("new", command=[sys.executable, str(script), "yes"], retries=1))
    sup.add(agent("old", command=[sys.executable, str(script), "no"], retries=1))
    await sup.wait_state("new", State.READY)
    await sup.wait_state("old", State.READY)
    assert [r.trace_from_id for r in sup.agent("new").replicas] == [True]
    assert [r.trace_from_id for r in sup.agent("old").replicas] == [False]
    caller = f"00-{'ab' * 16}-{'cd' * 8}-01"
    for name in ("new", "old"):
        task = sup.tasks.submit(name, "x")
        await task.done
        hex_id = task.id.replace("-", "")
        if name == "new":
            assert task.output == {"trace": 1}
        else:
            assert task.output == {"_meta": {"traceparent": f"00-{hex_id}-{hex_id[16:]}-01"}}
        retried = sup.tasks.submit(name, "fail once")
        await retried.done
        assert retried.attempt == 2
        want = of_id(retried.id, True)
        assert retried.output == {"_meta": {"traceparent": f"00-{want.trace_id:032x}-"
                                                           f"{want.attempt_span(2):016x}-01"}}
        given = sup.tasks.submit(name, "x", traceparent=caller)
        await given.done
        assert isinstance(given.trace, TaskTrace)
        assert given.output == {"_meta": {"traceparent": f"00-{'ab' * 16}-"
                                                         f"{given.trace.attempt_span(1):016x}-01"}}
    # nothing sampled: the bit is 0
    tracer.sampling = Sampling(ratio=0.0)
    task = sup.tasks.submit("new", "x")
    await task.done
    assert task.output == {"trace": 0}


async def test_the_sdk_derives_the_context_the_daemon_would_have_sent(
        engines: Engines, tmp_path: Path) -> None:
    """The Python SDK says `trace_from_task_id`; the context it derives from the id and
    the bit is the `_meta` the daemon writes for the same task (sampled and not), and
    `from_task_id` refuses what is no UUID's 32 digits."""
    from corral.worker import from_task_id

    for sampled in (False, True):
        task_id = new_id()
        assert from_task_id(task_id, int(sampled)) == FROM_ID[sampled].run_meta(1, task_id)
    assert from_task_id("not-a-uuid", 1) is None
    script = tmp_path / "ctx_agent.py"
    script.write_text("from corral.worker import run\n"
                      "run(lambda task, ctx: ctx.traceparent)\n")
    tracer = Tracer(Sampling(ratio=0.0))
    sup = engines([tracer])
    sup.add(agent("w", command=[sys.executable, str(script)]))
    await sup.wait_state("w", State.READY)
    assert [r.trace_from_id for r in sup.agent("w").replicas] == [True]
    task = sup.tasks.submit("w", None)
    await task.done
    assert task.output == FROM_ID[False].run_meta(1, task.id)["traceparent"]
