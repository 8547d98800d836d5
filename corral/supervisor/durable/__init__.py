"""One durable engine: a call with keyed steps (docs/durable.md). A call (a workflow's run,
a team's call) is kept with its definition pinned and one row per step; its planner decides
the next steps, the engine runs them, keeps them, and drives each call to its end."""

from .record import CALL_ENDED, STEP_ENDED, WHOLE, CallHandover, CallRecord, StepEnd, StepRow

__all__ = ["CALL_ENDED", "STEP_ENDED", "WHOLE", "CallHandover", "CallRecord", "StepEnd",
           "StepRow"]
