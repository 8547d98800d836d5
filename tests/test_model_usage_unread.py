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


def test_every_body_is_read_as_the_loose_reader_reads_it() -> None:
    """The typed read (`_TypedReport`: a count in C, no Python a member) and the loose one it
    falls back to (`_read_loose`: a member of any type) leave a call's usage the same on
    every body: events of each format, counts of every type, members of another type
    beside them, and a body that is no object."""
    import random

    rnd = random.Random(90)
    values: list[object] = [None, 0, 5, 12, -5, "900", 1.5, True, 10**16, {"n": 1}, [1]]
    keys = ["prompt_tokens", "input_tokens", "cache_creation_input_tokens",
            "cache_read_input_tokens", "completion_tokens", "output_tokens",
            "total_tokens", "prompt_tokens_details"]

    def usage() -> object:
        if rnd.random() < 0.1:
            return rnd.choice([None, "x", 5, []])
        return {k: rnd.choice(values) for k in rnd.sample(keys, rnd.randint(0, 4))}

    def part() -> object:
        if rnd.random() < 0.15:
            return rnd.choice([None, "x", 3])
        said: dict[str, object] = {}
        if rnd.random() < 0.7:
            said["model"] = rnd.choice(["m", None, 5])
        if rnd.random() < 0.8:
            said["usage"] = usage()
        return said

    members = {"type": lambda: rnd.choice(["message_start", "message_delta", None, 5,
                                           "response.completed"]),
               "message": part, "response": part,
               "model": lambda: rnd.choice(["m2", None, 7]), "usage": usage}
    counted = 0
    for _ in range(5000):
        events = [msgspec.json.encode({k: made() for k, made in members.items()
                                       if rnd.random() < 0.5})
                  for _ in range(rnd.randint(1, 3))] + [b"[1, 2]"] * (rnd.random() < 0.05)
        typed, loose = CallUsage(), CallUsage()
        for event in events:
            typed.read_body(event)
            loose._read_loose(event)
        assert typed == loose, events
        counted += typed.said
    assert counted > 200  # (bodies whose usage is read, not only refused ones)
