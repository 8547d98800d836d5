"""A task that starts its trace is sampled by its id's last 14 hex digits (the trace id's
low 56 bits) without parsing the rest: the same decision `Sampling.head` makes."""

from __future__ import annotations

import msgspec

from corral.supervisor.tasks.model import Task
from corral.supervisor.tracing import Sampling, Tracer
from corral.tracecontext import FROM_ID, id_trace


def test_a_new_traces_decision_from_its_id_is_the_heads() -> None:
    for ratio in (0.0, 0.1, 0.5, 0.999, 1.0):
        sampling = Sampling(ratio, True, 10.0)
        tracer = Tracer(sampling)
        kept = 0
        for _ in range(4000):
            task = Task("a", msgspec.Raw(b"{}"), 0, 1.0, 0, 0)
            tracer.begin(task, None, None)
            assert task.trace is FROM_ID[sampling.head(id_trace(task.id), None)], (
                ratio, task.id)
            kept += task.trace is FROM_ID[True]
        assert (kept == 0) if ratio == 0.0 else (kept == 4000) if ratio == 1.0 else (
            0.5 * ratio * 4000 < kept < 1.5 * ratio * 4000 + 20)
    # a ratio set later is the one read
    tracer.sampling = Sampling(0.0, True, 10.0)
    task = Task("a", msgspec.Raw(b"{}"), 0, 1.0, 0, 0)
    tracer.begin(task, None, None)
    assert task.trace is FROM_ID[False]
