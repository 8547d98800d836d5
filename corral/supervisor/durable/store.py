"""Where durable calls are kept: the one narrow interface the engine writes and reads through
(the daemon's: daemon/callstore.py), and the memory store an embedded engine uses."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from msgspec.structs import replace

from .record import CallRecord, StepRow


class DurableStore(Protocol):
    async def save_call(self, record: CallRecord) -> None:
        """Durable when it returns (its rows are saved apart: save_steps)."""

    async def save_steps(self, call_id: str, rows: list[StepRow]) -> None:
        """Durable when it returns: a step's task id before its task is submitted."""

    def load(self, call_id: str) -> CallRecord | None:
        """A call kept, with its rows (their outputs left in the store)."""

    def unfinished(self, kind: str) -> list[CallRecord]:
        """The calls of this kind still running, oldest first."""

    def output(self, call_id: str, step: str, item: int) -> Any: ...


@runtime_checkable
class EndKeeper(Protocol):
    """A store that keeps a call's end and its last step's in one commit (the daemon's)."""

    async def save_end(self, record: CallRecord, rows: list[StepRow]) -> None:
        """The call's record and these rows of its steps, durable together when it returns."""


class SharedStore(DurableStore, Protocol):
    """A store daemons share (cluster/clustercalls.py), each copying the calls it touches."""

    async def newest(self, kind: str, n: int) -> list[str]:
        """The ids of the newest `n` calls of `kind`, whoever drives them."""

    async def copy(self, call_ids: list[str]) -> None:
        """This daemon's copies of these calls as the shared store holds them now."""

    def stopped(self, call_id: str) -> None:
        """The call's driver here stopped with it running (the store failed): to be driven again."""


class MemoryStore:
    def __init__(self) -> None:
        self.calls: dict[str, CallRecord] = {}
        self.outputs: dict[tuple[str, str, int], Any] = {}

    async def save_call(self, record: CallRecord) -> None:
        kept = self.calls.get(record.call_id)
        self.calls[record.call_id] = replace(record, rows=dict(kept.rows) if kept else {})

    async def save_steps(self, call_id: str, rows: list[StepRow]) -> None:
        kept = self.calls.get(call_id)
        for r in rows:
            self.outputs[(call_id, r.step, r.item)] = r.output
            if kept is not None:
                kept.rows[(r.step, r.item)] = replace(r, output=None)

    def load(self, call_id: str) -> CallRecord | None:
        kept = self.calls.get(call_id)
        return replace(kept, rows=dict(kept.rows)) if kept is not None else None

    def unfinished(self, kind: str) -> list[CallRecord]:
        return [replace(c, rows=dict(c.rows)) for _, c in sorted(self.calls.items())
                if c.kind == kind and c.status == "running"]

    def output(self, call_id: str, step: str, item: int) -> Any:
        return self.outputs.get((call_id, step, item))
