"""A batch of the engine's records as one OTLP request, for the exporter process: a task's
three spans from a template kept per shape (docs/tracing.md), every other record through
its spans (`expand`) and otlp.py's `span`. A template is otlp.py's bytes for a shape's
first record, cut where the ids, the times and the task id lie; it is checked when made
(filled with its own record's fields it must give those bytes), else the shape is written
the long way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from struct import Struct
from typing import Any

from ..supervisor.tracerecords import QUEUE_MIX, TASK, TOOL, call_id_of, expand, spans_of
from ..traceids import GOLDEN, MASK64
from .otlp import attribute, encode_spans, span, varint

# a tool call's owner that is no task: a gateway client, a replica on the worker link
OWNERS = ("gateway:", "replica:")
KEPT_SHAPES = 1024  # templates kept; past it, they start over
ATTEMPT_KEYS = 6  # an attempt's fields as a plain local attempt sends them (no node, no replay)
_ID = Struct(">Q").pack

Filler = Callable[[Sequence[Any], dict[str, Any]], bytes]
_templates: dict[tuple[Any, ...], Filler | None] = {}
ToolFiller = Callable[[Sequence[Any]], bytes]
_tools: dict[tuple[Any, ...], ToolFiller | None] = {}  # a tool call's, per shape


def encode(batch: Sequence[tuple[Sequence[Any], bool]], service: str, node: str,
           version: str = "") -> tuple[bytes, int]:
    """An ExportTraceServiceRequest of the spans of `batch`'s records, and how many spans
    it holds; `batch`: (record as the pipe brought it, whether its msgpack was TEXT_MAX
    bytes at most) pairs (supervisor/tracerecords.py's `expand`)."""
    body: list[bytes] = []
    add = body.append
    spans = 0
    get = _templates.get
    for record, short in batch:
        # (a session's turn: span by span, its conversation's id no template's field)
        if short and record[0] == TASK and record[13] is None and not record[15] and (
                len(record) < 17 or record[16] is None):
            attempts = record[14]
            if len(attempts) == 1 and len(a := attempts[0]) == ATTEMPT_KEYS:
                task_id = record[6]
                key = (record[1] is None, record[4] != 0, record[5], record[7], record[8],
                       record[9], record[10], len(task_id.encode()), a["replica"], a["pid"],
                       a["outcome"], a["error"])
                fill = get(key)
                if fill is None and key not in _templates:
                    fill = _template(key, record)
                if fill is not None:
                    add(fill(record, a))
                    spans += 3
                    continue
        elif short and record[0] == TOOL and record[4] and (
                (rid := record[9]) is None or (type(rid) is int and rid >= 0)):
            # a tool call's span: the same bytes as its server's, tool's, attempt's and
            # outcome's last call but for its ids, times, task id and request id
            task_id = record[6]
            gateway = task_id.startswith(OWNERS)  # (a client's: one name, not an id)
            more = tuple(record[13:16])
            tool_key = (record[5], record[8], record[7], record[12],
                        task_id if gateway else len(task_id.encode()),
                        None if rid is None else len(str(rid)), more[:2],
                        len(more) > 2 and more[2] is not None)
            tool_fill = _tools.get(tool_key)
            if tool_fill is None and tool_key not in _tools:
                tool_fill = _tool_template(tool_key, record, gateway)
            if tool_fill is not None:
                add(tool_fill(record))
                spans += 1
                continue
        for s in expand(record, short):
            one = span(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9])
            n = len(one)
            body += (b"\x12", bytes((n,)) if n < 0x80 else varint(n), one)
        spans += spans_of(record)
    return encode_spans(body, service, node, version), spans


def _template(key: tuple[Any, ...], record: Sequence[Any]) -> Filler | None:
    """The template of `record`'s shape, made from its spans as otlp.py writes them and
    checked against them; None when the two differ."""
    if len(_templates) >= KEPT_SHAPES:
        _templates.clear()
    spans = expand(record, True)
    whole = bytearray()
    cuts: list[tuple[int, int, str]] = []  # (offset, length, struct code) of each field
    for i, s in enumerate(spans):
        one = span(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9])
        whole += b"\x12" + varint(len(one))
        at = len(whole)
        has_parent = bool(s[2])
        head = 28 + (10 if has_parent else 0)
        named = len(b"\x2a" + varint(len(s[3].encode())) + s[3].encode()) + 1 + len(
            varint(s[4]))
        cuts += [(at + 2, 16, "16s"), (at + 20, 8, "8s")]
        if i == 0:  # the task's parent: there or not
            cuts.append((at + 28, 10 if has_parent else 0, "10s" if has_parent else "0s"))
        else:  # a queue wait's and an attempt's parent: the task's span
            cuts.append((at + 30, 8, "8s"))
        cuts += [(at + head + named + 1, 8, "Q"), (at + head + named + 10, 8, "Q")]
        if i == 0:  # the task's id, in its attributes
            x = s[10].encode()
            found = one.find(x, head + named + 18)
            if found < 0 or one.count(x) != 1:
                _templates[key] = None
                return None
            cuts.append((at + found, len(x), f"{len(x)}s"))
        whole += one
    fill = _filler(*_cut(bytes(whole), cuts))
    a = record[14][0]
    checked: Filler | None = fill if fill(record, a) == whole else None
    _templates[key] = checked
    return checked


def _cut(whole: bytes, cuts: list[tuple[int, int, str]]
         ) -> tuple[Callable[..., bytes], list[bytes]]:
    """A template's `pack` of `whole` cut at `cuts` ((offset, length, struct code) each,
    in order), and the bytes kept between the cuts."""
    code = ["<"]
    kept: list[bytes] = []
    at = 0
    for offset, length, field in cuts:
        kept.append(whole[at:offset])
        code += (f"{offset - at}s", field)
        at = offset + length
    kept.append(whole[at:])
    code.append(f"{len(whole) - at}s")
    return Struct("".join(code)).pack, kept


def _filler(pack: Callable[..., bytes], kept: list[bytes]) -> Filler:
    """The template's fill: a one-attempt task record's fields that the template leaves
    out, worked out as `expand` does and joined with the template's cuts in one `pack`:
    each span's trace id, span id, parent and times, and the task's id."""
    (k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, k11, k12, k13, k14, k15, k16) = kept
    to_id = _ID
    fromhex, from_bytes = bytes.fromhex, int.from_bytes

    def fill(record: Sequence[Any], a: dict[str, Any]) -> bytes:
        task_id = record[6]
        if record[1] is None:  # traced from its id (tracecontext.FromId)
            tid_b = fromhex(task_id.replace("-", ""))
            low = from_bytes(tid_b[8:])
            own = (low ^ GOLDEN) or 1
        else:
            tid_b = (record[1] << 64 | record[2]).to_bytes(16, "big")
            own = record[3]
        own_b = to_id(own)
        parent = record[4]
        created = int(record[11] * 1e9)
        end = int(record[12] * 1e9)
        started = int(a["started"] * 1e9)
        finished = int((a["finished"] or record[12]) * 1e9)
        return pack(k0, tid_b, k1, own_b, k2, b"\x22\x08" + to_id(parent) if parent else b"",
                    k3, created, k4, end if end > created else created, k5, task_id.encode(),
                    k6, tid_b, k7, to_id(((own ^ GOLDEN ^ QUEUE_MIX) & MASK64) or 1), k8,
                    own_b, k9, created, k10, started if started > created else created, k11,
                    tid_b, k12, to_id(((own ^ GOLDEN) & MASK64) or 1), k13, own_b, k14,
                    started, k15, finished if finished > started else started, k16)

    return fill


def _tool_template(key: tuple[Any, ...], record: Sequence[Any], gateway: bool
                   ) -> ToolFiller | None:
    """The template of a tool call's span (a parent always there), cut at its ids, its
    times, and its texts that differ call by call: its task id (not a gateway client's,
    which is in the key), its call id (a key, or its span id's hex) and its request id;
    checked against otlp.py's bytes for its own record and for one whose every cut field
    differs; None when either differs."""
    if len(_tools) >= KEPT_SHAPES:
        _tools.clear()
    s = expand(record, True)[0]
    one = span(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9])
    whole = b"\x12" + varint(len(one)) + one
    at = len(whole) - len(one)
    named = len(b"\x2a" + varint(len(s[3].encode())) + s[3].encode()) + 1 + len(
        varint(s[4]))
    cuts = [(at + 2, 16, "16s"), (at + 20, 8, "8s"), (at + 30, 8, "8s"),
            (at + 38 + named + 1, 8, "Q"), (at + 38 + named + 10, 8, "Q")]
    texts: list[tuple[str, Callable[[Sequence[Any]], str]]] = []
    if not gateway:
        texts.append(("corral.task.id", lambda r: str(r[6])))
    texts.append(("gen_ai.tool.call.id", call_id_of))
    if record[9] is not None:
        texts.append(("jsonrpc.request.id", lambda r: str(r[9])))
    found_at: list[tuple[int, Callable[[Sequence[Any]], str]]] = []
    for name, text_of in texts:  # each text is its attribute's last bytes
        text = text_of(record)
        made = attribute(b"\x4a", name, text)
        found = one.find(made)
        if found < 0:
            _tools[key] = None
            return None
        x = text.encode()
        cuts.append((at + found + len(made) - len(x), len(x), f"{len(x)}s"))
        found_at.append((found, text_of))
    cuts.sort()
    fill = _tool_filler(*_cut(whole, cuts), [t for _, t in sorted(found_at,
                                                                  key=lambda f: f[0])])
    checked: ToolFiller | None = fill
    probe = _probe(record, gateway)
    ps = expand(probe, True)[0]
    pone = span(ps[0], ps[1], ps[2], ps[3], ps[4], ps[5], ps[6], ps[7], ps[8], ps[9])
    if fill(record) != whole or fill(probe) != b"\x12" + varint(len(pone)) + pone:
        checked = None
    _tools[key] = checked
    return checked


def _probe(record: Sequence[Any], gateway: bool) -> list[Any]:
    """`record` with every field a tool template cuts changed (the same lengths)."""
    probe = list(record)
    probe[1] ^= 0x0102030405060708
    probe[2] ^= 0x1112131415161718
    probe[3] = (probe[3] ^ 0x2122232425262728) or 1
    probe[4] = (probe[4] ^ 0x3132333435363738) or 1
    probe[10] += 1.5
    probe[11] += 2.5
    if not gateway:
        probe[6] = probe[6][::-1]
    if len(probe) > 15 and probe[15] is not None:
        probe[15] = probe[15][::-1]
    if probe[9] is not None:
        n = len(str(probe[9]))
        probe[9] = int("9" * n) if probe[9] != int("9" * n) else 10 ** (n - 1) if n > 1 else 0
    return probe


def _tool_filler(pack: Callable[..., bytes], kept: list[bytes],
                 texts: Sequence[Callable[[Sequence[Any]], str]]) -> ToolFiller:
    """A tool call record's ids, times and texts (`texts`, in their order in the span)
    joined with the template's cuts."""
    to_id = _ID
    k0, k1, k2, k3, k4, k5, *rest = kept

    def fill(record: Sequence[Any]) -> bytes:
        start = int(record[10] * 1e9)
        end = int(record[11] * 1e9)
        fields = [k0, (record[1] << 64 | record[2]).to_bytes(16, "big"), k1,
                  to_id(record[3]), k2, to_id(record[4]), k3, start, k4,
                  end if end > start else start, k5]
        for text_of, after in zip(texts, rest, strict=True):
            fields += (text_of(record).encode(), after)
        return pack(*fields)

    return fill
