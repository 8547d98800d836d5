"""An attacker's pass over what session 20's cuts touched (docs/security.md, session 20's
section): the Dispatcher's handlers and narrowed services, now looked up once a method and
kept; a refusal it re-raises without a local (a limited caller's "no such agent" worded
again for it); the A2A door's answer to a new message, whose history is now the message
as the door read it rather than the bytes it kept; and the CLI's hint of a daemon's socket
found near the current directory. Real daemons, in this test's loop, real HTTP, and the
CLI as a user runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.jsonrpc import RpcError
from corral.supervisor.errors import NoSuchAgent

from .conftest import ROOT
from .daemon_harness import free_port, hello, in_process

OPERATOR = Caller(via="socket", uid=0)


async def _refused(d: Any, caller: Caller, method: str, params: Any) -> tuple[int, str]:
    with pytest.raises(RpcError) as e:
        await d.dispatcher.call(caller, method, params)
    return e.value.code, e.value.message


async def _outcomes(d: Any, method: str) -> list[str]:
    """The audit rows' outcomes of `method`, oldest first."""
    audit = await d.dispatcher.call(OPERATOR, "audit.list", {"limit": 100})
    return [e.outcome for e in audit.entries if e.method == method]


# -- the Dispatcher: a limited caller's refusal, worded again, in its answer and its row --

@pytest.mark.deadline(120)
async def test_a_limited_callers_refusal_names_no_agent_it_may_not_see(
        tmp_path: Path) -> None:
    """The attack: a token limited to `web-*` names an agent its glob matches that does
    not exist, to be told "did you mean" the nearest name of all the daemon's. The
    handler's refusal names the nearest of every agent (`wev-2` here, one letter away);
    the Dispatcher words it again for the caller, its agents alone, in the answer and in
    the audit row of the mutating call. Session 20 re-raised the refusal without keeping
    it in a local: the words of both must be as before."""
    async with in_process(tmp_path, hello("web-1111") + hello("wev-2")) as d:
        web = Caller(via="http", token="web", agents="web-*")
        told = NoSuchAgent("web-2", ["web-1111"]).message
        assert "wev" not in told
        for method in ("agents.restart", "agents.stop"):
            assert await _refused(d, web, method, {"names": ["web-2"]}) == (
                jsonrpc.NOT_FOUND, told), method
            # the row the operator reads says what the caller was told, no more
            assert (await _outcomes(d, method))[-1:] == [f"error: {told}"], method
        # the operator, who sees every agent, is told the nearest of all
        assert await _refused(d, OPERATOR, "agents.restart", {"names": ["web-2"]}) == (
            jsonrpc.NOT_FOUND, NoSuchAgent("web-2", ["web-1111", "wev-2"]).message)
        assert (await _outcomes(d, "agents.restart"))[-1] == \
            "error: " + NoSuchAgent("web-2", ["web-1111", "wev-2"]).message
        # and the limited caller's later refusal is its own again (nothing of the
        # operator's answer kept by the method's cached handler)
        assert await _refused(d, web, "agents.restart", {"names": ["web-2"]}) == (
            jsonrpc.NOT_FOUND, told)


@pytest.mark.deadline(120)
async def test_a_methods_kept_handler_holds_no_callers_view_and_sees_agents_added(
        tmp_path: Path) -> None:
    """The Dispatcher keeps each method's handler and its domain's services from its
    first call (session 20). What a caller sees is still decided at each call: a tenant's
    first call of agents.status fixes nothing for the next caller, the operator sees
    every agent, another tenant its own, and an agent added after the first call is in
    the next answer (the services are the daemon's own, not a copy of its agents)."""
    toml = "[tenants.acme]\n[tenants.other]\n"
    agents = hello("a-1", extra='tenant = "acme"\n') + hello("o-1", extra='tenant = "other"\n')
    async with in_process(tmp_path, agents, toml) as d:
        acme = Caller(via="http", token="acme-admin", tenant="acme")
        other = Caller(via="http", token="other-admin", tenant="other")

        async def names(caller: Caller) -> list[str]:
            status = await d.dispatcher.call(caller, "agents.status")
            return sorted(a.name for a in status.agents)

        assert await names(acme) == ["a-1"]          # the method's first call
        assert await names(OPERATOR) == ["a-1", "o-1"]
        assert await names(other) == ["o-1"]
        assert await _refused(d, other, "agents.describe", {"name": "a-1"}) == (
            jsonrpc.NOT_FOUND, NoSuchAgent("a-1", ["o-1"]).message)
        added = msgspec.json.decode(msgspec.json.encode(
            {"command": d.sup.agents["a-1"].spec.command, "tenant": "acme",
             "env": dict(d.sup.agents["a-1"].spec.env)}))
        await d.dispatcher.call(OPERATOR, "agents.add", {"agents": {"a-2": added}})
        assert await names(acme) == ["a-1", "a-2"]
        assert await names(other) == ["o-1"]
        assert await names(OPERATOR) == ["a-1", "a-2", "o-1"]


@pytest.mark.deadline(120)
async def test_a_pattern_asked_as_a_name_reaches_no_agent_beyond_the_pattern(
        tmp_path: Path) -> None:
    """Caller.sees takes a name that is the caller's agents pattern itself, letter for
    letter, without fnmatchcase (session 20: an agent's name holds no glob character). The
    name is the caller's to send: a token limited to `web-[12]` names `web-[12]` itself,
    which fnmatchcase did not match. It is seen as a name that is no agent's (refused as
    not found, its own agents named), never a glob reaching `web-3` or `db`."""
    async with in_process(tmp_path, hello("web-1") + hello("web-3") + hello("db")) as d:
        web = Caller(via="http", token="web", agents="web-[12]")
        pids = {n: [r.pid for r in d.sup.agents[n].replicas] for n in ("web-3", "db")}
        status = await d.dispatcher.call(web, "agents.status")
        assert [a.name for a in status.agents] == ["web-1"]
        told = NoSuchAgent("web-[12]", ["web-1"]).message
        assert await _refused(d, web, "agents.describe", {"name": "web-[12]"}) == (
            jsonrpc.NOT_FOUND, told)
        assert await _refused(d, web, "agents.status", {"names": ["web-[12]"]}) == (
            jsonrpc.NOT_FOUND, told)
        for method in ("agents.restart", "agents.stop"):
            assert await _refused(d, web, method, {"names": ["web-[12]"]}) == (
                jsonrpc.NOT_FOUND, told), method
        tail = await d.dispatcher.call(web, "logs.tail", {"names": [], "lines": 100})
        assert {line.source for line in tail.lines} == {"web-1"}
        # nothing of the others was touched: the same processes serve them
        assert {n: [r.pid for r in d.sup.agents[n].replicas] for n in pids} == pids


# -- the A2A door: a new message's answer, and the task read back -------------------------

async def _rpc(http: aiohttp.ClientSession, url: str, method: str, params: Any) -> Any:
    async with http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                    "params": params}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert "result" in body, body
    return body["result"]


@pytest.mark.deadline(120)
async def test_an_a2a_answers_history_is_the_message_the_door_keeps_no_more(
        tmp_path: Path) -> None:
    """The attack: a client's message carries members the door does not know (a `kind`,
    a `secret` beside its parts), names in snake_case, and a data part and metadata of its
    own. Session 20 answers a new message's history from the message as the door read it
    (not the bytes it kept, decoded again): the answer must give what the task keeps and
    GetTask gives back, exactly: the unknown members in neither, the caller's own values
    (data, metadata: opaque) as sent, the taskId and contextId the task's whatever the
    message said of them."""
    port = free_port()
    toml = f'[http]\nlisten = "127.0.0.1:{port}"\nrate_per_minute = 0\n' \
           '[a2a]\nanonymous = ["hello"]\n'
    url = f"http://127.0.0.1:{port}/a2a/hello"
    sent = {"message_id": "m-s20", "role": "ROLE_USER", "kind": "message",
            "secret": "not kept", "context_id": "ctx-s20",
            "parts": [{"text": "hi", "secret": "nor this"},
                      {"data": {"snake_key": 1, "kind": "theirs"}}],
            "metadata": {"their_key": "kept"}, "extensions": ["urn:x"],
            "reference_task_ids": ["t-0"]}
    async with in_process(tmp_path, hello("hello"), toml) as d:
        async with aiohttp.ClientSession() as http:
            answer = await _rpc(http, url, "SendMessage", {"message": sent})
            task = answer["task"]
            got = await _rpc(http, url, "GetTask", {"id": task["id"]})
        assert task["contextId"] == "ctx-s20"
        first = task["history"][0]
        assert first == {
            "messageId": "m-s20", "role": "ROLE_USER",
            "parts": [{"text": "hi"}, {"data": {"snake_key": 1, "kind": "theirs"}}],
            "contextId": "ctx-s20", "taskId": task["id"],
            "metadata": {"their_key": "kept"}, "extensions": ["urn:x"],
            "referenceTaskIds": ["t-0"]}
        # the task read back gives the same first message, from the bytes it kept
        assert got["history"][0] == first
        assert "secret" not in msgspec.json.encode(answer).decode()
        kept = await d.dispatcher.call(OPERATOR, "tasks.get",
                                       {"task_id": task["id"], "input": True})
        assert "secret" not in msgspec.json.encode(kept.input).decode()


# -- the CLI's hint of a socket nearby: never another user's listener ---------------------

LISTEN_AS = """
import os, socket, sys
path, uid = sys.argv[1], int(sys.argv[2])
os.chown(os.path.dirname(path), uid, uid)
os.setgid(uid)
os.setuid(uid)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen()
print("listening", flush=True)
sys.stdin.read()  # until the test closes it
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a listener of another uid is made as root")
def test_the_cli_names_no_socket_another_user_listens_on(tmp_path: Path) -> None:
    """The attack: a local user makes `.corral/corral.sock` in a directory every user may
    write (/tmp, sticky: the directory and the socket are theirs) and listens on it. A
    command run with no socket given, from a checkout below it (a clone under /tmp, as the
    new user's pass made), that finds no daemon at the standard place named that socket
    as "a daemon answers at ..., export CORRAL_SOCKET=...": the next commands, and what
    they send, went to that user, and its answers were shown as the daemon's. The hint
    names a socket only when its listener (SO_PEERCRED) is the user or root."""
    short = Path(tempfile.mkdtemp(prefix="cs-"))  # a unix socket's path: 107 bytes at most
    try:
        short.chmod(0o1777)
        planted = short / ".corral" / "corral.sock"
        planted.parent.mkdir()
        (short / "clone").mkdir()
        listener = subprocess.Popen([sys.executable, "-c", LISTEN_AS, str(planted), "65534"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout is not None and listener.stdout.readline() == "listening\n"
            env = {k: v for k, v in os.environ.items()
                   if k not in ("CORRAL_SOCKET", "RUNTIME_DIRECTORY")}
            env.update(PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(short / "rt"))
            r = subprocess.run([sys.executable, "-m", "corral", "status"], cwd=short / "clone",
                               env=env, capture_output=True, text=True, timeout=60)
        finally:
            os.kill(listener.pid, signal.SIGKILL)
            listener.wait()
        standard = short / "rt" / "corral" / "corral.sock"
        assert (r.returncode, r.stdout) == (3, "")
        assert r.stderr == (
            f"corral: cannot reach the corral daemon at {standard}: no socket there\n"
            "start it with `corral daemon --config PATH` (or `systemctl start corral`), or "
            "point at it with --socket / CORRAL_SOCKET\n")
    finally:
        shutil.rmtree(short)
