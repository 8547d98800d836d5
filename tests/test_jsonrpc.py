"""The wire layer over a real socketpair: framing limits, correlation, errors, teardown."""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.jsonrpc import ChunkLines, LineProtocol, Peer, RpcError


class Params(msgspec.Struct):
    a: int
    b: int


async def connect(
    sock: socket.socket, name: str, **kw: Any
) -> tuple[Peer, asyncio.Transport, list[Exception | None]]:
    loop = asyncio.get_running_loop()
    eofs: list[Exception | None] = []
    holder: dict[str, Peer] = {}
    transport, _ = await loop.create_connection(
        lambda: LineProtocol(lambda line: holder["p"].feed_line(line),
                             lambda exc: (eofs.append(exc), holder["p"].close("gone"))),
        sock=sock,
    )
    peer = Peer(name, transport.write, **kw)  # type: ignore[attr-defined]
    holder["p"] = peer
    return peer, transport, eofs  # type: ignore[return-value]


def add(method: str, params: Any, peer: Peer) -> Any:
    if method == "add":
        p = jsonrpc.decode_params(params, Params)
        return p.a + p.b
    if method == "slow":
        return asyncio.sleep(10)
    if method == "fail":
        raise RpcError(jsonrpc.NOT_FOUND, "no such thing")
    if method == "boom":
        raise ValueError("kaput")
    raise RpcError(jsonrpc.METHOD_NOT_FOUND, f"method not found: {method}")


class SlowHandlers:
    """A server's dispatch whose "slow" handlers tell when they start and when they are
    cancelled: what the server does with a handler, seen from the handler's side."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.started = 0
        self.cancelled = 0
        self.all_started = asyncio.Event()
        self.all_cancelled = asyncio.Event()

    def dispatch(self, method: str, params: Any, peer: Peer) -> Any:
        return self._slow() if method == "slow" else add(method, params, peer)

    async def _slow(self) -> None:
        self.started += 1
        if self.started == self.expected:
            self.all_started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.cancelled += 1
            if self.cancelled == self.expected:
                self.all_cancelled.set()
            raise


async def pair(**server_kw: Any) -> tuple[Peer, Peer, socket.socket, socket.socket]:
    a, b = socket.socketpair()
    client, _, _ = await connect(a, "client")
    server, _, _ = await connect(b, "server", dispatch=add, **server_kw)
    return client, server, a, b


async def test_request_response_and_typed_params() -> None:
    client, _, a, b = await pair()
    assert await client.request("add", {"a": 2, "b": 3}) == 5
    results = await asyncio.gather(*(client.request("add", {"a": i, "b": i}) for i in range(50)))
    assert results == [2 * i for i in range(50)]
    with pytest.raises(RpcError) as err:
        await client.request("add", {"a": "x", "b": 1})
    assert err.value.code == jsonrpc.INVALID_PARAMS
    assert err.value.message == "invalid params: Expected `int`, got `str` - at `$.a`"
    with pytest.raises(RpcError) as err:
        await client.request("nope")
    assert (err.value.code, err.value.message) == (jsonrpc.METHOD_NOT_FOUND,
                                                   "method not found: nope")
    with pytest.raises(RpcError) as err:
        await client.request("fail")
    assert (err.value.code, err.value.message) == (jsonrpc.NOT_FOUND, "no such thing")
    with pytest.raises(RpcError) as err:
        await client.request("boom")
    assert (err.value.code, err.value.message) == (jsonrpc.INTERNAL_ERROR,
                                                   "internal error: kaput")
    a.close()
    b.close()


async def test_a_thousand_requests_in_flight_cost_their_peer_a_few_hundred_bytes_each(
        ) -> None:
    """A request whose handler waits (a worker's question to a person, for days: issue
    55) is held by the task that runs its handler, named once for all such tasks
    (`jsonrpc.REQUEST_TASK`, what a stack dump shows), and one small done callback: a
    closure over the peer and the id, and a name formatted for each, were ~350 bytes
    more a request. Each request is answered once all the same."""
    n = 1000
    a, b = socket.socketpair()
    client, _, _ = await connect(a, "client")
    loop = asyncio.get_running_loop()
    release: asyncio.Future[None] = loop.create_future()
    names: set[str] = set()
    started = [0]
    all_in = asyncio.Event()

    async def waits(i: int) -> int:
        task = asyncio.current_task()
        assert task is not None
        names.add(task.get_name())
        started[0] += 1
        if started[0] == n:
            all_in.set()
        await release
        return i

    server, _, _ = await connect(
        b, "server", dispatch=lambda method, params, peer: waits(
            jsonrpc.decode_params(params, Params).a))
    asked = [client.request_future("wait", {"a": i, "b": 0})[1] for i in range(n)]
    tracemalloc.start()
    try:
        start = tracemalloc.take_snapshot()
        await asyncio.wait_for(all_in.wait(), 60)
        assert server.handling == n
        grown = tracemalloc.take_snapshot().compare_to(start, "filename")
    finally:
        tracemalloc.stop()
    # the handlers' own coroutines and frames are this file's, the same either way
    held = sum(s.size_diff for s in grown if s.traceback[0].filename != __file__)
    assert held / n < 850, held / n  # (before: 1010-1035; after: 714-738)
    assert names == {jsonrpc.REQUEST_TASK}
    release.set_result(None)
    assert [msgspec.json.decode(r) for r in await asyncio.gather(*asked)] == list(range(n))
    assert server.handling == 0
    a.close()
    b.close()


async def test_timeout_sends_cancel_and_server_cancels_handler() -> None:
    seen: list[Any] = []
    a, b = socket.socketpair()
    client, _, _ = await connect(
        a, "client", cancel_method="notifications/cancelled",
        cancel_params=lambda rid: {"requestId": rid})
    slow = SlowHandlers(1)
    _server, _, _ = await connect(
        b, "server", dispatch=slow.dispatch, cancel_method="notifications/cancelled",
        cancel_id_of=lambda raw: (seen.append(msgspec.json.decode(raw)) or
                                  msgspec.json.decode(raw)["requestId"]))
    with pytest.raises(RpcError) as err:
        await client.request("slow", timeout=0.05)
    assert err.value.code == jsonrpc.REQUEST_TIMEOUT
    assert err.value.message == "slow: no answer from client within 0.05 s"
    assert await client.request("add", {"a": 1, "b": 1}) == 2  # ordering: cancel seen first
    assert seen == [{"requestId": 1}]
    await asyncio.wait_for(slow.all_cancelled.wait(), 10)  # the handler, cancelled
    a.close()
    b.close()


async def test_peer_going_away_fails_every_pending_request() -> None:
    a, b = socket.socketpair()
    client, _, eofs = await connect(a, "client")
    slow = SlowHandlers(5)
    _server, server_transport, _ = await connect(b, "server", dispatch=slow.dispatch)
    pending = [asyncio.ensure_future(client.request("slow")) for _ in range(5)]
    await asyncio.wait_for(slow.all_started.wait(), 10)
    server_transport.close()  # the other side goes away; the client sees EOF
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, RpcError) and r.code == jsonrpc.PEER_CLOSED and r.message == "gone"
               for r in results)
    assert eofs == [None]
    with pytest.raises(RpcError) as err:
        await client.request("add", {"a": 1, "b": 2})
    assert err.value.code == jsonrpc.PEER_CLOSED
    await asyncio.wait_for(slow.all_cancelled.wait(), 10)  # the server's handlers too
    assert slow.cancelled == 5


async def raw_exchange(a: socket.socket, data: bytes, answers: int) -> list[Any]:
    """Send raw lines on `a` and read back `answers` lines, decoded."""
    lines: list[bytes] = []
    got = asyncio.Event()

    def on_line(line: bytes) -> None:
        lines.append(line)
        if len(lines) == answers:
            got.set()

    await asyncio.get_running_loop().create_connection(
        lambda: LineProtocol(on_line, lambda e: None), sock=a)
    a.sendall(data)
    await asyncio.wait_for(got.wait(), 5)
    return [msgspec.json.decode(x) for x in lines]


async def test_garbage_is_counted_and_answered_when_asked() -> None:
    a, b = socket.socketpair()
    server, _, _ = await connect(b, "server", dispatch=add, reply_to_garbage=True)
    replies = await raw_exchange(a, b'not json\n{"jsonrpc":"2.0"}\n{"id":1,"method":"add"}\n'
                                    b'{"jsonrpc":"2.0","id":null,"method":"add"}\n', 4)
    assert [r["error"]["code"] for r in replies] == [
        jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST, jsonrpc.INVALID_REQUEST,
        jsonrpc.INVALID_REQUEST]
    assert replies[2]["error"]["message"].startswith('invalid request: missing or wrong "jsonrpc"')
    assert server.garbage_lines == 3
    a.close()
    b.close()


async def test_a_request_reusing_an_id_in_progress_is_refused_and_not_run() -> None:
    a, b = socket.socketpair()
    server, _, _ = await connect(b, "server", dispatch=add)
    # "slow" runs on; the second request under its id would be a second handler that
    # `handling` (one entry per id) does not count
    replies = await raw_exchange(
        a, b'{"jsonrpc":"2.0","id":"s","method":"slow"}\n'
           b'{"jsonrpc":"2.0","id":"s","method":"slow"}\n'
           b'{"jsonrpc":"2.0","id":"s","method":"add","params":{"a":1,"b":2}}\n'
           b'{"jsonrpc":"2.0","id":7,"method":"add","params":{"a":1,"b":2}}\n', 3)
    refused = {"jsonrpc": "2.0", "id": "s", "error": {
        "code": jsonrpc.INVALID_REQUEST,
        "message": 'invalid request: id "s" is already in use by a request in progress'}}
    assert replies == [refused, refused, {"jsonrpc": "2.0", "id": 7, "result": 3}]
    assert server.handling == 1 and server.garbage_lines == 0
    server.close("done")
    a.close()
    b.close()


def test_line_protocol_splits_caps_and_keeps_a_crash_tail() -> None:
    lines: list[bytes] = []
    over: list[tuple[int, bytes, bytes]] = []
    p = LineProtocol(lines.append, lambda e: None, max_line=10,
                     on_oversize=lambda *a: over.append(a))
    p.data_received(b"ab")
    p.data_received(b"c\nde\n\n")
    p.data_received(b"x" * 8)
    p.data_received(b"y" * 8)  # over the limit: dropped, not buffered
    assert not p.holding
    p.data_received(b"zz\nok\n")
    p.data_received(b"0123456789ABC\nlast")
    p.connection_lost(None)
    assert lines == [b"abc", b"de", b"ok", b"last"]
    # size, and the line's first and last bytes (where a response's id is)
    assert over == [(18, b"x" * 8 + b"y" * 8, b"x" * 8 + b"y" * 8 + b"zz"),
                    (13, b"0123456789ABC", b"0123456789ABC")]


async def test_an_oversized_answer_fails_the_request_its_id_names() -> None:
    from corral.jsonrpc import MESSAGE_TOO_LARGE, Peer

    peer = Peer("srv", lambda b: None)
    _, first = peer.request_future("a")
    _, second = peer.request_future("b")
    # an id at neither end, or of no pending request: nothing is failed
    assert not peer.oversized(99, b'{"result": "xxx', b'xxx"}', 10)
    assert not peer.oversized(99, b'{"jsonrpc":"2.0","id":7,"result"', b"}", 10)
    # Python SDK order: the id at the start; TypeScript SDK order: the id at the end
    assert peer.oversized(99, b'{"jsonrpc":"2.0","id":1,"result":{"x', b'x"}}', 10)
    assert peer.oversized(99, b'{"result":{"x', b'x"}},"jsonrpc":"2.0","id":2}', 10)
    for fut in (first, second):
        with pytest.raises(RpcError) as err:
            fut.result()
        assert (err.value.code, err.value.message) == (
            MESSAGE_TOO_LARGE, "the answer from srv is 99 bytes, over the line limit of 10 "
            "bytes; it was discarded")
    assert peer.in_flight == 0


async def test_a_forgotten_request_answer_is_not_garbage() -> None:
    from corral.jsonrpc import Peer

    peer = Peer("srv", lambda b: None)
    rid, fut = peer.request_future("server/discover")
    peer.forget(rid)
    peer.feed_line(b'{"jsonrpc":"2.0","id":%d,"result":{}}' % rid)
    assert (peer.garbage_lines, peer.in_flight, fut.done()) == (0, 0, False)
    peer.feed_line(b'{"jsonrpc":"2.0","id":%d,"result":{}}' % rid)  # only once
    assert peer.garbage_lines == 1


def test_chunk_lines_keeps_blank_lines_cuts_long_ones_and_the_crash_tail() -> None:
    blocks: list[Any] = []
    b = ChunkLines(blocks.append, lambda e: None, max_line=8)
    b.data_received(b"one\n\ntwo\nthr")
    b.data_received(b"ee\n")
    b.data_received(b"0123456789abcdefghij\nok\n")  # 20 bytes: cut into 8 + 8 + 4
    b.data_received(b"x" * 20)  # no newline yet, over the limit: not buffered, sent cut
    assert list(blocks[-1]) == [b"x" * 8, b"x" * 8, b"x" * 4]
    b.data_received(b"tail")
    b.connection_lost(None)
    assert [len(x) for x in blocks] == [3, 1, 4, 3, 1]
    batches = [list(x) for x in blocks]
    assert batches == [[b"one", b"", b"two"], [b"three"],
                       [b"01234567", b"89abcdef", b"ghij", b"ok"],
                       [b"x" * 8, b"x" * 8, b"x" * 4], [b"tail"]]


async def test_batches_are_accepted() -> None:
    client, _, a, b = await pair()
    fut1 = client.request_future("add", {"a": 1, "b": 1})
    _, fut2 = client.request_future("add", {"a": 2, "b": 2})
    await asyncio.wait_for(asyncio.gather(fut1[1], fut2), 5)
    got = [msgspec.json.decode(fut1[1].result()), msgspec.json.decode(fut2.result())]
    assert got == [2, 4]
    rid3, fut3 = client.request_future("x")
    rid4, fut4 = client.request_future("y")
    client.feed_line(b'[{"jsonrpc":"2.0","id":%d,"result":1},{"jsonrpc":"2.0","id":%d,'
                     b'"error":{"code":-32000,"message":"no"}}]' % (rid3, rid4))
    assert msgspec.json.decode(fut3.result()) == 1
    assert isinstance(fut4.exception(), RpcError)
    a.close()
    b.close()


async def test_held_requests_wait_in_order_while_answers_and_notifications_pass() -> None:
    sent: list[bytes] = []
    noted: list[str] = []
    read: list[bytes] = []
    reader = LineProtocol(read.append, lambda exc: None)
    peer = Peer("p", sent.append, dispatch=add,
                on_notification=lambda method, params, p: noted.append(method))
    peer.reader, peer.requests_paused = reader, True
    _, fut = peer.request_future("ask")
    sent.clear()
    peer.feed_line(b'[{"jsonrpc":"2.0","id":1,"method":"add","params":{"a":1,"b":1}},'
                   b'{"jsonrpc":"2.0","id":2,"method":"add","params":{"a":2,"b":2}}]')
    assert reader.paused  # at the first request held
    peer.feed_line(b'{"jsonrpc":"2.0","id":1,"result":"answered"}')  # an answer passes
    peer.feed_line(b'{"jsonrpc":"2.0","method":"note"}')  # so does a notification
    assert sent == [] and peer.held is not None and len(peer.held) == 2
    assert msgspec.json.decode(fut.result()) == "answered" and noted == ["note"]
    peer.release()  # still paused: nothing is taken
    assert sent == [] and peer.held is not None and len(peer.held) == 2 and reader.paused
    peer.requests_paused = False
    peer.release()
    assert peer.held is None and not reader.paused
    assert [msgspec.json.decode(x) for x in sent] == [
        {"id": 1, "result": 2, "jsonrpc": "2.0"}, {"id": 2, "result": 4, "jsonrpc": "2.0"}]
    # held when the peer closes: dropped, never run
    peer.requests_paused = True
    sent.clear()
    peer.feed_line(b'{"jsonrpc":"2.0","id":3,"method":"add","params":{"a":3,"b":3}}')
    peer.close("gone")
    assert peer.held is None
    peer.release()
    assert sent == []


async def test_after_the_other_side_exited_its_requests_are_run_no_more() -> None:
    """`exited` (a process's drain): its requests worked on are cancelled, their answers
    not written; those held and those read from then on are counted in `dropped`, never
    run, not even as the ones worked on end; answers and notifications still pass."""
    sent: list[bytes] = []
    noted: list[str] = []
    ran: list[str] = []

    def dispatch(method: str, params: Any, peer: Peer) -> Any:
        ran.append(method)
        return asyncio.sleep(60)

    reader = LineProtocol(lambda line: None, lambda exc: None)
    peer = Peer("p", sent.append, dispatch=dispatch,
                on_notification=lambda method, params, p: noted.append(method))
    peer.flow(reader, 2)
    _, fut = peer.request_future("ask")
    sent.clear()
    for i in range(3):
        peer.feed_line(b'{"jsonrpc":"2.0","id":%d,"method":"m%d"}' % (i, i))
    assert (ran, peer.handling, peer.held is not None, reader.paused, peer.dropped) == (
        ["m0", "m1"], 2, True, True, None)
    peer.exited()
    assert (peer.dropped, peer.held, peer.reader) == (1, None, None)
    peer.feed_line(b'{"jsonrpc":"2.0","id":3,"method":"m3"}')
    peer.feed_line(b'{"jsonrpc":"2.0","id":1,"result":"answered"}')
    peer.feed_line(b'{"jsonrpc":"2.0","method":"note"}')
    async with asyncio.timeout(5):
        while peer.handling:  # the cancelled requests end
            await asyncio.sleep(0)
    assert (ran, peer.dropped, peer.held, sent) == (["m0", "m1"], 2, None, [])
    assert msgspec.json.decode(fut.result()) == "answered" and noted == ["note"]


async def test_at_most_max_handling_requests_are_worked_on_and_the_rest_follow() -> None:
    sent: list[bytes] = []
    gates = [asyncio.get_running_loop().create_future() for _ in range(3)]

    def slow(method: str, params: Any, peer: Peer) -> Any:
        return gates[int(method)]

    peer = Peer("p", sent.append, dispatch=slow)
    peer.max_handling = 2
    for i in range(3):
        peer.feed_line(b'{"jsonrpc":"2.0","id":%d,"method":"%d"}' % (i, i))
    assert peer.handling == 2 and peer.held is not None and len(peer.held) == 1
    gates[0].set_result("zero")
    await asyncio.sleep(0)  # its answer is written, and the held one taken
    assert peer.handling == 2 and peer.held is None
    for g in gates[1:]:
        g.set_result("more")
    await asyncio.sleep(0)
    assert peer.handling == 0 and len(sent) == 3


def test_unknown_response_id_is_garbage() -> None:
    peer = Peer("p", lambda data: None)
    peer.feed_line(b'{"jsonrpc":"2.0","id":99,"result":1}')
    assert peer.garbage_lines == 1


class Answer(msgspec.Struct, forbid_unknown_fields=True):
    jsonrpc: str
    id: int
    result: dict[str, int]


async def test_an_answer_in_the_sdk_layout_is_read_by_its_requests_decoder_in_one_pass(
        ) -> None:
    sent: list[bytes] = []
    peer = Peer("p", sent.append)
    read: list[bytes] = []

    def decode(line: bytes) -> tuple[int, Any]:
        read.append(line)
        answer = msgspec.json.decode(line, type=Answer)
        return answer.id, ("decoded", answer.result)

    def ask() -> tuple[jsonrpc.Id, asyncio.Future[Any]]:
        return peer.request_future("m", {"x": 1}, decode=decode)

    rid, fut = ask()
    peer.feed_line(b'{"jsonrpc":"2.0","id":%d,"result":{"a":1}}' % rid)
    assert fut.result() == ("decoded", {"a": 1}) and len(read) == 1
    # the same answer laid out otherwise goes the usual way: the raw result
    rid, fut = ask()
    peer.feed_line(b'{"result":{"a":2},"jsonrpc":"2.0","id":%d}' % rid)
    assert bytes(fut.result()) == b'{"a":2}' and len(read) == 1
    # so do an error, a member the decoder refuses, a result of another type and an id
    # given twice; none of them is garbage, and each future gets what the usual way says
    rid, fut = ask()
    peer.feed_line(b'{"jsonrpc":"2.0","id":%d,"error":{"code":-32000,"message":"no"}}' % rid)
    assert isinstance(fut.exception(), RpcError) and fut.exception().message == "no"
    rid, fut = ask()
    peer.feed_line(b'{"jsonrpc":"2.0","id":%d,"result":{"a":3},"extra":1}' % rid)
    assert bytes(fut.result()) == b'{"a":3}'
    rid, fut = ask()
    peer.feed_line(b'{"jsonrpc":"2.0","id":%d,"result":[3]}' % rid)
    assert bytes(fut.result()) == b'[3]'
    rid, fut = ask()
    other, later = ask()
    peer.feed_line(b'{"jsonrpc":"2.0","id":%d,"result":{"a":4},"id":%d}' % (rid, other))
    assert not fut.done() and bytes(later.result()) == b'{"a":4}'
    # (the error's line never reached the decoder: it does not start as a result does)
    assert peer.garbage_lines == 0 and len(read) == 4


async def test_a_request_with_a_piece_writes_it_between_the_messages_parts_uncopied(
        ) -> None:
    parts: list[list[Any]] = []
    peer = Peer("p", lambda data: None, send_parts=parts.append)
    big = msgspec.Raw(b'{"doc":"' + b"x" * 100_000 + b'"}')
    answer = asyncio.get_running_loop().create_future()
    rid = peer.request_pending("task/run", {"task_id": "t", "input": jsonrpc.SPLICE,
                                            "deadline": 1.5}, answer, piece=big)
    (head, middle, tail), = parts
    assert isinstance(middle, memoryview) and middle.obj is big
    line = bytes(head) + bytes(middle) + bytes(tail)
    assert line.endswith(b"\n") and msgspec.json.decode(line) == {
        "method": "task/run", "id": rid, "jsonrpc": "2.0",
        "params": {"task_id": "t", "input": {"doc": "x" * 100_000}, "deadline": 1.5}}
    # a peer given no way to write pieces joins them
    joined: list[bytes] = []
    Peer("q", joined.append).request_pending("m", {"input": jsonrpc.SPLICE}, answer, piece=big)
    assert msgspec.json.decode(joined[0])["params"]["input"] == {"doc": "x" * 100_000}
