"""A call's arguments as a verdict's shape and an audit row show them: a normal call's
whole, and arguments nested deeper than SHOWN_DEPTH (the doors' decoders take some seven
hundred levels) shown to that depth and "..." below it, never a RecursionError out of the
record (session 17's attacker's hole 5: tests/doors/test_doors.py's nested-deep row)."""

from __future__ import annotations

import json
from typing import Any

from corral.daemon.audit import Audit
from corral.daemon.caller import Caller
from corral.daemon.logs import DAEMON_SOURCE, LogHub
from corral.supervisor.policy import SHOWN_DEPTH, shape

# as deep as the worker link's and the gateway's decoders take a call's arguments
DEEP = 700


def nested(levels: int, leaf: Any) -> Any:
    """`leaf` under `levels` objects, each of one member."""
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


def test_a_shape_is_the_calls_whole_and_a_deep_ones_ends_at_the_shown_depth() -> None:
    assert shape({"host": "pay.example", "ids": [1, "x", {"k": None}, 4],
                  "deep": nested(SHOWN_DEPTH - 2, [])}) == {
        "host": "str", "ids": ["int", "str", {"k": "NoneType"}, "..."],
        "deep": nested(SHOWN_DEPTH - 2, [])}
    deep = shape({"amount": 1, "deep": nested(DEEP, 1)})
    assert deep == {"amount": "int", "deep": nested(SHOWN_DEPTH - 1, "...")}


def test_an_audit_rows_params_are_the_calls_and_a_deep_ones_end_at_the_shown_depth() -> None:
    hub = LogHub(None)
    audit = Audit(hub)
    who = Caller(via="socket", name="operator")
    shallow = {"name": "t", "arguments": {"text": "x" * 2000, "deep": nested(3, 1)}}
    audit(who, "tools.call", shallow, "ok")
    audit(who, "tools.call", {"name": "t", "arguments": nested(DEEP, 1)}, "ok")
    lines = [ln.text for ln in hub.tail([DAEMON_SOURCE], 2, None)]
    cut = "x" * 1024 + "… (cut: 2000 characters)"
    assert lines == [
        "operator: tools.call " + json.dumps(
            {"name": "t", "arguments": {"text": cut, "deep": nested(3, 1)}},
            separators=(",", ":"), ensure_ascii=False) + " -> ok",
        "operator: tools.call " + json.dumps(
            {"name": "t", "arguments": nested(SHOWN_DEPTH - 1, "...")},
            separators=(",", ":")) + " -> ok"], lines
