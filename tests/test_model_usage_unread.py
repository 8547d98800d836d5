"""An upstream's usage corral cannot read counts as its estimate, never as 0 (issue 88):
`"900"`, `-5` and `{}` were counted as no tokens against the budgets. CallUsage is what
the model gateway settles every call's count by (tests/test_model_usage.py drives it
through the daemon)."""

from __future__ import annotations

import msgspec
import pytest

from corral.daemon.models.usage import CallUsage

INPUT_ESTIMATE, OUTPUT_ESTIMATE = 40, 4096


def settled(*bodies: dict[str, object]) -> tuple[int, int]:
    """A whole answer (or a stream's events) read to its end and settled: (in, out)."""
    usage = CallUsage()
    usage.answered = True
    size = 0
    for body in bodies:
        raw = msgspec.json.encode(body)
        usage.read_body(raw)
        size += len(raw)
    usage.passed_bytes(size)
    usage.complete = True
    usage.settle(INPUT_ESTIMATE, OUTPUT_ESTIMATE)
    return usage.input, usage.output


@pytest.mark.parametrize("said", [
    {"prompt_tokens": "900", "completion_tokens": "900"},
    {"prompt_tokens": -5, "completion_tokens": -5},
    {},
    {"prompt_tokens": 10, "completion_tokens": {"n": 900}},
    {"input_tokens": 1.5e3, "output_tokens": True},
])
def test_an_unreadable_usage_is_counted_at_the_calls_estimate(said: dict[str, object]
                                                               ) -> None:
    """The attack: an upstream (or one in the middle) says its usage in a form corral
    cannot read, and the call cost 0 of every budget."""
    body = {"model": "m", "choices": [{"message": {"content": "x" * 400}}], "usage": said}
    passed = -(-len(msgspec.json.encode(body)) // 4)
    assert settled(body) == (INPUT_ESTIMATE, passed)


def test_a_readable_usage_is_counted_as_said() -> None:
    body = {"model": "m", "usage": {"prompt_tokens": 12, "completion_tokens": 3,
                                    "prompt_tokens_details": {"cached_tokens": 0}}}
    assert settled(body) == (12, 3)
    # Messages' stream: the input first, the running output later; a count left null
    # is one not said
    assert settled({"type": "message_start", "message": {"model": "m", "usage": {
        "input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": None}}},
        {"type": "message_delta", "usage": {"output_tokens": 15}}) == (25, 15)
    # a later event that cannot be read: the larger of what was read and the estimate
    first = {"type": "message_start", "message": {"model": "m", "usage": {
        "input_tokens": 9000, "output_tokens": 1}}}
    assert settled(first, {"type": "message_delta", "usage": {"output_tokens": "lots"}}
                   )[0] == 9000
