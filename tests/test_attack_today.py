"""An attacker's pass over the surfaces added with durable work, workflows, tracing and the
in-place upgrade (docs/security.md): what a less trusted party may make the daemon run,
read or hold. Against the real daemon, in this process; each line of security.md that
names a test here is held by it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import msgspec
import pytest

from corral import jsonrpc
from corral import methods as m
from corral.daemon.caller import Caller
from corral.daemon.tokens import tokens_of
from corral.jsonrpc import RpcError
from corral.supervisor.workflows.definition import MAX_MAP_ITEMS

from .daemon_harness import hello, in_process
from .test_gateway_stdio import wait_until_async

OPERATOR = Caller(via="socket")


@pytest.mark.deadline(120)
async def test_no_caller_short_of_the_operator_makes_the_daemon_exec_a_program(
        tmp_path: Path) -> None:
    """`daemon.upgrade`'s `python` is the program the daemon runs (its preflight, then
    the exec): a tenant's caller (every scope, admin too), a token limited to an agents
    glob (admin too) and a token of the whole fleet without `admin` are each refused
    before the handler; the program never runs and the daemon keeps serving."""
    marker = tmp_path / "ran"
    program = tmp_path / "evil"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(0o755)
    agents = hello("web") + 'tenant = "a"\n'
    async with in_process(tmp_path, agents, "[tenants.a]\n") as d:
        store = tokens_of(d.services.store)
        _, ta = await store.create("ta", sorted(m.SCOPES), None, None, "a")
        _, glob = await store.create("glob", sorted(m.SCOPES), "w*", None)
        _, fleet = await store.create("fleet", sorted(m.SCOPES - {"admin"}), None, None)
        callers = {
            "ta": (Caller(via="http", token="ta", scopes=ta.scopes, tenant="a"),
                   "forbidden: token ta is a caller of tenant a: daemon.upgrade is for "
                   "callers that see every agent"),
            "tenant group": (Caller(via="socket", uid=4242, tenant="a"),
                             "forbidden: uid 4242 pid -1 is a caller of tenant a: "
                             "daemon.upgrade is for callers that see every agent"),
            "glob": (Caller(via="http", token="glob", scopes=glob.scopes, agents="w*"),
                     "forbidden: token glob is limited to agents matching w*: "
                     "daemon.upgrade is for callers that see every agent"),
            "fleet": (Caller(via="http", token="fleet", scopes=fleet.scopes), None),
        }
        for who, (caller, words) in callers.items():
            with pytest.raises(RpcError) as e:
                await d.dispatcher.call(caller, "daemon.upgrade", {
                    "python": str(program), "pythonpath": str(tmp_path)})
            assert e.value.code == jsonrpc.FORBIDDEN, (who, e.value.message)
            if words is not None:
                assert e.value.message == words, who
            else:
                assert "admin" in e.value.message, e.value.message
        assert not marker.exists()
        # the daemon is the same and serves: no upgrade began
        info = await d.dispatcher.call(OPERATOR, "daemon.info", {})
        assert info.pid == os.getpid()
        report = await d.dispatcher.call(OPERATOR, "daemon.upgrade", {"report": True})
        assert (report.state, report.pid) == ("none", os.getpid()), report


@pytest.mark.deadline(120)
async def test_a_map_over_a_list_past_the_bound_fails_its_step_before_any_task(
        tmp_path: Path) -> None:
    """A run's input is the caller's (up to 16 MiB): a map over it is one task and one
    row kept per item, so a list past MAX_MAP_ITEMS fails the step, naming the bound,
    and starts no task; and the input is no audit row's nor log line's (its size is)."""
    wf = ('[workflows.fan]\n[[workflows.fan.steps]]\nname = "each"\nagent = "web"\n'
          'map = "$input"\nconcurrency = 4\n')
    async with in_process(tmp_path, hello("web"), wf) as d:
        huge = list(range(MAX_MAP_ITEMS + 1))
        run = await d.dispatcher.call(OPERATOR, "workflows.run", msgspec.json.encode(
            {"name": "fan", "input": huge, "wait": 30}))
        assert run.status == "failed", run
        assert run.error == (f"step each: map $input has {MAX_MAP_ITEMS + 1} items, more "
                             f"than a map runs ({MAX_MAP_ITEMS})"), run.error
        tasks = await d.dispatcher.call(OPERATOR, "tasks.list", {})
        assert tasks.tasks == []
        # the run's input is the caller's data: its audit row says its size, not itself
        size = len(msgspec.json.encode(huge))
        await d.services.store.writer.written()
        (params,) = d.services.store.db.execute(
            "SELECT params FROM audit WHERE method = 'workflows.run'").fetchone()
        assert json.loads(params) == {"name": "fan", "input": f"({size} bytes)",
                                      "wait": 30.0, "traceparent": None,
                                      "tracestate": None}
        # a run started is its row alone, as a task submitted is: no line of the daemon
        # log (decision 1810), where a mutating call's other rows have one
        logged = [ln.text for ln in d.services.hub.tail(["corral"], 1000, None)]
        assert not [t for t in logged if "workflows.run" in t], logged
        # within the bound: the items run (a short list, for the test's time)
        run = await d.dispatcher.call(OPERATOR, "workflows.run", msgspec.json.encode(
            {"name": "fan", "input": [{"name": "x"}, {"name": "y"}], "wait": 30}))
        assert run.status == "succeeded", run


@pytest.mark.deadline(120)
async def test_a_trace_is_read_only_by_who_sees_its_task_and_a_bad_context_is_bounded(
        tmp_path: Path) -> None:
    """`GET /tasks/{id}/trace`: a token limited to another agents glob is told the task
    does not exist, word for word as for a task there is not; a `traceparent` of a
    megabyte with newlines is refused in one short line, and a `tracestate` past the
    Recommendation's 512 bytes is cut to them before the task carries it toward its
    worker and MCP servers."""
    from .daemon_harness import problem
    from .test_http_api import SOCKET, serving

    agents = hello("a-hello") + hello("b-hello")
    toml = "[tracing]\nexport_interval = 0.05\n"
    async with serving(tmp_path, agents, toml) as api:
        for name, glob in (("a", "a-*"), ("b", "b-*")):
            made = await api.d.dispatcher.call(SOCKET, "tokens.create", {
                "name": name, "scopes": ["tasks:run", "tasks:read"], "agents": glob})
            api.tokens[name] = made.token
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "a", {
            "agent": "a-hello", "input": {"name": "x"}})
        assert (status, body["status"]) == (200, "succeeded")
        task_id = body["task_id"]
        assert (await api.ask("GET", f"/tasks/{task_id}/trace", "a"))[0] == 200
        ghost = task_id[:-4] + ("0000" if not task_id.endswith("0000") else "1111")
        for tid in (task_id, ghost):
            status, body, _ = await api.ask("GET", f"/tasks/{tid}/trace", "b")
            assert (status, body) == (404, problem(404, "not found", f"no such task: {tid}",
                                                   jsonrpc.NOT_FOUND)), tid

        # over the socket the context is a param: a megabyte with newlines is refused in
        # one short line, and no task is made
        bad = "00-" + "\n" * 3 + "x" * (1 << 20)
        with pytest.raises(RpcError) as e:
            await api.d.dispatcher.call(OPERATOR, "tasks.submit", {
                "agent": "a-hello", "input": {"name": "y"}, "traceparent": bad})
        assert e.value.code == jsonrpc.INVALID_PARAMS
        assert len(e.value.message) < 200 and "\n" not in e.value.message, e.value.message
        tasks = await api.d.dispatcher.call(OPERATOR, "tasks.list", {})
        assert [t.task_id for t in tasks.tasks] == [task_id]

        # over HTTP it is the headers: a tracestate past 512 bytes is cut to them
        state = "k=" + "v" * 6000
        status, body, _ = await api.ask("POST", "/tasks", "a", {
            "agent": "a-hello", "input": {"name": "z"}},
            headers={"traceparent": f"00-{'1' * 32}-{'2' * 16}-01", "tracestate": state})
        assert status in (200, 202), body
        engine = api.d.sup.tasks
        task = engine.active.get(body["task_id"]) or engine.finished.get(body["task_id"])
        assert task is not None and task.trace is not None
        meta = task.trace.run_meta(1)
        assert meta["tracestate"] == state[:512]


PEEKER = '''
import os, sys
from corral.worker import RequestError, TaskError, run

def handle(task, ctx):
    if task["do"] == "fail":  # a message as long as the caller asks
        raise TaskError("e" * task["size"])
    if task["do"] == "names":  # steps of null results under names of a megabyte
        for i in range(64):
            try:
                ctx._call("step/put", {"task_id": ctx.task_id, "name": f"{i}" + "n" * (1 << 20),
                                       "result": None})
            except RequestError as exc:
                return [i, exc.code, exc.message]
        return "all kept"
    if task["do"] == "hold":  # a step of its own, then wait to be let go
        ctx.step("secret", lambda: {"key": "s3cret"})
        ctx.checkpoint_task({"mine": True})
        while not os.path.exists(task["path"]):
            ctx.check_cancelled()
            import time; time.sleep(0.01)
        return "held"
    said = {}
    for method, params in (("step/get", {"name": "secret"}),
                           ("step/put", {"name": "secret", "result": "forged"}),
                           ("task/checkpoint", {"state": "forged"}),
                           ("session/checkpoint", {"state": "forged"})):
        try:
            said[method] = ["answered", ctx._call(method, {"task_id": task["other"],
                                                           **params})]
        except RequestError as exc:
            said[method] = [exc.code, exc.message]
    return said

run(handle)
'''


@pytest.mark.deadline(120)
async def test_an_agent_reads_and_writes_no_step_or_checkpoint_of_a_task_not_its_own(
        tmp_path: Path) -> None:
    """`step/get`, `step/put`, `task/checkpoint`, `session/checkpoint` name a task: an
    agent's worker naming a task running on another agent's replica (another tenant's) is
    told it is not running there, and the task's own step and checkpoint are untouched."""
    from .conftest import ROOT
    from .daemon_harness import PY

    script = tmp_path / "peeker.py"
    script.write_text(PEEKER)
    agents = "".join(f'[agents.{n}]\ncommand = ["{PY}", "{script}"]\n'
                     f'env = {{ PYTHONPATH = "{ROOT}" }}\ntenant = "{t}"\n'
                     f'max_concurrent_tasks = 2\n' for n, t in (("holder", "a"), ("peek", "b")))
    async with in_process(tmp_path, agents, "[tenants.a]\n[tenants.b]\n") as d:
        let_go = tmp_path / "go"
        held = await d.dispatcher.call(OPERATOR, "tasks.submit", msgspec.json.encode(
            {"agent": "holder", "input": {"do": "hold", "path": str(let_go)}}))
        engine = d.sup.tasks
        task = engine.active[held.task_id]
        await wait_until_async(lambda: task.checkpoint is not None)
        done = await d.dispatcher.call(OPERATOR, "tasks.run", msgspec.json.encode(
            {"agent": "peek", "input": {"do": "peek", "other": held.task_id}}))
        assert done.status == "succeeded", done
        said = msgspec.json.decode(done.output) if isinstance(done.output, msgspec.Raw) \
            else done.output
        assert said == {method: [jsonrpc.INVALID_PARAMS, f"{method}: task {held.task_id} "
                                                         "is not running on peek#0"]
                        for method in ("step/get", "step/put", "task/checkpoint",
                                       "session/checkpoint")}, said
        assert msgspec.json.decode(task.checkpoint) == {"mine": True}
        let_go.touch()
        end = await d.dispatcher.call(OPERATOR, "tasks.get", {"task_id": held.task_id,
                                                              "wait": True})
        assert end.status == "succeeded", end


@pytest.mark.deadline(120)
async def test_a_tenants_delays_and_retries_are_bounded_and_a_delayed_flood_is_max_queue(
        tmp_path: Path) -> None:
    """A tenant's caller may delay a task a year and a day at most and ask 100 retries
    at most (refused before anything is kept); the tasks that wait for their time count
    against the agent's max_queue, so a flood of far delays is refused at it."""
    agents = hello("web", extra='tenant = "a"\nmax_queue = 3\n')
    async with in_process(tmp_path, agents, "[tenants.a]\n") as d:
        _, ta = await tokens_of(d.services.store).create("ta", ["tasks:run", "tasks:read"],
                                                         None, None, "a")
        a = Caller(via="http", token="ta", scopes=ta.scopes, tenant="a")

        async def submit(**kw: object) -> str:
            return str((await d.dispatcher.call(a, "tasks.submit", msgspec.json.encode(
                {"agent": "web", "input": {"name": "x"}, **kw}))).task_id)

        for kw, words in (({"not_before": 1e12}, "not_before is more than 366 days from "
                                                 "now"),
                          ({"delay": 366 * 86400.0 + 1}, "Expected `float` <= 31622400.0"),
                          ({"retry": {"retries": 10 ** 9}}, "Expected `int` <= 100")):
            with pytest.raises(RpcError) as e:
                await submit(**kw)
            assert e.value.code == jsonrpc.INVALID_PARAMS, kw
            assert words in e.value.message, (kw, e.value.message)
        for _ in range(3):
            await submit(delay=3600.0)
        with pytest.raises(RpcError) as e:
            await submit(delay=3600.0)
        assert (e.value.code, e.value.message) == (
            jsonrpc.REFUSED, "queue full: agent web has 3 tasks waiting (max_queue 3)")
        listed = await d.dispatcher.call(OPERATOR, "tasks.list", {})
        assert len(listed.tasks) == 3


@pytest.mark.deadline(120)
async def test_an_agents_long_error_is_stored_in_its_trace_cut_to_the_bound(
        tmp_path: Path) -> None:
    """The local trace store keeps spans by count (`keep_spans`): an agent failing its
    tasks with a message of a megabyte must not make each span a megabyte. The task's
    span and its attempt's keep TEXT_MAX characters of it (and say it was cut)."""
    from corral.supervisor.tracerecords import TEXT_MAX

    from .conftest import ROOT
    from .daemon_harness import PY

    script = tmp_path / "peeker.py"
    script.write_text(PEEKER)
    agents = (f'[agents.w]\ncommand = ["{PY}", "{script}"]\n'
              f'env = {{ PYTHONPATH = "{ROOT}" }}\n')
    async with in_process(tmp_path, agents, "[tracing]\nexport_interval = 0.05\n") as d:
        done = await d.dispatcher.call(OPERATOR, "tasks.run", msgspec.json.encode(
            {"agent": "w", "input": {"do": "fail", "size": 1 << 20}}))
        assert done.status == "failed" and len(done.error.message) == 1 << 20
        trace = await d.dispatcher.call(OPERATOR, "traces.get", {"task_id": done.task_id})
        errors = {s.name: s.error for s in trace.spans if s.error is not None}
        assert set(errors) == {"invoke_agent w", "task/run w"}, errors
        assert all(e == "e" * TEXT_MAX + "…" for e in errors.values())


@pytest.mark.deadline(120)
async def test_what_reaches_an_mcp_server_of_a_clients_trace_context_is_w3c_and_bounded(
        tmp_path: Path) -> None:
    """A gateway client's `_meta` is rebuilt, not passed on: the server is told a
    `traceparent` in the W3C format and a `tracestate` of at most 512 bytes, and nothing
    of a context that is not the format (an object, a megabyte with newlines)."""
    from .conftest import ROOT
    from .daemon_harness import PY
    from .test_gateway_stdio import SCRIPTED

    record = tmp_path / "meta.jsonl"
    servers = (f'[mcp_servers.sc]\ncommand = ["{PY}", "{SCRIPTED}", "v2025-11"]\n'
               f'env = {{ SCRIPTED_RECORD = "{record}", PYTHONPATH = "{ROOT}" }}\n'
               'start_timeout = 30.0\n')
    async with in_process(tmp_path, hello("web", extra='tools = ["*"]\n') + servers) as d:
        good = f"00-{'1' * 32}-{'2' * 16}-01"
        state = "k=" + "v" * 100_000
        for context in ({"traceparent": good, "tracestate": state},
                        {"traceparent": {"x": 1}, "tracestate": state},
                        {"traceparent": "00-\n" + "x" * (1 << 20)}):
            # each request its own asyncio task, as the socket's connection runs it
            gateway = d.services.gateway
            await asyncio.ensure_future(gateway.forward(gateway.identify(agent="web"),
                                                        "tools/call", {
                "name": "sc__echo", "arguments": {"text": "hi"}, "_meta": context}, None))
        seen = [json.loads(line)["meta"] or {} for line in record.read_text().splitlines()]
        assert len(seen) == 3
        assert (seen[0]["traceparent"], seen[0]["tracestate"]) == (good, state[:512])
        for meta in seen[1:]:
            assert "traceparent" not in meta and "tracestate" not in meta, meta


@pytest.mark.deadline(120)
async def test_a_steps_name_counts_against_max_step_bytes(tmp_path: Path) -> None:
    """`step/put`'s name is the worker's to choose and is kept (journal and memory) as
    its result is: steps of null results under names of a megabyte are refused once the
    names reach the agent's `max_step_bytes`."""
    from .conftest import ROOT
    from .daemon_harness import PY

    script = tmp_path / "peeker.py"
    script.write_text(PEEKER)
    agents = (f'[agents.w]\ncommand = ["{PY}", "{script}"]\n'
              f'env = {{ PYTHONPATH = "{ROOT}" }}\nretries = 1\n'
              f'max_step_bytes = {4 << 20}\n')
    async with in_process(tmp_path, agents) as d:
        done = await d.dispatcher.call(OPERATOR, "tasks.run", msgspec.json.encode(
            {"agent": "w", "input": {"do": "names"}}))
        assert done.status == "succeeded", done
        said = msgspec.json.decode(done.output) if isinstance(done.output, msgspec.Raw) \
            else done.output
        assert said[:2] == [4, jsonrpc.STEP_BUDGET_EXCEEDED], said
        assert said[2].startswith(f"step budget exceeded: task {done.task_id} has "
                                  "journaled "), said[2]
