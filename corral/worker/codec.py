"""The protocol's JSON, one message a line: the stdlib's C scanner and encoder at
start-up, a faster codec from a line's size on (`loads`, `dumps`; `try_fast_json`)."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~2 ms to import
if TYPE_CHECKING:
    from typing import Any

# `import json` pulls in re and enum (~5 ms); its C accelerator alone is what does the work.
try:
    import _json

    class _ScanContext:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = float  # NaN, Infinity, -Infinity
        memo: dict[str, str] = {}

    _scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    _encode = _json.make_encoder(
        None, str, _json.encode_basestring, None, ":", ",", False, False, True
    )

    def _std_loads(line: bytes) -> Any:
        text = str(line, "utf-8")
        # no strip(): that would copy a 10 MB line to drop its newline
        start = 0
        while start < len(text) and text[start] in " \t\r\n":
            start += 1
        try:
            value, end = _scan(text, start)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text) and not text[end:].isspace():
            raise ValueError("extra data after the JSON value")
        return value

except (ImportError, AttributeError):  # pragma: no cover - an interpreter without _json
    import json

    def _std_loads(line: bytes) -> Any:
        return json.loads(line)

    def _encode(obj: Any, _: int) -> list[str]:  # type: ignore[misc]
        return [json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)]


def _std_dumps(obj: Any) -> bytes:
    return "".join([*_encode(obj, 0), "\n"]).encode("utf-8")


def _std_answer(rid: Any, output: Any) -> bytes:
    # the envelope as text, the output alone encoded: the encoder's cost is per object
    head = str(rid) if rid.__class__ is int else "".join(_encode(rid, 0))
    return "".join(['{"jsonrpc":"2.0","id":', head, ',"result":{"output":',
                    *_encode(output, 0), "}}\n"]).encode("utf-8")


def given(**members: Any) -> dict[str, Any]:
    """A message's optional members: those given (None is left out)."""
    return {k: v for k, v in members.items() if v is not None}


# A line this long, or this many in one read, is worth a fast codec (~10x the stdlib's
# speed on a large document, ~3x on a tiny task's; docs/sdk.md): imported then, not at
# start-up (msgspec: ~50 ms), and used from then on.
FAST_JSON_AT = 64 * 1024
FAST_JSON_BURST = 32
loads = _std_loads
dumps = _std_dumps
answer = _std_answer  # a task's output as its `task/run`'s answer
fast_tried = False


def _module(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


def try_fast_json() -> None:
    """The fastest codec there is each way: msgspec decodes (orjson: ~1.2x its time on 1 MB),
    orjson encodes (msgspec: ~8x on a long ASCII string), what orjson refuses the next."""
    global loads, dumps, answer, fast_tried
    fast_tried = True
    if os.environ.get("CORRAL_FAST_JSON", "1") == "0":
        return
    msgspec, orjson = _module("msgspec"), _module("orjson")
    if msgspec is not None:
        decode = msgspec.json.Decoder().decode
        encoder = msgspec.json.Encoder(enc_hook=str)

        def msgspec_loads(line: bytes) -> Any:
            try:
                return decode(line)
            except msgspec.DecodeError as exc:
                raise ValueError(str(exc)) from None

        def msgspec_dumps(obj: Any) -> bytes:
            buf = bytearray()
            encoder.encode_into(obj, buf)
            buf += b"\n"
            return buf  # type: ignore[return-value]

        loads, dumps = msgspec_loads, msgspec_dumps
    if orjson is not None:
        oj_dumps, oj_loads, newline = orjson.dumps, orjson.loads, orjson.OPT_APPEND_NEWLINE
        refused, then = orjson.JSONEncodeError, dumps

        def orjson_dumps(obj: Any) -> bytes:
            try:
                out: bytes = oj_dumps(obj, default=str, option=newline)
            except refused:
                return then(obj)
            return out

        def orjson_loads(line: bytes) -> Any:
            try:
                return oj_loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(str(exc)) from None

        dumps = orjson_dumps
        if msgspec is None:
            loads = orjson_loads
    if dumps is not _std_dumps:
        answer = lambda rid, output: dumps(  # noqa: E731
            {"jsonrpc": "2.0", "id": rid, "result": {"output": output}})
