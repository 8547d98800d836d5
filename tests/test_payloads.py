"""Large task payloads: whole and unchanged from 1 KB to 10 MB, through the Python API, the
control socket and the worker SDK's two JSON codecs; the line framing hands a long line
over once."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import subprocess
import threading
import uuid
from typing import Any

import msgspec
import pytest

from corral.jsonrpc import IDLE_BUFFER, MIN_READ, LineProtocol
from corral.supervisor import State, Supervisor
from corral.supervisor.tasks import encode_input

from .conftest import EXAMPLES, ROOT, agent
from .daemon_harness import PY, running_daemon, shared_tmpdir

LONG_LINE = 64 * 1024  # a line far longer than an idle channel's read buffer

# non-ASCII, escapes, nesting and numbers: what a stdlib/msgspec codec mismatch would show
AWKWARD = {"text": "naïve café — 東京 \"quoted\" back\\slash\ttab\nnewline \u2028",
           "n": [0, -1, 2**53, 1.5, 1e-7, True, False, None], "nested": {"a": [{"b": []}]}}


def doc(size: int) -> dict[str, Any]:
    return {**AWKWARD, "doc": "x" * size}


async def test_a_10_mb_input_comes_back_whole_through_the_python_api(sup: Supervisor) -> None:
    sup.add(agent("big", "misbehave.py"))
    await sup.wait_state("big", State.READY)
    payload = doc(10_000_000)
    res = await sup.tasks.run("big", payload)
    assert (res.status, res.error) == ("succeeded", None)
    assert res.output == payload


async def test_the_worker_loads_a_fast_codec_only_once_a_large_message_arrives(
        sup: Supervisor) -> None:
    sup.add(agent("w", "misbehave.py"))
    await sup.wait_state("w", State.READY)
    ask = {"do": "modules", "names": ["msgspec", "orjson", "json"]}
    # small messages: the stdlib's C scanner, with no JSON package imported
    assert (await sup.tasks.run("w", ask)).output == {
        "msgspec": False, "orjson": False, "json": False}
    big = {**doc(100_000), "do": "echo"}
    assert (await sup.tasks.run("w", big)).output == big
    # from then on msgspec decodes and orjson encodes (both installed with corral) every
    # message, with equal results (orjson brings the json package with it, then)
    ask["names"] = ["msgspec", "orjson"]
    assert (await sup.tasks.run("w", ask)).output == {"msgspec": True, "orjson": True}
    assert (await sup.tasks.run("w", {**AWKWARD, "do": "echo"})).output == {
        **AWKWARD, "do": "echo"}
    # what orjson refuses (an int past 64 bits) the next codec encodes
    assert (await sup.tasks.run("w", {"do": "echo", "n": 2**70})).output == {
        "do": "echo", "n": 2**70}


def test_a_task_input_is_encoded_as_msgspec_encodes_it_whatever_its_types() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    class Name(str):
        pass

    for value in (AWKWARD, {1: "int key"}, {"big": 2**70}, Point(1), b"bytes", {"s": {1}},
                  datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC), uuid.UUID(int=5),
                  float("nan"), doc(100)):
        assert encode_input(value) == msgspec.json.encode(value), value
    # and what msgspec cannot encode fails with msgspec's own error
    with pytest.raises(TypeError, match=r"^Encoding objects of type Name is unsupported$"):
        encode_input(Name("x"))


async def test_CORRAL_FAST_JSON_0_keeps_the_stdlib_codec_for_large_messages(
        sup: Supervisor) -> None:
    sup.add(agent("w", "misbehave.py", env={"CORRAL_FAST_JSON": "0"}))
    await sup.wait_state("w", State.READY)
    big = {**doc(200_000), "do": "echo"}
    assert (await sup.tasks.run("w", big)).output == big
    ask = {"do": "modules", "names": ["msgspec"]}
    assert (await sup.tasks.run("w", ask)).output == {"msgspec": False}


async def test_a_task_whose_result_is_not_an_object_succeeds_with_no_output(
        sup: Supervisor) -> None:
    sup.add(agent("w", "misbehave.py"))
    await sup.wait_state("w", State.READY)
    res = await sup.tasks.run("w", {"do": "raw", "notify": True, "method": "x/unknown"})
    assert res.output == {"notified": "x/unknown"}
    task = sup.tasks.submit("w", {"do": "echo", "k": 1})
    await task.done
    # the output is kept as the worker's bytes and decoded only for a Python caller
    assert bytes(task.raw_output) == b'{"do":"echo","k":1}'
    assert task.output == {"do": "echo", "k": 1}


def test_corral_run_sends_a_5_mb_input_file_and_prints_the_whole_output() -> None:
    config = (f'[agents.big]\ncommand = ["{PY}", "{EXAMPLES}/misbehave.py"]\n'
              f'env = {{ PYTHONPATH = "{ROOT}" }}\n')
    with running_daemon(shared_tmpdir(), config) as d:
        payload = doc(5_000_000)
        path = d.dir / "big.json"
        path.write_text(json.dumps(payload, ensure_ascii=False))
        r = d.cli("run", "big", "--input", f"@{path}", "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        res = msgspec.json.decode(r.stdout)
        assert (res["status"], res["error"]) == ("succeeded", None)
        assert res["output"] == payload
        r = d.cli("run", "big", "--input", "{not json")
        assert r.returncode == 2 and "not JSON" in r.stderr


def room(proto: LineProtocol) -> int:
    """The room the protocol gives its next read: its buffer's, once every line is read."""
    with proto.get_buffer(-1) as view:
        return len(view)


def test_a_long_line_arriving_in_pieces_is_delivered_once_and_whole() -> None:
    got: list[bytes] = []
    proto = LineProtocol(got.append, lambda exc: None, max_line=4 << 20)
    long = b"y" * (3 * LONG_LINE + 17)
    longer = b"w" * (3 * LONG_LINE + 300_000)
    stream = b"a\n" + long + b"\nb\n" + longer + b"\n" + b"z" * 10 + b"\n" + longer + b"\n"
    for i in range(0, len(stream), 50_000):  # pieces that split lines anywhere
        proto.data_received(stream[i : i + 50_000])
    assert [bytes(x) for x in got] == [b"a", long, b"b", longer, b"z" * 10, longer]
    # each line is bytes of its own: reusing the buffer changes none of them
    assert all(type(x) is bytes for x in got)
    # the large buffer is kept while long lines keep coming ...
    assert room(proto) > len(longer)
    # (and the last long line's size is kept: a reader of the same stream, its buffer given
    # back, grows it at once to that size when a line outgrows it)
    again = LineProtocol(lambda line: None, lambda exc: None, max_line=4 << 20)
    for piece in [stream[i : i + 50_000] for i in range(0, len(stream), 50_000)] + [
            b"short\n", b"p" * IDLE_BUFFER]:
        again.data_received(piece)
    assert room(again) == len(longer) + MIN_READ - IDLE_BUFFER
    proto.data_received(longer + b"\n")
    assert got[-1] == longer and room(proto) > len(longer)
    # ... and given back at the next short line
    proto.data_received(b"q" * 70_000)
    proto.data_received(b"\n")
    assert got[-1] == b"q" * 70_000 and room(proto) > IDLE_BUFFER
    proto.data_received(b"short\n")
    assert got[-1] == b"short" and room(proto) == IDLE_BUFFER
    assert [bytes(x) for x in got[:6]] == [b"a", long, b"b", longer, b"z" * 10, longer]


async def test_uvloop_reads_long_lines_from_a_pipe_into_the_protocols_buffer() -> None:
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    ended = loop.create_future()
    r, w = os.pipe()

    class ReadInto(LineProtocol):
        def data_received(self, data: bytes) -> None:  # the copying way: not taken
            got.append(b"data_received")

    proto = ReadInto(got.append, lambda exc: ended.set_result(exc))
    await loop.connect_read_pipe(lambda: proto, os.fdopen(r, "rb", buffering=0))
    long = b"L" * (2 * LONG_LINE + 3)
    writer = threading.Thread(target=lambda: (
        os.write(w, b"small\n" + long + b"\n" + long + b"\ntail"), os.close(w)))
    writer.start()
    await ended
    writer.join()
    assert got == [b"small", long, long, b"tail"]


DECODES_WITHOUT_A_PASS = """
import gc, msgspec, pytest
from corral.supervisor.tasks.payload import Output

records = [{"id": i, "tags": ["a", "b"]} for i in range(5000)]  # 10,000 containers
raw = msgspec.json.encode(records)
passes = []
gc.callbacks.append(lambda phase, info: phase == "start" and passes.append(info))
value = Output(msgspec.Raw(raw), len(raw)).python()
during = len(passes)  # (a new list would be an allocation, and the pass now due)
with pytest.raises(msgspec.DecodeError):
    Output(msgspec.Raw(raw[:-1]), len(raw)).python()
gc.callbacks.clear()
assert value == records, "decoded other values"
assert during == 0, f"{during} passes during the decode"  # else ~14 of the youngest
assert gc.isenabled(), "left off after a failure"
gc.disable()  # a caller that has the collector off keeps it off
assert Output(msgspec.Raw(b"[1]"), 3).python() == [1] and not gc.isenabled()
print("ok")
"""


def test_an_output_is_decoded_for_a_python_caller_without_a_collection_meanwhile() -> None:
    # in a process of its own: a pass that another thread of a test worker starts, or its
    # own `gc.enable()`, would be counted here and is not the decode's
    r = subprocess.run([PY, "-c", DECODES_WITHOUT_A_PASS], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_a_short_input_holds_its_own_bytes_not_the_encoders_buffer() -> None:
    # orjson hands over its working buffer (a KiB or more) as the bytes: a queued task
    # holding a `{"n": i}` input held that buffer (bench/RESULTS.md, memory per pending
    # child); tracemalloc counts what each held input's allocation really is
    import tracemalloc

    from corral.supervisor.tasks.payload import encode_input

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [encode_input({"n": i}) for i in range(2000)]
        per_input = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    finally:
        tracemalloc.stop()
    assert held[7] == b'{"n":7}'
    assert per_input < 200, per_input
