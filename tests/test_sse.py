"""The SSE framing shared by the HTTP client transport and the gateway."""

from __future__ import annotations

import pytest

from corral.mcp.sse import Event, Parser, TooLarge, format_event


def test_events_are_found_whatever_the_chunking_and_line_endings() -> None:
    wire = (b": keep-alive\r\nevent: endpoint\r\ndata: /messages?s=1\r\n\r\n"
            b"id: 7\nretry: 250\ndata: {\"a\":\ndata: 1}\n\n")
    whole = Parser(1 << 20).feed(wire)
    parser = Parser(1 << 20)
    bytewise = [e for i in range(len(wire)) for e in parser.feed(wire[i:i + 1])]
    expected = [Event(b"/messages?s=1", "endpoint"), Event(b'{"a":\n1}', "message", "7", 250)]
    assert whole == bytewise == expected
    assert parser.last_id == "7"


def test_a_priming_event_with_an_id_and_no_data_sets_the_resumption_point() -> None:
    parser = Parser(1024)
    assert parser.feed(b"id: abc\ndata:\n\n") == [Event(b"", "message", "abc")]
    assert parser.last_id == "abc"


def test_an_event_past_the_limit_is_refused_not_buffered() -> None:
    parser = Parser(100)
    with pytest.raises(TooLarge, match="more than 100 bytes"):
        parser.feed(b"data: " + b"x" * 200)


def test_format_event_round_trips_through_the_parser() -> None:
    wire = format_event(b'{"x":1}\n{"y":2}', "5")
    assert Parser(1024).feed(wire) == [Event(b'{"x":1}\n{"y":2}', "message", "5")]
