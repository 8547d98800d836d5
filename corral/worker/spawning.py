"""The SDK's side of code-first orchestration (`task/spawn`, `task/wait`; docs/protocol.md):
`ctx.spawn`, `ctx.wait` and `ctx.map`, each awaitable in a coroutine handler.

A spawn's key is the task's count of spawns so far unless the handler names one: a
retried attempt that spawns in the same order is given the same children back, never
new ones (docs/workflows.md#spawn). Stdlib only, as the rest of the SDK.
"""

from __future__ import annotations

from .codec import given

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any


class ChildFailed(Exception):
    """A child of `ctx.map` that did not succeed: its task id, status and error."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        error = result.get("error")
        super().__init__(f"child task {result.get('task_id')} {result.get('status')}"
                         + (f": {error}" if error else ""))


class Spawning:
    """Mixed into the handler's Context (which gives `task_id`, `_call` and `_worker`)."""

    task_id: str
    _spawned = 0
    _worker: Any

    def _call(self, method: str, params: Any) -> Any:  # pragma: no cover - Context's
        raise NotImplementedError

    def _call_for(self, method: str, params: Any, key: str) -> Any:
        """The `key` of `_call`'s answer; awaitable where the answer is."""
        got = self._call(method, params)
        if hasattr(got, "__await__"):
            return _member(got, key)
        return got[key]

    def _spawn_params(self, agent: str, task_input: Any, key: str | None,
                      timeout: float | None, retries: int | None) -> dict[str, Any]:
        self._spawned += 1
        return {"task_id": self.task_id, "agent": agent,
                "key": key if key is not None else str(self._spawned), "input": task_input,
                **given(timeout=timeout, retries=retries)}

    def spawn(self, agent: str, task_input: Any = None, *, key: str | None = None,
              timeout: float | None = None, retries: int | None = None) -> Any:
        """Start a task of `agent` (one this agent's `spawns` lists): its id. Journaled
        before it is answered, under `key` (default: this spawn's place among the task's
        spawns), so a retried attempt gets the same child back."""
        return self._call_for("task/spawn", self._spawn_params(
            agent, task_input, key, timeout, retries), "child")

    def wait(self, children: Iterable[str]) -> Any:
        """The outcomes of these children once all have ended, in their order: each
        {"task_id", "status", "output"[, "error"]}."""
        return self._call_for("task/wait", {"task_id": self.task_id,
                                            "children": list(children)}, "results")

    def map(self, agent: str, inputs: Iterable[Any], *, timeout: float | None = None,
            retries: int | None = None) -> Any:
        """One child of `agent` per input, then their outputs in input order; ChildFailed
        for the first that did not succeed. The spawns are sent at once, not each after
        the last's answer (their keys still in input order)."""
        params = [self._spawn_params(agent, x, None, timeout, retries) for x in inputs]
        if getattr(self, "_async", False):
            return self._map_async(params)
        children = [g["child"] for g in self._worker.request_all("task/spawn", params)]
        return _outputs(self.wait(children))

    async def _map_async(self, params: list[dict[str, Any]]) -> list[Any]:
        import asyncio

        got = await asyncio.gather(*(self._call("task/spawn", p) for p in params))
        return _outputs(await self.wait([g["child"] for g in got]))


async def _member(fut: Any, key: str) -> Any:
    return (await fut)[key]


def _outputs(results: list[dict[str, Any]]) -> list[Any]:
    for r in results:
        if r.get("status") != "succeeded":
            raise ChildFailed(r)
    return [r.get("output") for r in results]
