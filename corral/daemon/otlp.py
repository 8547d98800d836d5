"""OTLP's trace protobuf written by hand: an `ExportTraceServiceRequest` of the engine's
spans (supervisor/tracerecords.py's Span), for the exporter process, at a fraction of the
official `opentelemetry-proto` messages' CPU (docs/tracing.md): each attribute's `KeyValue`
bytes are kept by (key, value). tests/test_otlp.py decodes the output with the official
package, field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any

_FIXED64 = Struct("<Q").pack
_DOUBLE = Struct("<d").pack
MASK64 = (1 << 64) - 1
STATUS_CODE_ERROR = 2
KEPT_VALUES = 8192  # KeyValue encodings kept for reuse; past it, the cache starts over


def varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (`tag` the field number shifted, wire type 2)."""
    return bytes((tag,)) + varint(len(payload)) + payload


def _any_value(v: Any) -> bytes:
    kind = type(v)
    if kind is bool:
        return b"\x10\x01" if v else b"\x10\x00"
    if kind is int:
        return b"\x18" + varint(v & MASK64)
    if kind is float:
        return b"\x21" + _DOUBLE(v)
    return _field(0x0A, str(v).encode())


_made: dict[tuple[bytes, str, Any, type], bytes] = {}


def attribute(tag: bytes, key: str, v: Any) -> bytes:
    """A KeyValue message as the field `tag` of its container (a span's, an event's or a
    resource's attributes), made once for each (key, value)."""
    kind = type(v)
    found = _made.get((tag, key, v, kind))
    if found is not None:
        return found
    body = _field(0x0A, key.encode()) + _field(0x12, _any_value(v))
    if len(_made) >= KEPT_VALUES:
        _made.clear()
    made = _made[(tag, key, v, kind)] = tag + varint(len(body)) + body
    return made


def _attributes(tag: bytes, attrs: dict[str, Any]) -> bytes:
    get = _made.get
    return b"".join([get((tag, k, v, type(v))) or attribute(tag, k, v)
                     for k, v in attrs.items()])


_named: dict[tuple[str, int], bytes] = {}  # a span's name and kind fields (few repeat)


def span(trace_id: int, span_id: int, parent_id: int, name: str, kind: int, start: float,
         end: float, error: str | None, attrs: dict[str, Any],
         events: Sequence[Sequence[Any]]) -> bytes:
    """One Span message (without its own tag and length)."""
    named = _named.get((name, kind))
    if named is None:
        name_b = name.encode()
        named = b"\x2a" + varint(len(name_b)) + name_b + b"\x30" + varint(kind)
        if len(_named) >= KEPT_VALUES:
            _named.clear()
        _named[(name, kind)] = named
    begin = int(start * 1e9)
    head = (b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08"
            + span_id.to_bytes(8, "big"))
    if parent_id:
        head += b"\x22\x08" + parent_id.to_bytes(8, "big")
    parts = [head, named, b"\x39", _FIXED64(begin), b"\x41",
             _FIXED64(max(int(end * 1e9), begin))]
    if attrs:
        parts.append(_attributes(b"\x4a", attrs))
    for t, n, a in events:
        n_b = n.encode()
        event = b"".join([b"\x09", _FIXED64(int(t * 1e9)), b"\x12", varint(len(n_b)), n_b,
                          _attributes(b"\x1a", a)])
        parts += (b"\x5a", varint(len(event)), event)
    if error is not None:
        status = _field(0x12, error.encode()) + b"\x18" + varint(STATUS_CODE_ERROR)
        parts += (b"\x7a", varint(len(status)), status)
    return b"".join(parts)


def encode_spans(spans: list[bytes], service: str, node: str, version: str = "") -> bytes:
    """An ExportTraceServiceRequest of spans already written, in parts whose join is
    ScopeSpans' spans (each its tag and length, then `span`'s bytes); one resource (the
    daemon), one scope. One join: a batch's bytes are copied once."""
    resource = _attributes(b"\x0a", {
        "service.name": service, "service.version": version, "host.name": node,
        "telemetry.sdk.name": "corral", "telemetry.sdk.language": "python"})
    scope_field = _field(0x0A, _field(0x0A, b"corral") + _field(0x12, version.encode()))
    scope_spans = len(scope_field) + sum(map(len, spans))
    head = (b"\x0a" + varint(len(resource)) + resource + b"\x12" + varint(scope_spans)
            + scope_field)
    resource_spans = len(head) + scope_spans - len(scope_field)
    return b"".join([b"\x0a", varint(resource_spans), head, *spans])
