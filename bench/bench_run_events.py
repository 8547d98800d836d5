"""What a workflow run's events cost (issue 40, docs/workflows.md "Events"): one step's
`StepEnded` emitted on the Stream and published on the event bus, with nobody listening
and with a follower of `corral.*` (as `corral events tail`), per event.

    .venv/bin/python -m bench.bench_run_events
"""

from __future__ import annotations

import json
import time

import msgspec

from corral.daemon.workflows.runevents import StepEnded, publish_runs
from corral.daemon.workflows.runstore import Run
from corral.supervisor.durable import WHOLE, StepRow
from corral.supervisor.events import EventBus
from corral.supervisor.stream import Stream
from corral.supervisor.workflows import WorkflowSpec, compile_workflow

EVENTS = 20_000


def per_event(follow: bool) -> float:
    spec = msgspec.json.decode(json.dumps({"steps": [{"name": "a", "agent": "x"}]}),
                               type=WorkflowSpec)
    run = Run("r1", "w", compile_workflow("w", spec), None, "running", time.time())
    row = StepRow("a", WHOLE, "succeeded", "t1", time.time(), time.time(),
                  {"greeting": "hello"})
    stream = Stream()
    bus = EventBus(stream, {}, {})
    publish_runs(stream, bus, lambda agent: "default")
    follower = bus.follow("corral.*") if follow else None
    t0 = time.perf_counter()
    for _ in range(EVENTS):
        stream.emit(StepEnded(run, row))
        if follower is not None and len(follower.queue) > 5000:
            follower.queue.clear()  # a reader that keeps up
    return (time.perf_counter() - t0) / EVENTS * 1e6


def main() -> None:
    for follow in (False, True, False, True):
        print(f"{'a follower' if follow else 'nobody listening'}: "
              f"{per_event(follow):.2f} us per step event")


if __name__ == "__main__":
    main()
