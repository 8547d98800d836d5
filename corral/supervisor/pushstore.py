"""Where a task's home keeps its push notification configs (the A2A door's, spec 3.5.3:
daemon/a2a/push.py is the logic, written once above the homes): a record per config of a
task, opaque to the home, so that a restarted daemon, or another node of a cluster,
delivers what the task does next. The home answers one atomic question: a config kept
unless its task has its most already."""

from __future__ import annotations

from typing import Protocol


class PushStore(Protocol):
    """A task's configs, each a record by its id, in the order first kept."""

    @property
    def shared(self) -> bool:
        """Whether other daemons deliver from it too (a cluster's): one that dies says
        so by its lease lapsing alone, so the others look again at a lease's period.
        False: this daemon alone takes what it keeps, at its start and as each config
        is made, and looks again at nothing."""

    async def put(self, task_id: str, config_id: str, record: bytes, most: int) -> bool:
        """The record kept (one of its id replaced) before this returns; False, and
        nothing kept, when the task has `most` others already."""

    async def of(self, task_id: str) -> dict[str, bytes]:
        """The task's records by config id, the first kept first."""

    async def delete(self, task_id: str, config_id: str) -> None:
        """Gone, whether it was there or not."""

    async def drop(self, task_id: str) -> None:
        """Every record of the task gone (its configs delivered its end)."""

    async def tasks(self) -> list[str]:
        """The tasks that have records (a daemon's start delivers for each)."""

    async def lead(self, task_id: str, holder: str, seconds: float) -> bool:
        """Whether `holder` delivers the task's events now: it does unless another holder
        said it does within `seconds` (one daemon of a cluster's nodes at a time; the
        others take over when it says so no more)."""


class MemoryPush:
    """A PushStore in this process's memory (an engine without a state database)."""

    __slots__ = ("_by",)
    shared = False

    def __init__(self) -> None:
        self._by: dict[str, dict[str, bytes]] = {}

    async def put(self, task_id: str, config_id: str, record: bytes, most: int) -> bool:
        kept = self._by.setdefault(task_id, {})
        if config_id not in kept and len(kept) >= most:
            if not kept:
                del self._by[task_id]
            return False
        kept[config_id] = record
        return True

    async def of(self, task_id: str) -> dict[str, bytes]:
        return dict(self._by.get(task_id, {}))

    async def delete(self, task_id: str, config_id: str) -> None:
        kept = self._by.get(task_id, {})
        kept.pop(config_id, None)
        if not kept:
            self._by.pop(task_id, None)

    async def drop(self, task_id: str) -> None:
        self._by.pop(task_id, None)

    async def tasks(self) -> list[str]:
        return list(self._by)

    async def lead(self, task_id: str, holder: str, seconds: float) -> bool:
        return True  # (this process alone delivers)

