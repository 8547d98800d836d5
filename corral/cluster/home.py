"""The cluster's home for the tasks a node claims (supervisor.tasks.model.TaskHome): their
steps, turns, spawns, asks, labels, push configs and live output in the cluster's Redis,
where whichever node runs the task next, or serves its stream, finds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..supervisor.labels import LabelStore
    from ..supervisor.pushstore import PushStore
    from ..supervisor.tasks.chunks import OutputJournal
    from ..supervisor.tasks.model import AskShelf, SpawnStore, Task, TurnStore
    from ..supervisor.tasks.stepjournal import StepJournal


class ClusterHome:
    """One per node, given to each task it claims (a claim given back as it is made has
    none: it keeps nothing here)."""

    __slots__ = ("_requeue", "asks", "labels", "outputs", "push", "spawns", "steps", "turns")

    def __init__(self, steps: StepJournal, turns: TurnStore, spawns: SpawnStore,
                 asks: AskShelf, labels: LabelStore, push: PushStore,
                 outputs: OutputJournal,
                 requeue: Callable[[Task, float | None], None]) -> None:
        self.steps: StepJournal | None = steps
        self.turns = turns
        self.spawns = spawns
        self.asks = asks
        self.labels = labels
        self.push = push  # the A2A door's push configs (clusterpush.py)
        self.outputs = outputs
        self._requeue = requeue

    def queue_again(self, task: Task, at: float | None) -> bool:
        # in Redis, for whichever node has room when it is due: its attempts, steps and
        # retries left are the record's, not this node's
        self._requeue(task, at)
        return True

    def record(self, task: Task) -> None:
        # (its outcome is fenced into Redis by the claim: outbox.py)
        return None
