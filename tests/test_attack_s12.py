"""An attacker's pass over session 12's changes: a Caller's values made once and kept in
the instance (f91bb9f4), the A2A door's anonymous callers kept made and bound (an LRU by
agent, who and tenant) and a token's caller bound once a request, and a worker's named
step answered at once where it is durable as put (63d89bcf). Each asks whether what is
kept outlives what should end or change it, or is shared by two callers it must tell
apart (docs/security.md keeps them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import textwrap
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from corral.cli.client import Client
from corral.daemon.caller import A2A_VIA, Caller

from .a2a.harness import a2a_daemon, tck_agent
from .a2a.test_anonymous_address import off_loopback
from .daemon_harness import PY, Daemon, free_port

UNAUTHORIZED = "unauthorized: the bearer token is not valid (unknown, revoked or expired)"


def _message(prefix: str) -> dict[str, Any]:
    return {"message": {"messageId": f"{prefix}-{id(object())}", "role": "ROLE_USER",
                        "parts": [{"text": "hi"}]},
            "configuration": {"returnImmediately": True}}


async def _rpc(http: httpx.AsyncClient, url: str, method: str, params: dict[str, Any],
               headers: dict[str, str] | None = None, agent: str = "tck"
               ) -> tuple[int, dict[str, Any]]:
    r = await http.post(f"{url}/a2a/{agent}", headers=headers, json={
        "jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    said: dict[str, Any] = r.json()
    return r.status_code, said


def test_a_replaced_caller_carries_none_of_its_originals_kept_values() -> None:
    """A Caller keeps who it is, its holder and the rest in its instance once read
    (`caller.once`); `msgspec.structs.replace` (the A2A door's `via`, a door's own name)
    makes an instance that reads them again from its own fields, never the original's:
    a token's holder replaced as no one is anonymous, one given a tenant is limited, and
    a copy is its original's equal by its fields alone; a caller read back from a record
    whose keys name its kept values (a push config's caller, from the cluster's Redis)
    makes them from its fields."""
    fields: list[dict[str, Any]] = [
        {"via": "http", "token": "t", "since": 1.0},
        {"via": "socket", "uid": 7, "pid": 9},
        {"via": A2A_VIA, "name": "a2a anonymous tck", "agents": "tck"},
        {"via": "http", "token": "u", "tenant": "acme", "scopes": frozenset({"tasks:run"})},
    ]
    kept = ("who", "user", "holder", "peer", "anonymous", "limited")
    for before in fields:
        original = Caller(**before)
        read = {name: getattr(original, name) for name in kept}
        for after in fields:
            changed = {**{k: getattr(Caller(via="x"), k) for k in before}, **after}
            replaced = msgspec.structs.replace(original, **changed)
            fresh = Caller(**changed)
            assert {name: getattr(replaced, name) for name in kept} == \
                {name: getattr(fresh, name) for name in kept}, (before, after)
            assert replaced == fresh and hash(replaced) == hash(fresh)
        # the original's kept values are still its own, and encode as no field
        assert {name: getattr(original, name) for name in kept} == read
        assert msgspec.json.decode(msgspec.json.encode(original), type=Caller) == original
        # a caller read back from a record (a push config's, operations.py `_take_up`)
        # that names kept values as keys makes them from its fields alone
        forged = {name: "operator" if name in ("who", "user", "holder") else True
                  for name in kept}
        record = {**msgspec.to_builtins(original), **forged, "__dict__": forged}
        for back in (msgspec.convert(record, Caller),
                     msgspec.json.decode(msgspec.json.encode(record), type=Caller)):
            assert {name: getattr(back, name) for name in kept} == read, before


@pytest.mark.timeout(120)
async def test_a_revoked_or_remade_token_is_refused_at_its_next_a2a_request(
        tmp_path: Path) -> None:
    """A token's caller is made and bound once a request (f91bb9f4), never kept between
    them: on one kept-alive connection, a request after the token's revocation is refused,
    on both bindings and on the lean door's SendMessage alike, and a token made again of
    the name with another tenant's limit leaves the old secret refused and gives the new
    one its own rights alone (the operator's agent not found)."""
    extra = "[tenants.acme]\n"
    with a2a_daemon(tmp_path, anonymous="[]", extra=extra) as (d, url):
        secret = d.json("token", "create", "held", "--scope", "tasks:run", "--scope",
                        "tasks:read")["token"]
        auth = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(timeout=30, headers=auth) as http:
            status, made = await _rpc(http, url, "SendMessage",
                                      _message("tck-complete-task"))
            assert status == 200, made
            task_id = made["result"]["task"]["id"]
            status, got = await _rpc(http, url, "GetTask", {"id": task_id})
            assert status == 200 and got["result"]["id"] == task_id, got
            assert d.cli("token", "revoke", "held").returncode == 0
            for method, params in (("SendMessage", _message("tck-complete-task")),
                                   ("GetTask", {"id": task_id})):
                status, said = await _rpc(http, url, method, params)
                assert (status, said["error"]["message"]) == (401, UNAUTHORIZED), said
            r = await http.get(f"{url}/a2a/tck/tasks/{task_id}")
            assert (r.status_code, r.json()["error"]["message"]) == (401, UNAUTHORIZED)
            # the name made again, limited to a tenant: the old secret is still refused,
            # the new one sees no agent of the operator's
            again = d.json("token", "create", "held", "--tenant", "acme", "--scope",
                           "tasks:run", "--scope", "tasks:read")["token"]
            status, said = await _rpc(http, url, "GetTask", {"id": task_id})
            assert (status, said["error"]["message"]) == (401, UNAUTHORIZED), said
            status, said = await _rpc(http, url, "GetTask", {"id": task_id},
                                      headers={"Authorization": f"Bearer {again}"})
            assert (status, said["error"]["message"]) == (404, "no such agent: tck"), said


@pytest.mark.timeout(180)
async def test_an_anonymous_caller_kept_for_an_agent_reads_nothing_of_it_once_its_tenant_changes(
        tmp_path: Path) -> None:
    """The A2A door keeps an anonymous caller made and bound by agent, who and tenant
    (f91bb9f4). An agent moved to another tenant by a reload (removed and added again) is
    a new key: its anonymous caller is the new tenant's, and reads none of the tasks it
    ran while it was the operator's (the caller kept for them not used), nor lists them;
    its new task is its own."""
    with a2a_daemon(tmp_path, extra="[tenants.acme]\n") as (d, url):
        async with httpx.AsyncClient(timeout=30) as http:
            status, made = await _rpc(http, url, "SendMessage", _message("tck-complete-task"))
            assert status == 200, made
            before = made["result"]["task"]["id"]
            status, got = await _rpc(http, url, "GetTask", {"id": before})
            assert got["result"]["id"] == before, got
            text = d.config.read_text()
            d.config.write_text(text.replace('retry_lost = 3\n',
                                             'retry_lost = 3\ntenant = "acme"\n'))
            reloaded = d.cli("reload")
            assert reloaded.returncode == 0, reloaded.stderr
            status, said = await _rpc(http, url, "GetTask", {"id": before})
            assert said.get("error", {}).get("message") == f"no such task: {before}", said
            status, listed = await _rpc(http, url, "ListTasks", {"pageSize": 100})
            assert [t["id"] for t in listed["result"]["tasks"]] == [], listed
            status, made = await _rpc(http, url, "SendMessage", _message("tck-complete-task"))
            assert status == 200, made
            after = made["result"]["task"]["id"]
            assert d.task(after)["tenant"] == "acme"
            status, got = await _rpc(http, url, "GetTask", {"id": after})
            assert got["result"]["id"] == after, got


@pytest.mark.timeout(120)
async def test_a_reload_that_ends_an_agents_anonymous_access_ends_it(tmp_path: Path) -> None:
    """`[a2a] anonymous` names the agents a caller reaches with no token. The A2A door read
    the table as the daemon started, and a reload neither applied it nor said a restart
    would (`[a2a]` was not among the tables read at start): the operator who took an agent
    off the list and reloaded left it open to anyone on the host, told nothing (attacker's
    pass, session 12). A reload now hands the door the file's `[a2a]`: the agent is refused
    to no one at the next request (its anonymous callers kept made are never asked), put
    back by the next reload; `push_private`, which the door's push configs were made
    with, is said to need a restart."""
    with a2a_daemon(tmp_path) as (d, url):
        async with httpx.AsyncClient(timeout=30) as http:
            status, made = await _rpc(http, url, "SendMessage", _message("tck-complete-task"))
            assert status == 200, made
            opened = d.config.read_text()
            d.config.write_text(opened.replace('anonymous = ["tck"]', "anonymous = []"))
            reloaded = d.cli("reload", "--json")
            assert reloaded.returncode == 0, reloaded.stderr
            assert msgspec.json.decode(reloaded.stdout)["restart_needed"] == []
            for method, params in (("SendMessage", _message("tck-complete-task")),
                                   ("GetTask", {"id": made["result"]["task"]["id"]})):
                status, said = await _rpc(http, url, method, params)
                assert (status, said.get("error", {}).get("message")) == (
                    404, "no such agent: tck"), said
            r = await http.get(f"{url}/a2a/tck/.well-known/agent-card.json")
            assert (r.status_code, r.json()["detail"]) == (404, "no such agent: tck")
            # the list again, with push_private changed: open again, and the one key said
            d.config.write_text(opened.replace("push_private = true", "push_private = false"))
            reloaded = d.cli("reload", "--json")
            assert msgspec.json.decode(reloaded.stdout)["restart_needed"] == [
                "[a2a] push_private"]
            status, made = await _rpc(http, url, "SendMessage", _message("tck-complete-task"))
            assert status == 200, made


@pytest.mark.timeout(120)
async def test_a_forwarding_header_makes_no_anonymous_caller_anothers(tmp_path: Path) -> None:
    """The anonymous caller kept by agent, who and tenant (f91bb9f4) is told apart by its
    address, the connection's peer alone: a client's `X-Forwarded-For`, `Forwarded` or
    `X-Real-IP` naming another address neither makes it that address's caller (its tasks
    not read, on either side) nor, off the host, makes it a loopback caller (the agent
    not found without `anonymous_remote`)."""
    address = off_loopback()
    if address is None:
        pytest.skip("this host has no address off loopback")

    def forged(who: str) -> dict[str, str]:
        return {"X-Forwarded-For": who, "Forwarded": f"for={who}", "X-Real-IP": who}

    for remote in (True, False):
        port = free_port()
        (tmp_path / str(remote)).mkdir()
        d = Daemon(tmp_path / str(remote), tck_agent(), extra=textwrap.dedent(f"""
            [http]
            listen = "0.0.0.0:{port}"
            allow_insecure_remote = true
            rate_per_minute = 0
            [a2a]
            anonymous = ["tck"]
            anonymous_remote = {str(remote).lower()}
        """))
        d.start()
        try:
            here, there = f"http://127.0.0.1:{port}", f"http://{address}:{port}"
            async with httpx.AsyncClient(timeout=30) as http:
                status, made = await _rpc(http, here, "SendMessage",
                                          _message("tck-complete-task"))
                local = made["result"]["task"]["id"]
                if not remote:  # off the host, naming loopback: still no one's caller
                    status, said = await _rpc(http, there, "SendMessage",
                                              _message("tck-complete-task"),
                                              headers=forged("127.0.0.1"))
                    assert (status, said["error"]["message"]) == (
                        404, "no such agent: tck"), said
                    continue
                status, made = await _rpc(http, there, "SendMessage",
                                          _message("tck-complete-task"))
                far = made["result"]["task"]["id"]
                for url, theirs, claimed in ((there, local, "127.0.0.1"),
                                             (here, far, address)):
                    status, said = await _rpc(http, url, "GetTask", {"id": theirs},
                                              headers=forged(claimed))
                    assert said.get("error", {}).get("message") == \
                        f"no such task: {theirs}", said
        finally:
            d.close()


_KILLING_WORKER = '''
import os, signal, sys, time
from raw_worker import call, serve


def run(p):
    if p["attempt"] == 1:
        for n in range(p["input"]["steps"]):
            answer = call("step/put", {"task_id": p["task_id"], "name": f"s{n}",
                                       "result": {"n": n, "pad": "x" * n}})
            assert answer.get("result") == {}, answer
        # the daemon killed the moment its last answer is read: what it answered was
        # kept before it was said, or it is lost now
        os.kill(p["input"]["daemon"], signal.SIGKILL)
        time.sleep(600)
    return [call("step/get", {"task_id": p["task_id"], "name": f"s{n}"}).get("result")
            for n in range(p["input"]["steps"])]


serve(run)
'''


@pytest.mark.timeout(180)
def test_a_named_step_answered_at_once_is_kept_through_a_kill_of_the_daemon(
        tmp_path: Path) -> None:
    """A worker's `step/put` is answered at once where the step is durable as it is put
    (the step log's one write, decision 1875), and `TaskSteps.put` is now its one entry
    (63d89bcf): a worker that kills the daemon (kill -9) the moment it reads its answers
    finds every step it was answered for given back to its retry by the next daemon: no
    put is answered before it is kept (each answer a write of the log, not of the
    database's batch, which the kill would lose)."""
    import psutil

    from .cluster.harness import kill9
    from .conftest import ROOT

    (tmp_path / "killing_agent.py").write_text(_KILLING_WORKER)
    agents = textwrap.dedent(f"""
        [agents.puts]
        command = ["{PY}", "{tmp_path}/killing_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}/tests" }}
        retries = 1
        backoff_initial = 0.05
    """)
    d = Daemon(tmp_path, agents)
    try:
        d.start()
        assert d.proc is not None
        daemon = d.proc.pid
        workers = psutil.Process(daemon).children(recursive=True)
        with Client(d.sock) as c:
            task_id = c.call("tasks.submit", {"agent": "puts", "input": {
                "steps": 20, "daemon": daemon}})["task_id"]
        assert d.proc.wait(60) == -signal.SIGKILL
        for w in workers + [p for p in psutil.process_iter() if _runs(p, tmp_path)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()
        d.start()
        with Client(d.sock) as c:
            done = c.call("tasks.get", {"task_id": task_id, "wait": True})
    finally:
        if d.proc is not None and d.proc.poll() is None:
            kill9(d)
        d.close()
    assert done["status"] == "succeeded", done
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]
    assert done["output"] == [{"found": True, "result": {"n": n, "pad": "x" * n}}
                              for n in range(20)], done["output"]


def _runs(p: Any, directory: Path) -> bool:
    """Whether process `p` runs the killing worker of this test's directory."""
    with contextlib.suppress(Exception):
        return f"{directory}/killing_agent.py" in p.cmdline()
    return False


@pytest.mark.timeout(120)
async def test_a_repeated_authorization_header_is_read_alike_on_the_lean_door_and_aiohttps(
        tmp_path: Path) -> None:
    """The lean door's head read keeps a repeated header's first value and hands the
    request to aiohttp where a name comes twice, whatever its case (44d0033e's read and the one
    be9958e4 put back alike): a token's caller is bound from the header the request is
    read with, so two `Authorization` headers, a revoked token's and a valid one's, in
    either order and either case, are answered alike by the lean door (a message to the
    agent) and by aiohttp's (the same with a query, which the lean door never serves):
    the revoked one is never passed over for the valid one behind it on one door and not
    the other."""
    from .a2a.test_lean_messages import post, send
    from .test_model_lean import Wire

    with a2a_daemon(tmp_path, anonymous="[]") as (d, url):
        made = {name: d.json("token", "create", name, "--scope", "tasks:run", "--scope",
                             "tasks:read")["token"] for name in ("good", "gone")}
        assert d.cli("token", "revoke", "gone").returncode == 0
        host, _, port = url.split("/")[2].rpartition(":")
        orders = [(f"Authorization: Bearer {made[a]}", f"{case}: Bearer {made[b]}")
                  for a, b in (("good", "gone"), ("gone", "good"))
                  for case in ("Authorization", "AUTHORIZATION")]
        for headers in orders:
            seen = []
            for path in ("/a2a/tck", "/a2a/tck?door=aiohttp"):
                wire = Wire(*await asyncio.open_connection(host, int(port)))
                try:
                    wire.writer.write(post(path, send(f"tck-complete-task-{len(seen)}"),
                                           *headers))
                    status, _, body = await wire.answer()
                finally:
                    wire.writer.close()
                said = json.loads(body)
                seen.append((status, said.get("error", {}).get("message")))
            assert seen[0] == seen[1], (headers, seen)
            # aiohttp's rule: the first one sent is the caller
            first_good = made["good"] in headers[0]
            assert seen[0] == ((200, None) if first_good else (401, UNAUTHORIZED)), headers


@pytest.mark.timeout(120)
def test_a_reload_says_the_control_sockets_group_and_the_approvals_webhook_are_the_starts(
        tmp_path: Path) -> None:
    """`[supervisor] group` makes its members operators at the control socket (root on the
    host), and `[approvals]` is where every ask is posted, signed: each is taken at start
    (the socket's owner and its check of a peer's gid; the webhook's sender), and a reload
    whose file removed or changed it applied nothing and said nothing, so an operator who
    took a group's access away, or moved the webhook off a leaked secret, and reloaded
    was told it was done (the lead's ask of this pass: the tables a reload neither applies
    nor names). A reload now names each as needing a restart."""
    started = textwrap.dedent("""
        group = "nogroup"
        [approvals]
        webhook = "http://127.0.0.1:9/asks"
        webhook_secret = "old-secret-0123456789"
    """)
    d = Daemon(tmp_path, "", extra=started)
    try:
        d.start()
        text = d.config.read_text()
        d.config.write_text(text.replace('group = "nogroup"', "").replace(
            "old-secret-0123456789", "new-secret-0123456789"))
        reloaded = d.cli("reload", "--json")
        assert reloaded.returncode == 0, reloaded.stderr
        assert sorted(msgspec.json.decode(reloaded.stdout)["restart_needed"]) == [
            "[approvals]", "[supervisor] group"]
    finally:
        d.close()
