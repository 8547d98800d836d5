"""A model call as the chain's links read it (DESIGN section 28): the model gateway (its
door, corral/daemon/models/) reads a request into a `Call` whose `model` is a `ModelCall`,
and the links (modelview.py, modelapprovals.py, modelbudget.py, modelspan.py) judge it,
refusing it with a `ModelRefusal` the door writes back in the provider's format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    from ..config import ModelSpec
    from .budget import Reservation


class ModelRefusal(Exception):
    """A model call refused: its HTTP status and words (`param`: the request's member at
    fault, as OpenAI's errors name it)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class ModelCounter:
    """A model's calls, as the gateway's stats show them."""

    __slots__ = ("calls", "cut", "errors", "input_tokens", "output_tokens", "refused",
                 "replayed")

    def __init__(self) -> None:
        self.calls = self.replayed = self.errors = self.cut = self.refused = 0
        self.input_tokens = self.output_tokens = 0


class ModelAsk(Protocol):
    """What a request asks that the links read (the door's request.py `ModelRequest`)."""

    @property
    def bound(self) -> int | None: ...  # its output's bound, in tokens

    @property
    def digest(self) -> str: ...

    @property
    def stream(self) -> bool: ...

    @property
    def input_estimate(self) -> int: ...

    @property
    def output_estimate(self) -> int: ...


class UpstreamUsage(Protocol):
    """What the upstream said the call used (the door's usage.py `CallUsage`), read at
    its end."""

    input: int
    output: int
    model: str | None

    @property
    def billed(self) -> bool: ...

    def settle(self, input_estimate: int, output_estimate: int) -> None: ...


class ModelCall(msgspec.Struct, frozen=True):
    """A model call's request: at `endpoint` (its path), speaking `format`; `spec` the
    model it names among those `served` (None: none of them); its estimate held against
    the budgets as `reservation` while it is made; `usage` filled as its answer passes;
    `gone`: whether its agent hung up already. A Struct: made a call with no Python of
    its own (a NamedTuple's `__new__` is a Python function)."""

    endpoint: str
    format: str
    spec: ModelSpec | None
    served: Mapping[str, ModelSpec]
    ask: ModelAsk
    reservation: Reservation
    usage: UpstreamUsage
    counter: ModelCounter
    gone: Callable[[], bool]

    def most_cost(self) -> float | None:
        """The most the call may cost, in dollars; None: its output has no bound."""
        ask, spec = self.ask, self.spec
        if ask.bound is None or spec is None:
            return None
        return (ask.input_estimate * spec.input_usd_per_mtok
                + ask.output_estimate * spec.output_usd_per_mtok) / 1e6
