"""An attacker's second pass, over the surfaces added with teams, schedules, code-first
spawns, cluster sessions, run events and logs read back (docs/security.md): what a less
trusted party may make the daemon run, read, allocate or show. Against the real daemon,
in this process; each line of security.md that names a test here is held by it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller

from .daemon_harness import hello, in_process

OPERATOR = Caller(via="socket")


def said(output: Any) -> Any:
    return msgspec.json.decode(output) if isinstance(output, msgspec.Raw) else output


WAITER = '''
from corral.worker import RequestError, run

def handle(task, ctx):
    if task.get("leaf"):
        return "x" * task["size"]
    if "spawn" in task:  # a spawn with the parameters the test gives
        try:
            return ["spawned", ctx._call("task/spawn", {"task_id": ctx.task_id,
                                                        "agent": "leaf", "key": "k",
                                                        "input": {"leaf": True, "size": 1},
                                                        **task["spawn"]})]
        except RequestError as exc:
            return [exc.code, exc.message]
    child = ctx.spawn("leaf", {"leaf": True, "size": task["size"]})
    try:
        got = ctx._call("task/wait", {"task_id": ctx.task_id,
                                      "children": [child] * task["times"]})
    except RequestError as exc:
        return [child, exc.code, exc.message]
    return [child, len(got["results"])]

run(handle)
'''


@pytest.mark.deadline(120)
async def test_a_task_wait_naming_its_child_twice_is_refused_before_any_wait(
        tmp_path: Path) -> None:
    """`task/wait`'s list is the worker's: one child named a hundred thousand times would
    be as many waits held and its output copied as many times into one answer (a
    megabyte's line made a hundred gigabytes). A child named twice is refused, naming it;
    each child once is answered as before. A child's `retries` are bounded as a caller's
    are (0 to 100): a worker asks no more of the engine than its caller could."""
    from .conftest import ROOT
    from .daemon_harness import PY

    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    agents = "".join(f'[agents.{n}]\ncommand = ["{PY}", "{script}"]\n'
                     f'env = {{ PYTHONPATH = "{ROOT}" }}\n{extra}'
                     for n, extra in (("orch", 'spawns = ["leaf"]\n'), ("leaf", "")))
    async with in_process(tmp_path, agents) as d:
        done = await d.dispatcher.call(OPERATOR, "tasks.run", msgspec.json.encode(
            {"agent": "orch", "input": {"times": 100_000, "size": 1 << 20}}))
        assert done.status == "succeeded", done
        child, code, message = said(done.output)
        assert (code, message) == (jsonrpc.INVALID_PARAMS,
                                   f"task/wait: task {child} is named more than once")
        done = await d.dispatcher.call(OPERATOR, "tasks.run", msgspec.json.encode(
            {"agent": "orch", "input": {"times": 1, "size": 10}}))
        assert said(done.output)[1:] == [1], done
        # a child's retries are bounded as a caller's are (the agent's own are not asked)
        for retries in (10 ** 9, -1):
            done = await d.dispatcher.call(OPERATOR, "tasks.run", msgspec.json.encode(
                {"agent": "orch", "input": {"spawn": {"retries": retries}}}))
            assert said(done.output) == [jsonrpc.INVALID_PARAMS, "task/spawn: retries must "
                                         "be a whole number from 0 to 100"], retries


async def _logged(d: Any, who: Caller, name: str) -> list[str]:
    lines = (await d.dispatcher.call(who, "logs.tail", {"names": [name], "lines": 100})).lines
    return [ln.text for ln in lines]


@pytest.mark.deadline(120)
async def test_an_agents_name_taken_by_another_tenant_shows_it_none_of_the_old_log(
        tmp_path: Path) -> None:
    """A name freed by one tenant (its agent removed) may be taken by another: the new
    agent's log is its own. Tenant b is shown none of the lines tenant a's agent of that
    name wrote, neither from memory nor read back from the file by the next daemon; tenant
    a's are still the operator's to read in the file."""
    from .test_gateway_stdio import wait_until_async

    program = ["/bin/sh", "-c", 'echo "$WORDS" >&2; exec sleep 600']
    tenants = "[tenants.a]\n[tenants.b]\n"
    a = Caller(via="socket", uid=4242, tenant="a")
    b = Caller(via="socket", uid=4243, tenant="b")
    async with in_process(tmp_path, "", tenants) as d:
        await d.dispatcher.call(a, "agents.add", {"agents": {"twin": {
            "command": program, "protocol": "none", "env": {"WORDS": "secret of a"},
            "stop_timeout": 1.0}}, "check": False})
        log = tmp_path / "state" / "logs" / "twin.log"
        await wait_until_async(lambda: log.exists() and "secret of a" in log.read_text())
        assert "secret of a" in await _logged(d, a, "twin")
        await d.dispatcher.call(a, "agents.remove", {"names": ["twin"]})
        await d.dispatcher.call(b, "agents.add", {"agents": {"twin": {
            "command": program, "protocol": "none", "env": {"WORDS": "words of b"}}},
            "check": False})
        await wait_until_async(lambda: "words of b" in log.read_text())
        assert sorted(await _logged(d, b, "twin")) == [
            "initial -> starting: started", "starting -> ready: started", "words of b"]
        assert "secret of a" in (log.parent / "twin.log.1").read_text()
    async with in_process(tmp_path, "", tenants) as d:
        seen = await _logged(d, b, "twin")
        assert "words of b" in seen and not any("of a" in t for t in seen), seen


@pytest.mark.deadline(120)
async def test_a_tenants_follower_is_sent_no_other_tenants_run_events(tmp_path: Path) -> None:
    """A run's events (`corral.run.*`, `corral.step.*`) carry its task ids and errors:
    over `/events/stream` a tenant's token is sent its own runs' events and none of
    another tenant's, nor of a run that spans tenants (operators' alone)."""
    import aiohttp

    from corral.daemon.http.rest import API_KEY

    from .test_gateway_stdio import wait_until_async
    from .test_http_api import SOCKET, Api, sse_events

    flows = "".join(f'[workflows.{n}]\n' + "".join(
        f'[[workflows.{n}.steps]]\nname = "s{i}"\nagent = "{a}"\n'
        for i, a in enumerate(agents)) for n, agents in (
            ("aflow", ["a-web"]), ("bflow", ["b-web"]), ("both", ["a-web", "b-web"])))
    agents = hello("a-web", extra='tenant = "a"\n') + hello("b-web", extra='tenant = "b"\n')
    toml = '[tenants.a]\n[tenants.b]\n' + flows + '\n[http]\nlisten = "127.0.0.1:0"\n'
    async with in_process(tmp_path, agents, toml) as d, aiohttp.ClientSession() as session:
        api = Api(d, session)
        for t in ("a", "b"):
            made = await d.dispatcher.call(SOCKET, "tokens.create", {
                "name": t, "scopes": ["events", "tasks:run"], "tenant": t})
            api.tokens[t] = made.token
        url = api.base + "/events/stream?pattern=*"
        async with session.get(url, headers={"Authorization": f"Bearer {api.tokens['a']}"}
                               ) as for_a, \
                session.get(url, headers={"Authorization": f"Bearer {api.tokens['b']}"}
                            ) as for_b:
            ring = d.http_server.app[API_KEY].ring
            await wait_until_async(lambda: len(ring.readers) == 2)
            for name in ("both", "aflow", "bflow"):
                run = await d.dispatcher.call(SOCKET, "workflows.run", {
                    "name": name, "input": {"name": "x"}, "wait": 30})
                assert run.status == "succeeded", run
            for t in ("a", "b"):
                status, _, _ = await api.ask("POST", "/events", t,
                                             {"topic": f"{t}.done", "data": None})
                assert status in (200, 202)
            got_a = [e["data"] for e in await sse_events(for_a, 5)]
            got_b = [e["data"] for e in await sse_events(for_b, 5)]
        for t, got in (("a", got_a), ("b", got_b)):
            assert [(g["topic"], g["data"].get("workflow") if g["data"] else None)
                    for g in got] == [
                ("corral.run.started", f"{t}flow"), ("corral.step.started", f"{t}flow"),
                ("corral.step.succeeded", f"{t}flow"), ("corral.run.succeeded", f"{t}flow"),
                (f"{t}.done", None)], (t, got)


@pytest.mark.deadline(120)
async def test_a_tenant_pauses_no_schedule_but_its_own_and_a_flood_is_refused_at_load(
        tmp_path: Path) -> None:
    """A tenant's caller sees, pauses and resumes the schedules whose every agent is its
    tenant's: another tenant's, and a workflow's that spans both, are no schedules to it
    (word for word as a name there is not). A schedule is the config's: one every
    millisecond, a cron that never matches, a catch-up past its bound are refused when the
    config is read, naming the bound."""
    from corral.supervisor.schedule import MIN_EVERY

    from .test_schedules import _config

    both = ('[workflows.both]\n[[workflows.both.steps]]\nname = "x"\nagent = "a-web"\n'
            '[[workflows.both.steps]]\nname = "y"\nagent = "b-web"\n')
    scheds = "".join(f'[schedules.{n}]\n{k} = "{v}"\nevery = "1h"\n' for n, k, v in (
        ("a-hourly", "agent", "a-web"), ("b-hourly", "agent", "b-web"),
        ("both-hourly", "workflow", "both")))
    agents = hello("a-web", extra='tenant = "a"\n') + hello("b-web", extra='tenant = "b"\n')
    async with in_process(tmp_path, agents, "[tenants.a]\n[tenants.b]\n" + both + scheds
                          ) as d:
        a = Caller(via="socket", uid=4242, tenant="a")
        listed = await d.dispatcher.call(a, "schedules.list", {})
        assert [s.name for s in listed.schedules] == ["a-hourly"]
        for name in ("b-hourly", "both-hourly", "ghost"):
            for method in ("schedules.pause", "schedules.resume"):
                with pytest.raises(jsonrpc.RpcError) as e:
                    await d.dispatcher.call(a, method, {"name": name})
                assert (e.value.code, e.value.message) == (
                    jsonrpc.NOT_FOUND, f"no such schedule: {name}"), (name, method)
        assert not any(s.paused for s in (await d.dispatcher.call(
            OPERATOR, "schedules.list", {})).schedules)
        paused = await d.dispatcher.call(a, "schedules.pause", {"name": "a-hourly"})
        assert (paused.paused, paused.next_fire) == (True, None)
    for table, words in (
            ('every = "1ms"', 'every "1ms" is not a duration'),
            ('every = "0.001s"', f'every "0.001s" is shorter than {MIN_EVERY:g} s'),
            ('cron = "0 0 30 2 *"', 'cron "0 0 30 2 *": no day matches it'),
            ('every = "1s"\nmissed = "catch_up"\nmax_catch_up = 1000000',
             "max_catch_up: Expected `int` <= ")):
        said = _config(tmp_path, f'[schedules.bad]\nagent = "leaf"\n{table}\n')
        assert said.startswith(f"schedules.bad{'' if 'max_' in table else ': '}"), said
        assert words in said, said


@pytest.mark.deadline(120)
async def test_a_workflow_whose_nested_workflow_is_gone_is_no_limited_callers(
        tmp_path: Path) -> None:
    """A workflow's agents are its steps' and its nested workflows': one whose nested
    workflow a reload took away has no agent known, which is no reason for every
    tenant's caller to see it. It is the operator's alone until its agents are known
    again: answered to a tenant's caller as a workflow there is not, left out of lists."""
    inner = ('[workflows.inner]\n[[workflows.inner.steps]]\nname = "x"\nagent = "db"\n')
    agents = hello("db") + hello("a-web", extra='tenant = "a"\n')
    async with in_process(tmp_path, agents, "[tenants.a]\n" + inner) as d:
        a = Caller(via="socket", uid=4242, tenant="a")
        await d.dispatcher.call(OPERATOR, "workflows.add", {"workflows": {"outer": {
            "steps": [{"name": "n", "workflow": "inner"}]}}})
        listed = await d.dispatcher.call(a, "workflows.list", {})
        assert [w.name for w in listed.workflows] == []
        config = tmp_path / "corral.toml"
        config.write_text(config.read_text().replace(inner, ""))
        await d.dispatcher.call(OPERATOR, "config.reload", {})
        listed = await d.dispatcher.call(OPERATOR, "workflows.list", {})
        assert {w.name: w.agents for w in listed.workflows} == {"outer": []}
        listed = await d.dispatcher.call(a, "workflows.list", {})
        assert [w.name for w in listed.workflows] == []
        for method in ("workflows.describe", "workflows.plan", "workflows.run"):
            with pytest.raises(jsonrpc.RpcError) as e:
                await d.dispatcher.call(a, method, {"name": "outer"})
            assert (e.value.code, e.value.message) == (jsonrpc.NOT_FOUND,
                                                       "no such workflow: outer"), method


@pytest.mark.deadline(120)
async def test_no_tenant_takes_another_tenants_team_name_for_an_agent(tmp_path: Path) -> None:
    """A task names an agent or a team: tenant b adding an agent named as tenant a's team
    left a's calls of its team answered "no such agent". Refused, naming the team; a's
    calls of its team still run its member."""
    from .conftest import ROOT
    from .daemon_harness import EXAMPLES, PY

    agents = hello("a-web", extra='tenant = "a"\n')
    async with in_process(tmp_path, agents, "[tenants.a]\n[tenants.b]\n") as d:
        a = Caller(via="socket", uid=4242, tenant="a")
        b = Caller(via="socket", uid=4243, tenant="b")
        await d.dispatcher.call(a, "teams.add", {"teams": {"crew": {
            "mode": "broadcast", "members": ["a-web"]}}})
        with pytest.raises(jsonrpc.RpcError) as e:
            await d.dispatcher.call(b, "agents.add", {"agents": {"crew": {
                "command": [PY, str(EXAMPLES / "hello.py")],
                "env": {"PYTHONPATH": str(ROOT)}}}, "check": False})
        assert (e.value.code, e.value.message) == (
            jsonrpc.CONFLICT, "agent crew: a team has its name (a task names one or the "
                              "other)")
        assert "crew" not in d.sup.agents
        done = await d.dispatcher.call(a, "tasks.run", msgspec.json.encode(
            {"agent": "crew", "input": {"name": "x"}}))
        assert done.status == "succeeded", done


@pytest.mark.deadline(120)
async def test_a_tenants_user_makes_the_daemon_write_no_file_but_its_log(
        tmp_path: Path) -> None:
    """A tenant with a `user` has its log files in `LOG_DIR/tenants/T/`, a directory that
    user owns: it may put a symlink there in place of a log file (toward a file of
    root's), a FIFO, or a hard link to a file of root's. The daemon (root) writes through
    none of them nor waits on the FIFO: the lines are dropped and said, the file pointed
    at is untouched, and the daemon keeps serving."""
    import pwd
    import stat

    from corral.daemon.logfiles import NOT_A_LOG

    from .test_gateway_stdio import wait_until_async

    if os.geteuid() != 0:
        pytest.skip("needs root to run an agent as the tenant's user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("needs the user nobody")
    own = tmp_path / "state" / "logs" / "tenants" / "a"
    own.mkdir(parents=True, mode=0o700)
    os.chown(own, nobody.pw_uid, nobody.pw_gid)
    target = tmp_path / "roots-file"
    target.write_text("root's\n")
    (own / "link.log").symlink_to(target)
    os.mkfifo(own / "pipe.log")
    os.link(target, own / "hard.log")
    agents = "".join(f'[agents.{n}]\ncommand = ["/bin/sh", "-c", "echo PWNED; exec sleep 600"]'
                     f'\nprotocol = "none"\ntenant = "a"\ncwd = "/"\nstop_timeout = 1.0\n'
                     for n in ("link", "pipe", "hard"))
    async with in_process(tmp_path, agents, '[tenants.a]\nuser = "nobody"\n') as d:
        hub = d.services.hub
        await wait_until_async(lambda: {"link", "pipe", "hard"} <= set(hub.broken))
        assert target.read_text() == "root's\n"
        assert stat.S_ISLNK((own / "link.log").lstat().st_mode)
        info = await d.dispatcher.call(OPERATOR, "daemon.info", {})
        assert info.pid == os.getpid()
        said = {s: hub.broken[s].why for s in ("link", "pipe", "hard")}
        assert said == dict.fromkeys(("link", "pipe", "hard"), NOT_A_LOG), said
