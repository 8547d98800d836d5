"""corral's A2A door through the official client, `a2a-sdk` 1.3.0, on both bindings:
send (blocking and streamed), get, cancel, an input-required task answered by the
caller's next message, a stream resubscribed after the daemon is SIGKILLed (the journal
replayed: each chunk once, in order, and then what follows) and on a cluster's other node
after the running node's SIGKILL and a takeover (the cluster's Redis replayed alike), and
another tenant's card, task and push config refused."""

from __future__ import annotations

import asyncio
import signal
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ..cluster.harness import kill9
from ..conftest import ROOT
from ..contract.home import made, wait_until
from ..daemon_harness import PY
from .counter_agent import COUNT
from .harness import a2a_daemon, assert_replayed, card, tck_agent

if TYPE_CHECKING:
    from a2a.client import Client
    from a2a.types import SendMessageRequest, StreamResponse

BINDINGS = ["JSONRPC", "HTTP+JSON"]
COUNTER = Path(__file__).parent / "counter_agent.py"
COUNTER_AGENT = textwrap.dedent(f"""
    [agents.counter]
    command = ["{PY}", "{COUNTER}"]
    env = {{ PYTHONPATH = "{ROOT}" }}
    retry_lost = 3
    backoff_initial = 0.05
""")


@asynccontextmanager
async def client(url: str, binding: str, *, streaming: bool = True, agent: str = "tck",
                 token: str | None = None) -> AsyncIterator[Client]:
    # the official SDK imported by the tests that call it, not by every worker's
    # collection (bench/RESULTS.md, the suite)
    from a2a.client import ClientConfig, ClientFactory

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        factory = ClientFactory(ClientConfig(httpx_client=http, streaming=streaming,
                                             supported_protocol_bindings=[binding]))
        yield await factory.create_from_url(f"{url}/a2a/{agent}")


def message(prefix: str, task_id: str = "", text: str = "hi") -> SendMessageRequest:
    from a2a.types import Message, Part, Role, SendMessageRequest

    return SendMessageRequest(message=Message(
        message_id=f"{prefix}-{uuid.uuid4().hex[:8]}", role=Role.ROLE_USER,
        task_id=task_id, parts=[Part(text=text)]))


async def events(c: Client, request: SendMessageRequest) -> list[StreamResponse]:
    return [e async for e in c.send_message(request)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("binding", BINDINGS)
async def test_send_get_stream_answer_and_cancel_through_the_official_client(
        tmp_path: Path, binding: str) -> None:
    from a2a.types import CancelTaskRequest, GetTaskRequest, TaskState

    with a2a_daemon(tmp_path) as (_, url):
        async with client(url, binding, streaming=False) as c:
            # blocking: the task once it has ended, its data artifact the agent's
            [sent] = await events(c, message("tck-artifact-data"))
            task = sent.task
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
            assert [dict(p.data.struct_value) for p in task.artifacts[0].parts] == [
                {"key": "value", "count": 42.0}]
            got = await c.get_task(GetTaskRequest(id=task.id))
            assert (got.id, got.context_id, got.status.state) == (
                task.id, task.context_id, TaskState.TASK_STATE_COMPLETED)
            # input-required is the agent's question; the next message answers it
            [asked] = await events(c, message("tck-input-required"))
            waiting = asked.task
            assert waiting.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            assert waiting.status.message.parts[0].text == "TCK: input required"
            [answered] = await events(c, message("tck-complete-task", waiting.id))
            assert answered.task.id == waiting.id
            assert answered.task.status.state == TaskState.TASK_STATE_COMPLETED
            assert answered.task.status.message.parts[0].text == "Hello from TCK"
            # a task waiting for input is cancelled; an ended one cannot be
            [again] = await events(c, message("tck-input-required"))
            cancelled = await c.cancel_task(CancelTaskRequest(id=again.task.id))
            assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
            with pytest.raises(Exception, match="has ended"):
                await c.cancel_task(CancelTaskRequest(id=again.task.id))
            with pytest.raises(Exception, match="no such task"):
                await c.get_task(GetTaskRequest(id="01a22293-0000-7000-8000-000000000000"))
        async with client(url, binding) as c:
            # streamed: the task as submitted, the agent's own events in order, its end
            got_events = await events(c, message("tck-stream-artifact-chunked"))
            kinds = [e.WhichOneof("payload") for e in got_events]
            assert kinds == ["task", "status_update", "artifact_update", "artifact_update",
                             "status_update"], kinds
            assert got_events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
            chunks = [e.artifact_update for e in got_events[2:4]]
            assert [(a.artifact.parts[0].text, a.append, a.last_chunk) for a in chunks] == [
                ("chunk-1 ", False, False), ("chunk-2", True, True)]
            assert got_events[-1].status_update.status.state == \
                TaskState.TASK_STATE_COMPLETED


def _chunks(seen: list[StreamResponse]) -> list[str]:
    """The texts of the `stream` artifact's pieces: the agent's live output."""
    return [p.text for e in seen if e.WhichOneof("payload") == "artifact_update"
            and e.artifact_update.artifact.artifact_id == "stream"
            for p in e.artifact_update.artifact.parts]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_stream_resubscribed_after_the_daemon_is_sigkilled_has_no_gap_and_no_duplicate(
        tmp_path: Path, binding: str) -> None:
    from a2a.types import SubscribeToTaskRequest, TaskState

    with a2a_daemon(tmp_path, COUNTER_AGENT, anonymous='["counter"]') as (d, url):
        before: list[StreamResponse] = []
        async with client(url, binding, agent="counter") as c:
            async for event in c.send_message(message("count")):
                before.append(event)
                if len(_chunks(before)) == 5:
                    break
        task_id = before[0].task.id
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.start()  # the same state directory, port and agent
        after: list[StreamResponse] = []
        async with client(url, binding, agent="counter") as c:
            async for event in c.subscribe(SubscribeToTaskRequest(id=task_id)):
                after.append(event)
    assert after[0].WhichOneof("payload") == "task" and after[0].task.id == task_id
    assert_replayed(_chunks(before), _chunks(after), COUNT)
    final = after[-1].status_update.status.state
    assert final == TaskState.TASK_STATE_COMPLETED, after[-1]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_stream_resubscribed_on_another_node_after_a_takeover_has_no_gap_and_no_duplicate(
        tmp_path: Path, binding: str) -> None:
    """Two nodes on one Redis: the task's node killed (-9) while the stream is read, the
    task taken over, the stream resubscribed at the other node."""
    from a2a.types import SubscribeToTaskRequest, TaskState

    # the task's attempt answers only once the stream is resubscribed: a loaded host's
    # client could otherwise come after the task had ended
    hold = tmp_path / "subscribed"
    agents = COUNTER_AGENT.replace("env = { ", f'env = {{ COUNTER_HOLD = "{hold}", ') + \
        '[a2a]\nanonymous = ["counter"]\n'
    with made("cluster", tmp_path, agents) as home:
        before: list[StreamResponse] = []
        async with client(f"http://127.0.0.1:{home.ports[0]}", binding, agent="counter") as c:
            async for event in c.send_message(message("count")):
                before.append(event)
                if len(_chunks(before)) == 5:
                    break
        task_id = before[0].task.id
        ran = ["a", "b"].index(home.task(task_id)["attempts"][-1]["node"])
        # its node killed; resubscribed once the other runs its next attempt, and the
        # killed one started again after (first, its start on a loaded host outlasted
        # that attempt, and the task had ended when the client subscribed); the attempt
        # answers once the stream is open
        dead = home.entries[ran]
        kill9(dead)
        after: list[StreamResponse] = []
        try:
            wait_until("the task's next attempt running on the other node", lambda: (
                (last := home.task(task_id, 1 - ran)["attempts"][-1])["node"]
                == "ab"[1 - ran] and last["outcome"] == "running"))
            async with client(f"http://127.0.0.1:{home.ports[1 - ran]}", binding,
                              agent="counter") as c:
                async for event in c.subscribe(SubscribeToTaskRequest(id=task_id)):
                    after.append(event)
                    hold.touch()
        finally:
            hold.touch()
            dead.start()
            home.joined()
    assert after[0].WhichOneof("payload") == "task" and after[0].task.id == task_id
    assert_replayed(_chunks(before), _chunks(after), COUNT)
    final = after[-1].status_update.status.state
    assert final == TaskState.TASK_STATE_COMPLETED, after[-1]


def _token(d: Any, name: str, tenant: str) -> str:
    made = d.json("token", "create", name, "--tenant", tenant, "--scope", "tasks:run",
                  "--scope", "tasks:read", "--scope", "approvals")
    return str(made["token"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("binding", BINDINGS)
async def test_another_tenants_card_task_and_push_config_are_refused(
        tmp_path: Path, binding: str) -> None:
    from a2a.types import (
        CancelTaskRequest,
        GetTaskPushNotificationConfigRequest,
        GetTaskRequest,
        TaskPushNotificationConfig,
        TaskState,
    )

    agents = tck_agent("acme-tck", 'tenant = "acme"\n') + tck_agent("bolt-tck",
                                                                    'tenant = "bolt"\n')
    extra = "[tenants.acme]\n[tenants.bolt]\n"
    with a2a_daemon(tmp_path, agents, anonymous="[]", extra=extra) as (d, url):
        acme, bolt = _token(d, "acme", "acme"), _token(d, "bolt", "bolt")
        # no token: the card of no anonymous agent is not found
        with pytest.raises(urllib.error.HTTPError) as refused:
            card(url, "acme-tck")
        assert refused.value.code == 404
        headers = {"Authorization": f"Bearer {bolt}"}
        async with httpx.AsyncClient(headers=headers) as http:
            r = await http.get(f"{url}/a2a/acme-tck/.well-known/agent-card.json")
            assert (r.status_code, r.json()["detail"]) == (404, "no such agent: acme-tck")
            assert (await http.get(
                f"{url}/a2a/bolt-tck/.well-known/agent-card.json")).status_code == 200
        async with client(url, binding, streaming=False, agent="acme-tck",
                          token=acme) as c:
            [asked] = await events(c, message("tck-input-required"))
            task_id = asked.task.id
            made = await c.create_task_push_notification_config(TaskPushNotificationConfig(
                task_id=task_id, id="hook", url="http://127.0.0.1:9/hook", token="t"))
            assert made.id == "hook"
        # bolt names acme's task at its own agent: not found, nor its push config
        async with client(url, binding, streaming=False, agent="bolt-tck",
                          token=bolt) as c:
            with pytest.raises(Exception, match="no such task"):
                await c.get_task(GetTaskRequest(id=task_id))
            with pytest.raises(Exception, match="no such task"):
                await c.get_task_push_notification_config(
                    GetTaskPushNotificationConfigRequest(task_id=task_id, id="hook"))
            with pytest.raises(Exception, match="no such task"):
                await c.cancel_task(CancelTaskRequest(id=task_id))
        # and at acme's agent with bolt's token: no such agent
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {bolt}"}) as http:
            r = await http.post(f"{url}/a2a/acme-tck", json={
                "jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": task_id}})
            assert r.status_code == 404, r.text
        # acme's task is as it was
        async with client(url, binding, streaming=False, agent="acme-tck",
                          token=acme) as c:
            got = await c.get_task(GetTaskRequest(id=task_id))
            assert got.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            await asyncio.sleep(0)
