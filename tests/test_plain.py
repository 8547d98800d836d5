"""Any program, not only workers (issue 36, item 1): protocol = "none" (supervisor/plain.py).

Real processes throughout: `sleep`, a shell script writing to stdout and stderr, a tiny
python http.server that listens only when told, and python programs that speak sd_notify
over $NOTIFY_SOCKET with the socket module (READY=1, STATUS=, WATCHDOG=1)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor import State, Supervisor
from corral.supervisor.config import ConfigError, HealthSpec, Limits
from corral.supervisor.configload import cluster_problem, load_config, parse_agents
from corral.supervisor.lifecycle import Cause
from corral.supervisor.plain import PlainReplica
from corral.supervisor.process_replica import LogBatch, Transition

from .conftest import NOBODY_PY, agent, nobody_reason
from .daemon_harness import PY, free_port, in_process, problem, shared_tmpdir
from .sandboxprobe import sandbox_refusal
from .test_gateway_stdio import wait_until_async
from .test_http_api import serving
from .test_tokens import cli

REFUSAL = 'agent plain runs a plain program (protocol = "none"): it takes no tasks'

# listens on PORT (http.server, 200 for /) once the file GO exists
SERVE_WHEN = textwrap.dedent("""
    import http.server, os, sys, time
    port, go = int(sys.argv[1]), sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.02)
    http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                    http.server.SimpleHTTPRequestHandler).serve_forever()
""")

# sd_notify with the socket module: STATUS=warming up; once the file GO exists, READY=1
# and STATUS=serving; with "feed", WATCHDOG=1 every 0.1 s until the file GO.stop exists
NOTIFIER = textwrap.dedent("""
    import os, socket, sys, time
    go, mode = sys.argv[1], sys.argv[2]
    def send(text):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(text.encode(), os.environ["NOTIFY_SOCKET"])
        s.close()
    send("STATUS=warming up")
    while not os.path.exists(go):
        time.sleep(0.02)
    send("READY=1\\nSTATUS=serving")
    if mode == "feed":
        while not os.path.exists(go + ".stop"):
            send("WATCHDOG=1")
            time.sleep(0.1)
        open(go + ".stopped", "w").close()
    time.sleep(1000)
""")

# replica 1 sends READY=1 to the socket whose path the file TARGET holds (replica 0's),
# then to its own; replica 0 says nothing
SIBLING = textwrap.dedent("""
    import os, socket, sys, time
    target = sys.argv[1]
    if os.environ["CORRAL_REPLICA"] == "1":
        while not os.path.exists(target):
            time.sleep(0.02)
        for path in (open(target).read(), os.environ["NOTIFY_SOCKET"]):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(b"READY=1\\nSTATUS=ready for someone", path)
            s.close()
    time.sleep(1000)
""")


def plain(name: str, command: list[str], **kw: Any) -> Any:
    if "health" in kw:
        kw["health"] = msgspec.convert(kw["health"], HealthSpec)
    return agent(name, command=command, protocol="none", **kw)


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def rounds(sup: Supervisor, n: int) -> None:
    """Until the heartbeat has visited every replica `n` more times."""
    start = sup.heartbeat_work.rounds
    await wait_until_async(lambda: sup.heartbeat_work.rounds >= start + n)


def events_of(sup: Supervisor, name: str) -> list[Transition]:
    seen: list[Transition] = []
    sup.stream.subscribe(lambda e: seen.append(e) if e.name == name else None, Transition)
    return seen


def notes_of(sup: Supervisor, name: str, index: int = 0) -> list[str]:
    """corral's own lines about replica `index` of `name`, as they come."""
    seen: list[str] = []

    def take(e: LogBatch) -> None:
        if e.replica.name == name and e.replica.index == index and e.stream == "corral":
            seen.extend(b.decode() for b in e.lines)

    sup.stream.subscribe(take, LogBatch)
    return seen


@pytest.mark.deadline(60)
async def test_a_plain_sleep_is_ready_at_once_and_stays_up_its_pid_stable(
        sup: Supervisor) -> None:
    sup.add(plain("plain", ["sleep", "1000"], start_timeout=1.0))
    r = await sup.wait_state("plain", State.READY, timeout=10)
    assert isinstance(r, PlainReplica) and r.reason == "started"
    pid = r.pid
    # 15 heartbeats of 0.1 s: past its start_timeout; no handshake awaited, no ping sent
    await rounds(sup, 15)
    st = r.status()
    assert (st.state, st.pid, st.restarts, st.last_exit, st.ready) == (
        State.READY, pid, 0, None, True)
    assert psutil.Process(pid).cmdline() == ["sleep", "1000"]
    assert sup.heartbeat_work.pings == 0
    assert not r.takes_tasks
    # its life's socket goes with the life
    assert r.notify is not None
    path = r.notify.path
    assert psutil.Process(pid).environ()["NOTIFY_SOCKET"] == path and os.path.exists(path)
    await r.stop()
    assert r.notify is None and not os.path.exists(path)


@pytest.mark.deadline(60)
async def test_killed_it_restarts_with_backoff_and_the_exit_named_then_gives_up(
        sup: Supervisor) -> None:
    seen = events_of(sup, "plain")
    sup.add(plain("plain", ["sleep", "1000"], restart="always", max_restarts=2,
                  backoff_initial=0.2))
    r = await sup.wait_state("plain", State.READY, timeout=10)
    for n in (1, 2):
        first = r.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await sup.wait_event(lambda e: e.state == State.BACKOFF, 10)
        # the backoff (equal jitter: half backoff_initial and up), the exit named
        delay, said = seen[-1].reason.removeprefix("restarting in ").split(" s after: ")
        assert 0.1 <= float(delay) <= 0.4 and said == "killed by SIGKILL"
        await sup.wait_state("plain", State.READY, timeout=10)
        assert r.pid != first and r.restarts == n
    os.kill(r.pid or 0, signal.SIGKILL)
    await sup.wait_state("plain", State.FAILED, timeout=10)
    assert r.reason == ("too many restarts (2 within 60 s); last exit: killed by SIGKILL")
    assert r.status().ready is False


@pytest.mark.deadline(60)
async def test_the_stop_is_sigterm_to_the_group_not_a_closed_stdin(
        sup: Supervisor, tmp_path: Path) -> None:
    # a program that ignores its stdin's EOF and exits on SIGTERM, saying so
    said, armed = tmp_path / "said", tmp_path / "armed"
    sh = script(tmp_path, "term.sh", f"trap 'echo term > {said}; exit 0' TERM\n"
                                     f"cat >/dev/null\ntouch {armed}\n"
                                     "while :; do sleep 0.05; done\n")
    sup.add(plain("plain", ["sh", sh], stop_timeout=10.0))
    r = await sup.wait_state("plain", State.READY, timeout=10)
    await wait_until_async(armed.exists)  # its stdin at EOF: cat is done
    loop = asyncio.get_running_loop()
    began = loop.time()
    await r.stop()
    assert said.read_text() == "term\n"
    # asked at once, not after stop_timeout: no escalation named in the reason
    assert (r.state, r.last_exit) == (State.TERMINATED, "stopped")
    assert loop.time() - began < 5


@pytest.mark.deadline(60)
async def test_a_grandchild_that_double_forks_is_killed_with_it(
        sup: Supervisor, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    sh = script(tmp_path, "fork.sh",
                f"(setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; "
                "exec sleep 1000' &)\nexec sleep 1000\n")
    sup.add(plain("plain", ["sh", sh], restart="never"))
    r = await sup.wait_state("plain", State.READY, timeout=10)
    await wait_until_async(pidfile.exists)
    grandchild = psutil.Process(int(pidfile.read_text()))
    assert grandchild.ppid() != r.pid and os.getsid(grandchild.pid) != os.getsid(r.pid or 0)
    os.kill(r.pid or 0, signal.SIGKILL)
    await sup.wait_state("plain", State.TERMINATED, timeout=10)
    await asyncio.to_thread(grandchild.wait, 10)
    assert not grandchild.is_running()


@pytest.mark.deadline(60)
async def test_ready_by_a_tcp_check_only_once_the_port_answers(
        sup: Supervisor, tmp_path: Path) -> None:
    port, go = free_port(), tmp_path / "go"
    server = script(tmp_path, "serve.py", SERVE_WHEN)
    sup.add(plain("plain", [PY, server, str(port), str(go)], cwd=str(tmp_path),
                  health={"readiness": {"tcp": f"127.0.0.1:{port}", "interval": 0.1,
                                        "timeout": 1.0}}))
    r = await sup.wait_state("plain", State.READY, timeout=10)
    await wait_until_async(lambda: "refused" in (r.status().health or ""))
    st = r.status()
    assert st.ready is False
    assert st.health == (f'readiness check "tcp 127.0.0.1:{port}" not passed yet: connect '
                         f"to 127.0.0.1:{port}: Connection refused")
    go.touch()
    await sup.wait_for(lambda: r.status().ready is True, 20)
    assert r.status().health is None


@pytest.mark.deadline(60)
async def test_ready_by_an_http_check_only_once_its_get_answers_2xx(
        sup: Supervisor, tmp_path: Path) -> None:
    port, go = free_port(), tmp_path / "go"
    server = script(tmp_path, "serve.py", SERVE_WHEN)
    check = {"interval": 0.1, "timeout": 1.0, "failures": 1}
    sup.add(plain("plain", [PY, server, str(port), str(go)], cwd=str(tmp_path), health={
        "readiness": {"http": f"http://127.0.0.1:{port}/", **check},
        # a 404 fails: a liveness check on a missing page, with its recovery an event
        "liveness": {"http": f"http://127.0.0.1:{port}/missing", "recovery": "event",
                     **check}}))
    r = await sup.wait_state("plain", State.READY, timeout=10)
    assert r.status().ready is False
    go.touch()
    await sup.wait_for(lambda: r.status().ready is True, 20)
    await wait_until_async(lambda: "404" in (r.status().health or ""))
    assert r.status().health == (f'liveness check "http http://127.0.0.1:{port}/missing" '
                                 f"failed: GET http://127.0.0.1:{port}/missing: 404 File not "
                                 "found")
    assert r.state == State.READY  # an event only: still up, still ready


@pytest.mark.deadline(60)
async def test_ready_by_notify_only_after_ready_1_and_its_status_shown(
        sup: Supervisor, tmp_path: Path) -> None:
    go = tmp_path / "go"
    prog = script(tmp_path, "notify.py", NOTIFIER)
    sup.add(plain("plain", [PY, prog, str(go), "once"], ready="notify"))
    r = sup.agent("plain").replicas[0]
    assert isinstance(r, PlainReplica)
    await wait_until_async(lambda: r.status_text == "warming up")
    st = r.status()
    assert (st.state, st.ready, st.status_text) == (State.STARTING, False, "warming up")
    go.touch()
    await sup.wait_state("plain", State.READY, timeout=10)
    st = r.status()
    assert (st.ready, st.status_text, r.reason) == (True, "serving", "READY=1: serving")


@pytest.mark.deadline(60)
async def test_no_ready_1_within_start_timeout_is_a_start_timeout_named(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = events_of(sup, "plain")
    sup.add(plain("plain", ["sleep", "1000"], ready="notify", start_timeout=0.5,
                  restart="never"))
    await sup.wait_state("plain", State.TERMINATED, timeout=10)
    down = next(e for e in seen if e.state == State.SHUTTING_DOWN)
    assert (down.cause, down.reason) == (
        Cause.HANG, 'start timeout: no READY=1 on $NOTIFY_SOCKET within 0.5 s (ready = '
                    '"notify")')


@pytest.mark.deadline(60)
async def test_a_missed_watchdog_restarts_it_as_hung_with_the_cause_named(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = events_of(sup, "plain")
    go = tmp_path / "go"
    go.touch()
    prog = script(tmp_path, "notify.py", NOTIFIER)
    sup.add(plain("plain", [PY, prog, str(go), "feed"], ready="notify", watchdog_sec=0.5))
    r = await sup.wait_state("plain", State.READY, timeout=10)
    pid = r.pid
    # fed every 0.1 s: well past watchdog_sec, still up, the same process
    await rounds(sup, 20)
    assert (r.state, r.pid, r.restarts) == (State.READY, pid, 0)
    Path(f"{go}.stop").touch()
    await wait_until_async(Path(f"{go}.stopped").exists)
    await sup.wait_event(lambda e: e.state == State.SHUTTING_DOWN, 10)
    down = seen[-1]
    assert (down.cause, down.reason, down.pid) == (
        Cause.HANG, "hung: no WATCHDOG=1 on $NOTIFY_SOCKET for 0.5 s (watchdog_sec)", pid)
    await sup.wait_event(lambda e: e.state == State.READY, 10)
    assert r.restarts == 1 and r.pid != pid
    assert r.last_exit == "hung: no WATCHDOG=1 on $NOTIFY_SOCKET for 0.5 s (watchdog_sec)"


@pytest.mark.deadline(60)
async def test_a_replica_cannot_send_ready_for_another(
        sup: Supervisor, tmp_path: Path) -> None:
    target = tmp_path / "target"
    prog = script(tmp_path, "sibling.py", SIBLING)
    notes = notes_of(sup, "plain", 0)
    sup.add(plain("plain", [PY, prog, str(target)], replicas=2, ready="notify",
                  start_timeout=60.0))
    r0, r1 = sup.agent("plain").replicas
    assert isinstance(r0, PlainReplica) and isinstance(r1, PlainReplica)
    await wait_until_async(lambda: r0.pid is not None and r0.notify is not None)
    assert r0.notify is not None and r1.notify is not None
    assert r0.notify.path != r1.notify.path
    assert os.stat(r0.notify.path).st_mode & 0o777 == 0o600
    target.write_text(r0.notify.path)
    await sup.wait_state("plain", State.READY, replica=1, timeout=10)
    await wait_until_async(lambda: bool(notes))
    assert notes[0].startswith("refused a message on $NOTIFY_SOCKET from pid ")
    assert notes[0].endswith(": not this replica's process nor one of its descendants")
    assert r1.pid is not None and f" pid {r1.pid}:" in notes[0]
    # nor may any other process (this test's own) speak for it
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1\nSTATUS=forged", r0.notify.path)
    await wait_until_async(lambda: len(notes) == 2)
    assert f" pid {os.getpid()}:" in notes[1]
    st0 = r0.status()
    assert (st0.state, st0.ready, st0.status_text) == (State.STARTING, False, None)
    assert r1.status().status_text == "ready for someone"


def test_what_a_plain_program_cannot_have_is_refused_with_the_reason() -> None:
    def refusal(table: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as e:
            parse_agents({"agents": {"p": {"command": "sleep 1", **table}}}, "f.toml")
        return str(e.value)

    none = {"protocol": "none"}
    assert refusal({**none, "autoscale": {"max_replicas": 3}}) == (
        'f.toml: agents.p.autoscale: a plain program (protocol = "none") takes no tasks, '
        "and an elastic agent follows its task load: set replicas instead")
    assert refusal({**none, "hibernate_after": 60}) == (
        'f.toml: agents.p.hibernate_after: a plain program (protocol = "none") takes no '
        "tasks, and an elastic agent follows its task load: set replicas instead")
    assert refusal({**none, "warm": True}) == (
        'f.toml: agents.p.warm: a plain program (protocol = "none") starts cold (a warm '
        "start forks a Python worker from a zygote that has imported the worker SDK)")
    assert refusal({**none, "health": {"liveness": {"check": "db"}}}) == (
        'f.toml: agents.p.health.liveness: a plain program (protocol = "none") answers no '
        "health/check: give command, tcp or http")
    assert refusal({**none, "health": {"readiness": {}}}) == (
        'f.toml: agents.p.health.readiness: a plain program (protocol = "none") answers no '
        "health/check: give command, tcp or http")
    cluster = ('placement: a plain program (protocol = "none") runs on this node (a cluster '
               "places agents for their tasks)")
    assert refusal({**none, "placement": "cluster"}) == f"f.toml: agents.p.{cluster}"
    # `corral add --cluster` asks the same of a table parsed as local
    local = parse_agents({"agents": {"p": {"command": "sleep 1", **none}}}, "f")["p"]
    assert cluster_problem(msgspec.structs.replace(local, placement="cluster"), True
                           ) == cluster
    assert refusal({"ready": "notify"}) == (
        'f.toml: agents.p.ready: is for protocol = "none" (a worker is ready when it '
        "answers initialize)")
    assert refusal({"watchdog_sec": 5}) == (
        'f.toml: agents.p.watchdog_sec: is for protocol = "none" (a worker is watched by '
        "the heartbeat: heartbeat_timeout)")
    assert refusal({**none, "ready": "soon"}) == (
        "f.toml: agents.p.ready: Invalid enum value 'soon' (valid: 'notify', 'started')")
    assert refusal({"health": {"readiness": {"tcp": "localhost"}}}) == (
        "f.toml: agents.p.health.readiness.tcp: 'localhost' is not \"HOST:PORT\" (a port "
        "of 1-65535)")
    assert refusal({"health": {"readiness": {"http": "localhost:80/"}}}) == (
        "f.toml: agents.p.health.readiness.http: 'localhost:80/' is not an http:// or "
        "https:// URL")
    assert refusal({"health": {"readiness": {"tcp": "h:1", "command": ["true"]}}}) == (
        "f.toml: agents.p.health.readiness: give either command or tcp, not both")
    assert refusal({"health": {"liveness": {"check": "x", "tcp": "h:1", "http": "http://h"}}}
                   ) == ("f.toml: agents.p.health.liveness: give one of check (the worker's), "
                         "command, tcp or http, not check (the worker's), tcp and http")
    # the keys a plain program may have
    ok = parse_agents({"agents": {"p": {"command": "sleep 1", **none, "ready": "notify",
                                        "watchdog_sec": 2, "health": {
                                            "readiness": {"http": "http://[::1]:8080/"},
                                            "liveness": {"tcp": "[::1]:8080"}}}}}, "f")
    assert ok["p"].protocol == "none" and ok["p"].ready == "notify"


def test_a_tcp_check_of_an_agent_with_its_own_network_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(textwrap.dedent("""
        [agents.p]
        command = "sleep 1"
        protocol = "none"
        sandbox = "bwrap"
        network = "none"
        health.readiness.tcp = "127.0.0.1:8080"
    """))
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert str(e.value) == (
        f"{config}: agents.p.health.readiness.tcp: connects from the host, which cannot "
        "reach the agent's own network (network = \"none\"): use a command check")


LOGGER = """
[agents.plain]
command = ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exec sleep 1000"]
protocol = "none"
"""


@pytest.mark.deadline(120)
async def test_its_stdout_and_stderr_are_its_log_each_line_marked_and_tasks_refused(
        tmp_path: Path) -> None:
    async with serving(tmp_path, LOGGER) as api:
        d = api.d
        log = tmp_path / "state" / "logs" / "plain.log"
        await wait_until_async(lambda: log.exists() and "to-stderr" in log.read_text())
        pid = d.sup.agent("plain").replicas[0].pid
        # in its file and in `corral logs`, each line marked by its stream
        for text in (log.read_text(), (await cli(d, "logs", "plain", "-n", "10"))[1]):
            ours = [line.split(" ", 1)[1] for line in text.splitlines()
                    if line.endswith(("to-stdout", "to-stderr"))]
            assert ours == [f"plain#0[{pid}] stdout: to-stdout",
                            f"plain#0[{pid}] stderr: to-stderr"] or ours == [
                f"plain#0[{pid}] stderr: to-stderr", f"plain#0[{pid}] stdout: to-stdout"]

        # a task: refused with the reason, on the socket and over HTTP alike
        rc, out, err = await cli(d, "run", "plain", "--input", "{}")
        assert (rc, err) == (1, f"corral: {REFUSAL}\n"), (out, err)
        await api.token("op", "tasks:run", "agents:read")
        status, body, _ = await api.ask("POST", "/tasks", "op",
                                        {"agent": "plain", "input": {}})
        assert (status, body) == (409, problem(409, "conflict", REFUSAL, jsonrpc.CONFLICT))
        assert d.sup.tasks.stats()["agents"]["plain"]["refused"] == 2


NOTIFY_STATUS = """
[agents.plain]
command = ["{py}", "{prog}", "{go}", "once"]
protocol = "none"
ready = "notify"
"""


@pytest.mark.deadline(120)
async def test_corral_add_protocol_none_from_the_cli_and_status_shows_its_status(
        tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.touch()
    prog = script(tmp_path, "notify.py", NOTIFIER)
    async with in_process(tmp_path, NOTIFY_STATUS.format(py=PY, prog=prog, go=go)) as d:
        sup = d.sup
        rc, out, err = await cli(d, "status", "plain")
        assert rc == 0, err
        assert out.splitlines()[1].endswith("status: serving")

        rc, out, err = await cli(d, "add", "--name", "sleeper", "--protocol", "none",
                                 "--command", "sleep 1000")
        assert (rc, out, err) == (0, "added: sleeper\n", "")
        r = await sup.wait_state("sleeper", State.READY, timeout=10)
        pid = r.pid
        await rounds(sup, 10)
        assert (r.state, r.pid, r.restarts, r.spec.protocol) == (State.READY, pid, 0,
                                                                 "none")
        # describe says it takes no tasks, not a task policy that does nothing
        rc, out, err = await cli(d, "describe", "sleeper")
        assert rc == 0, err
        assert 'tasks: none (protocol = "none": a plain program takes no tasks)' in (
            out.splitlines())
        rc, out, err = await cli(d, "add", "--name", "x", "--protocol", "nope",
                                 "--command", "sleep 1")
        assert rc == 2 and "'nope' is not one of 'corral', 'none'" in err


@pytest.mark.deadline(60)
@pytest.mark.skipif(sandbox_refusal(None) is not None,
                    reason=f"no sandbox here: {sandbox_refusal(None)}")
async def test_a_sandboxed_program_without_a_network_is_heard_on_its_socket(
        sup: Supervisor, tmp_path: Path) -> None:
    # its socket is bound into the sandbox; its pid there is another, the kernel's
    # credentials say which it is here
    go = tmp_path / "go"
    go.touch()
    prog = script(tmp_path, "notify.py", NOTIFIER)
    sup.add(plain("plain", [PY, prog, str(go), "once"], ready="notify", cwd=str(tmp_path),
                  sandbox="bwrap", network="none"))
    r = await sup.wait_state("plain", State.READY, timeout=20)
    st = r.status()
    assert (st.ready, st.status_text, r.reason) == (True, "serving", "READY=1: serving")


@pytest.mark.deadline(60)
async def test_a_rolling_replacement_turns_a_worker_into_a_plain_program_and_rolls_it(
        sup: Supervisor) -> None:
    a = sup.add(agent("roll", replicas=2))  # a worker (examples/hello.py)
    for i in (0, 1):
        await sup.wait_state("roll", State.READY, replica=i, timeout=30)
    workers = [r.pid for r in a.replicas]
    # a reload's change of protocol: each replica replaced by a plain one, serving first
    await a.roll(plain("roll", ["sleep", "1000"], replicas=2))
    assert all(isinstance(r, PlainReplica) and r.state == State.READY for r in a.replicas)
    assert a.spec.protocol == "none"
    plains = [r.pid for r in a.replicas]
    assert not set(plains) & set(workers)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                   for p in workers if p is not None)
    # and a plain agent rolls as any: new processes, none restarted
    await a.roll()
    assert all(r.state == State.READY and r.restarts == 0 for r in a.replicas)
    assert not {r.pid for r in a.replicas} & set(plains)
    with pytest.raises(RpcError) as e:
        sup.tasks.submit("roll", {})
    assert (e.value.code, e.value.message) == (
        jsonrpc.CONFLICT, REFUSAL.replace("agent plain", "agent roll"))


@pytest.mark.deadline(60)
@pytest.mark.skipif(nobody_reason() is not None, reason=str(nobody_reason()))
async def test_as_its_user_under_its_caps_it_is_heard_on_a_socket_of_its_own(
        sup: Supervisor) -> None:
    home = shared_tmpdir()
    try:
        go = home / "go"
        go.touch()
        prog = script(home, "notify.py", NOTIFIER)
        (home / "notify.py").chmod(0o644)
        lines: list[str] = []
        sup.stream.subscribe(lambda e: lines.extend(b.decode() for b in e.lines)
                             if e.stream == "stdout" else None, LogBatch)
        sup.add(plain("plain", ["sh", "-c", f'ulimit -n; exec {NOBODY_PY} "$@"', "sh", prog,
                                str(go), "once"], ready="notify", user="nobody",
                      cwd=str(home), limits=Limits(open_files=77)))
        r = await sup.wait_state("plain", State.READY, timeout=20)
        assert isinstance(r, PlainReplica) and r.notify is not None
        nobody = pwd.getpwnam("nobody").pw_uid
        assert psutil.Process(r.pid).uids().real == nobody
        # its socket is its user's alone, in a directory nobody else may list
        st = os.stat(r.notify.path)
        assert (st.st_uid, st.st_mode & 0o777) == (nobody, 0o600)
        assert os.stat(os.path.dirname(r.notify.path)).st_mode & 0o777 == 0o711
        assert r.status().status_text == "serving" and lines == ["77"]
    finally:
        shutil.rmtree(home, ignore_errors=True)


def served_package(where: Path, version: str, port: int, *, listens: bool) -> Path:
    """An agent package of a plain program: an http.server, or one that never listens."""
    where.mkdir(parents=True)
    (where / "corral.toml").write_text(textwrap.dedent(f"""\
        [agent]
        name = "site"
        version = "{version}"
        command = ["python", "serve.py"]
        protocol = "none"
        healthy_deadline = 3.0
        [agent.health.readiness]
        http = "http://127.0.0.1:{port}/"
        interval = 0.1
        timeout = 1.0
        failures = 1
        """))
    (where / "requirements.txt").write_text("")
    serve = (f"import http.server\nhttp.server.ThreadingHTTPServer(('127.0.0.1', {port}), "
             "http.server.SimpleHTTPRequestHandler).serve_forever()\n")
    (where / "serve.py").write_text(serve if listens else "import time\ntime.sleep(1000)\n")
    return where


@pytest.mark.deadline(180)
async def test_a_plain_package_is_deployed_and_one_that_never_answers_is_refused(
        tmp_path: Path) -> None:
    from corral.daemon.caller import Caller

    port, cache = free_port(), tmp_path / "uv-cache"
    silent = free_port()
    v1 = served_package(tmp_path / "v1", "1.0", port, listens=True)
    v2 = served_package(tmp_path / "v2", "2.0", silent, listens=False)
    packages = f'\n[packages]\ncache_dir = "{cache}"\nmin_free_mb = 0\n'
    async with in_process(tmp_path, "", packages) as d:
        via = Caller(via="socket")
        await d.dispatcher.call(via, "packages.deploy", {"path": str(v1), "name": None})
        r = d.sup.agent("site").replicas[0]
        assert isinstance(r, PlainReplica) and r.status().ready is True
        pid = r.pid
        with pytest.raises(RpcError) as e:
            await d.dispatcher.call(via, "packages.deploy", {"path": str(v2), "name": None})
        assert e.value.message.endswith(
            "did not become ready: not ready within 3 s: readiness check "
            f'"http http://127.0.0.1:{silent}/" failed: GET http://127.0.0.1:{silent}/: '
            "Connection refused; the running processes keep serving"), e.value.message
        assert d.sup.agent("site").replicas[0].pid == pid
