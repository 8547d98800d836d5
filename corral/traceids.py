"""The ids of a trace made from a task's id (tracecontext.FromId): what the engine's
context and the exporter's spans both derive, in a module of no imports (the exporter's
process has none of the engine's: supervisor/tracerecords.py)."""

from __future__ import annotations

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # spreads attempt numbers over the span id's bits


def id_span(trace_id: int) -> int:
    """The span id of a task (or run) traced from its id, from its trace id."""
    return ((trace_id & MASK64) ^ GOLDEN) or 1


def id_trace(task_id: str) -> int:
    """The trace id of a task traced from its id (tracecontext.FromId)."""
    return int(task_id.replace("-", ""), 16)
