"""A Python caller's answer decoded once (payload.read_values, decision 366): the values
and the kept bytes are the usual way's (read_raw, then a decode), for every answer a
worker may write; what the usual way refuses is refused alike, with the same message."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.supervisor import State, Supervisor
from corral.supervisor.tasks.payload import Output, read_raw, read_values
from corral.taskoptions import TaskOptions

from .conftest import PY, agent

AWKWARD: list[Any] = [
    {"nested": {"a": [{"b": [[], {}]}], "c": None}},
    "naïve café — 東京 \"quoted\" back\\slash\ttab\nnewline \u2028 \U0001f600",
    [2**64, -(2**70), 2**53 + 1, 0, -1],
    [1.5, 1e-7, -0.0, 1.7976931348623157e308, 5e-324, 0.1 + 0.2],
    [True, False, None],
    {"doc": "x" * 100_000, "n": 7},
    None,
    [],
]


def answer(output: Any, rid: int = 7) -> bytes:
    return msgspec.json.encode({"jsonrpc": "2.0", "id": rid, "result": {"output": output}})


@pytest.mark.parametrize("value", AWKWARD)
def test_an_answer_decoded_once_is_the_usual_ways_values_and_bytes(value: Any) -> None:
    line = answer(value)
    rid, old = read_raw(line)
    assert read_values(line)[0] == rid == 7
    once = read_values(line)[1]
    assert once.size == old.size == len(line)
    assert once.python() == old.python() == value  # (the caller's, taken once)
    assert once.value is None and not once.fresh
    assert once.python() == value  # again: decoded from the bytes
    assert bytes(once.raw) == bytes(old.raw) and once.held is not None  # (read once)


@pytest.mark.parametrize("line", [
    b'{"jsonrpc":"2.0","id":7,"result":{}}',  # no output
    b'{"jsonrpc":"2.0","id":7,"result":{"output":1,"other":2}}',  # a member not known
    b'{ "jsonrpc" : "2.0", "id" : 7 , "result" : { "output" : [1, 2] } }',
])
def test_answers_of_other_layouts_the_usual_way_takes_are_taken_alike(line: bytes) -> None:
    old, once = read_raw(line)[1], read_values(line)[1]
    assert once.python() == old.python()
    assert bytes(once.raw) == bytes(old.raw)


@pytest.mark.parametrize("line", [
    b'{"jsonrpc":"2.0","id":7,"result":{"output":[1,}}',  # not JSON
    b'{"jsonrpc":"2.0","id":7,"result":5}',  # a result that is not an object
    b'{"jsonrpc":"2.0","id":7,"result":{"output":1},"extra":1}',  # an unknown member
    b'{"jsonrpc":"2.0","id":"7","result":{"output":1}}',  # an id that is not a number
    b'{"jsonrpc":"2.0","id":7,"result":{"output":1}',  # truncated
    b'{"jsonrpc":"2.0","id":7,"result":{"output":"\xff"}}',  # not UTF-8 (kept Raw by one)
])
def test_what_read_raw_refuses_read_values_refuses(line: bytes) -> None:
    # (refused here, the line takes the peer's usual way, which judges it as before)
    errors = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
    with pytest.raises(errors):
        read_raw(line)
    with pytest.raises(errors):
        read_values(line)


def test_an_output_kept_from_a_journal_or_the_usual_way_is_its_bytes() -> None:
    kept = Output(msgspec.Raw(b'{"a":1}'), 7)
    assert (kept.python(), bytes(kept.raw), kept.fresh) == ({"a": 1}, b'{"a":1}', False)


# A worker that writes the answer its input gives (RID: the request's id), so that the
# two ways are compared on real lines from a real process.
RAW_AGENT = """
import json

from corral.worker import Worker

class Raw(Worker):
    def _write(self, line, held=False):  # every line the worker sends passes here
        msg = json.loads(line)
        result = msg.get("result")
        out = result.get("output") if isinstance(result, dict) else None
        if isinstance(out, dict) and "line" in out:
            line = out["line"].replace("RID", str(msg["id"])).encode("latin-1") + b"\\n"
        super()._write(line, held)

Raw(lambda task, ctx: task).run()
"""


async def test_python_callers_and_socket_callers_get_the_same_outcomes(
        sup: Supervisor, tmp_path: Path) -> None:
    script = tmp_path / "raw_agent.py"
    script.write_text(RAW_AGENT)
    sup.add(agent("raw", command=[PY, str(script)], max_concurrent_tasks=8))
    await sup.wait_state("raw", State.READY)

    lines = [answer(v, 0).replace(b'"id":0', b'"id":RID') for v in AWKWARD] + [
        b'{"jsonrpc":"2.0","id":RID,"result":{}}',
        b'{"jsonrpc":"2.0","id":RID,"result":5}',
        b'{"jsonrpc":"2.0","id":RID,"result":{"output":1,"other":2}}',
        b'{"jsonrpc":"2.0","id":RID,"result":{"output":1},"extra":1}',
        b'{"jsonrpc":"2.0","id":RID,"result":{"output":"\xff"}}',
        b'{"jsonrpc":"2.0","id":RID,"error":{"code":-32000,"message":"no"}}',
    ]
    inputs = [{"line": line.decode("latin-1")} for line in lines]  # (bytes as they are)

    def outcome(res: Any) -> tuple[Any, ...]:
        error = None if res.error is None else (res.error.code, res.error.message)
        return res.status, error

    # a socket client's way: the answer read as bytes, decoded afterwards (read_raw)
    usual = []
    for x in inputs:
        task = sup.tasks.submit("raw", x, TaskOptions(timeout=30))
        await asyncio.shield(task.done)
        assert not task.decoded
        try:
            value: Any = ("output", task.result(decode=True).output)
        except UnicodeDecodeError as exc:
            value = ("UnicodeDecodeError", str(exc))
        usual.append((outcome(task.result()), value, task.raw_output))
    # the Python caller's ways: run and map (read_values)
    for results in ([await sup.tasks.run("raw", x, TaskOptions(timeout=30)) for x in inputs[:-2]],
                    await sup.tasks.map("raw", inputs[:-2],
                                        TaskOptions(timeout=30), concurrency=4)):
        assert [(outcome(r), ("output", r.output)) for r in results] == [
            u[:2] for u in usual[:-2]]
    for x in inputs[-2:]:  # (two that fail their task: compared on the task itself)
        task = sup.tasks.submit("raw", x, TaskOptions(timeout=30))
        task.decoded = True  # as run and map mark theirs
        await asyncio.shield(task.done)
        assert outcome(task.result()) == usual[len(inputs) - 2 + inputs[-2:].index(x)][0]
    kept = [t for t in sup.tasks.retention.finished.values()
            if t.decoded and t.status == "succeeded"]
    assert kept and all(t.raw_output is not None for t in kept)  # bytes read when asked
    assert usual[0][0] == ("succeeded", None) and usual[-1][0][0] == "failed"
    # an output not UTF-8 fails its task, as the usual way refuses any message not UTF-8
    assert usual[-2][:2] == (("failed", (-32700, "the answer of agent raw#0 is not UTF-8: "
                                                 "invalid start byte at byte 45")),
                             ("output", None))


async def test_values_no_caller_takes_are_not_kept_with_the_finished_task(
        sup: Supervisor, tmp_path: Path) -> None:
    # a cancelled run and a cancelled map leave their tasks running; when they end, only
    # the output's bytes stay with them (decision 78: no object graph kept)
    sup.add(agent("sl", "misbehave.py", max_concurrent_tasks=8))
    await sup.wait_state("sl", State.READY)
    # each runs until the test has seen all three running and cancelled their callers (a
    # sleep of its own could end before the third began, on a loaded host)
    gate = tmp_path / "go"
    slow = {"do": "await", "path": str(gate), "payload": {"a": [1, 2]}}
    ran = asyncio.ensure_future(sup.tasks.run("sl", slow))
    mapped = asyncio.ensure_future(sup.tasks.map("sl", [slow, slow], concurrency=2))
    while sup.tasks.running("sl") < 3:
        await asyncio.sleep(0.01)
    tasks = list(sup.tasks.active.values())
    assert len(tasks) == 3 and all(t.decoded for t in tasks)
    ran.cancel()
    mapped.cancel()
    # (the callers' cancellation taken in full before their tasks may end: a map's
    # reaches its waits a step or more after the cancel)
    await asyncio.gather(ran, mapped, return_exceptions=True)
    gate.touch()
    await asyncio.gather(*(asyncio.shield(t.done) for t in tasks))
    for t in tasks:
        assert t.status == "succeeded" and t.out is not None
        assert (t.out.fresh, t.out.value) == (False, None)
        assert t.output == {"awaited": str(gate)}  # read from its bytes
    with pytest.raises(asyncio.CancelledError):
        await ran
