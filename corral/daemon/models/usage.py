"""A model call's usage as its upstream said it, in each format, whole or streamed: what
the budgets count, never what the agent says (docs/models.md, "Usage", the table of where
each format says it). A call is counted at its end, whatever the end: a stream cut
uncounted once let 235k tokens billed pass a 5,000-a-minute budget.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .request import BYTES_PER_TOKEN


class _Report(msgspec.Struct):
    """The members of a whole answer that say its usage (the rest skipped, not built:
    its choices' text can be most of it)."""

    type: Any = None
    message: Any = None
    response: Any = None
    model: Any = None
    usage: Any = None


_said = msgspec.json.Decoder(_Report)
_INPUT = frozenset({"prompt_tokens", "input_tokens", "cache_creation_input_tokens",
                    "cache_read_input_tokens"})
_OUTPUT = frozenset({"completion_tokens", "output_tokens"})
_COUNTS = _INPUT | _OUTPUT


class CallUsage(msgspec.Struct, gc=False):
    """What the upstream said of a call, and how far its answer got (`answered`: a
    success's head came; `complete`: read to its end). A Struct: made a call with no
    Python of its own."""

    input: int = 0
    output: int = 0
    model: str | None = None
    answered: bool = False
    complete: bool = False
    said: bool = False
    doubted: bool = False  # a count it said could not be read: it says nothing
    passed: int = 0
    unanswered: int = 0  # tries the upstream took and did not answer in time

    def passed_text(self, text: str | None) -> None:
        """A stream's event that adds to the answer (a delta) passed: its text's estimate,
        at least a token."""
        self.passed += max(1, -(-len(text.encode()) // BYTES_PER_TOKEN) if text else 1)

    def passed_bytes(self, size: int) -> None:
        self.passed = -(-size // BYTES_PER_TOKEN)

    def settle(self, input_estimate: int, output_estimate: int) -> None:
        if self.answered and not (self.complete and self.said):
            if self.complete:  # (a count read before one that was not: the larger)
                self.input = max(self.input, input_estimate)
                self.output = max(self.output, self.passed)
            else:
                self.input = self.input or input_estimate
                self.output = max(self.output, self.passed)
        self.input += self.unanswered * input_estimate
        self.output += self.unanswered * output_estimate

    @property
    def billed(self) -> bool:
        """Whether the upstream may have billed the call (else nothing is counted)."""
        return self.answered or self.said or self.unanswered > 0

    def read_body(self, body: bytes) -> None:
        """The model and usage a whole answer, or a stream's event, says."""
        try:
            said = _said.decode(body)
        except msgspec.DecodeError:
            return  # not a JSON object: none said
        if said.type == "message_start" and isinstance(said.message, dict):
            # Messages' stream: its first event holds the input
            model, usage = said.message.get("model"), said.message.get("usage")
        elif isinstance(said.response, dict):  # Responses' stream: response.completed
            model, usage = said.response.get("model"), said.response.get("usage")
        else:
            model, usage = said.model, said.usage
        if isinstance(model, str):
            self.model = model
        if not isinstance(usage, dict):
            return
        inp = out = 0
        read = False
        for key in _COUNTS.intersection(usage):  # (each key once: a dict's)
            value = usage[key]
            if value is None:
                continue  # (a count left null is one not said)
            if type(value) is not int or not 0 <= value <= 10**15:
                # a count it cannot read ("900", -5, a table) says nothing: the call is
                # counted by its estimate, never as 0 (issue 88)
                self.said = False
                self.doubted = True
                return
            read = True
            if key in _INPUT:
                inp += value
            else:
                out += value
        if not read or self.doubted:
            return  # a usage of no count (`{}`) says nothing either
        self.said = True
        if inp:
            self.input = inp  # a stream's later event restates it, never adds to it
        if out:
            self.output = out  # message_delta's count is the running total

