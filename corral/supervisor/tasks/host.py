"""What the task manager needs of the engine that runs it (the Supervisor): a Protocol, so
that the task package never imports the module that builds it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import AgentSpec
    from ..replica import Replica
    from ..stream import Stream


class AgentLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> AgentSpec: ...

    @property
    def replicas(self) -> list[Replica]: ...


class TaskHost(Protocol):
    @property
    def agents(self) -> Mapping[str, AgentLike]: ...

    @property
    def closing(self) -> bool: ...

    @property
    def stream(self) -> Stream: ...

    @property
    def worker_methods(self) -> dict[str, Callable[[Replica, Any], Any]]: ...

    @property
    def worker_notifications(self) -> dict[str, Callable[[Replica, Any], None]]: ...

    def agent(self, name: str) -> AgentLike: ...

    def wake(self, name: str) -> None:
        """A task waits for an agent with no replica (an elastic one wakes)."""
