"""A run's signals (`runs.signal`, docs/workflows.md#signals): each kept before it is
answered, and taken by the step that waits for its name in the same transaction that names
the step's row as its taker: a step resumed after a crash finds the signal it took before,
never a second one. A run keeps as many signals of a name as it has steps that wait for it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...supervisor.durable import StepEnd
from ...timeouts import within
from ..store import StateStore
from .runstore import RUN_ENDED, Run

MAX_SIGNAL_BYTES = 256 * 1024  # a signal's data as JSON: it is its step's output
MAX_SIGNAL_KEY = 200  # characters of the key a sender may name a signal by


class Signal(msgspec.Struct, frozen=True):
    """What a sender sends a run: a name its steps wait for, data (any JSON, the step's
    output), and the key that makes a second send of it the first (None: none)."""

    name: str
    data: Any = None
    key: str | None = None
    sender: str | None = None  # who sent it (kept, as the audit keeps the call)


class SignalReceipt(msgspec.Struct, frozen=True):
    seq: int  # its place among the run's signals, from 1
    duplicate: bool  # the key was sent before: this is that signal


class SignalWait(msgspec.Struct, frozen=True):
    """`step_id`: its row's id (the taker); `deadline` None: as long as its run lasts."""

    run_id: str
    name: str
    step_id: str
    deadline: float | None
    timeout: float | None
    skip: bool  # past the deadline: skipped (output null), else timed_out


class RunSignals:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._sending = asyncio.Lock()  # a run's count checked and its signal kept as one
        self._waiting: dict[tuple[str, str], set[asyncio.Event]] = {}

    async def send(self, run: Run, signal: Signal) -> SignalReceipt:
        """Kept when it returns (or RpcError saying why not, nothing kept)."""
        waiting = [s.name for s in run.wf.steps if s.spec.signal == signal.name]
        if not waiting:
            names = sorted({s.spec.signal for s in run.wf.steps if s.spec.signal})
            raise RpcError(jsonrpc.INVALID_PARAMS, (
                f"run {run.run_id} (workflow {run.workflow}) has no step that waits for "
                f"signal {signal.name} (" + (f"its signals: {', '.join(names)})" if names
                                             else "it waits for no signal)")))
        if signal.key is not None and len(signal.key) > MAX_SIGNAL_KEY:
            raise RpcError(jsonrpc.INVALID_PARAMS, (
                f"the signal's key is {len(signal.key)} characters, more than "
                f"MAX_SIGNAL_KEY ({MAX_SIGNAL_KEY})"))
        data = msgspec.json.encode(signal.data)
        if len(data) > MAX_SIGNAL_BYTES:
            raise RpcError(jsonrpc.INVALID_PARAMS, (
                f"the signal's data is {len(data)} bytes of JSON, more than "
                f"MAX_SIGNAL_BYTES ({MAX_SIGNAL_BYTES})"))
        async with self._sending:
            sent = self._again(run.run_id, signal.key)
            if sent is not None:
                return sent
            if run.status in RUN_ENDED:
                raise RpcError(jsonrpc.CONFLICT, f"run {run.run_id} already ended "
                                                 f"({run.status}): no step waits for a signal")
            db = self.store.db
            (kept,) = db.execute("SELECT COUNT(*) FROM call_signals WHERE call_id = ? AND "
                                 "name = ?", (run.run_id, signal.name)).fetchone()
            if kept >= len(waiting):
                raise RpcError(jsonrpc.CONFLICT, (
                    f"run {run.run_id} has had its signal {signal.name}: "
                    f"{len(waiting)} step{'s' if len(waiting) > 1 else ''} "
                    f"({', '.join(waiting)}) wait{'' if len(waiting) > 1 else 's'} for it "
                    f"and {kept} {'was' if kept == 1 else 'were'} sent; a signal is "
                    "applied once (send it with the key of the first to repeat that one)"))
            (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM call_signals WHERE "
                                 "call_id = ?", (run.run_id,)).fetchone()
            row = (run.run_id, last + 1, signal.name, signal.key, data, time.time(),
                   signal.sender)

            def write(db: sqlite3.Connection) -> None:
                db.execute("INSERT INTO call_signals (call_id, seq, name, key, data, sent, "
                           "sender) VALUES (?,?,?,?,?,?,?)", row)
            await self.store.commit([write])
        for woken in self._waiting.get((run.run_id, signal.name), ()):
            woken.set()
        return SignalReceipt(last + 1, False)

    def _again(self, run_id: str, key: str | None) -> SignalReceipt | None:
        if key is None:
            return None
        row = self.store.db.execute("SELECT seq FROM call_signals WHERE call_id = ? AND "
                                    "key = ?", (run_id, key)).fetchone()
        return SignalReceipt(row[0], True) if row is not None else None

    async def _take(self, w: SignalWait) -> tuple[bool, Any]:
        """(True, its data): the signal this step took before, else the oldest of its name
        no step took, taken now (committed before it is answered); (False, None): none."""
        db = self.store.db
        mine = ("SELECT data FROM call_signals WHERE call_id = ? AND taken_by = ?",
                (w.run_id, w.step_id))
        got = db.execute(*mine).fetchone()
        if got is None:
            if db.execute("SELECT 1 FROM call_signals WHERE call_id = ? AND name = ? AND "
                          "taken_by IS NULL", (w.run_id, w.name)).fetchone() is None:
                return False, None

            def write(db: sqlite3.Connection) -> None:
                db.execute("UPDATE call_signals SET taken_by = ? WHERE call_id = ? AND "
                           "seq = (SELECT MIN(seq) FROM call_signals WHERE call_id = ? AND "
                           "name = ? AND taken_by IS NULL)",
                           (w.step_id, w.run_id, w.run_id, w.name))
            await self.store.commit([write])
            got = db.execute(*mine).fetchone()
            if got is None:  # (taken meanwhile by another step of this name)
                return False, None
        return True, msgspec.json.decode(got[0])

    async def wait(self, w: SignalWait) -> StepEnd:
        woken = asyncio.Event()
        waiters = self._waiting.setdefault((w.run_id, w.name), set())
        waiters.add(woken)
        try:
            while True:
                woken.clear()  # (before the look: a signal kept after it wakes the wait)
                took, data = await self._take(w)
                if took:
                    return StepEnd("succeeded", data)
                left = None if w.deadline is None else w.deadline - time.time()
                try:
                    if left is not None and left <= 0:
                        raise TimeoutError
                    await within(woken.wait(), left)
                except TimeoutError:
                    took, data = await self._take(w)
                    if took:
                        return StepEnd("succeeded", data)
                    why = f"no signal {w.name} came within {w.timeout:g}s"
                    return StepEnd("skipped" if w.skip else "timed_out", None, why)
        finally:
            waiters.discard(woken)
            if not waiters:
                self._waiting.pop((w.run_id, w.name), None)
