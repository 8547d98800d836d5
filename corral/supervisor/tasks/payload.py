"""A task's payloads on the wire: inputs encoded to JSON once, and a worker's `task/run`
answer read in one pass, its output kept as the bytes it came in, in an `Output`, which
the garbage collector never walks; for a Python caller that pass decodes the values."""

from __future__ import annotations

import gc
from typing import Any

import msgspec
import orjson

from ...jsonrpc import not_utf8

# orjson encodes JSON's own types as msgspec does, ~8x faster on long strings (SIMD escape
# checks); anything else (a datetime, a dataclass, a subclass, an int past 64 bits, a key
# that is not a string) goes to msgspec, so an input's JSON is msgspec's in every case.
_ORJSON_OPTIONS = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                   | orjson.OPT_PASSTHROUGH_SUBCLASS)


def _not_native(value: Any) -> Any:
    raise TypeError


# orjson hands over its buffer of a KiB or more as the bytes, so a short input held by a
# queued task holds the whole buffer; below this size an exact copy costs less
_COPY_BELOW = 16384


def encode_input(value: Any) -> bytes:
    try:
        out = orjson.dumps(value, default=_not_native, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        return msgspec.json.encode(value)  # (its error, if any, is the caller's to see)
    # (the copy by a join: a third of the cost of one through a memoryview)
    return b"".join((out, b"")) if len(out) < _COPY_BELOW else out


class _RawRunResult(msgspec.Struct):
    """A worker's `task/run` result, the output left as its JSON bytes."""

    output: msgspec.Raw = msgspec.Raw(b"null")  # (Raw cannot be part of a union)


_raw_run_result = msgspec.json.Decoder(_RawRunResult)


def raw_output_of(raw_result: msgspec.Raw) -> msgspec.Raw:
    try:
        out: msgspec.Raw = _raw_run_result.decode(raw_result).output
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _RawRunResult().output  # a worker's result that is not an object: no output
    return out


# The worker's whole answer line, read in one pass (`Peer.expect(decode=...)`),
# its output left as JSON bytes; unknown members (both result and error, say) make the
# line take the usual way.
class _RawAnswer(msgspec.Struct, forbid_unknown_fields=True):
    jsonrpc: str
    id: int
    result: _RawRunResult


class Output(msgspec.Struct, gc=False):
    """A succeeded task's output as its JSON bytes, never an object graph for the collector to
    walk. Read for a Python caller (`read_values`), its values wait here decoded once, and the
    bytes are read from the answer's line only if something asks."""

    held: msgspec.Raw | None  # the output's bytes, once read
    size: int  # bytes held, for `kept_bytes`
    line: bytes | None = None  # the answer's line, where its output's bytes are read
    value: Any = None
    fresh: bool = False  # `value` not yet taken

    @property
    def raw(self) -> msgspec.Raw:
        held = self.held
        if held is None:
            assert self.line is not None
            # the line decoded into values before, so it is an answer of this layout (the
            # line stays: the bytes are a view of it, as read_raw's are)
            held = self.held = _raw_answer.decode(self.line).result.output
        return held

    def forget(self) -> None:
        """No caller will take the values: only the bytes are kept."""
        self.value, self.fresh = None, False

    def python(self) -> Any:
        if self.fresh:  # once: the values are the caller's, not kept with the task
            value, self.value, self.fresh = self.value, None, False
            return value
        return acyclic(self.raw)


_raw_answer = msgspec.json.Decoder(_RawAnswer)


def acyclic(raw: bytes) -> Any:
    """JSON as Python values, the cyclic collector off meanwhile: what is decoded has no cycles,
    and a pass amid a large document would only age the half-built values."""
    if not gc.isenabled():
        return msgspec.json.decode(raw)
    gc.disable()
    try:
        return msgspec.json.decode(raw)
    finally:
        gc.enable()


def read_raw(line: bytes) -> tuple[int, Output]:
    if (why := not_utf8(line)) is not None:  # (its output kept Raw: the usual way refuses it)
        raise msgspec.DecodeError(why)
    answer = _raw_answer.decode(line)
    return answer.id, Output(answer.result.output, len(line))


class _RunResult(msgspec.Struct):
    output: Any = None


class _Answer(msgspec.Struct, forbid_unknown_fields=True):
    """`_RawAnswer` with the output decoded: what it accepts and refuses is the same."""

    jsonrpc: str
    id: int
    result: _RunResult


_answer = msgspec.json.Decoder(_Answer)
# a line this short holds too few containers for a collection within its decode to
# matter (the first threshold counts hundreds): the collector is left on for it
_FEW_CONTAINERS = 1024


def read_values(line: bytes) -> tuple[int, Output]:
    """`read_raw` for a Python caller: the output decoded in the pass that reads the answer."""
    size = len(line)
    if size < _FEW_CONTAINERS or not gc.isenabled():
        answer = _answer.decode(line)
    else:
        gc.disable()  # (as acyclic)
        try:
            answer = _answer.decode(line)
        finally:
            gc.enable()
    return answer.id, Output(None, size, line, answer.result.output, True)


def output_of(result: Any) -> Output:
    """What a `task/run` answer's decoder made of it, or of its raw result."""
    if isinstance(result, Output):
        return result
    return Output(raw_output_of(result), len(result))

