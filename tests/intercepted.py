"""Engines made with interceptors (a Tracer, a test's own: supervisor/tasks/interceptors.py),
for the tests of the task path's concerns: `engines` makes each, opened, and closes every
one it made at the test's end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from corral.supervisor import Supervisor
from corral.supervisor.tasks import TaskInterceptor

from .conftest import SPARED

Engines = Callable[[Sequence[TaskInterceptor]], Supervisor]


@pytest.fixture
async def engines() -> AsyncIterator[Engines]:
    made: list[Supervisor] = []

    def make(interceptors: Sequence[TaskInterceptor]) -> Supervisor:
        # the conftest `sup`'s heartbeat: fast, and patient with a loaded machine's workers
        sup = Supervisor(heartbeat_interval=0.1, heartbeat_timeout=2.0, spared=SPARED,
                         interceptors=interceptors)
        sup.open()
        made.append(sup)
        return sup

    try:
        yield make
    finally:
        for sup in made:
            await sup.close(graceful=False)
