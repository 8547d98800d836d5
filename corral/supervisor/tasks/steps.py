"""A task's steps: every tool call it makes through corral and every step its agent names
(`step/get`, `step/put`), journaled before the worker has the result, so a later attempt
is answered from the journal (docs/durable.md: "Steps", "What is replayed").

A journaled call runs in a task of its own (a flight): its worker's death does not cancel
the server's work (docs/durable.md, "A call outlives its worker").
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...mcp.pool import allowed
from ...taskviews import MadeAgain
from ...text import plural
from ..quotas import NO_QUOTAS
from ..stream import Stream
from .interceptors import Interceptors, StepReplay, TaskInterceptor
from .model import LOST_IN_RESTART, Task, TaskFinished
from .retry import runs_again
from .stepjournal import CHECKPOINT_SEQ, NAMED_SEQ, Step, StepJournal

if TYPE_CHECKING:
    from ..replica import Replica

# the named steps corral writes itself (spawn.py: a spawn's child, a child's lineage),
# never a worker's `step/put`: a name of these written by a worker would be read back as
# corral's own, a child it never checked or a lineage it never gave
RESERVED = ("spawn:", "corral/")
# a model call through the daemon's model gateway is a tool-call step named MODEL_STEP +
# the model's name (daemon/models/): its replay's span is a model call's (tracing.py)
MODEL_STEP = "model:"
# why a call was made again whose earlier attempt's was lost with the daemon
RESTARTED = "the daemon restarted while it was at the server"

_encode = msgspec.json.Encoder(order="sorted")

# the task handling the request a flight's call is made for (the worker's `tools/call`):
# what a call held for a person parks on its worker's line (PersonLoop.ask_person)
_CALLER_TASK: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "corral_step_caller", default=None)


def caller_task() -> asyncio.Task[Any] | None:
    """The task of the request the current call is made for (a flight's handler's)."""
    return _CALLER_TASK.get() or asyncio.current_task()


def tool_calls_made(steps: Iterable[Step]) -> int:
    """The tool calls a task's steps say its attempts made, as its tool budget counts
    them (decision 1985) and its view says them (decision 2035): each call answered; a
    model call's step counts in no tool budget, a named step and the checkpoint are no
    calls, a call marked and not answered counts once it is made."""
    return sum(s.seq >= 1 and s.body is not None and not s.name.startswith(MODEL_STEP)
               for s in steps)


class StepsDiverged(NamedTuple):
    """An attempt's tool call did not match the journal: the attempt went live at `seq`."""

    task: Task
    attempt: int
    seq: int
    why: str


def _replays(spec: Any, name: str) -> bool:
    """Whether the agent's calls of the tool `name` are replayed."""
    return bool(getattr(spec, "replay", True)) and not allowed(
        name, getattr(spec, "replay_tools", []))


def args_hash(arguments: Any) -> bytes:
    return hashlib.blake2b(_encode.encode(arguments), digest_size=16).digest()


class CallOrdinals:
    """A key for each tool call of a task's attempt that a retried attempt's same call
    reads again: its tool, its arguments' hash and how many such calls the attempt made."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[int, Counter[tuple[str, bytes]]]] = {}

    def key(self, task: Task, name: str, arguments: Any) -> str:
        return self.key_of(task, name, args_hash(arguments))

    def key_of(self, task: Task, name: str, h: bytes) -> str:
        attempt, made = self._made.get(task.id, (0, Counter()))
        if attempt != task.attempt:
            attempt, made = task.attempt, Counter()
            self._made[task.id] = (attempt, made)
        made[name, h] += 1
        return f"{name}:{h.hex()}:{made[name, h]}"

    def forget(self, task_id: str) -> None:
        self._made.pop(task_id, None)

    def __len__(self) -> int:
        return len(self._made)


def idempotency_key(task_id: str, ordinal: str) -> str:
    """The same for its task's every attempt's same call, another task's never."""
    return hashlib.blake2b(f"{task_id}\0{ordinal}".encode(), digest_size=16).hexdigest()


class _Flight:
    """A journaled call of one attempt in its own asyncio task (`call`): `step` its
    journaled answer once it has one; `awaited` once a later attempt's call waits for it."""

    __slots__ = ("attempt", "awaited", "call", "made", "step")

    def __init__(self, made: Step) -> None:
        self.made = made
        self.attempt = made.attempt
        self.awaited = False
        self.call: asyncio.Task[Any] | None = None
        self.step: Step | None = None


class _Attempt:
    """A running attempt's journal history (read once, on a retry), next position, verdict."""

    __slots__ = ("attempt", "bytes", "diverged", "given", "loaded", "named", "next_seq",
                 "tenant", "tools")

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.loaded: asyncio.Future[None] | None = None
        self.tools: dict[int, Step] = {}
        self.named: dict[str, Step] = {}
        self.next_seq = 1
        self.diverged = False
        self.bytes = 0  # the task's journaled result bytes (against max_step_bytes)
        self.tenant: str | None = None  # whose max_step_journal_bytes they count in
        # the named steps given back so far: each told (on_replay) once, however often asked
        self.given: set[str] = set()


class TaskSteps:
    def __init__(self, stream: Stream, interceptors: Interceptors,
                 asking: Callable[[str], bool]) -> None:
        """`asking`: whether a task has an ask of a person pending."""
        self.stream = stream
        self._asking = asking
        # each task's journaled calls in flight, by their (sequence number, attempt)
        self._flights: dict[str, dict[tuple[int, int], _Flight]] = {}
        self._ordinals = CallOrdinals()  # the calls' idempotency keys
        self.outlived = 0  # calls that went on after their caller went away
        self.awaited = 0  # calls of a retry that waited for an earlier attempt's same one
        self.journal: StepJournal | None = None  # the daemon's (`journal_to`)
        self._attempts: dict[str, _Attempt] = {}
        self.replayed = 0  # calls and named steps answered from the journal
        self.diverged = 0  # attempts that went live at a mismatch
        self.journaled = 0  # steps written
        self.refused = 0  # journaled calls refused past a bound of bytes
        self.held: dict[str, int] = {}  # tenant -> its unfinished tasks' journaled bytes
        # told of each call and named step answered from the journal (tracing's)
        self.on_replay = interceptors.notify(TaskInterceptor.intercept_step_replay)
        # told of a task's end while an attempt's steps are held here
        self._ends = stream.subscribe(self._finished, TaskFinished, listening=False)

    def journal_to(self, journal: StepJournal) -> None:
        self.journal = journal

    def _finished(self, e: TaskFinished) -> None:
        self._ordinals.forget(e.task.id)
        # no attempt follows: a tool call still in flight is no one's to read; a model
        # call reads on to its end, its usage counted (the upstream bills it whole)
        for flight in self._flights.pop(e.task.id, {}).values():
            if flight.call is not None and not flight.made.name.startswith(MODEL_STEP):
                flight.call.cancel()
        st = self._attempts.pop(e.task.id, None)
        if not self._attempts:
            self.stream.listen(self._ends, False)
        if st is not None:
            self._count(st, -st.bytes)
            journal = e.task.home.steps
            if journal is not None:
                journal.ended(e.task.id)

    def _journaling(self, task: Task, spec: Any) -> StepJournal | None:
        """The journal to write the task's steps to; None when no next attempt would read
        them (no retry left, and its agent does not suspend a waiting task)."""
        suspends: float = getattr(spec, "suspend_after", 0.0)
        return task.home.steps if suspends or runs_again(task, spec) else None

    async def _state(self, task: Task) -> _Attempt:
        st = self._attempts.get(task.id)
        if st is None or st.attempt != task.attempt:
            if st is not None:  # its steps are counted again as the new attempt reads them
                self._count(st, -st.bytes)
            st = self._attempts[task.id] = _Attempt(task.attempt)
            self.stream.listen(self._ends)
            journal = task.home.steps
            if task.attempt > 1 and journal is not None:
                st.loaded = asyncio.get_running_loop().create_future()
                try:
                    for step in await journal.history(task.id):
                        if step.seq >= 1 and (step.body is not None or
                                              step.seq not in st.tools):
                            # (a mark read before its answer, landed meanwhile, is older)
                            st.tools[step.seq] = step
                        elif step.seq == NAMED_SEQ:
                            st.named[step.name] = step
                        if step.body is not None and step.seq != CHECKPOINT_SEQ:
                            st.bytes += len(step.body) + _named_bytes(step)
                    # the calls its journal says earlier attempts made count in its tool
                    # budget on every home: a cluster retry's task is made again from
                    # its record, its count not carried (tool_calls_made: which count)
                    task.tool_calls = max(task.tool_calls, tool_calls_made(st.tools.values()))
                finally:
                    st.loaded.set_result(None)
        if st.loaded is not None and not st.loaded.done():
            await st.loaded
        return st

    # -- tool calls -----------------------------------------------------------------------
    async def tool_call(self, task: Task, r: Replica, name: str, arguments: dict[str, Any],
                        live: Callable[[str | None], Awaitable[Any]]) -> Any:
        """A task's tool call: from the journal while the attempt matches it, else live.
        `live(key)` makes it, `key` its idempotency key (None: made once at most)."""
        st = await self._state(task)
        seq = st.next_seq
        st.next_seq += 1
        # whether it replays, and the arguments' hash, only where they are asked: a task
        # with no retry left, on its first attempt, pays nothing for either
        journal = self._journaling(task, r.spec)
        h = args_hash(arguments) if journal is not None or task.attempt > 1 else None
        key = None if h is None else idempotency_key(
            task.id, self._ordinals.key_of(task, name, h))
        old = None if st.diverged else st.tools.get(seq)
        if (old is None or old.body is None) and not st.diverged and h is not None:
            # no answer kept: an earlier attempt's call still in flight here has it, else
            # its mark says it went to the server with this key and its answer was lost
            flight = await self._landed(task, seq, name, h)
            if flight is None and old is not None and (old.name, old.args) == (name, h):
                assert key is not None  # (h is)
                self._made_again(task, old, key)
            old = None if flight is None else flight.step
        replays = (old is not None or journal is not None) and _replays(r.spec, name)
        if old is not None:
            assert h is not None  # (an attempt after the first)
            if old.name != name or old.args != h:
                why = (f"call {seq} is {name}, the journal's is {old.name}"
                       if old.name != name else f"call {seq} to {name} has other arguments")
                self._diverge(task, st, seq, why)
            elif old.body is not None and replays:
                self.count_replay(task, "tool", name)
                return msgspec.Raw(old.body)
        if journal is None or not replays:
            return await live(key)
        assert h is not None
        self._check_budget(task, r, st)
        return await self._fly(task, st, Step(task.id, seq, name, task.attempt, h, None),
                               journal, live, key)

    async def _landed(self, task: Task, seq: int, name: str, h: bytes) -> _Flight | None:
        """An earlier attempt's call `seq` still in flight, once it has landed, when this
        attempt's call is the same (its `step` None: it failed); None: there is none."""
        flight = max((f for (at, _), f in self._flights.get(task.id, {}).items()
                      if at == seq and f.attempt < task.attempt),
                     key=lambda f: f.attempt, default=None)
        if flight is None or flight.call is None or flight.made.name != name or \
                flight.made.args != h:
            return None
        flight.awaited = True
        self.awaited += 1
        await asyncio.wait((flight.call,))  # (this call cancelled: that one goes on)
        return flight

    def _made_again(self, task: Task, mark: Step, key: str) -> None:
        """The attempt makes again a call an earlier one's mark says went to the server
        under `key`, with no answer kept: said on the attempt (`made_again`) when that
        attempt was lost with the daemon (a call failed or held for a person, whose mark
        is left too, is made again as any failed call is)."""
        earlier = task.attempts[mark.attempt - 1] if 0 < mark.attempt < len(
            task.attempts) else None
        if earlier is None or not (earlier.error or "").startswith(LOST_IN_RESTART):
            return
        a = task.attempts[-1]
        made = a.made_again if isinstance(a.made_again, list) else []
        made.append(MadeAgain(mark.name, key, RESTARTED))
        a.made_again = made

    async def _fly(self, task: Task, st: _Attempt, step: Step, journal: StepJournal,
                   live: Callable[[str | None], Awaitable[Any]], key: str | None) -> Any:
        """The call made in a flight of its own: the caller's going away does not cancel
        it (unless its task waits for a person)."""
        flight = _Flight(step)
        mine = self._flights.setdefault(task.id, {})
        said = _CALLER_TASK.set(asyncio.current_task())
        try:
            flight.call = call = asyncio.ensure_future(
                self._made(task, st, step, flight, journal, live, key))
        finally:
            _CALLER_TASK.reset(said)
        mine[step.seq, step.attempt] = flight
        call.add_done_callback(lambda _: self._landing(task.id, flight))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            if not call.done():
                if self._asking(task.id):
                    call.cancel()  # held for a person: the retry waits on the same ask
                else:
                    self.outlived += 1
            raise

    def in_flight(self, task_id: str) -> int:
        """The task's calls in flight here (their answers are a retry's: Endings.again)."""
        return len(self._flights.get(task_id, ()))

    def _landing(self, task_id: str, flight: _Flight) -> None:
        mine = self._flights.get(task_id)
        where = (flight.made.seq, flight.attempt)
        if mine is not None and mine.get(where) is flight:
            del mine[where]
            if not mine:
                del self._flights[task_id]
        call = flight.call
        if call is not None and not call.cancelled():
            call.exception()  # (told to its caller, or no one's once it went away)

    async def _made(self, task: Task, st: _Attempt, step: Step, flight: _Flight,
                    journal: StepJournal, live: Callable[[str | None], Awaitable[Any]],
                    key: str | None) -> Any:
        # its mark, that a retry after the daemon's death says the call is made again
        # (docs/durable.md); its answer's row replaces it
        journal.put(step)
        result = await live(key)
        body = msgspec.json.encode(result)
        step = step._replace(body=body)
        now = self._attempts.get(task.id)
        if now is not st and now is not None:
            # its caller's attempt ended while it was made: a later one reads it, unless
            # it went live, or past this call without it (its own answer is the journal's)
            if now.diverged or (now.next_seq > step.seq and not flight.awaited):
                return msgspec.Raw(body)
            if now.loaded is None or now.loaded.done():
                self._count(now, len(body))
            held = now.tools.get(step.seq)
            if held is None or held.body is None:  # (none, or this call's mark)
                now.tools[step.seq] = step
        elif now is st:
            self._count(st, len(body))
        self.journaled += 1
        if journal.put(step) is not True:
            await journal.committed(task.id)
        flight.step = step
        return msgspec.Raw(body)

    def _diverge(self, task: Task, st: _Attempt, seq: int, why: str) -> None:
        st.diverged = True
        self.diverged += 1
        if task.attempts:
            task.attempts[-1].diverged = seq
        journal = task.home.steps
        if journal is not None:
            journal.drop_from(task.id, seq)
        st.tools = {}
        if self.stream.wants(StepsDiverged):
            self.stream.emit(StepsDiverged(task, task.attempt, seq, why))

    def count_replay(self, task: Task, kind: str, name: str) -> None:
        """A call or step of the attempt answered from what an earlier one kept."""
        self.replayed += 1
        if task.attempts:
            a = task.attempts[-1]
            a.replayed = a.replayed + 1 if isinstance(a.replayed, int) else 1
        if self.on_replay is not None:
            self.on_replay(StepReplay(task, kind, name))

    def _count(self, st: _Attempt, n: int) -> None:
        """`n` bytes more (or fewer) journaled by the task of `st`, in its tenant's too."""
        st.bytes += n
        if st.tenant is not None:
            self.held[st.tenant] = self.held.get(st.tenant, 0) + n
            if not self.held[st.tenant]:
                del self.held[st.tenant]

    def _check_budget(self, task: Task, r: Replica, st: _Attempt) -> None:
        """Refuse the next journaled step past max_step_bytes or max_step_journal_bytes."""
        if st.tenant is None:  # from now on its bytes count in its tenant's
            st.tenant = r.spec.tenant
            self.held[st.tenant] = self.held.get(st.tenant, 0) + st.bytes
        tenant = r.host.tenant_spec(st.tenant) or NO_QUOTAS
        own, whose = r.spec.max_step_bytes, "max_step_bytes"
        if tenant.max_step_bytes and (not own or tenant.max_step_bytes < own):
            own, whose = tenant.max_step_bytes, f"tenant {st.tenant}'s max_step_bytes"
        why = None
        if own and st.bytes >= own:
            why = (f"task {task.id} has journaled {plural(st.bytes, 'byte')} of step results "
                   f"({whose} {own}); nothing more of it can be kept for a retry")
        held, most = self.held.get(st.tenant, 0), tenant.max_step_journal_bytes
        if why is None and most and held >= most:
            why = (f"tenant {st.tenant}'s unfinished tasks have journaled "
                   f"{plural(held, 'byte')} of step results (max_step_journal_bytes "
                   f"{most}); nothing more of task {task.id} can be kept for a retry")
        if why is not None:
            self.refused += 1
            raise RpcError(jsonrpc.STEP_BUDGET_EXCEEDED, f"step budget exceeded: {why}")

    # -- named steps ----------------------------------------------------------------------
    async def get(self, task: Task, name: str) -> dict[str, Any]:
        if task.attempt <= 1:
            return {"found": False}  # nothing before the first attempt
        st = await self._state(task)
        step = st.named.get(name)
        if step is None or step.body is None:
            return {"found": False}
        if name not in st.given:  # asked again: counted once, told once
            st.given.add(name)
            self.count_replay(task, "step", name)
        return {"found": True, "result": msgspec.Raw(step.body)}

    def reserved(self, name: str, method: str) -> None:
        """A worker's step name, refused when it is one of corral's own (RESERVED)."""
        if name.startswith(RESERVED):
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"{method}: the step name {name!r:.80} is reserved: names "
                           f"beginning {' or '.join(RESERVED)} are corral's own steps")

    def put(self, task: Task, r: Replica, name: str, result: Any
            ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """A named step's put (a worker's `step/put`, an answer corral keeps for a retry):
        its answer itself where the step is durable as it is put (the daemon's step log),
        else an awaitable of it: a plain answer is sent with no asyncio task of its own
        (jsonrpc), which was the most of a step's cost here."""
        journal = self._journaling(task, r.spec)
        if journal is None:
            return {}
        st = self._attempts.get(task.id)
        if st is None or st.attempt != task.attempt or (
                st.loaded is not None and not st.loaded.done()):
            return self._put_read(task, r, journal, name, result)  # its history first
        return {} if self._keep(task, r, st, journal, name, result) else self._committed(
            journal, task.id)

    async def _put_read(self, task: Task, r: Replica, journal: StepJournal, name: str,
                        result: Any) -> dict[str, Any]:
        """The put once the attempt's state is made (its history read, on a retry)."""
        if not self._keep(task, r, await self._state(task), journal, name, result):
            await journal.committed(task.id)
        return {}

    def _keep(self, task: Task, r: Replica, st: _Attempt, journal: StepJournal, name: str,
              result: Any) -> bool:
        """The named step put in the journal, unless it is past a budget (refused, raised);
        whether it is durable already."""
        self._check_budget(task, r, st)
        body = msgspec.json.encode(result)
        step = Step(task.id, NAMED_SEQ, name, task.attempt, b"", body)
        st.named[name] = step
        # the name the worker chose is kept as its result is: counted against the budget
        self._count(st, len(body) + _named_bytes(step))
        self.journaled += 1
        return journal.put(step) is True

    @staticmethod
    async def _committed(journal: StepJournal, task_id: str) -> dict[str, Any]:
        await journal.committed(task_id)
        return {}

    # -- the task's checkpoint ------------------------------------------------------------
    async def checkpoint(self, task: Task, state: Any) -> dict[str, Any]:
        body = msgspec.json.encode(state)
        task.checkpoint = msgspec.Raw(body)
        journal = self._journaling(task, task.replica.spec if task.replica else None)
        if journal is not None and journal.put(
                Step(task.id, CHECKPOINT_SEQ, "", task.attempt, b"", body)) is not True:
            await journal.committed(task.id)
        return {}

    def stats(self) -> dict[str, int]:
        return {"journaled": self.journaled, "replayed": self.replayed,
                "diverged": self.diverged, "refused": self.refused,
                "outlived": self.outlived, "awaited": self.awaited}


def _named_bytes(step: Step) -> int:
    return len(step.name.encode()) if step.seq == NAMED_SEQ else 0
