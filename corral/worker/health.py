"""`@health_check` and the worker's answers to corral's `health/check`, on a thread of
their own so that a busy handler does not fail them."""

from __future__ import annotations

import _thread

from .errors import exc_text

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~2 ms to import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# `@health_check` functions by name, answered to corral's `health/check` requests
_HEALTH_CHECKS: dict[str, Callable[[], Any]] = {}
# checks waiting past this many are answered failed (a hung check: unhealthy, not memory)
HEALTH_PENDING_MAX = 8


def health_check(fn_or_name: Any = None) -> Any:
    """Register a health check corral asks for (`health/check`, docs/sdk.md):
    `@health_check` (named after the function) or `@health_check("db")`.

    The function takes no argument (a coroutine function runs on the worker's asyncio
    loop); returning None or True passes, False fails, a dict {"ok": bool, "message": str}
    says both, and an exception fails with its text. Checks run on a thread of their own,
    so a busy handler does not fail them unless the check itself says so."""
    def register(fn: Callable[[], Any], name: str | None = None) -> Callable[[], Any]:
        _HEALTH_CHECKS[name or fn.__name__] = fn
        return fn

    if callable(fn_or_name):
        return register(fn_or_name)
    return lambda fn: register(fn, fn_or_name)


class HealthAnswers:
    """The health thread and its queue, started at the first `health/check`."""

    def __init__(self, reply: Callable[[Any, Any], None], loop: Callable[[], Any]) -> None:
        self._reply = reply  # the worker's answer to a request
        self._loop = loop  # the worker's asyncio loop, started if need be
        self._lock = _thread.allocate_lock()
        self._jobs: Any = None  # health/check requests for the health thread
        self._pending = 0

    def request(self, rid: Any, params: dict[str, Any]) -> None:
        """Answered on the health thread: the reader goes on reading (pings, tasks)."""
        if rid is None:
            return
        name = params.get("name")
        if self._jobs is None:
            from _queue import SimpleQueue

            self._jobs = SimpleQueue()
            _thread.start_new_thread(self._thread, ())
        with self._lock:
            full = self._pending >= HEALTH_PENDING_MAX
            if not full:
                self._pending += 1
        if full:
            self._reply(rid, {"ok": False, "message": "earlier health checks still running"})
            return
        self._jobs.put((rid, name))

    def _thread(self) -> None:
        jobs = self._jobs
        while True:
            rid, name = jobs.get()
            try:
                answer = self._run_checks(name)
            except BaseException as exc:
                answer = {"ok": False, "message": exc_text(exc)}
            with self._lock:
                self._pending -= 1
            self._reply(rid, answer)

    def _run_checks(self, name: Any) -> dict[str, Any]:
        if name is not None:
            fn = _HEALTH_CHECKS.get(str(name))
            if fn is None:
                return {"ok": False, "message": f"no health check named {name!r}"}
            return self._one_check(fn)
        for check_name, fn in list(_HEALTH_CHECKS.items()):
            answer = self._one_check(fn)
            if not answer["ok"]:
                said = answer.get("message")
                return {"ok": False, "message": f"{check_name}: {said}" if said
                        else f"{check_name} failed"}
        return {"ok": True}

    def _one_check(self, fn: Callable[[], Any]) -> dict[str, Any]:
        try:
            if getattr(fn, "__code__", None) and fn.__code__.co_flags & 0x80:
                import asyncio

                value = asyncio.run_coroutine_threadsafe(fn(), self._loop()).result()
            else:
                value = fn()
        except Exception as exc:
            return {"ok": False, "message": exc_text(exc)}
        if value is None or value is True:
            return {"ok": True}
        if value is False:
            return {"ok": False}
        if isinstance(value, dict) and isinstance(value.get("ok"), bool):
            out: dict[str, Any] = {"ok": value["ok"]}
            if value.get("message") is not None:
                out["message"] = str(value["message"])
            return out
        return {"ok": False, "message": f"the check returned {type(value).__name__}, not "
                                        "None, a bool or {'ok': ...}"}
