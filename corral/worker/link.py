"""The worker's side of the protocol's requests and answers: one line a message on a
private stdout, each request's answer waited for by a thread or an asyncio future."""

from __future__ import annotations

import _thread
import os

from . import codec
from .errors import INTERNAL_ERROR, REQUEST_TIMEOUT, RequestError

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~2 ms to import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class _Waiter:
    """A response slot: a thread blocks on it, or an asyncio future is completed from it.

    The SDK uses `_thread` alone, not `threading`: a worker's start imports no more than
    it must (threading and what it imports were a large part of a bare worker's start). A
    slot is answered once, so a lock held from its making to its answer is its event."""

    __slots__ = ("answered", "callback", "value")

    def __init__(self, callback: Callable[[bool, Any], None] | None = None) -> None:
        self.answered = _thread.allocate_lock()
        self.answered.acquire()  # released by the answer
        self.value: tuple[bool, Any] = (False, None)
        self.callback = callback  # told the answer, in the reader's thread

    def resolve(self, ok: bool, value: Any) -> None:
        self.value = (ok, value)
        self.answered.release()
        if self.callback is not None:
            self.callback(ok, value)

    def answer(self, method: str, timeout: float | None = None) -> Any:
        """The answer, waited for (its error raised)."""
        if not self.answered.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise RequestError(REQUEST_TIMEOUT, f"{method}: no answer within {timeout} s")
        ok, value = self.value
        if not ok:
            raise value
        return value


class SupervisorLink:
    """Sending to corral and matching its answers to the requests made (the Worker's)."""

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._next_id = 0
        self._waiters: dict[int, _Waiter] = {}
        self._unflushed = 0  # lines in `_out`'s buffer, not yet in the pipe
        # stdout is the protocol channel: keep a private handle, send stray prints to stderr
        self._out = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)

    def _send(self, msg: dict[str, Any]) -> None:
        self._write(codec.dumps(msg))

    def _write(self, line: bytes, held: bool = False) -> None:
        """`held`: a task's answer, left in the buffer while `_holds` (one write a burst)."""
        with self._lock:
            try:
                self._out.write(line)
                self._unflushed += 1
            except (BrokenPipeError, ValueError):
                pass  # the supervisor is gone; stdin EOF will end us
            if not held or not self._holds():
                self._flush()

    def _holds(self) -> bool:
        return False

    def _flush(self) -> None:
        """What `_out` holds, to the pipe (called holding `_lock`)."""
        try:
            self._unflushed = 0
            self._out.flush()
        except (BrokenPipeError, ValueError):
            pass

    def notify(self, method: str, params: Any = None) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def _reply(self, rid: Any, result: Any) -> None:
        self._send({"jsonrpc": "2.0", "id": rid, "result": result})

    def _error(self, rid: Any, code: int, message: str, data: Any = None) -> None:
        self._send({"jsonrpc": "2.0", "id": rid,
                    "error": {"code": code, "message": message, **codec.given(data=data)}})

    def _new_request(self, method: str, params: Any,
                     callback: Callable[[bool, Any], None] | None = None) -> _Waiter:
        waiter = _Waiter(callback)  # given before the answer can arrive
        with self._lock:
            self._next_id += 1
            rid = self._next_id
            self._waiters[rid] = waiter
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return waiter

    def request(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        """Ask the supervisor something and block this thread for the answer."""
        return self._new_request(method, params).answer(method, timeout)

    def request_all(self, method: str, params: list[Any]) -> list[Any]:
        """Ask the supervisor many things at once (all sent before the first answer is
        waited for) and block this thread for every answer, in order."""
        return [w.answer(method) for w in [self._new_request(method, p) for p in params]]

    def request_async(self, method: str, params: Any = None) -> Any:
        """Ask the supervisor something; an awaitable answer (for coroutine handlers)."""
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)

        def answered(ok: bool, value: Any) -> None:  # on the reader thread
            loop.call_soon_threadsafe(settle, ok, value)

        self._new_request(method, params, answered)
        return fut

    def _on_response(self, rid: Any, msg: dict[str, Any]) -> None:
        with self._lock:
            waiter = self._waiters.pop(rid, None)
        if waiter is None:
            return
        if "error" in msg:
            e = msg["error"] or {}
            waiter.resolve(False, RequestError(e.get("code", INTERNAL_ERROR), e.get("message", ""),
                                               e.get("data")))
        else:
            waiter.resolve(True, msg.get("result"))
