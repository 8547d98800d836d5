"""The cluster's Lua held to the task's machine: each case runs the scripts of
cluster/scripts.py against a real redis-server and fires the same causes on a
TaskMachine, and both must leave the task in the same status with the same retries left.

Where the Lua differs from the table, on purpose:
- a claim of a task no longer queued is refused without an error and changes nothing
  (a stale stream entry is the normal case in Redis: the task was queued again under a
  new entry); the machine refuses a start of a running or finished task as a bug;
- a cancel of a running task marks it (CANCEL answers 'asked') and the node running it
  cancels it at its next beat, its outcome written by FINISH: the end is the table's,
  one beat later;
- the takeover of a dead node's task is decided by the machine itself (reaper.take_over:
  TAKEOVER keeps what it decided), with the task's own retry_on, else its agent's where
  the reaper runs it, else an agent's default, ("lost",), which the cases here use. Its
  retry_lost is the record's (its claiming node's): a node's death is a loss to
  infrastructure, retried as the machine retries a LOST attempt;
- a retry is the node's machine's, and one asked to cancel while it ran ends cancelled:
  FINISH keeps a retry only while the cancel's mark is as the node read it, and the node
  decides again on the mark it reads (outbox.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest

from corral.cluster import records
from corral.cluster.clusterasks import ASK, END, SUSPEND
from corral.cluster.connection import connect
from corral.cluster.keys import Keys
from corral.cluster.outbox import Outbox
from corral.cluster.queue import ClusterTask
from corral.cluster.reaper import take_over
from corral.cluster.scripts import RedisPart, Scripts, cancel
from corral.cluster.trust import Trust
from corral.jsonrpc import RpcError
from corral.supervisor.config import RETRY_LOST, ClusterSettings
from corral.supervisor.lifecycle import IllegalTransition
from corral.supervisor.tasks.elicitations import PREFIX as ELICITATION
from corral.supervisor.tasks.taskmachine import (
    AT_MOST_ONCE_NOTE,
    LostBudget,
    TaskCause,
    TaskMachine,
    TaskStatus,
)
from corral.taskviews import Attempt

from ..redis_harness import RedisServer
from .claimscript import claim_script

K = Keys("m")
TID = "0190a5c0-0000-7000-8000-0000000000{:02d}"
STREAM = K.stream("acme", "w", 0)
LOST_ERR = b'{"code":-32001,"message":"node b lost"}'
CANCEL_ERR = b'{"code":-32003,"message":"cancelled while running"}'
ONCE_ERR = (b'{"code":-32001,"message":"node b lost (' + AT_MOST_ONCE_NOTE.encode()
            + b')"}')
C = TaskCause


ONE_LOST = LostBudget(RETRY_LOST, 1)  # an agent's default retry_lost, one attempt lost


class LuaRetryPolicy:
    """The policy the Lua keeps for a lost attempt: an agent's default retry_on, and the
    record's retry_lost with its lost attempts (by default the agent's default, one
    attempt lost)."""

    def __init__(self, budget: LostBudget = ONE_LOST) -> None:
        self.budget = budget

    def retried_on(self, task: TaskMachine) -> tuple[str, ...]:
        return ("lost",)

    def lost_budget(self, task: TaskMachine) -> LostBudget:
        return self.budget


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[Any]:
    c = connect(ClusterSettings(redis=redis.url, name="m", node="n"), "n")
    yield c
    await c.aclose()


class Record:
    """One cluster task's record, moved by the scripts as a node would."""

    def __init__(self, s: Scripts, c: Any, i: int) -> None:
        self.s, self.c, self.tid = s, c, TID.format(i)
        self.token = 0

    async def entry(self) -> Any:
        return await self.c.hget(K.task(self.tid), "entry")

    async def submit(self, options: str = "") -> None:
        assert await self.s.submit(
            keys=[K.task(self.tid), STREAM, K.priorities("acme", "w"), K.agents, K.live],
            args=[self.tid, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "", options, "",
                  "acme", "mac"]) == 1

    async def claim(self, retries: int | None = None, retry_lost: int = RETRY_LOST,
                    lost_before: int = 0) -> bool:
        """Claimed by node b's incarnation 1, alive while it claims (dead after it: a
        takeover finds it so), with its agent's `retry_lost`, after `lost_before`
        attempts of earlier claims that were lost."""
        for _ in range(lost_before):
            await self.c.rpush(K.attempts(self.tid),
                               b'{"replica":0,"pid":1,"started":1.0,"outcome":"lost"}')
        await self.c.set(K.alive("b/1"), b"{}")
        try:
            got = await claim_script(self.s)(
                keys=[K.task(self.tid), K.attempts(self.tid), K.fence, STREAM],
                args=["b/1", "b", "2.0", await self.entry(),
                      records.claimed_attempt("b", 2.0), 2, "30.0", "acme", retry_lost])
        finally:
            await self.c.delete(K.alive("b/1"))
        if got is None:
            return False
        self.token = got[0]
        if retries is not None:
            await self.c.hset(K.task(self.tid), "retries_left", retries)
        return True

    async def finish(self, status: str) -> int:
        return int(await self.s.finish(
            keys=[K.task(self.tid), K.attempts(self.tid), STREAM, K.outcomes, *K.listed],
            args=[self.token, self.tid, status, b"", b"", "3.0", await self.entry(), 0, 60,
                  await self.retries(), "0", "mac"]))

    async def takeover(self, kind: str) -> Any:
        """`kind`: 'dead', 'orphan', or 'stopping' (its live node hands it back)."""
        return await take_over(RedisPart(self.s, K, Trust(None, "m", print)), STREAM,
                               await self.entry(), self.tid, "b/1", orphan=kind == "orphan",
                               reason="node b lost", kept_for=60, specs={},
                               live=kind != "dead")

    async def cancel(self) -> Any:
        return await cancel(RedisPart(self.s, K, Trust(None, "m", print)), self.tid, 60)

    async def retries(self) -> int:
        return int(await self.c.hget(K.task(self.tid), "retries_left") or 0)

    async def state(self) -> tuple[str, int]:
        status = await self.c.hget(K.task(self.tid), "status")
        return status.decode(), await self.retries()


Lua = Callable[[Record], Awaitable[Any]]


def finishes(status: TaskStatus) -> Lua:
    async def lua(r: Record) -> Any:
        return await r.finish(status.value)
    return lua


def takes_over(kind: str) -> Lua:
    async def lua(r: Record) -> Any:
        return await r.takeover(kind)
    return lua


async def cancels(r: Record) -> Any:
    return await r.cancel()


async def cancels_running(r: Record) -> Any:
    """CANCEL marks it; the node running it ends it at its next beat, through FINISH."""
    assert await r.cancel() == b"asked"
    return await r.finish("cancelled")


async def claims(r: Record) -> Any:
    return await r.claim()


# (case, retries left at the claim (None: not claimed), what the Lua does, the cause
# fired on the machine, the Lua's answer)
CASES: list[tuple[str, int | None, Lua, TaskCause, Any]] = [
    ("an answer ends it succeeded", 1, finishes(TaskStatus.SUCCEEDED), C.ANSWERED, 1),
    ("an error with no retry ends it failed", 0, finishes(TaskStatus.FAILED), C.FAILED, 1),
    ("a timeout with no retry ends it timed out", 0, finishes(TaskStatus.TIMED_OUT),
     C.TIMED_OUT, 1),
    ("an orphaned claim waits again, no retry spent", 0, takes_over("orphan"), C.RELEASED,
     b"requeued"),
    ("an orphaned claim with retries keeps them", 2, takes_over("orphan"), C.RELEASED,
     b"requeued"),
    ("a node that stops hands its running claim back: a loss, none spent within "
     "retry_lost", 1, takes_over("stopping"), C.LOST, b"requeued"),
    ("a cancel of a waiting task ends it cancelled", None, cancels, C.CANCEL,
     b"cancelled"),
    ("a cancel of a running task ends it cancelled, at its node's beat", 1,
     cancels_running, C.CANCEL, 1),
]


# A dead node's task: (case, retries left, its retry_lost, attempts lost before its claim,
# the Lua's answer); its cause on the machine a LOST, its policy the record's budget
DEAD: list[tuple[str, int, int, int, bytes]] = [
    ("a dead node's task within its retry_lost waits again, no retry spent", 0, 2, 0,
     b"requeued"),
    ("a dead node's task at its retry_lost's last waits again, no retry spent", 1, 2, 1,
     b"requeued"),
    ("a dead node's task past its retry_lost with retries left waits again, one spent", 2,
     1, 1, b"requeued"),
    ("a dead node's task past its retry_lost with one retry left waits again", 1, 1, 1,
     b"requeued"),
    ("a dead node's task past its retry_lost with no retry left is lost", 0, 1, 1,
     b"lost"),
    ("an at-most-once dead node's task is lost whatever its retries", 3, 0, 0, b"lost"),
]


@pytest.mark.parametrize("kind", ["dead", "stopping"])  # (a stopping node's: as a dead one's)
@pytest.mark.parametrize(("case", "retries", "retry_lost", "before", "answer"), DEAD,
                         ids=[c[0] for c in DEAD])
async def test_the_lua_takes_a_dead_nodes_task_over_as_the_machine_retries_a_loss(
        client: Any, case: str, retries: int, retry_lost: int, before: int,
        answer: bytes, kind: str) -> None:
    r = Record(Scripts(client), client, 1)
    await r.submit()
    assert await r.claim(retries, retry_lost, before)
    m = machine(retries)
    assert await r.state() == (m.status.value, m.retries_left)
    assert await r.takeover(kind) == answer
    step = m.fire(C.LOST, LuaRetryPolicy(LostBudget(retry_lost, before + 1)))
    assert await r.state() == (m.status.value, m.retries_left), case
    if answer == b"lost":  # and its error says why it was not run again, as the engine's
        error = await client.hget(K.task(r.tid), "error")
        assert error == (ONCE_ERR if step.once else LOST_ERR), case
        assert step.once == (retry_lost == 0)


@pytest.mark.parametrize(("own", "agents", "answer"), [(0, 2, b"lost"), (2, 0, b"requeued")],
                         ids=["at most once of its own", "its own budget"])
async def test_a_tasks_own_retry_lost_decides_its_takeover_over_its_agents(
        client: Any, own: int, agents: int, answer: bytes) -> None:
    """The claim keeps its node's agent's retry_lost in the record, as data; the task's
    own, in its options, decides the loss where it is decided (reaper.decided, by
    RetryOptions.lost), as the engine decides its own tasks' (retry.retry_lost)."""
    r = Record(Scripts(client), client, 1)
    await r.submit(json.dumps({"retry": {"retry_lost": own}}, separators=(",", ":")))
    assert await r.claim(1, agents)
    assert await client.hget(K.task(r.tid), "retry_lost") == str(agents).encode()
    assert await r.takeover("dead") == answer
    m = machine(1)
    m.fire(C.LOST, LuaRetryPolicy(LostBudget(own, 1)))
    assert await r.state() == (m.status.value, m.retries_left)


def machine(retries: int | None) -> TaskMachine:
    """A task as the record is: not claimed, its retries are not set (the claiming
    node's: read as 0)."""
    m = TaskMachine(0 if retries is None else retries)
    if retries is not None:
        m.fire(C.START)
    return m


@pytest.mark.parametrize(("case", "retries", "lua", "cause", "answer"), CASES,
                         ids=[c[0] for c in CASES])
async def test_the_lua_moves_a_record_as_the_machine_moves_a_task(
        client: Any, case: str, retries: int | None, lua: Lua, cause: TaskCause,
        answer: Any) -> None:
    r = Record(Scripts(client), client, 1)
    await r.submit()
    if retries is not None:
        assert await r.claim(retries)
    m = machine(retries)
    assert await r.state() == (m.status.value, m.retries_left)  # the same start
    assert await lua(r) == answer
    m.fire(cause, LuaRetryPolicy())
    assert await r.state() == (m.status.value, m.retries_left), case


async def test_a_task_asked_to_cancel_whose_node_died_ends_cancelled_as_the_machine(
        client: Any) -> None:
    """The cancel's mark outlives its node: the takeover ends the task cancelled, dead
    or orphaned, retries left or not; the machine's cancel of a running task."""
    for i, (kind, retries) in enumerate([("dead", 2), ("dead", 0), ("orphan", 1)]):
        r = Record(Scripts(client), client, i)
        await r.submit()
        await r.claim(retries)
        assert await r.cancel() == b"asked"
        assert await r.takeover(kind) == b"cancelled"
        m = machine(retries)
        m.fire(C.CANCEL, LuaRetryPolicy())
        assert await r.state() == (m.status.value, m.retries_left) == ("cancelled", retries)


async def test_a_finished_record_moves_no_more_as_a_finished_task(client: Any) -> None:
    """An outcome is written once: a second FINISH, a cancel, a hand-back, a takeover of
    a finished record change nothing, as every cause but a start is ignored by a finished
    task's machine; a claim is refused (the machine raises: a start of a finished task
    is a bug)."""
    r = Record(Scripts(client), client, 1)
    await r.submit()
    await r.claim(1)
    assert await r.finish("failed") == 1
    m = machine(1)
    m.fire(C.FAILED)
    answers = [await r.finish("succeeded"), await r.takeover("stopping"),
               await r.takeover("dead")]
    assert answers == [0, None, None]
    with pytest.raises(RpcError, match=f"task {r.tid} already finished \\(failed\\)"):
        await r.cancel()
    for cause in (C.ANSWERED, C.CANCEL, C.RELEASED, C.LOST):
        assert m.fire(cause, LuaRetryPolicy()).target is None
    assert await r.state() == (m.status.value, m.retries_left) == ("failed", 1)
    with pytest.raises(IllegalTransition, match="no task transition from failed on start"):
        m.fire(C.START)


async def test_a_claim_takes_a_queued_task_alone(client: Any) -> None:
    r = Record(Scripts(client), client, 1)
    await r.submit()
    m = machine(None)
    assert await r.claim()
    m.fire(C.START)
    assert (await r.state())[0] == m.status.value == "running"
    # its entry read again (a claim's reply lost, say): refused, nothing changes
    assert not await claims(r)
    with pytest.raises(IllegalTransition, match="no task transition from running on start"):
        m.fire(C.START)
    assert (await r.state())[0] == m.status.value == "running"


class Asking:
    """A claimed record's asks (clusterasks.ASK, END) and its suspension (SUSPEND)."""

    def __init__(self, r: Record) -> None:
        self.r = r
        self.ask_script = r.c.register_script(ASK)
        self.end_script = r.c.register_script(END)
        self.suspend_script = r.c.register_script(SUSPEND)

    async def ask(self, key: str, ask_id: str) -> Any:
        r = self.r
        return await self.ask_script(
            keys=[K.task(r.tid), K.task_asks(r.tid), K.ask(ask_id), K.asks_pending(),
                  K.asks_pending("acme")],
            args=[r.token, key, ask_id, b"{}", "mac", "3.0", 10, 10, "", 10])

    async def end(self, ask_id: str) -> Any:
        r = self.r
        return await self.end_script(
            keys=[K.ask(ask_id), K.asks_pending(), K.asks_pending("acme"), K.task(r.tid)],
            args=[ask_id, b"approved", "m1", b"withdrawn", "m2", 60, "decide", K.asks_ended])

    async def suspend(self, token: int | None = None) -> int:
        r = self.r
        return int(await self.suspend_script(
            keys=[K.task(r.tid), K.attempts(r.tid), STREAM, K.task_asks(r.tid)],
            args=[r.token if token is None else token, await r.entry(),
                  b'{"outcome":"suspended"}', ELICITATION]))


async def suspended_record(client: Any, i: int, *keys: str) -> tuple[Record, Asking,
                                                                     TaskMachine]:
    """A record claimed, its attempt asking under `keys` and suspended; its machine."""
    r = Record(Scripts(client), client, i)
    await r.submit()
    await r.claim(1)
    a = Asking(r)
    for n, key in enumerate(keys):
        assert await a.ask(key, f"ask-{i}-{n}") == [1]
    m = machine(1)
    m.fire(C.WAIT)
    assert await r.state() == (m.status.value, m.retries_left) == ("waiting", 1)
    assert await a.suspend() == 1
    m.fire(C.SUSPEND)
    assert await r.state() == (m.status.value, m.retries_left) == ("suspended", 1)
    return r, a, m


async def test_a_suspended_record_moves_as_a_suspended_task(client: Any) -> None:
    """SUSPEND gives the claim back (suspended, no entry, no fence; its steps and asks
    kept); END of the last pending ask queues it again in the same step (the machine's
    resume, no retry spent), and a claim takes it; a cancel ends a suspended one at once;
    a finished record is suspended no more."""
    r, a, m = await suspended_record(client, 1, "tool:x")
    rec = await client.hmget(K.task(r.tid), "fence", "owner", "entry")
    assert rec == [b"0", b"", b""]
    assert await client.xlen(STREAM) == 0  # its entry gone: no node claims it
    assert await client.ttl(K.task(r.tid)) == -1  # kept while it waits: no expiry
    assert await client.hgetall(K.task_asks(r.tid)) == {b"tool:x": b"ask-1-0"}
    r, a, m = await suspended_record(client, 2, "tool:x")
    assert (await a.end("ask-2-0"))[0] == 1
    m.fire(C.RESUME)
    assert await r.state() == (m.status.value, m.retries_left) == ("queued", 1)
    assert await client.xlen(STREAM) == 1  # queued again in its agent's stream
    assert await r.claim()
    m.fire(C.START)
    assert await r.state() == (m.status.value, m.retries_left) == ("running", 1)
    assert await r.finish("succeeded") == 1
    m.fire(C.ANSWERED)
    assert await a.suspend() == 0
    assert await r.state() == (m.status.value, m.retries_left) == ("succeeded", 1)


async def test_a_cancel_of_a_suspended_record_ends_it_cancelled_as_the_machine(
        client: Any) -> None:
    r, _, m = await suspended_record(client, 3, "tool:x")
    assert await r.cancel() == b"cancelled"
    m.fire(C.CANCEL)
    assert await r.state() == (m.status.value, m.retries_left) == ("cancelled", 1)
    assert await client.exists(K.task_asks(r.tid)) == 0  # its asks went with its end


async def test_a_suspended_record_with_two_asks_waits_for_both(client: Any) -> None:
    r, a, m = await suspended_record(client, 4, "tool:x", "tool:y")
    assert (await a.end("ask-4-1"))[0] == 1
    assert (await r.state())[0] == m.status.value == "suspended"  # the other pending
    assert (await a.end("ask-4-0"))[0] == 1
    m.fire(C.RESUME)
    assert await r.state() == (m.status.value, m.retries_left) == ("queued", 1)


async def test_suspend_is_refused_unless_the_claim_waits_on_a_pending_ask(
        client: Any) -> None:
    """Not this claim's (0); nothing pending (2: the answer came first, its attempt
    runs on); an MCP server's elicitation pending (3); a cancel asked (4): the record
    stays waiting, as the machine's waiting task does."""
    r = Record(Scripts(client), client, 5)
    await r.submit()
    await r.claim(1)
    a = Asking(r)
    assert await a.suspend() == 2  # it asked nothing
    assert await a.ask("tool:x", "ask-5-0") == [1]
    assert await a.suspend(r.token + 1) == 0
    assert (await a.end("ask-5-0"))[0] == 1
    assert await a.suspend() == 2
    assert await a.ask(f"{ELICITATION}srv", "ask-5-1") == [1]
    assert await a.suspend() == 3
    assert await a.ask("tool:y", "ask-5-2") == [1]
    assert await r.cancel() == b"asked"
    assert await a.suspend() == 4
    assert (await r.state())[0] == "waiting"


async def test_an_ask_makes_a_record_wait_and_the_end_of_the_last_resumes_it(
        client: Any) -> None:
    """ASK moves a running record to waiting (the machine's wait), a second ask of the
    attempt changes nothing (a wait of a waiting task); END of one ask with another
    pending leaves it waiting, END of the last resumes it running; the same call asked
    again (a retry's) waits on its ask while it is pending, and runs on once it ended."""
    r = Record(Scripts(client), client, 6)
    await r.submit()
    await r.claim(1)
    a, m = Asking(r), machine(1)
    assert await a.ask("tool:x", "ask-6-0") == [1]
    assert m.fire(C.WAIT).target == TaskStatus.WAITING
    assert await r.state() == (m.status.value, m.retries_left) == ("waiting", 1)
    assert await a.ask("tool:y", "ask-6-1") == [1]
    assert m.fire(C.WAIT).target is None
    assert await a.ask("tool:x", "ask-6-2") == [2, b"ask-6-0"]  # pending: it waits on
    assert await r.state() == (m.status.value, m.retries_left) == ("waiting", 1)
    assert (await a.end("ask-6-1"))[0] == 1
    assert await r.state() == (m.status.value, m.retries_left)  # the other pending
    assert (await a.end("ask-6-0"))[0] == 1
    m.fire(C.RESUME)
    assert await r.state() == (m.status.value, m.retries_left) == ("running", 1)
    assert await a.ask("tool:x", "ask-6-3") == [2, b"ask-6-0"]  # ended: it runs on
    assert (await r.state())[0] == "running"


@pytest.mark.parametrize(("case", "retries", "lua", "cause", "answer"),
                         [c for c in CASES if c[1] is not None],
                         ids=[c[0] for c in CASES if c[1] is not None])
async def test_a_waiting_record_moves_as_a_running_one_as_the_machine_moves_a_task(
        client: Any, case: str, retries: int, lua: Lua, cause: TaskCause,
        answer: Any) -> None:
    """Every cause but a wait and a resume moves a waiting task as a running one (its
    attempt is on its worker): so the Lua moves a waiting record."""
    r = Record(Scripts(client), client, 7)
    await r.submit()
    assert await r.claim(retries)
    assert await Asking(r).ask("tool:x", "ask-7-0") == [1]
    m = machine(retries)
    m.fire(C.WAIT)
    assert await r.state() == (m.status.value, m.retries_left)
    assert await lua(r) == answer
    m.fire(cause, LuaRetryPolicy())
    assert await r.state() == (m.status.value, m.retries_left), case


class FailedRetried(LuaRetryPolicy):
    """A policy that retries a failure (a task's own `retry_on`, or its agent's)."""

    def retried_on(self, task: TaskMachine) -> tuple[str, ...]:
        return ("failed",)


@pytest.mark.parametrize("due", ["", "9.5"], ids=["at once", "after its backoff"])
async def test_a_retried_failure_queues_the_record_again_as_the_machine_queues_the_task(
        client: Any, due: str) -> None:
    """The node's machine retried a failed attempt (one retry spent): FINISH with status
    queued leaves the record as the task, for any node: in its stream at once, or held
    in the due set until its backoff's end (due.py), its fence withdrawn."""
    r = Record(Scripts(client), client, 1)
    await r.submit()
    assert await r.claim(1)
    m = machine(1)
    step = m.fire(C.FAILED, FailedRetried())
    assert step.retried and (m.status.value, m.retries_left) == ("queued", 0)
    entry = await r.entry()
    assert await r.s.finish(
        keys=[K.task(r.tid), K.attempts(r.tid), STREAM, K.outcomes, *K.listed],
        args=[r.token, r.tid, "queued", b"", b"", due, entry, 0, 60, m.retries_left, "0",
              "", b'{"replica":0,"pid":1,"started":2.0,"node":"b","outcome":"failed"}']) == 1
    assert await r.state() == (m.status.value, m.retries_left)
    rec = await client.hgetall(K.task(r.tid))
    assert (rec[b"fence"], rec[b"owner"]) == (b"0", b"")
    assert await client.llen(K.attempts(r.tid)) == 1
    assert entry not in [e for e, _f in await client.xrange(STREAM)]  # acknowledged
    if due:
        assert (rec[b"entry"], rec[b"not_before"]) == (b"", due.encode())
        assert await client.zscore(K.due, r.tid) == float(due)
    else:
        assert [e for e, _f in await client.xrange(STREAM)] == [rec[b"entry"]]
        assert await r.claim(0)  # any node's claim takes it, as a queued task


class Wakes:
    def wake(self, agent: str) -> None:
        """(a slot freed: no puller reads here)"""


async def retried(r: Record, at: float | None) -> tuple[Outbox, list[str]]:
    """Node b's outbox with the record's claim as b's engine leaves it once its machine
    retried the failed attempt (one retry spent, due at `at`), sent for FINISH to keep;
    and what b reports."""
    said: list[str] = []
    outbox = Outbox(r.s, K, Trust(None, "m", print), "b", 0.2, Wakes(),  # type: ignore[arg-type]
                    said.append, 60)
    task = ClusterTask(r.tid, "w", msgspec.Raw(b"{}"), 0, 30.0, 0, 1.0, token=r.token,
                       base=0, entry=(await r.entry()).decode(), stream=STREAM,
                       consumer="b/1")
    task.attempts = [Attempt(0, 1, 2.0, 3.0, "failed", "attempt 1 failed")]
    outbox.requeue(task, at)
    return outbox, said


async def test_a_retry_of_a_task_asked_to_cancel_ends_it_cancelled_as_the_machine(
        client: Any) -> None:
    """CANCEL marked it while it ran, after its node's beat last read no mark; the node's
    machine then retried its failed attempt. FINISH keeps a retry only while the mark is
    as its node read it: refused, the node reads the mark and decides as the machine
    cancels a running task, in cancel_failure's words; the record ends cancelled, never
    queued again, its attempt as it ended."""
    r = Record(Scripts(client), client, 1)
    await r.submit()
    assert await r.claim(1)
    assert await r.cancel() == b"asked"
    outbox, said = await retried(r, 9.5)
    assert await outbox.send()  # refused: nothing written, decided again
    assert await r.state() == ("running", 1)
    assert [args[2] for _task, args in outbox.pending] == ["cancelled"]
    assert await outbox.send()
    m = machine(1)
    m.fire(C.FAILED, FailedRetried())
    m.fire(C.CANCEL, FailedRetried())
    assert await r.state() == (m.status.value, m.retries_left) == ("cancelled", 0)
    rec = await client.hgetall(K.task(r.tid))
    assert (rec[b"error"], rec[b"fence"]) == (CANCEL_ERR, str(r.token).encode())
    assert rec[b"mac"] == Trust(None, "m", print).outcome(
        r.tid, r.token, "cancelled", b"", CANCEL_ERR).encode()
    assert [json.loads(a)["outcome"] for a in await client.lrange(K.attempts(r.tid), 0, -1)
            ] == ["failed"]
    assert await client.zscore(K.due, r.tid) is None
    assert await client.zscore(K.live, r.tid) is None  # listed among the finished
    [(_e, out)] = await client.xrange(K.outcomes)
    assert (out[b"task"], out[b"status"], out[b"error"]) == (
        r.tid.encode(), b"cancelled", CANCEL_ERR)
    assert (list(outbox.pending), outbox.published, outbox.refused, said) == ([], 1, 0, [])


async def test_a_retry_is_kept_under_the_mark_its_node_read_again(client: Any) -> None:
    """A mark that is no cancel's (a Redis writer's) refuses the retry decided on none;
    read again it asks no cancel of the machine, and FINISH keeps the retry under it."""
    r = Record(Scripts(client), client, 1)
    await r.submit()
    assert await r.claim(1)
    await client.hset(K.task(r.tid), "cancel", "x")
    outbox, said = await retried(r, None)
    assert await outbox.send()
    assert [args[2:5] for _task, args in outbox.pending] == [["queued", b"", b"x"]]
    assert await outbox.send()
    assert await r.state() == ("queued", 0)
    assert [e for e, _f in await client.xrange(STREAM)] == [await r.entry()]
    assert (list(outbox.pending), outbox.published, said) == ([], 1, [])
