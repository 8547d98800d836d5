"""The engine's own home for its tasks (model.TaskHome): the daemon's state database's
journals when it has one, else the engine's memory; a cluster's task has its cluster's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..labels import LabelStore
    from ..pushstore import PushStore
    from .chunks import OutputJournal
    from .durable import TaskJournal
    from .model import AskShelf, SpawnStore, Task, TurnStore
    from .output import TaskOutputs
    from .stepjournal import StepJournal
    from .steps import TaskSteps


class HomeEngine(Protocol):
    """The engine whose journals the home reads (TaskManager)."""

    journal: TaskJournal | None
    steps: TaskSteps
    outputs: TaskOutputs
    labels: LabelStore
    push: PushStore


class NodeHome:
    """Reads the engine's journals and stores as they are now: the daemon attaches them
    after the engine is made (`TaskManager.journal`, `Steps.journal_to`,
    `TaskOutputs.journal`, `TaskManager.labels` and `.push`)."""

    __slots__ = ("asks", "engine", "spawns", "turns")

    def __init__(self, engine: HomeEngine, turns: TurnStore, spawns: SpawnStore,
                 asks: AskShelf) -> None:
        self.engine = engine
        self.turns = turns
        self.spawns = spawns
        self.asks = asks

    @property
    def labels(self) -> LabelStore:
        return self.engine.labels

    @property
    def push(self) -> PushStore:
        """The A2A door's push configs (daemon/a2a/push.py)."""
        return self.engine.push

    @property
    def steps(self) -> StepJournal | None:
        return self.engine.steps.journal

    @property
    def outputs(self) -> OutputJournal:
        return self.engine.outputs.journal

    def record(self, task: Task) -> None:
        journal = self.engine.journal
        if journal is not None:
            journal.write(task)
            task.journaled = True

    def queue_again(self, task: Task, at: float | None) -> bool:
        return False  # (it waits in this engine: its journal keeps its not_before)
