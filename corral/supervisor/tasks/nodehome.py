"""The engine's own home for its tasks (model.TaskHome): the daemon's state database's
journals when it has one, else the engine's memory; a cluster's task has its cluster's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .chunks import OutputJournal
    from .durable import TaskJournal
    from .inbox import Inbox
    from .model import AskShelf, SpawnStore, Task, TurnStore
    from .output import TaskOutputs
    from .sessions import Sessions
    from .spawn import Spawns
    from .stepjournal import StepJournal
    from .steps import TaskSteps


class HomeEngine(Protocol):
    """The engine whose journals the home reads (TaskManager)."""

    journal: TaskJournal | None
    inbox: Inbox
    steps: TaskSteps
    outputs: TaskOutputs
    sessions: Sessions
    spawns: Spawns


class NodeHome:
    """Reads the engine's journals as they are now: the daemon attaches them after the
    engine is made (`TaskManager.journal`, `Steps.journal_to`, `TaskOutputs.journal`)."""

    __slots__ = ("engine",)

    def __init__(self, engine: HomeEngine) -> None:
        self.engine = engine

    @property
    def steps(self) -> StepJournal | None:
        return self.engine.steps.journal

    @property
    def outputs(self) -> OutputJournal:
        return self.engine.outputs.journal

    @property
    def turns(self) -> TurnStore:
        return self.engine.sessions

    @property
    def spawns(self) -> SpawnStore:
        return self.engine.spawns.node

    @property
    def asks(self) -> AskShelf:
        return self.engine.inbox

    def record(self, task: Task) -> None:
        journal = self.engine.journal
        if journal is not None:
            journal.write(task)
            task.journaled = True

    def queue_again(self, task: Task, at: float | None) -> bool:
        return False  # (it waits in this engine: its journal keeps its not_before)
