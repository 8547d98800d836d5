"""A submission's idempotency key kept with its task in the journal (corral/taskkeys.py,
docs/http.md#idempotency): the same key sent again — over HTTP's Idempotency-Key, the
CLI's --idempotency-key, a control method's idempotency_key — is the first task, across a
daemon's SIGKILL and restart and an upgrade in place, and runs nothing twice; another
request with the key is refused naming it. (Keys each tenant's, bounded per tenant, on
every home: tests/contract/test_submission.py.)"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral import methods as m
from corral.daemon.caller import Caller, Discard
from corral.jsonrpc import RpcError

from .conftest import PY, ROOT
from .daemon_harness import Daemon, free_port, in_process, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_journal import kill_daemon_and_workers

SOCKET = Caller(via="socket")
RECORDER = Path(__file__).parent / "recording_agent.py"


def recorder(name: str, record: Path, tenant: str = "default") -> str:
    """An agent that appends each input it runs to `record` (one JSON line each)."""
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{RECORDER}"]
        env = {{ PYTHONPATH = "{ROOT}", RECORD = "{record}", WHO = "{name}" }}
        tenant = "{tenant}"
        backoff_initial = 0.05
        stop_timeout = 10.0
    """)


def runs(record: Path) -> list[Any]:
    """The inputs the agent ran, in order."""
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def post(port: int, token: str, body: dict[str, Any], key: str, query: str = ""
         ) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/tasks{query}", data=msgspec.json.encode(body),
        method="POST", headers={"Authorization": f"Bearer {token}",
                                "Content-Type": "application/json",
                                "Idempotency-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@pytest.mark.deadline(180)
def test_a_key_sent_again_after_a_sigkill_is_the_first_task_and_runs_nothing_twice(
        ) -> None:
    tmp = shared_tmpdir()
    record, port = tmp / "record", free_port()
    d = Daemon(tmp, recorder("rec", record)
               + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    d.start()
    try:
        token = d.ask("tokens.create", {"name": "client",
                                        "scopes": ["tasks:run", "tasks:read"]})["token"]
        asked = {"agent": "rec", "input": {"n": 1, "m": 2}}
        status, first, _ = post(port, token, asked, "order-1", "?wait=30")
        assert (status, first["status"], first["output"]) == (200, "succeeded",
                                                              {"by": "rec"})
        # a key given by the CLI, its task ended too
        r = d.cli("run", "rec", "--input", '{"n": 3}', "--idempotency-key", "order-2",
                  "--json")
        assert r.returncode == 0, r.stderr
        second = json.loads(r.stdout)
        assert runs(record) == [{"n": 1, "m": 2}, {"n": 3}]

        kill_daemon_and_workers(d)
        d.start()

        # the same request with the key: the first task and its outcome, nothing run
        status, again, headers = post(port, token, asked, "order-1", "?wait=30")
        assert (status, headers["Idempotent-Replayed"]) == (200, "true")
        assert again == {**first, "replayed": True}
        # the input spelt otherwise (its keys' order is not the request's): the same task
        status, again, _ = post(port, token, {"agent": "rec", "input": {"m": 2, "n": 1}},
                                "order-1")
        assert again == {**first, "replayed": True}
        # the CLI's run and submit with its own key (a key is its caller's, decision
        # 1792): the same task
        r = d.cli("run", "rec", "--input", '{ "n": 3 }', "--idempotency-key", "order-2",
                  "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {k: second[k] for k in json.loads(r.stdout)}
        r = d.cli("submit", "rec", "--input", '{"n": 3}', "--idempotency-key", "order-2")
        assert (r.returncode, r.stdout.strip()) == (0, second["task_id"])
        assert d.ask("tasks.submit", {"agent": "rec", "input": {"n": 3},
                                      "idempotency_key": "order-2"}) == {
            **second, "replayed": True}
        assert runs(record) == [{"n": 1, "m": 2}, {"n": 3}]
        tasks = d.ask("tasks.list", {})["tasks"]
        assert sorted(t["task_id"] for t in tasks) == sorted(
            [first["task_id"], second["task_id"]])
        assert d.task(first["task_id"])["options"] == {"idempotency_key": "order-1"}

        # another request with a key: refused naming it, nothing run
        status, body, _ = post(port, token, {"agent": "rec", "input": {"n": 2}},
                               "order-1")
        assert (status, body["detail"]) == (
            409, "idempotency key order-1 was used for another request: "
                 "send a new key")
        r = d.cli("submit", "rec", "--input", '{"n": 4}', "--idempotency-key", "order-2")
        assert r.returncode == 1
        assert ("idempotency key order-2 was used for another request: "
                "send a new key") in r.stderr
        assert len(runs(record)) == 2

        # a keyed task running across an upgrade in place: the key names it after, and
        # it runs once
        r = d.cli("submit", "rec", "--input", '{"hold": 2}', "--idempotency-key", "up")
        assert r.returncode == 0, r.stderr
        held = r.stdout.strip()
        wait_until(lambda: d.task(held)["status"] == "running", what="running")
        r = d.cli("upgrade")
        assert r.returncode == 0, r.stderr + r.stdout
        r = d.cli("run", "rec", "--input", '{"hold": 2}', "--idempotency-key", "up",
                  "--json")
        assert r.returncode == 0, r.stderr
        assert (json.loads(r.stdout)["task_id"], json.loads(r.stdout)["status"]) == (
            held, "succeeded")
        assert runs(record)[2:] == [{"hold": 2}]
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.deadline(120)
async def test_a_key_without_a_journal_is_refused(tmp_path: Path) -> None:
    record = tmp_path / "record"
    async with in_process(tmp_path, recorder("rec", record), "",
                          "task_journal = false") as d:
        with pytest.raises(RpcError) as refused:
            await d.dispatcher.call(SOCKET, "tasks.submit", {
                "agent": "rec", "input": msgspec.Raw(b"1"), "idempotency_key": "k"})
        assert (refused.value.code, refused.value.message) == (
            jsonrpc.INVALID_PARAMS,
            "invalid params: an idempotency key is kept in the task journal, and this "
            "daemon has none (task_journal = false): submit it without one")
        assert (await d.dispatcher.call(SOCKET, "tasks.list", {})).tasks == []


@pytest.mark.deadline(120)
async def test_a_keyed_task_its_journal_could_not_record_keeps_no_key(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, recorder("rec", tmp_path / "record")) as d:
        db = tmp_path / "state" / "corral.db"

        gate = tmp_path / "go-on"

        async def submit(task_input: dict[str, Any]) -> Any:
            return await d.dispatcher.call(SOCKET, "tasks.submit", {
                "agent": "rec", "input": msgspec.Raw(msgspec.json.encode(task_input)),
                "idempotency_key": "k", "wait": 30})

        # (the task runs on until the journal's refusal is told, held by its gate: one
        # that ended first ran, and its outcome would be the answer, and the journal's
        # writer may wait for the lock once for each write queued before it, the state
        # database's too; the request after it holds for nothing, as its replica is free
        # only once the gate opens)
        holder = sqlite3.connect(db, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")  # every write of the journal fails now
            # the request and its retry while the first waits for its commit: the retry
            # is told the first's task only once it is durable, so both are refused
            held = {"gate": str(gate)}
            both = await asyncio.gather(submit(held), submit(held), return_exceptions=True)
            for refused in both:
                assert isinstance(refused, RpcError)
                assert (refused.code, refused.message) == (
                    jsonrpc.INTERNAL_ERROR, f"task journal {db} cannot be written "
                                            "(database is locked); the task was not "
                                            "accepted")
            holder.execute("ROLLBACK")
        finally:
            holder.close()
            gate.touch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while (await d.dispatcher.call(SOCKET, "stats.get")
               ).supervisor.task_journal_refusing is not None:  # its catch-up, <= 1 s
            assert loop.time() < deadline, "the journal never wrote again"
            await asyncio.sleep(0.05)
        # the task refused kept no key: its key's next request is a new task (one kept
        # would answer it as that task's, or refuse its other input), then that one
        again = await submit({})
        assert again.status == "succeeded" and again.replayed is msgspec.UNSET
        assert (await submit({})).task_id == again.task_id
        listed = (await d.dispatcher.call(SOCKET, "tasks.list", {})).tasks
        assert sorted(t.status for t in listed) == ["cancelled", "succeeded"]
        keys = sqlite3.connect(db)
        try:
            # (kept as its holder's, the socket's peer: decision 1792)
            assert keys.execute("SELECT tenant, key, task_id FROM idempotency_keys"
                                ).fetchall() == [("default", "6:uid -1:k", again.task_id)]
        finally:
            keys.close()


@pytest.mark.deadline(120)
async def test_a_keys_holder_is_an_input_of_the_submission_at_the_task_front(
        tmp_path: Path) -> None:
    """Whose a key is, is said by the submission itself (decision 1805): the task front
    takes its holder as an input, so a door that reaches it without the tasks handlers
    (no ambient holder set) keeps its callers' keys apart all the same; None, the
    daemon's own, is said in words, never a default a new door falls into."""
    async with in_process(tmp_path, recorder("rec", tmp_path / "record")) as d:
        front = d.services.tasks

        async def submit(holder: str | None) -> str:
            accepted = await front.submit(m.TasksSubmit(
                agent="rec", input=msgspec.Raw(b'{"n": 1}'), idempotency_key="k", wait=30),
                Discard(), holder)
            return str(accepted.task_id)

        mine, theirs, own = await submit("token a"), await submit("token b"), await submit(
            None)
        assert len({mine, theirs, own}) == 3
        assert (await submit("token a"), await submit(None)) == (mine, own)
