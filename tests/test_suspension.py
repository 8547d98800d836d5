"""Waiting without a process (issue 55 item 4; docs/approvals.md#waiting-without-a-process):
a task that has waited for a person past its agent's `suspend_after` gives its attempt
back (its slot, and its elastic agent's process, which then sleeps) and is `suspended`;
when what it asked ends it resumes by replay: its journaled calls answered from the
journal (the counting server sees each once), the question its answer, the held call its
approval. The waits are measured by a clock the test moves (`corral clock --advance`,
[supervisor] manual_clock): ten minutes of waiting in no time.

Real processes: the daemon (a subprocess, SIGKILLed in one test; in this test's loop in
the one that looks for what a wave of suspensions leaves to the collector), SDK workers
(tests/asking_agent.py), a real MCP server that counts its calls
(tests/servers/counting_mcp.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral import jsonrpc
from corral.cli.client import CallFailed, Client
from corral.supervisor.tasks.inbox import Ask, AskEnd, AskEnded, Decision, decide
from corral.supervisor.tasks.model import AttemptEnded
from corral.taskoptions import TaskOptions
from corral.taskviews import Attempt

from .conftest import ROOT
from .daemon_harness import PY, Daemon, in_process, shared_tmpdir
from .test_daemon_cli import wait_until

HERE = Path(__file__).parent
SUSPEND_AFTER = 300  # the agent's suspend_after: five minutes of the test's clock


def fleet(tmp: Path) -> str:
    asker = textwrap.dedent(f"""
        command = ["{PY}", "{HERE}/asking_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["counting__*"]
        suspend_after = {SUSPEND_AFTER}
        stop_timeout = 10.0
    """)
    elastic = "[agents.{}.autoscale]\nmin_replicas = 0\nidle_after = 0.3\n\n"
    return (f"[agents.asker]{asker}\n" + elastic.format("asker")
            # a tool budget of one call: a held call counts once, when it is made
            + f"[agents.approver]{asker}approve = [\"counting__bump\"]\n"
              "max_tool_calls_per_task = 1\n\n"
            + elastic.format("approver")
            + f"[agents.unjournaled]{asker}replay = false\n\n"
            + f'[mcp_servers.counting]\ncommand = ["{PY}", "{HERE}/servers/counting_mcp.py", '
              f'"{tmp}/server-count"]\n')


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    d = Daemon(tmp, fleet(tmp), extra="manual_clock = true")
    try:
        d.start()
        yield d
    finally:
        d.close()


def counted(d: Daemon) -> list[str]:
    path = d.dir / "server-count"
    return path.read_text().split() if path.exists() else []


def task(d: Daemon, task_id: str) -> dict[str, Any]:
    info: dict[str, Any] = d.ask("tasks.get", {"task_id": task_id})
    return info


def status_is(d: Daemon, task_id: str, status: str) -> dict[str, Any]:
    return wait_until(lambda: (t := task(d, task_id))["status"] == status and t, 30,
                      f"task {task_id} {status}")


def the_ask(d: Daemon, task_id: str) -> dict[str, Any]:
    asks = wait_until(lambda: d.ask("approvals.list")["asks"], 30, "the task's ask")
    [ask] = asks
    assert ask["task_id"] == task_id
    return dict(ask)


def advance(d: Daemon, by: str) -> str:
    moved = d.cli("clock", "--advance", by)
    assert moved.returncode == 0, moved.stderr
    return moved.stdout


def asleep(d: Daemon, agent: str) -> bool:
    return not [r for r in d.status().values() if r["name"] == agent and r["pid"]]


def suspended_with_no_process(d: Daemon, task_id: str) -> dict[str, Any]:
    """The task suspended, its attempt's worker gone: the elastic agent slept."""
    waiting = status_is(d, task_id, "waiting")
    pid = waiting["attempts"][-1]["pid"]
    assert psutil.pid_exists(pid)
    shown = advance(d, "10m")
    assert "(manual, moved 600 s)" in shown, shown
    info = status_is(d, task_id, "suspended")
    last = info["attempts"][-1]
    assert (last["outcome"], last["error"]) == (
        "suspended", f"waited {SUSPEND_AFTER} s for a person (suspend_after): its task "
                     "resumes by replay when what it asked has ended")
    wait_until(lambda: asleep(d, info["agent"]) and not psutil.pid_exists(pid), 30,
               "the suspended task's worker gone, its agent asleep")
    return info


@pytest.mark.deadline(120)
def test_a_question_answered_after_ten_minutes_resumes_a_released_task_by_replay(
        daemon: Daemon) -> None:
    d = daemon
    marks = d.dir / "marks"
    task_id = d.ask("tasks.submit", {"agent": "asker", "input": {
        "prompt": "Which file?", "calls": 3, "marks": str(marks)}})["task_id"]
    ask = the_ask(d, task_id)
    assert counted(d) == ["0", "1", "2"]
    info = suspended_with_no_process(d, task_id)
    # it still says what it waits for; the ask is the same, pending
    assert [a["id"] for a in info["asks"]] == [ask["id"]]
    shown = d.cli("task", task_id).stdout
    assert "status: suspended" in shown, shown
    assert f"waiting for: question: Which file? (ask {ask['id']})" in shown, shown

    answered = d.cli("approvals", "answer", ask["id"], "--data", json.dumps("/srv/a"))
    assert answered.returncode == 0, answered.stderr
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    # the resumed attempt was answered from the journal: each call made once, the
    # question asked once, no retry spent
    assert done["output"] == {"answer": "/srv/a", "second": None, "attempt": 2,
                              "bumped": ["bumped 0", "bumped 1", "bumped 2"]}
    assert counted(d) == ["0", "1", "2"]
    assert marks.read_text() == "1\n2\n"
    assert [a["outcome"] for a in done["attempts"]] == ["suspended", "succeeded"]
    assert done["attempts"][1]["replayed"] == 3
    ended = d.ask("approvals.get", {"id": ask["id"]})
    assert ended["end"] == "answered" and ended["ended"] - ended["created"] >= 600


@pytest.mark.deadline(150)
def test_a_suspended_task_outlives_a_sigkill_and_its_approved_call_runs_once(
        daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "approver", "input": {"calls": 1}})["task_id"]
    ask = the_ask(d, task_id)
    assert ask["subject"] == {"tool": "counting__bump", "arguments": {"i": 0}}
    suspended_with_no_process(d, task_id)

    d.stop(signal.SIGKILL)
    d.start()
    # still suspended (not retried, no process), its ask pending
    assert task(d, task_id)["status"] == "suspended"
    assert [a["id"] for a in d.ask("approvals.list")["asks"]] == [ask["id"]]
    wait_until(lambda: asleep(d, "approver"), 30, "its agent asleep again")
    assert task(d, task_id)["status"] == "suspended"

    approved = d.cli("approvals", "approve", ask["id"])
    assert approved.returncode == 0, approved.stderr
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    assert done["output"]["bumped"] == ["bumped 0"]
    assert counted(d) == ["0"]  # the approved call ran once, in the resumed attempt
    assert done["tool_calls"] == 1  # and counted once (its budget is one call)
    assert [a["outcome"] for a in done["attempts"]] == ["suspended", "succeeded"]
    assert d.ask("approvals.list")["asks"] == []


@pytest.mark.deadline(120)
def test_denied_while_suspended_the_resumed_agent_reads_the_tools_error(
        daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "approver", "input": {"calls": 1}})["task_id"]
    ask = the_ask(d, task_id)
    suspended_with_no_process(d, task_id)
    # the held call's refusal, said in the agent's log as one line, not a crash's traceback
    said = f"corral worker: task {task_id}: task {task_id} was suspended while it waited " \
           "for a person: its next attempt asks again"

    def logged() -> str | None:
        text = d.cli("logs", "approver", "-n", "200").stdout
        return text if said in text else None

    log = wait_until(logged, 30, "the suspension in the agent's log")
    assert "Traceback" not in log, log
    denied = d.cli("approvals", "deny", ask["id"], "--reason", "not today")
    assert denied.returncode == 0, denied.stderr
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    [said] = done["output"]["bumped"]
    assert said.startswith("tool call counting__bump was denied by ") and said.endswith(
        f"(ask {ask['id']}): not today"), said
    assert counted(d) == [] and done["tool_calls"] == 0  # never made, never counted


@pytest.mark.deadline(120)
def test_a_question_that_times_out_while_suspended_resumes_with_its_timeout(
        daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "asker", "input": {
        "prompt": "Still there?", "timeout": 900}})["task_id"]
    ask = the_ask(d, task_id)
    suspended_with_no_process(d, task_id)
    # kept compact (no Task): its ask's deadline holds all the same
    wait_until(lambda: compact(d) == 1, 30, "the suspended task kept compact")
    advance(d, "10m")  # past the question's own 900 s
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    assert done["output"] == {"refused": f"task/ask: question {ask['id']} had no answer "
                                         f"within 900s", "code": jsonrpc.REQUEST_TIMEOUT}
    assert d.ask("approvals.get", {"id": ask["id"]})["end"] == "timed_out"


@pytest.mark.deadline(120)
def test_a_suspended_task_cancelled_ends_and_its_ask_is_withdrawn(daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "asker", "input": {"prompt": "Go?"}})["task_id"]
    ask = the_ask(d, task_id)
    suspended_with_no_process(d, task_id)
    cancelled = d.cli("cancel", task_id)
    assert cancelled.returncode == 0, cancelled.stderr
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert (done["status"], done["error"]["message"]) == (
        "cancelled", "cancelled while suspended (waiting for a person)")
    wait_until(lambda: d.ask("approvals.get", {"id": ask["id"]})["end"] == "withdrawn", 30,
               "the ask withdrawn")
    assert d.ask("approvals.list")["asks"] == []


@pytest.mark.deadline(120)
def test_calls_that_are_not_journaled_keep_their_attempt_while_they_wait(
        daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "unjournaled",
                                     "input": {"prompt": "Go?"}})["task_id"]
    ask = the_ask(d, task_id)
    status_is(d, task_id, "waiting")
    advance(d, "1h")
    # replay = false: a resumed attempt would run its calls again, so it is not suspended
    assert task(d, task_id)["status"] == "waiting"
    answered = d.cli("approvals", "answer", ask["id"], "--data", json.dumps("yes"))
    assert answered.returncode == 0, answered.stderr
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert (done["status"], done["output"]["answer"], len(done["attempts"])) == (
        "succeeded", "yes", 1)
    # a clock moves forward, by a sane amount, or not at all
    for bad in ("-5", "1e12"):
        refused = d.cli("clock", "--json", "--advance", bad)
        assert refused.returncode != 0, refused.stdout
    with Client(d.sock) as c:
        for seconds in (-5.0, 1e12):
            with pytest.raises(CallFailed) as err:
                c.call("daemon.clock", {"advance": seconds})
            assert err.value.message == (f"a clock moves forward, by at most ten years: "
                                         f"not {seconds:g} s")
        assert c.call("daemon.clock", {})["ahead"] == 3600


def test_the_walls_clock_does_not_move(tmp_path: Path) -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, "")
    try:
        d.start()
        moved = d.cli("clock", "--advance", "10m")
        assert moved.returncode != 0
        assert moved.stderr.strip() == (
            "corral: the daemon's clock is the wall's: only a manual clock moves "
            "([supervisor] manual_clock = true, for tests)"), moved.stderr
        shown = d.cli("clock")
        assert shown.returncode == 0 and shown.stdout.rstrip().endswith("(the wall's)"), \
            shown.stdout
        bad = d.cli("clock", "--advance", "soon")
        assert bad.returncode == 2 and "not a duration: soon" in bad.stderr, bad.stderr
    finally:
        d.close()


@pytest.mark.deadline(150)
def test_an_upgrade_suspends_a_waiting_task_and_the_next_image_resumes_it(
        daemon: Daemon) -> None:
    """A held request cannot be handed to the next image: the upgrade suspends the task
    (whatever its suspend_after), and the answer given to the new image resumes it."""
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "asker", "input": {
        "prompt": "Go?", "calls": 2}})["task_id"]
    ask = the_ask(d, task_id)
    status_is(d, task_id, "waiting")
    upgraded = d.cli("upgrade", timeout=90)
    assert upgraded.returncode == 0, upgraded.stderr + upgraded.stdout
    info = status_is(d, task_id, "suspended")
    assert info["attempts"][-1]["error"] == (
        "suspended while it waited for a person, for the daemon's upgrade: its task "
        "resumes by replay when what it asked has ended")
    assert [a["id"] for a in d.ask("approvals.list")["asks"]] == [ask["id"]]
    answered = d.cli("approvals", "answer", ask["id"], "--data", json.dumps("yes"))
    assert answered.returncode == 0, answered.stderr
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert (done["status"], done["output"]["answer"], done["output"]["attempt"]) == (
        "succeeded", "yes", 2), done
    assert counted(d) == ["0", "1"]


@pytest.mark.deadline(120)
def test_a_shutdown_keeps_a_suspended_task_for_the_next_daemon_and_says_so(
        daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "asker", "input": {"prompt": "Go?"}})["task_id"]
    ask = the_ask(d, task_id)
    suspended_with_no_process(d, task_id)
    stopped = d.cli("shutdown", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert ("no task was running; 1 suspended (waiting for a person) kept for the next "
            "daemon") in stopped.stdout, stopped.stdout
    d.start()
    assert task(d, task_id)["status"] == "suspended"
    answered = d.cli("approvals", "answer", ask["id"], "--data", json.dumps("yes"))
    assert answered.returncode == 0, answered.stderr
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert (done["status"], done["output"]["answer"]) == ("succeeded", "yes"), done


def compact(d: Daemon) -> int:
    """The suspended tasks kept compact (no Task in memory, their rows the journal's)."""
    return int(d.ask("stats.get")["tasks"]["suspensions"]["compact"])


def alike(info: dict[str, Any]) -> dict[str, Any]:
    """A task's record less what tells two tasks of one input apart (ids, times, pids)."""
    out = {k: v for k, v in info.items()
           if k not in ("task_id", "created", "started", "queue_wait")}
    out["attempts"] = [{k: v for k, v in a.items() if k not in ("started", "finished", "pid")}
                       for a in info["attempts"]]
    out["asks"] = [{k: v for k, v in a.items() if k not in ("id", "created", "task_id")}
                   for a in info.get("asks") or []]
    return out


def in_a_thread(d: Daemon, method: str, params: dict[str, Any]
                ) -> tuple[threading.Thread, list[Any]]:
    """A call that waits for a task's end, on a connection of its own: its answer, or
    what ended it."""
    got: list[Any] = []

    def wait() -> None:
        try:
            with Client(d.sock, timeout=120) as c:
                got.append(c.call(method, params))
        except Exception as exc:  # the daemon killed under the wait
            got.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, got


@pytest.mark.deadline(180)
def test_a_suspended_task_kept_compact_answers_as_one_kept_whole_and_after_a_sigkill(
        daemon: Daemon) -> None:
    """A suspended task whose Task nothing else holds is kept compact once its stopped
    attempt has ended (issue 55): its record, its listing, its ask and its cancel are as
    a whole one's (one a `tasks.get {wait}` holds stays whole), and so after a SIGKILL,
    which reads both back compact; a wait rebuilds it, and the answer resumes it."""
    d = daemon
    go = {"prompt": "Go?", "calls": 1}
    # run: its submitter waits on its Task from its acceptance, which keeps it whole
    held, _ = in_a_thread(d, "tasks.run", {"agent": "asker", "input": go})
    ask_whole = wait_until(lambda: d.ask("approvals.list")["asks"], 30, "the first ask")[0]
    whole = ask_whole["task_id"]
    status_is(d, whole, "waiting")
    kept = d.ask("tasks.submit", {"agent": "asker", "input": go})["task_id"]
    advance(d, "10m")  # the first suspended, held whole: its slot is the second's
    ask_kept = wait_until(lambda: [a for a in d.ask("approvals.list")["asks"]
                                   if a["task_id"] == kept], 30, "the second ask")[0]
    status_is(d, kept, "waiting")
    advance(d, "10m")
    wait_until(lambda: compact(d) == 1, 30, "one suspended task kept compact")
    settled = wait_until(lambda: (t := task(d, whole))["attempts"][-1]["finished"] and t, 30,
                         "the whole one's stopped attempt ended")
    shown = task(d, kept)
    assert shown["status"] == "suspended" and [a["id"] for a in shown["asks"]] == [
        ask_kept["id"]]
    assert alike(shown) == alike(settled)
    listed = d.ask("tasks.list", {"status": "suspended"})["tasks"]
    assert sorted(t["task_id"] for t in listed) == sorted([whole, kept])
    cli = d.cli("task", kept).stdout
    assert "status: suspended" in cli and f"waiting for: question: Go? (ask {ask_kept['id']})" \
        in cli, cli

    d.stop(signal.SIGKILL)
    held.join(30)
    d.start()
    assert compact(d) == 2  # both read back compact, as they were
    log = (d.state / "logs" / "corral.log").read_text()
    assert ("task journal: 2 unfinished tasks recovered: 0 queued again, 0 running tasks "
            "retried, 0 lost (daemon restarted), 2 suspended (waiting for a person)") in log
    assert task(d, kept) == shown and task(d, whole) == settled
    assert sorted(a["id"] for a in d.ask("approvals.list")["asks"]) == sorted(
        [ask_whole["id"], ask_kept["id"]])

    cancelled = d.cli("cancel", kept)
    assert cancelled.returncode == 0, cancelled.stderr
    done = d.ask("tasks.get", {"task_id": kept})
    assert (done["status"], done["error"]["message"]) == (
        "cancelled", "cancelled while suspended (waiting for a person)")
    wait_until(lambda: d.ask("approvals.get", {"id": ask_kept["id"]})["end"] == "withdrawn",
               30, "the cancelled task's ask withdrawn")

    # its output followed (tasks.stream, SSE's) until it ends, and a wait: it is made
    # whole, once, for both
    streamer, streamed = in_a_thread(d, "tasks.stream", {"task_id": whole})
    wait_until(lambda: compact(d) == 0, 30, "the task followed made whole")
    waiter, got = in_a_thread(d, "tasks.get", {"task_id": whole, "wait": True})
    assert not streamed  # it waits for the end of a task still suspended
    answered = d.cli("approvals", "answer", ask_whole["id"], "--data", json.dumps("yes"))
    assert answered.returncode == 0, answered.stderr
    waiter.join(60)
    streamer.join(60)
    [end] = got
    assert (end["status"], end["output"]["answer"], end["output"]["attempt"]) == (
        "succeeded", "yes", 2), end
    assert streamed[0]["status"] == "succeeded", streamed
    assert [a["outcome"] for a in end["attempts"]] == ["suspended", "succeeded"]
    assert counted(d) == ["0", "0"]  # each task's call made once, replayed after


@pytest.mark.deadline(120)
def test_a_compact_suspended_tasks_agent_removed_ends_it_and_withdraws_its_ask(
        daemon: Daemon) -> None:
    """Its agent removed, a suspended task held compact ends as a whole one does."""
    d = daemon
    d.ask("agents.add", {"agents": {"later": {
        "command": [PY, f"{HERE}/asking_agent.py"], "env": {"PYTHONPATH": str(ROOT)},
        "suspend_after": SUSPEND_AFTER, "stop_timeout": 10.0}}})
    task_id = d.ask("tasks.submit", {"agent": "later", "input": {"prompt": "Go?"}})["task_id"]
    ask = the_ask(d, task_id)
    status_is(d, task_id, "waiting")
    advance(d, "10m")
    wait_until(lambda: compact(d) == 1, 30, "the suspended task kept compact")
    d.ask("agents.remove", {"names": ["later"]})
    done = d.ask("tasks.get", {"task_id": task_id})
    assert (done["status"], done["error"]["message"]) == (
        "cancelled", "agent later was removed"), done
    assert compact(d) == 0
    wait_until(lambda: d.ask("approvals.get", {"id": ask["id"]})["end"] == "withdrawn", 30,
               "its ask withdrawn")


def _left(o: object) -> str | None:
    """What a garbage object of the suspension's path is, or None."""
    if isinstance(o, jsonrpc.RpcError):
        return f"RpcError: {o.message}"
    code = getattr(o, "f_code", None) or getattr(o, "__code__", None)
    if code is not None and "corral/supervisor/tasks/" in code.co_filename:
        return f"{type(o).__name__} {code.co_qualname}"
    return None


def _held(n: int, cancel_grace: float) -> str:
    """An agent whose n tasks at once each ask a question, suspended after SUSPEND_AFTER."""
    return textwrap.dedent(f"""
        [agents.held]
        command = ["{PY}", "{HERE}/asking_agent.py", "--async"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        suspend_after = {SUSPEND_AFTER}
        cancel_grace = {cancel_grace}
        max_concurrent_tasks = {n}
    """)


async def _asked(d: Any, n: int) -> tuple[list[Ask], list[asyncio.Future[Any]]]:
    """n tasks of `held` run, each once its question is asked and it waits."""
    tasks = d.sup.tasks
    made: asyncio.Queue[Ask] = asyncio.Queue()
    tasks.stream.subscribe(lambda e: made.put_nowait(e.ask) if e.ask.pending else None,
                           AskEnded)
    running = [asyncio.ensure_future(tasks.run("held", {"prompt": f"#{i}?"},
                                                TaskOptions(timeout=3600)))
               for i in range(n)]
    asks = [await asyncio.wait_for(made.get(), 30) for _ in range(n)]
    for ask in asks:
        while (await tasks.info(ask.task_id)).status != "waiting":
            await asyncio.sleep(0.01)
    return asks, running


async def _answered(d: Any, asks: list[Ask], running: list[asyncio.Future[Any]]
                    ) -> list[Any]:
    """Each question answered: every task succeeds on its second attempt, with its answer."""
    for ask in asks:
        await decide(d.sup.tasks.inbox, Decision(ask.id, AskEnd.ANSWERED, "token ann",
                                                 ask.subject["prompt"]))
    done = await asyncio.wait_for(asyncio.gather(*running), 60)
    assert sorted((r.status, r.output["answer"], len(r.attempts)) for r in done) == \
        sorted(("succeeded", f"#{i}?", 2) for i in range(len(asks)))
    return list(done)


async def test_a_wave_of_suspensions_leaves_no_cycle_for_the_collector(
        tmp_path: Path) -> None:
    """What the suspended tasks' attempts held is freed as they are suspended, not left in
    cycles until a full collection, which comes rarely (issue 55: 10,000 suspended at once
    left 290,000 such objects, 2 KB a task): the held call's error and its frames (the
    current task kept by a local of the frame the error holds), and the stopped attempt's
    cancel-grace timer (a closure that rescheduled itself). Then the wave's trim comes."""
    n = 5
    async with in_process(tmp_path, _held(n, cancel_grace=0.2),
                          supervisor="manual_clock = true") as d:
        tasks = d.sup.tasks
        asks, running = await _asked(d, n)
        trims = tasks.memory.trims
        ended: set[str] = set()  # the suspended tasks whose stopped attempt ended
        ended_one = asyncio.Event()

        def attempt_ended(e: AttemptEnded) -> None:
            if e.task.suspended:
                ended.add(e.task.id)
                ended_one.set()

        tasks.stream.subscribe(attempt_ended, AttemptEnded)
        gc.collect()
        gc.disable()  # the suspensions' garbage stays for the test to see
        try:
            tasks.clock.advance(600)
            while len(ended) < n:
                await asyncio.wait_for(ended_one.wait(), 30)
                ended_one.clear()
            # after every stopped attempt's cancel-grace timer (armed before this one)
            await asyncio.sleep(0.2)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = sorted({w for o in gc.garbage if (w := _left(o)) is not None})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert left == []
        # the wave settled: what its attempts held goes back to the system a moment later

        async def trimmed() -> None:
            while tasks.memory.trims == trims:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(trimmed(), 10)  # (TRIM_DELAY is 1 s)
        await _answered(d, asks, running)


def _holders(a: Attempt, mine: list[Attempt]) -> list[str]:
    """The types of what holds attempt `a` but `mine` and its task's attempts."""
    found = []
    # what the collection froze (tests/conftest.py: modules' dicts, among others) is
    # looked through too, so a module's global that holds it is found
    gc.unfreeze()
    for h in gc.get_referrers(a):  # (a loop: a comprehension would hold `a` in a cell)
        if h is not mine and not (isinstance(h, tuple) and len(h) == 1 and h[0] is a):
            found.append(type(h).__name__)
    return sorted(found)


async def test_a_stopped_attempt_is_let_go_as_it_ends_not_at_its_cancel_grace(
        tmp_path: Path) -> None:
    """A suspended task's attempt is stopped (task/cancel) with a cancel-grace timer that
    takes its worker down as hung if the attempt has not ended by then; the attempt's end
    cancels that timer, so the attempt (and the timer, its context and its loop handle) is
    let go at once, not `cancel_grace` later: after a wave of 10,000 suspensions they were
    thousands of objects made amid the wave's own that outlived it (issue 55,
    bench/RESULTS.md "pymalloc's arenas after a first passage")."""
    n = 3
    async with in_process(tmp_path, _held(n, cancel_grace=3600),
                          supervisor="manual_clock = true") as d:
        tasks = d.sup.tasks
        asks, running = await _asked(d, n)
        stopped: list[Attempt] = []  # the attempts the suspension stops
        for ask in asks:
            task = tasks.live(ask.task_id)
            assert task is not None and len(task.attempts) == 1
            stopped.append(task.attempts[0])
        del task
        ended: set[str] = set()
        ended_all = asyncio.Event()

        def attempt_ended(e: AttemptEnded) -> None:
            if e.task.suspended:
                ended.add(e.task.id)
                if len(ended) == n:
                    ended_all.set()

        tasks.stream.subscribe(attempt_ended, AttemptEnded)
        tasks.clock.advance(600)
        await asyncio.wait_for(ended_all.wait(), 30)
        ends = [(a.finished is not None, a.outcome) for a in stopped]
        assert ends == [(True, "suspended")] * n
        # what holds each ended attempt besides this test: its task's attempts (a task
        # kept whole), nothing else (no timer's arguments for the hour of its grace)
        holders = [_holders(a, stopped) for a in stopped]
        assert holders == [[]] * n
        done = await _answered(d, asks, running)
        # (the replica that stopped them, never taken down as hung, ran their second)
        assert [r.attempts[0].pid for r in done] == [r.attempts[1].pid for r in done]
