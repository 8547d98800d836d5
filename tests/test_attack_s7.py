"""The reviewer's and attacker's pass of session 7: the holes issue 86's last stop named
and left open (its closing note's "Existing holes review named and did not close"), and
what this session's other streams land. Each test reads real daemons with a replica's own
token or a tokens file's; a hole not yet closed in its owner's file is a strict xfail
that names it (docs/security.md, /work/notes's note to its owner)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc

from .conftest import ROOT
from .daemon_harness import PY, Daemon, corral_run, running_daemon, shared_tmpdir
from .mcp_post import rpc
from .servers.model_upstream import StandIn
from .test_daemon_cli import wait_until
from .test_model_gateway import provider_key, upstream  # noqa: F401

AGENT = ROOT / "tests" / "doors" / "door_agent.py"
POLICY_SERVER = ROOT / "tests" / "servers" / "policy_mcp.py"
SKILLS = ROOT / "examples" / "skills"  # incident-review, release-notes


@pytest.fixture(scope="module")
def s7() -> Iterator[Daemon]:
    """Tenants alpha and beta, each with an MCP server of its own (`ours`, `theirs`);
    alpha's agent `prober`, whose allowlist is `*`; agents `late` and `flood` of their own
    (each a test's replica, as a rate is its client's); the
    operator's rule denying `*__fetch` (it names a server of each tenant's, and none);
    every gateway client's rate two calls a minute; the operator's skills (SKILLS)."""
    tmp = shared_tmpdir()
    shutil.copytree(SKILLS, tmp / "skills")
    agent = f'command = ["{PY}", "{AGENT}"]\nenv = {{ PYTHONPATH = "{ROOT}" }}\n' \
            'stop_timeout = 10.0\n'
    with running_daemon(tmp, f"""
[tenants.alpha]
[tenants.beta]

[agents.prober]
{agent}tenant = "alpha"
tools = ["*"]

[agents.late]
{agent}tools = ["*"]

[agents.flood]
{agent}tools = ["*"]

[mcp_servers.ours]
command = ["{PY}", "{POLICY_SERVER}"]
tenant = "alpha"

[mcp_servers.theirs]
command = ["{PY}", "{POLICY_SERVER}"]
tenant = "beta"

[[policy]]
name = "no fetch"
match = {{ tool = "*__fetch" }}
effect = "deny"

[gateway]
listen = "127.0.0.1:0"
rate_per_minute = 2
skills_dir = "{tmp / 'skills'}"
""") as d:
        yield d
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(120)
def test_a_stale_attempts_address_takes_a_token_of_its_replicas_rate(s7: Daemon) -> None:
    """Decision 1692: every gateway call takes a token of its client's rate_per_minute,
    and a call its door refuses writes an audit row of its own (a `gateway.call` row and
    a line of the daemon log). A call at an attempt's address that is no longer running
    was refused before its token was taken: a replica sends such calls as fast as it
    likes, each a row that pushes its tenant's older tool-call rows out. Rated, the
    stale call spends one of the replica's two calls of the minute, so its second
    after, at its own address, is the rate's refusal."""
    ran = s7.ask("tasks.run", {"agent": "late", "input": {"env": True}})
    url, token = ran["output"]["CORRAL_MCP_URL"], ran["output"]["CORRAL_MCP_TOKEN"]
    stale = rpc(f"{url}?task={ran['task_id']}&attempt=1", token, "tools/call",
                {"name": "ours__echo", "arguments": {}})
    assert stale["error"]["code"] == jsonrpc.NOT_FOUND, stale
    assert stale["error"]["message"].startswith(
        f"attempt 1 of task {ran['task_id']} is not running on late#0"), stale
    made = rpc(url, token, "tools/call", {"name": "ours__echo", "arguments": {}})
    assert made["error"]["code"] == jsonrpc.TOOL_NOT_ALLOWED, made  # (its view's: a call)
    again = rpc(url, token, "tools/call", {"name": "ours__echo", "arguments": {}})
    assert again.get("error") == {
        "code": jsonrpc.REFUSED,
        "message": "gateway client late#0 is over its rate of 2 calls a minute"}, again


FLOOD = 50  # calls past a client's rate, sent as fast as it can


def rows_of(d: Daemon, client: str, method: str = "gateway.call") -> list[str]:
    """The outcomes of the audit rows of `client`'s calls at `method`'s doors, oldest
    first (as audit.list lists them): the module's other tests write rows of the same
    replica at the worker link, so a count of its every row read before a test is no
    index into its rows after."""
    return [e["outcome"] for e in d.ask("audit.list", {"limit": 1000})["entries"]
            if e["method"] == method and isinstance(e["params"], dict)
            and e["params"].get("client") == client]


@pytest.mark.deadline(120)
def test_a_client_past_its_rate_writes_a_row_a_minute_however_fast_it_sends(
        s7: Daemon) -> None:
    """Each call a gateway client's own limits refuse (its rate_per_minute, its
    max_concurrent) wrote an audit row and a daemon log line, so a client of two calls a
    minute wrote rows as fast as it sent (review's probe: 200 calls, 200 rows): its
    tenant's older tool-call rows pushed out of audit_max_rows, the same hole decisions
    1691's read and 1740's address had, through the refusal itself. Now such a refusal is
    one row a minute a client, the ones between counted in its stats and said in its next
    row; the calls it makes are each a row as before."""
    ran = s7.ask("tasks.run", {"agent": "flood", "input": {"env": True}})
    url, token = ran["output"]["CORRAL_MCP_URL"], ran["output"]["CORRAL_MCP_TOKEN"]
    before = len(rows_of(s7, "flood#0"))
    said = [rpc(url, token, "tools/call", {"name": "ours__echo", "arguments": {}})
            for _ in range(FLOOD)]
    over = {"code": jsonrpc.REFUSED,
            "message": "gateway client flood#0 is over its rate of 2 calls a minute"}
    assert [s.get("error") == over for s in said].count(True) >= FLOOD - 2, said
    refused = f"refused: {over['message']}"

    def rows() -> list[str] | None:
        now = rows_of(s7, "flood#0")[before:]
        return now if refused in now else None
    written = wait_until(rows, 30, "the refusal's row")
    assert written.count(refused) == 1 and len(written) <= 3, written
    stats = s7.ask("gateway.status", {})["clients"]["flood#0"]
    assert stats["errors"] >= FLOOD - 2, stats


@pytest.mark.deadline(120)
def test_an_agents_refused_calls_write_no_more_rows_than_a_bound(s7: Daemon) -> None:
    """An agent covering its tracks: its earlier calls are rows of its tenant's share of
    tool-call rows, and calls its view refuses (a name its allowlist does not admit) were
    rows of the same share, made at no cost and with no rate at the worker link (600 in a
    second with max_tool_calls_per_task 5). Now VIEW_ROWS of them a minute a replica are
    written, the others counted and said in the next (decision 1743)."""
    from corral.daemon.audit import VIEW_ROWS

    before = len(rows_of(s7, "flood#0", "worker.call"))
    calls = [{"door": door, "tool": "nosuch__x", "arguments": {}}
             for door in ("worker", "worker-no-task") for _ in range(FLOOD)]
    said = s7.ask("tasks.run", {"agent": "flood", "input": {"calls": calls}})["output"]
    assert {s["error"] for s in said} == {jsonrpc.TOOL_NOT_ALLOWED}, said

    def rows() -> int | None:
        made = len(rows_of(s7, "flood#0", "worker.call")) - before
        return made if made >= VIEW_ROWS else None
    assert wait_until(rows, 30, "the refusals' rows") == VIEW_ROWS < len(calls)


def twin(name: str, kind: str = "agent") -> str:
    """The refusal of agent (or team) `name` named as one of the operator's skills."""
    return (f"{kind}s.{name}: its name is the operator's skill {name}'s too ([gateway] "
            f"skills_dir): an allowlist's corral__{name} would admit both starting the "
            f"{kind}'s tasks and reading the skill; rename one")


def test_check_config_refuses_an_agent_named_as_one_of_the_operators_skills(
        tmp_path: Path) -> None:
    """The operator's skills are the server corral's (decision 1146), and so are the agents
    called as tools (decision 1063): an allowlist admits a skill as `corral__NAME` and an
    agent as `corral__AGENT`. A tokens file's client given `corral__release-notes` to
    read that skill could start tasks of an agent `release-notes` at /mcp/corral (its
    allowlist is all a client's view of the agents is), and one given the agent read the
    skill. Each name now names one thing: the config is refused, at start, at reload and
    by check-config, saying which name and why."""
    config = tmp_path / "c.toml"
    config.write_text(f'[agents.release-notes]\ncommand = ["{PY}", "{AGENT}"]\n\n'
                      f'[gateway]\nskills_dir = "{SKILLS}"\n')
    r = corral_run(["check-config", "--no-check", str(config)],
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", f"corral: invalid config: {config}: {twin('release-notes')}\n")


def test_check_config_refuses_a_team_named_as_one_of_the_operators_skills(
        tmp_path: Path) -> None:
    """A team's name is taken wherever an agent's is, a call of `corral__TEAM` at
    /mcp/corral its call (docs/teams.md): a tokens file's client given
    `corral__release-notes` to read that skill called a team `release-notes` (review's
    probe: its members' tasks ran). Refused as an agent is."""
    config = tmp_path / "c.toml"
    config.write_text(f'[agents.echo]\ncommand = ["{PY}", "{AGENT}"]\n\n'
                      '[teams.release-notes]\nmode = "broadcast"\nmembers = ["echo"]\n\n'
                      f'[gateway]\nskills_dir = "{SKILLS}"\n')
    r = corral_run(["check-config", "--no-check", str(config)],
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", f"corral: invalid config: {config}: {twin('release-notes', 'team')}\n")


@pytest.mark.deadline(120)
def test_a_team_added_at_run_time_is_not_named_as_one_of_the_operators_skills(
        s7: Daemon) -> None:
    """As at start (above), and nothing is added."""
    table = s7.dir / "team.toml"
    table.write_text('[teams.incident-review]\nmode = "broadcast"\nmembers = ["late"]\n')
    r = s7.cli("teams", "add", str(table))
    assert (r.returncode, r.stderr) == (
        1, f"corral: teams.add: {twin('incident-review', 'team')}\n"), r
    assert "incident-review" not in {t["name"] for t in s7.ask("teams.list")["teams"]}


@pytest.mark.deadline(120)
def test_an_agent_added_at_run_time_is_not_named_as_one_of_the_operators_skills(
        s7: Daemon) -> None:
    """As at start (above): an agent added at run time with a skill's name is refused,
    saying which and why, and nothing is added."""
    r = s7.cli("add", "--name", "incident-review", "--command", f"{PY} {AGENT}",
               "--no-check")
    assert (r.returncode, r.stderr) == (
        1, f"corral: agents.add: {twin('incident-review')}\n"), r
    assert "incident-review" not in {a["name"] for a in s7.ask("agents.status", {"names": []})[
        "agents"]}


@pytest.mark.deadline(120)
def test_a_cluster_agent_is_not_named_as_one_of_the_operators_skills() -> None:
    """A cluster agent (`corral add --cluster`, kept in Redis and placed by the nodes)
    comes by its own way, not the node's fleet: it is refused the same, and nothing is
    kept in Redis."""
    from .cluster.harness import nodes
    from .redis_harness import REDIS_SERVER, RedisServer

    assert REDIS_SERVER is not None, "redis-server is not installed: . scripts/redis.sh"
    tmp = shared_tmpdir()
    redis = RedisServer(tmp / "redis").start()
    try:
        with nodes(tmp, redis, {"a": f'[gateway]\nskills_dir = "{SKILLS}"\n'}) as ns:
            r = ns["a"].cli("add", "--cluster", "--name", "release-notes", "--command",
                            f"{PY} {AGENT}", "--no-check")
            assert (r.returncode, r.stderr) == (
                1, f"corral: agents.add: {twin('release-notes')}\n"), r
            assert ns["a"].ask("agents.status", {"names": []})["agents"] == []
    finally:
        redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(120)
def test_a_reload_refuses_a_skill_named_as_an_agent_added_at_run_time(s7: Daemon) -> None:
    """The other way round: a skill put in skills_dir with the name of an agent added at
    run time is refused by the reload that would read it, and the agent stays."""
    assert s7.cli("add", "--name", "triage", "--command", f"{PY} {AGENT}", "--no-check",
                  "--replicas", "0").returncode == 0
    skill = s7.dir / "skills" / "triage"
    skill.mkdir()
    (skill / "SKILL.md").write_text("---\nname: triage\ndescription: Triage.\n---\n")
    try:
        r = s7.cli("reload")
        assert (r.returncode, r.stderr) == (
            1, f"corral: reload rejected, nothing changed: {twin('triage')}\n"), r
    finally:
        shutil.rmtree(skill)
    assert s7.ask("agents.describe", {"name": "triage"})["origin"] == "runtime"


@pytest.mark.deadline(120)
@pytest.mark.parametrize("door", ["worker", "worker-no-task", "/mcp", "/mcp/NAME"])
def test_a_replica_of_every_tool_tells_no_other_tenants_server_from_none(
        s7: Daemon, door: str) -> None:
    """Decision 1694's aim for a replica: an agent whose allowlist is `*` (tenant alpha's
    `prober`) calls a tool of tenant beta's server and one of no server at all, under a
    rule denying both names, at each door its task has (the worker link naming its task
    and naming none, its gateway's /mcp and /mcp/NAME). The view link closed this for
    gateway clients alone (6a5ef737: a name of no pool server refused as another
    tenant's); a replica's allowlist is its tenant's view (quotas.py `visible_allow`:
    `*` is each server it sees, `ours__*`), so both names are refused there, in one form,
    before any rule: the answers read alike but for the name."""
    calls = [{"door": door, "tool": f"{server}__fetch", "arguments": {}}
             for server in ("theirs", "nosuch")]
    said = s7.ask("tasks.run", {"agent": "prober", "input": {"calls": calls}})["output"]
    theirs, nosuch = (json.dumps(got).replace(server, "S")
                      for got, server in zip(said, ("theirs", "nosuch"), strict=True))
    assert theirs == nosuch, said
    assert "denied by policy rule" not in theirs, said


# a node's liveness TTL longer than the test waits for its run: a node that waited for its
# cluster to settle (a TTL and a beat of Redis answering) before it took its own stopped
# run again would not end the run within RESUMED
LONG_TTL, RESUMED = 90.0, 40.0


@pytest.mark.deadline(120)
def test_a_node_takes_its_own_stopped_run_again_once_redis_answers() -> None:
    """02d20820: a cluster node whose workflow run's driver stopped (Redis away as it wrote
    a step's end: `workflows: run R (slow) stopped: ...; it is resumed by the cluster's
    next beat`) takes it again at its next beat once Redis answers, not a TTL and a beat
    later: only another incarnation's missing liveness key may be a node yet to beat
    again, and this node's own is no other's to wait for. test_failover's run passed
    either way (its bound is the whole test's); here each event is waited for in turn
    (the map under way, Redis killed, the node's own stop said, Redis started again from
    its AOF) under a TTL longer than the run is given to end. Reverted, the run stays
    running past RESUMED."""
    from .cluster.harness import nodes
    from .redis_harness import REDIS_SERVER, RedisServer
    from .test_workflows import SLOW, _marks, agent_toml

    assert REDIS_SERVER is not None, "redis-server is not installed: . scripts/redis.sh"
    tmp = shared_tmpdir()
    redis = RedisServer(tmp / "redis", appendfsync="always").start()
    try:
        (tmp / "a").mkdir()
        with nodes(tmp, redis, {"a": agent_toml(tmp / "a", replicas=2) + SLOW},
                   ttl=LONG_TTL) as ns:
            a = ns["a"]
            marks = tmp / "marks"
            marks.mkdir()
            run_id = a.call("workflows.run", {"name": "slow", "input": {
                "dir": str(marks)}})["run_id"]
            wait_until(lambda: any(k.startswith("each") for k in _marks(marks)),
                       timeout=60, what="the map under way")
            redis.kill()
            wait_until(lambda: a.ask("logs.tail", {
                "names": ["corral"], "lines": 1,
                "grep": f"workflows: run {run_id} (slow) stopped: "})["lines"],
                timeout=60, what="the node's own run stopped")
            redis.start()
            view = wait_until(lambda: (v := a.call("runs.get", {"run_id": run_id}))[
                "status"] != "running" and v, timeout=RESUMED, what="the run's end")
            assert (view["status"], view["output"]) == (
                "succeeded", sum(i * i for i in range(6))), (
                view.get("error"), view, a.ask("logs.tail", {
                    "names": ["corral"], "lines": 40, "grep": "workflows|task|lost|fence"}))
    finally:
        redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(120)
def test_a_step_whose_submit_was_not_answered_stops_its_run_and_does_not_fail_it() -> None:
    """The i2 run's end `failed`: a cluster step's submit answered UNAVAILABLE (its answer
    lost twice, or Redis away) was ended `failed` by the durable engine, like a refusal,
    and the workflow's runner failed the run when Redis took that row, though the task
    may have been made and run (as here: the submit's answer is held back past the
    node's socket timeout, twice, at the proxy; the task runs). Such an answer says the
    cluster's Redis did not answer, not that the step failed: the driver stops, as for
    any write Redis did not take, and the node's next beat takes the run again, its step
    found under the same id (one task, its mark once) and the run succeeds."""
    from .cluster.harness import STEADY_TTL, Node
    from .cluster.proxy import Proxy
    from .redis_harness import REDIS_SERVER, RedisServer
    from .test_workflows import SLOW, _marks, agent_toml

    assert REDIS_SERVER is not None, "redis-server is not installed: . scripts/redis.sh"
    tmp = shared_tmpdir()
    redis = RedisServer(tmp / "redis", appendfsync="always").start()
    proxy = Proxy(redis.port)
    # the submit of the map's third item's task, and then its `_again`: each answer held
    # back past the node's socket timeout (node_ttl + beat)
    submit, held = b'"mark":"each2"', STEADY_TTL + 3.0
    sent = proxy.watch(submit)
    proxy.hold(held, submit)
    a = Node(tmp / "a", "a", redis, agent_toml(tmp, replicas=2) + SLOW, ttl=STEADY_TTL)
    a.config.write_text(a.config.read_text().replace(redis.url, proxy.url))
    try:
        a.start()
        marks = tmp / "marks"
        marks.mkdir()
        run_id = a.call("workflows.run", {"name": "slow", "input": {
            "dir": str(marks)}})["run_id"]
        assert sent.wait(60), "the third item's task was never submitted"
        proxy.hold(held, submit)
        view = wait_until(lambda: (v := a.call("runs.get", {"run_id": run_id}))[
            "status"] != "running" and v, timeout=90, what="the run's end")
        assert (view["status"], view["output"]) == (
            "succeeded", sum(i * i for i in range(6))), (view.get("error"), view)
        assert len(_marks(marks)["each2"]) == 1, _marks(marks)
        assert a.ask("logs.tail", {"names": ["corral"], "lines": 1, "grep": (
            f"workflows: run {run_id} (slow) stopped: the cluster's Redis at ")})["lines"]
    finally:
        a.close()
        proxy.close()
        redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_a_kept_alive_connections_next_request_keeps_nothing_of_the_last(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """Model's stream (issue 90): lean's request parser kept for a connection's life, and
    one serving task a connection that waits for its next request. What a request said is
    its own: on one kept-alive connection, a model call with the replica's token answered,
    then (sent after that answer, so read by the waiting task, not pipelined) the same
    call with no token is the 401 a fresh connection's is and reaches no upstream; a call
    whose head and body come in two writes after it is answered as its own; and a POST
    of /mcp with no token after an authorized one is the gateway's 401, not the last
    call's client. Fails with a head's fields, its target or its token carried over."""
    from corral.daemon.http.mcp import METADATA

    from .daemon_harness import in_process
    from .test_lean_attacks import INIT, raw
    from .test_model_lean import connected, fleet
    from .test_model_usage import CHAT, chat, token_of

    async with in_process(tmp_path, fleet(upstream.url)) as d:
        token = await token_of(d)
        head = [f"POST {CHAT} HTTP/1.1", "Host: corral", "Content-Type: application/json"]

        def call(text: str, *auth: str) -> bytes:
            body = json.dumps(chat(text)).encode()
            return raw(*head, *auth, f"Content-Length: {len(body)}", body=body)

        made = upstream.calls()
        wire = await connected(d)
        wire.writer.write(call("first", f"Authorization: Bearer {token}"))
        status, _, body = await wire.answer()
        assert (status, json.loads(body)["choices"][0]["message"]["content"]) == (
            200, "echo: first"), body
        wire.writer.write(call("second"))
        status, _, refusal = await wire.answer()
        assert (status, json.loads(refusal)["error"]["code"]) == (401, "invalid_api_key")
        third = call("third", f"Authorization: Bearer {token}")
        cut = third.index(b"\r\n\r\n") + 4
        wire.writer.write(third[:cut])
        await wire.writer.drain()
        wire.writer.write(third[cut:])
        status, _, body = await wire.answer()
        assert (status, json.loads(body)["choices"][0]["message"]["content"]) == (
            200, "echo: third"), body
        assert upstream.calls() == made + 2
        wire.writer.write(raw("POST /mcp HTTP/1.1", "Host: corral",
                              "Content-Type: application/json",
                              "Accept: application/json, text/event-stream",
                              f"Content-Length: {len(INIT)}", body=INIT))
        status, headers, _ = await wire.answer()
        assert (status, headers.get("www-authenticate")) == (
            401, f'Bearer resource_metadata="http://corral{METADATA}/mcp"'), headers
        wire.writer.close()


ANSWERED = 20.0


@pytest.mark.deadline(120)
def test_the_bridge_answers_a_hosts_request_whatever_its_method_is(s7: Daemon) -> None:
    """`corral mcp serve` (as the socket's peer, the operator) carries a host's request's
    method in a header (Mcp-Method, as a 2026-07-28 request must). A method no header may
    carry as it is (a control character, a character past Latin-1) is refused to the host
    with its id, and the requests after it are answered too: a request of the host's left
    unanswered holds the host's call for ever."""
    import selectors
    import subprocess
    import time

    proc = subprocess.Popen(
        [PY, "-m", "corral", "--socket", str(s7.sock), "mcp", "serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdin is not None and proc.stdout is not None
    sent = [{"id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "host", "version": "1"}}},
            {"method": "notifications/initialized", "params": {}},
            {"id": 2, "method": "tools/list\x01", "params": {}},
            {"id": 3, "method": "tools/list\u2603", "params": {}},
            {"id": 4, "method": "ping", "params": {}}]
    for message in sent:
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
    proc.stdin.flush()
    said: dict[Any, dict[str, Any]] = {}
    watch = selectors.DefaultSelector()
    watch.register(proc.stdout, selectors.EVENT_READ)
    # every answer is the event waited for, a request the bridge dropped for at most
    # ANSWERED seconds (the others come within a second)
    deadline, buffer = time.monotonic() + ANSWERED, b""
    try:
        while not {1, 2, 3, 4} <= set(said) and watch.select(deadline - time.monotonic()):
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                got = json.loads(line)
                said[got.get("id")] = got
    finally:
        watch.close()
        proc.stdin.close()
        proc.kill()
        proc.wait(60)
    assert said.get(4, {}).get("result") == {}, said
    assert all("error" in said.get(rid, {}) for rid in (2, 3)), said


def test_a_clients_refusals_by_its_limits_between_rows_are_said_in_the_next() -> None:
    """The row a minute above: the first refusal is written, those within the minute are
    counted, and the first after it is written saying how many were not."""
    from corral.daemon.gatewaylimits import REFUSAL_ROW_EVERY, Limiter

    limiter = Limiter()
    assert [limiter.refusal_row(t) for t in (100.0, 101.0, 102.0, 159.9)] == [
        0, None, None, None]
    assert limiter.refusal_row(100.0 + REFUSAL_ROW_EVERY) == 3
    assert limiter.refusal_row(161.0) is None
