"""corral's one HTTP/1.1 answer reader (corral/http1answer.py) at its own seam: the bytes
of an answer fed as a connection would hand them over, and every refusal said exactly in
its peer's name. Its users' tests (test_model_http1.py, test_unixhttp.py, test_probes.py)
keep its refusals at their doors."""

from __future__ import annotations

import asyncio

import pytest

from corral.http1answer import MAX_HEAD, MAX_INTERIM, Http1Answer, read_from


class Refused(Exception):
    """The error a test's reader is told to raise."""


def fed(*reads: bytes) -> Http1Answer:
    answer = Http1Answer("the peer", Refused)
    for data in reads:
        answer.feed(data)
    return answer


def refusal(*reads: bytes, ended: str | None = None) -> str:
    """What the reader refused `reads` with (`ended`: then told the connection ended,
    saying that)."""
    answer = Http1Answer("the peer", Refused)
    with pytest.raises(Refused) as caught:
        for data in reads:
            answer.feed(data)
        if ended is not None:
            answer.ended(ended)
    return str(caught.value)


WHOLE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Tag:  a \r\n"
         b"x-tag: b\r\nContent-Length: 7\r\n\r\n{\"a\":1}")


def test_an_answer_fed_a_byte_at_a_time_is_read_as_one() -> None:
    answer = fed(*(WHOLE[i:i + 1] for i in range(len(WHOLE))))
    assert (answer.status, answer.reason, answer.head_done, answer.complete) == \
        (200, b"OK", True, True)
    # names lowercased, a value's outer blanks off, a repeated one joined
    assert answer.headers == {"content-type": "application/json", "x-tag": "a, b",
                              "content-length": "7"}
    assert (answer.take(), answer.take(), answer.kept_alive, answer.extra) == \
        (b'{"a":1}', b"", True, False)


def test_interim_answers_are_read_past_and_none_of_theirs_kept() -> None:
    answer = fed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n"
                 b"\r\n" + WHOLE.replace(b"200 OK", b"201 Created"))
    assert (answer.status, answer.reason, answer.interims, "link" in answer.headers) == \
        (201, b"Created", 2, False)
    assert (answer.take(), answer.complete) == (b'{"a":1}', True)


def test_a_101_is_a_final_head_and_what_follows_is_not_read() -> None:
    answer = fed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\nConnection: upgrade"
                 b"\r\n\r\n\x81\x05hello")
    assert (answer.status, answer.head_done, answer.take()) == (101, True, b"")


def test_what_follows_an_answers_end_is_another_message_never_read() -> None:
    answer = fed(WHOLE + b"HTTP/1.1 500 Oops\r\nX-Late: 1\r\nContent-Length: 3\r\n\r\nbad")
    assert (answer.status, answer.reason, answer.extra, "x-late" in answer.headers) == \
        (200, b"OK", True, False)
    assert answer.take() == b'{"a":1}'
    answer.begin()  # the next answer of a kept connection is read from its first byte
    assert (answer.status, answer.headers, answer.extra, answer.complete) == \
        (0, {}, False, False)


def test_a_body_of_no_stated_length_ends_with_the_connection() -> None:
    answer = fed(b"HTTP/1.1 200 OK\r\n\r\npart one, ", b"part two")
    assert (answer.until_close, answer.complete) == (True, False)
    answer.ended()
    assert (answer.complete, answer.take()) == (True, b"part one, part two")
    # a 204 has no body whatever it says: it ends with its head
    assert fed(b"HTTP/1.1 204 No Content\r\n\r\n").complete


@pytest.mark.parametrize(("reads", "ended", "said"), [
    ((b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",), "reset",
     "the peer's answer was cut before its end (reset)"),
    ((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nhalf",), "",
     "the peer's answer was cut before its end"),
    ((b"HTTP/1.1 200 OK\r\nServer: x\r\n",), "", "the peer's answer was cut before its end"),
    ((), "", "the connection ended before the peer's answer"),
    ((b"HTTP/1.1 100 Continue\r\n\r\n",), "",
     "the peer's answer was cut before its end"),
])
def test_a_connection_ended_before_the_answers_end_is_refused_saying_what_was_cut(
        reads: tuple[bytes, ...], ended: str, said: str) -> None:
    assert refusal(*reads, ended=ended) == said


NOT_HTTP = "the peer's answer is not HTTP/1.1: "  # then llhttp's reason


@pytest.mark.parametrize(("data", "said"), [
    (b"SSH-2.0-OpenSSH_9.2\r\n", NOT_HTTP + "Expected HTTP/, RTSP/ or ICE/"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", NOT_HTTP + "Invalid header token"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
     NOT_HTTP + "Invalid character in Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabcde",
     NOT_HTTP + "Invalid character in chunk size"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD,
     f"the peer's answer's head is over MAX_HEAD ({MAX_HEAD} bytes)"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM + 1),
     f"the peer sent over MAX_INTERIM ({MAX_INTERIM}) interim answers (1xx)"),
])
def test_an_answer_past_http_or_a_bound_is_refused_naming_how(data: bytes, said: str) -> None:
    assert refusal(data) == said


def test_the_bounds_count_what_came_before_the_final_head_alone() -> None:
    """MAX_INTERIM interim answers and a head of MAX_HEAD bytes with them are read, the
    body after it counted toward neither; a byte more without the head's end is not."""
    interims = b"HTTP/1.1 100 Continue\r\n\r\n" * MAX_INTERIM
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX: " % (2 * MAX_HEAD)
    pad = b"a" * (MAX_HEAD - len(interims) - len(head) - 4) + b"\r\n\r\n"
    answer = fed(interims + head, pad, b"b" * (2 * MAX_HEAD))
    assert (answer.status, answer.complete, len(answer.take())) == (200, True, 2 * MAX_HEAD)
    assert refusal(interims + head, pad[:-4] + b"aaaaa") == \
        f"the peer's answer's head is over MAX_HEAD ({MAX_HEAD} bytes)"


async def test_a_streams_reads_are_fed_until_the_answer_ends() -> None:
    reader = asyncio.StreamReader()
    answer = Http1Answer("the peer", Refused)
    reader.feed_data(b"HTTP/1.1 200 OK\r\n\r\nto the ")
    assert await read_from(reader, answer) is True
    assert (answer.head_done, answer.take()) == (True, b"to the ")
    reader.feed_data(b"end")
    reader.feed_eof()
    assert [await read_from(reader, answer), await read_from(reader, answer)] == [True, False]
    assert (answer.complete, answer.take(), await read_from(reader, answer)) == \
        (True, b"end", False)
    cut = asyncio.StreamReader()
    cut.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    cut.feed_eof()
    answer = Http1Answer("the peer", Refused)
    assert await read_from(cut, answer) is True
    with pytest.raises(Refused, match=r"^the peer's answer was cut before its end$"):
        await read_from(cut, answer)
