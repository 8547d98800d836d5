"""End to end through the CLI against a real daemon process."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from corral.cli.install import quoted

from .conftest import EXAMPLES, ROOT, nobody_reason
from .daemon_harness import PY, Daemon, corral_popen, corral_run, hello, shared_tmpdir

# seconds a wait for an event may take on a loaded 2-core host, as the contract suite's
# PATIENCE: a wait ends when its event comes, so the bound costs a passing run nothing,
# where 15 s was short for what a wait may wait on (a process's start, a CLI's, a beat)
# with five workers and a busy loop per core on the two cores
WAIT = 60.0


def wait_until(fn: Callable[[], Any], timeout: float = WAIT, what: str = "condition",
               every: float = 0.05) -> Any:
    """`fn()`'s first true value, looked at `every` seconds; a look that costs the daemon
    much (a read of hundreds of agents) can be made less often where a later look still
    sees what an earlier one would have (a counter)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


# drop root's supplementary groups too, or group 0 would still open a 0660 root socket
AS_NOBODY: dict[str, Any] = {"user": "nobody", "group": "nogroup", "extra_groups": []}


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def serving(tmp: Path) -> Iterator[Daemon]:
    """A daemon of two agents; stopped cleanly after, its agents gone with it."""
    d = Daemon(tmp, hello("hello") + hello("other"))
    d.start()
    pids = [a["pid"] for a in d.status().values()]
    yield d
    try:
        if d.proc and d.proc.poll() is None:
            assert d.stop() == 0
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        d.close()


@pytest.fixture
def daemon(tmp: Path) -> Iterator[Daemon]:
    with serving(tmp) as d:
        yield d


@pytest.fixture(scope="module")
def unchanged() -> Iterator[Daemon]:
    """`daemon`'s daemon, one for the module's tests that leave it as they found it (they
    read it, or are refused, and restart, stop or add nothing), each of them a daemon's
    start less."""
    tmp = shared_tmpdir()
    try:
        with serving(tmp) as d:
            yield d
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- reading ------------------------------------------------------------------------------
def test_status_json_and_table(unchanged: Daemon) -> None:
    st = unchanged.json("status")
    assert set(st) == {"agents", "mcp_servers", "tasks", "elastic", "cluster_slots",
                       "cluster_replicas", "notices"}
    assert st["elastic"] == {}  # no agent here has [autoscale] or hibernate_after
    assert st["cluster_slots"] == st["cluster_replicas"] == {}  # not a node of a cluster
    assert st["notices"] == []  # nothing wrong with the daemon itself (no drain, no extra)
    a = st["agents"][0]
    for key in ("name", "replica", "state", "pid", "uptime", "restarts", "last_exit",
                "cpu_percent", "rss_bytes"):
        assert key in a
    assert [(x["name"], x["state"]) for x in st["agents"]] == [("hello", "ready"),
                                                                ("other", "ready")]
    table = unchanged.cli("status", "hello")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["AGENT", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS",
                                "REASON"]
    assert lines[1].split()[:2] == ["hello#0", "ready"]


def test_unknown_agent_and_usage_errors(unchanged: Daemon) -> None:
    r = unchanged.cli("status", "nope")
    assert (r.returncode, r.stderr) == (1, "corral: no such agent: nope (agents: hello, "
                                           "other)\n")
    r = unchanged.cli("restart", "helo")
    assert (r.returncode, r.stderr) == (1, "corral: no such agent: helo (did you mean "
                                           "`hello`?)\n")
    r = unchanged.cli("stop")
    assert r.returncode == 2 and "name at least one agent (NAME or NAME#N), or all" in r.stderr
    for narrowed in (["--tenant", "default"], ["--cluster"]):  # a stream names agents
        r = unchanged.cli("status", "--watch", *narrowed)
        assert r.returncode == 2 and ("Error: --tenant or --cluster and --watch: name the "
                                      "agents to watch instead\n") in r.stderr, narrowed
    for bad in ("-1", "four", "1.5"):
        r = unchanged.cli("scale", "hello", bad)
        assert r.returncode == 2
        assert r.stderr.endswith(f"Error: replicas must be a whole number ≥ 0, not '{bad}'\n")
    r = unchanged.cli("stop", "hello", "nope")  # nothing is stopped when one name is wrong
    assert r.returncode == 1
    assert unchanged.status()["hello#0"]["state"] == "ready"


def test_unreachable_daemon_exits_3_and_says_how_to_start(tmp: Path) -> None:
    r = corral_run(["--socket", str(tmp / "none.sock"), "status"],
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 3
    assert r.stderr.startswith(f"corral: cannot reach the corral daemon at {tmp}/none.sock: "
                               "no socket there\nstart it with `corral daemon --config PATH`")


def test_stats(unchanged: Daemon) -> None:
    s = unchanged.json("stats")
    assert s["supervisor"]["active"] == 2 and s["supervisor"]["spawned"] == 2
    assert s["agents"]["hello"]["serving"] == 1


# -- changing -----------------------------------------------------------------------------
def test_stop_start_restart_all(daemon: Daemon) -> None:
    pid = daemon.status()["hello#0"]["pid"]
    assert daemon.cli("stop", "hello").stdout == "stopped: hello\n"
    st = daemon.status()["hello#0"]
    assert (st["state"], st["pid"], st["last_exit"]) == ("terminated", None, "stopped")
    assert not psutil.pid_exists(pid)
    assert daemon.cli("start", "hello").returncode == 0
    wait_until(lambda: daemon.status()["hello#0"]["state"] == "ready", what="ready")
    assert daemon.cli("restart", "--all").stdout == "restarted: hello, other\n"
    assert daemon.cli("stop", "--all").returncode == 0
    assert {a["state"] for a in daemon.status().values()} == {"terminated"}


def test_add_from_file_and_flags_remove_scale(daemon: Daemon, tmp: Path) -> None:
    f = tmp / "more.toml"
    f.write_text(hello("extra", replicas=2))
    r = daemon.cli("add", str(f))
    assert (r.returncode, r.stdout) == (0, "added: extra\n")
    r = daemon.cli("add", str(f))
    assert (r.returncode, r.stderr) == (1, "corral: agent extra already exists\n")
    r = daemon.cli("add", "--name", "flagged", "--command",
                   shlex.join([PY, f"{EXAMPLES}/hello.py"]), "--env", f"PYTHONPATH={ROOT}")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: daemon.status().get("flagged#0", {}).get("state") == "ready")
    assert daemon.cli("scale", "extra", "3").stdout == "extra: 3 replicas\n"
    wait_until(lambda: all(daemon.status().get(f"extra#{i}", {}).get("state") == "ready"
                           for i in range(3)), what="3 replicas")
    assert daemon.cli("remove", "extra", "flagged").stdout == "removed: extra, flagged\n"
    assert sorted(daemon.status()) == ["hello#0", "other#0"]


def test_add_invalid_spec_names_the_key(daemon: Daemon, tmp: Path) -> None:
    f = tmp / "bad.toml"
    f.write_text('[agents.bad]\ncommand = ["true"]\nreplicas = "two"\n')
    r = daemon.cli("add", str(f))
    assert r.returncode == 1
    assert r.stderr == ("corral: agents.add: agents.bad.replicas: Expected `int`, got `str`\n")
    f.write_text('[agents.bad]\ncommand = ["true"]\nreplicaz = 2\n')
    r = daemon.cli("add", str(f))
    assert r.stderr == ("corral: agents.add: agents.bad: Object contains unknown field "
                        "`replicaz` (did you mean `replicas`?)\n")
    f.write_text('[agents.bad]\ncommand = ["true"]\nreplicas = = 2\n')
    r = daemon.cli("add", str(f))
    assert r.returncode == 1
    assert r.stderr == f"corral: {f}: syntax error: Invalid value (at line 3, column 12)\n"
    assert "bad#0" not in daemon.status()


def test_runtime_agents_survive_a_daemon_restart_and_audit(daemon: Daemon, tmp: Path) -> None:
    f = tmp / "more.toml"
    f.write_text(hello("kept"))
    assert daemon.cli("add", str(f)).returncode == 0
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.status()["kept#0"]["state"] == "ready"
    import sqlite3

    db = sqlite3.connect(daemon.state / "corral.db")
    rows = db.execute("SELECT uid, pid, method, outcome FROM audit").fetchall()
    assert rows[0][0] == os.geteuid() and rows[0][1] > 0
    assert rows[0][2:] == ("agents.add", "ok")
    log = (daemon.state / "logs" / "corral.log").read_text()
    assert f"audit: uid {os.geteuid()} pid {rows[0][1]}: agents.add" in log


# -- logs ---------------------------------------------------------------------------------
CHATTY = """
import sys, time
from corral.worker import run

def handle(task, ctx):
    return task

n = int(sys.argv[1]) if len(sys.argv) > 1 else 0
for i in range(n):
    print(f"line {i}", file=sys.stderr)
sys.stderr.flush()
if len(sys.argv) > 2 and sys.argv[2] == "crash":
    sys.stderr.write("last words")  # no newline: the tail of a crash
    sys.stderr.flush()
    raise SystemExit(9)
run(handle)
"""


def chatty(tmp: Path, name: str, n: int, crash: bool = False, extra: str = "",
           restart: str = "never") -> str:
    script = tmp / "chatty.py"
    script.write_text(CHATTY)
    args = f'"{n}", "crash"' if crash else f'"{n}"'
    return (f'[agents.{name}]\ncommand = ["{PY}", "{script}", {args}]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\nrestart = "{restart}"\n{extra}\n')


def test_no_line_lost_before_a_crash(tmp: Path) -> None:
    d = Daemon(tmp, chatty(tmp, "dying", 5000, crash=True))
    try:
        d.start()
        wait_until(lambda: d.status()["dying#0"]["state"] == "terminated")
        text = (d.state / "logs" / "dying.log").read_text().splitlines()
        lines = [t.split(" stderr: ", 1)[1] for t in text if " stderr: " in t]
        assert lines == [f"line {i}" for i in range(5000)] + ["last words"]
        assert d.status()["dying#0"]["last_exit"] == "exited with status 9: last words"
        r = d.cli("logs", "dying", "-n", "2")
        last_two = r.stdout.splitlines()
        assert last_two[0].endswith(" stderr: last words")
        assert last_two[1].endswith(
            " event: starting -> terminated: exited with status 9: last words")
        assert d.stop() == 0
    finally:
        d.close()


def test_logs_tail_since_and_json(unchanged: Daemon) -> None:
    r = unchanged.cli("logs", "hello", "-n", "1", "--json")
    line = json.loads(r.stdout)
    assert line["source"] == "hello" and line["stream"] == "event"
    assert line["text"] == "starting -> ready: initialized"
    assert unchanged.cli("logs", "--since", "1h", "-n", "100").stdout.count("\n") >= 4
    assert unchanged.cli("logs", "--since", "yesterday-ish").returncode == 2


def test_logs_follow_across_restart_and_rotation(tmp: Path) -> None:
    d = Daemon(tmp, chatty(tmp, "talker", 300, restart="always", extra="backoff_initial = 0.05"),
               extra="log_max_bytes = 4096\nlog_backups = 2")
    try:
        d.start()
        f = corral_popen(["--socket", str(d.sock), "logs", "talker",
                          "-f", "-n", "0"], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert f.stdout is not None
        # wait until the follower is attached: the daemon counts followers in daemon.info
        wait_until(lambda: d.ask("daemon.info")["followers"] == 1)
        pid = d.status()["talker#0"]["pid"]
        os.kill(pid, signal.SIGKILL)
        seen = []
        for line in f.stdout:  # until the new process is ready
            seen.append(line)
            if "starting -> ready" in line:
                break
        text = "".join(seen)
        assert f"talker#0[{pid}] event: ready -> terminated: killed by SIGKILL" in text
        assert "terminated -> backoff" in text and "starting -> ready" in text
        assert "stderr: line 0" in text
        f.kill()
        f.wait()
        logs = sorted(p.name for p in (d.state / "logs").iterdir())
        assert "talker.log.1" in logs and "talker.log.2" in logs
        assert d.stop() == 0
    finally:
        d.close()


GATED_FLOOD = """
import sys, threading
from corral.worker import run

def flood():
    open(sys.argv[1]).close()  # blocks until the test opens the FIFO for writing
    for i in range(200_000):
        print(f"line {i}", file=sys.stderr)
    sys.stderr.flush()

threading.Thread(target=flood).start()
run(lambda task, ctx: task)
"""


def test_slow_follower_is_told_what_it_missed(tmp: Path) -> None:
    gate = tmp / "gate"
    os.mkfifo(gate)
    script = tmp / "gated.py"
    script.write_text(GATED_FLOOD)
    d = Daemon(tmp, f'[agents.flood]\ncommand = ["{PY}", "{script}", "{gate}"]\n'
                    f'env = {{ PYTHONPATH = "{ROOT}" }}\n', extra="log_max_bytes = 100000000")
    try:
        d.start()
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(str(d.sock))
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"logs.follow","params":'
                  b'{"names":["flood"],"lines":0}}\n')
        wait_until(lambda: d.ask("daemon.info")["followers"] == 1)
        with open(gate, "w"):
            pass  # let the flood begin
        # do not read until the worker has written everything
        wait_until(lambda: d.ask("stats.get")["supervisor"]["log_lines"] >= 200_003,
                   what="the flood to be logged")
        buf = b""
        s.settimeout(10)
        missed = 0
        got = 0
        while got + missed < 200_000:
            chunk = s.recv(1 << 20)
            assert chunk
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                msg = msgspec.json.decode(raw)
                if msg["method"] == "logs.missed":
                    missed += msg["params"]["count"]
                elif msg["method"] == "logs.lines":
                    got += sum(1 for ln in msg["params"]["lines"] if ln[4] == "stderr")
        assert missed > 0 and got + missed == 200_000
        s.close()
        # the worker was not slowed down, and the daemon serves others meanwhile
        assert d.status()["flood#0"]["state"] == "ready"
        assert d.stop() == 0
    finally:
        d.close()


def test_client_disconnecting_mid_follow(daemon: Daemon) -> None:
    f = corral_popen(["--socket", str(daemon.sock), "logs", "-f"],
                     stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wait_until(lambda: daemon.ask("daemon.info")["followers"] == 1)
    f.kill()
    f.wait()
    wait_until(lambda: daemon.ask("daemon.info")["followers"] == 0)
    assert daemon.cli("restart", "hello").returncode == 0


# -- the socket -----------------------------------------------------------------------------
def raw(daemon: Daemon, data: bytes, n: int = 1) -> list[dict[str, Any]]:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.sock))
    s.settimeout(10)
    s.sendall(data)
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return [msgspec.json.decode(x) for x in buf.split(b"\n") if x]


def test_malformed_unknown_and_ill_typed_requests(unchanged: Daemon) -> None:
    replies = raw(unchanged, b'{not json\n{"jsonrpc":"2.0","id":1,"method":"no.such"}\n'
                          b'{"jsonrpc":"2.0","id":2,"method":"agents.scale","params":'
                          b'{"name":"hello","replicas":"x"}}\n'
                          b'{"jsonrpc":"2.0","id":3,"method":"agents.status","params":'
                          b'{"bogus":1}}\n', 4)
    assert replies[0]["id"] is None and replies[0]["error"]["code"] == -32700
    assert replies[1]["error"] == {"code": -32601, "message": "method not found: no.such"}
    assert replies[2]["error"] == {"code": -32602, "message":
                                   "invalid params: Expected `int`, got `str` - at `$.replicas`"}
    assert replies[3]["error"]["message"] == ("invalid params: Object contains unknown field "
                                              "`bogus`")


def test_a_cancel_naming_an_id_that_is_not_utf8_names_none(daemon: Daemon) -> None:
    """A request.cancel whose id is a string that is not UTF-8 (the envelope's check does
    not look into params) names no request: decoding it raised, which ended the reading
    of that client's requests (decision 840). The line is malformed JSON (JSON is UTF-8),
    answered so (tests/test_invalid_utf8.py)."""
    bad, info = raw(daemon, b'{"jsonrpc":"2.0","method":"request.cancel","params":'
                            b'{"id":"\xff"}}\n{"jsonrpc":"2.0","id":2,"method":"daemon.info"}\n',
                    2)
    assert (bad["id"], bad["error"]["code"]) == (None, -32700), bad
    assert (info["id"], info["result"]["pid"]) == (2, daemon.proc.pid)  # type: ignore[union-attr]
    assert daemon.stop() == 0
    assert [line for line in daemon.said().splitlines()
            if "handler" in line or "Traceback" in line] == []


def test_100mb_request_is_refused_and_the_daemon_lives(unchanged: Daemon) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(unchanged.sock))
    s.settimeout(30)
    chunk = b"x" * (1 << 20)
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"agents.status","params":{"names":["')
    for _ in range(100):
        s.sendall(chunk)
    s.sendall(b'"]}}\n{"jsonrpc":"2.0","id":2,"method":"daemon.info"}\n')
    buf = b""
    while buf.count(b"\n") < 2:
        buf += s.recv(65536)
    s.close()
    first, second = (msgspec.json.decode(x) for x in buf.split(b"\n")[:2])
    assert first["error"]["code"] == -32600
    assert "over the 16842752-byte limit" in first["error"]["message"]
    assert second["id"] == 2 and second["result"]["pid"] == unchanged.proc.pid  # type: ignore[union-attr]
    assert psutil.Process(unchanged.proc.pid).memory_info().rss < 200 * 1024 * 1024  # type: ignore[union-attr]


def test_socket_mode_and_unauthorized_uid(daemon: Daemon) -> None:
    assert stat.S_IMODE(daemon.sock.stat().st_mode) == 0o660
    reason = nobody_reason()
    if reason:
        pytest.skip(reason)
    # 0660: nobody cannot even connect
    r = subprocess.run(["/usr/bin/python3", "-c", f"""
import socket; s = socket.socket(socket.AF_UNIX)
try:
    s.connect({str(daemon.sock)!r})
except PermissionError:
    print("EACCES")
"""], capture_output=True, text=True, **AS_NOBODY)
    assert r.stdout.strip() == "EACCES"
    # with the file mode opened up, the uid check still refuses
    os.chmod(daemon.sock, 0o666)
    r = subprocess.run(["/usr/bin/python3", "-c", f"""
import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(daemon.sock)!r})
try:  # the daemon may have told us off and hung up before we write
    s.sendall(b'{{"jsonrpc":"2.0","id":1,"method":"daemon.shutdown"}}\\n')
except (BrokenPipeError, ConnectionResetError):
    pass
print(s.makefile().readline().strip())
"""], capture_output=True, text=True, **AS_NOBODY)
    reply = json.loads(r.stdout)
    assert reply["error"]["code"] == -32004
    assert reply["error"]["message"].startswith("unauthorized: uid 65534 may not use this socket")
    assert daemon.proc is not None and daemon.proc.poll() is None
    # the MCP gateway's local socket (`corral mcp serve`'s) beside it: the same mode, and
    # its file opened up, each request's peer refused as the control socket refuses it
    mcp = Path(f"{daemon.sock}.mcp")
    assert stat.S_IMODE(mcp.stat().st_mode) == 0o660
    os.chmod(mcp, 0o666)
    r = subprocess.run(["/usr/bin/python3", "-c", f"""
import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(mcp)!r})
s.sendall(b'POST /mcp HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 2\\r\\n'
          b'Connection: close\\r\\n\\r\\n{{}}')
print(s.makefile().read())
"""], capture_output=True, text=True, **AS_NOBODY)
    head, _, body = r.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 401 "), r.stdout
    assert json.loads(body)["error"]["message"] == \
        "unauthorized: uid 65534 may not use this socket"


def test_second_daemon_refuses_and_the_first_keeps_running(unchanged: Daemon) -> None:
    r = corral_run(["daemon", "--config", str(unchanged.config)], timeout=20,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1
    assert r.stderr == (f"corral: another corral daemon (pid {unchanged.proc.pid}) "  # type: ignore[union-attr]
                        f"is running on {unchanged.sock}\n")
    assert unchanged.status()["hello#0"]["state"] == "ready"


def test_stale_socket_is_taken_over(tmp: Path) -> None:
    d = Daemon(tmp, hello("hello"))
    try:
        d.start()
        agent_pid = d.status()["hello#0"]["pid"]
        d.stop(signal.SIGKILL)
        assert d.sock.exists()  # left behind
        psutil.Process(agent_pid).kill()  # the orphan of the killed daemon
        d.start()
        assert d.status()["hello#0"]["state"] == "ready"
        assert d.stop() == 0
    finally:
        d.close()


# -- config and reload ------------------------------------------------------------------
def test_reload_applies_only_the_difference(daemon: Daemon) -> None:
    before = daemon.status()
    daemon.config.write_text(daemon.config.read_text().replace("[agents.other]", "[agents.new]")
                             .replace("replicas = 1\n", "replicas = 2\n", 1))
    r = daemon.cli("reload")
    assert r.stdout == ("KIND   NAME   CHANGE\n"
                        "agent  new    added\n"
                        "agent  other  removed\n"
                        "agent  hello  changed\n"
                        "unchanged: 0 agents, 0 MCP servers\n")
    r = daemon.cli("reload", "--json")  # nothing changed since
    assert json.loads(r.stdout) == {
        "added": [], "removed": [], "changed": [], "unchanged": ["hello", "new"],
        "failed": {}, "mcp_servers": {"added": [], "removed": [], "changed": [],
                                      "unchanged": []}, "gateway": [], "restart_needed": [],
        **{kind: {"added": [], "removed": [], "changed": [], "unchanged": []}
           for kind in ("workflows", "teams", "schedules")}}
    assert daemon.cli("reload").stdout == "nothing changed\nunchanged: 2 agents, 0 MCP servers\n"
    log = (daemon.state / "logs" / "corral.log").read_text()
    assert "event: reloaded: agents added new; agents removed other; agents changed hello\n" \
        in log
    assert log.count("event: reloaded: nothing changed\n") == 2
    after = daemon.status()
    assert "other#0" not in after and "new#0" in after and "hello#1" in after
    # a change of `replicas` alone scales: the running replica is not touched
    assert after["hello#0"]["pid"] == before["hello#0"]["pid"]


def test_reload_names_the_tables_it_cannot_apply(daemon: Daemon) -> None:
    # a new user's trial: [tracing] added and reloaded was taken in silence, and `corral
    # trace` then said to add the table that was there
    daemon.config.write_text(daemon.config.read_text() + "\n[tracing]\nsample = 1.0\n")
    r = daemon.cli("reload")
    assert r.returncode == 0
    assert r.stdout == "nothing changed\nunchanged: 2 agents, 0 MCP servers\n"
    assert r.stderr == ("corral: [tracing] changed in the file: read at start, not applied "
                        "until the daemon restarts (or `corral upgrade`)\n")
    assert json.loads(daemon.cli("reload", "--json").stdout)["restart_needed"] == [
        "[tracing]"]
    r = daemon.cli("trace", "01a209c3-0000-7000-8000-000000000000")
    assert r.returncode == 1
    assert r.stderr == ("corral: tracing is off in this daemon: add a [tracing] table to "
                        "the config (docs/tracing.md); it is read at start: restart the "
                        "daemon or `corral upgrade`\n")


def test_invalid_reload_touches_nothing(daemon: Daemon) -> None:
    before = daemon.status()
    good = daemon.config.read_text()
    daemon.config.write_text(good + "\n[agents.broken]\ncommand = 42\n")
    r = daemon.cli("reload")
    assert r.returncode == 1
    assert r.stderr.startswith(f"corral: reload rejected, nothing changed: {daemon.config}: "
                               "agents.broken.command: Expected `str | array`, got `int`")
    assert {k: v["pid"] for k, v in daemon.status().items()} == {
        k: v["pid"] for k, v in before.items()}
    daemon.config.write_text(good + "\n[agents.broken\n")
    r = daemon.cli("reload")
    assert r.returncode == 1 and "syntax error" in r.stderr and "(at line" in r.stderr
    assert {k: v["pid"] for k, v in daemon.status().items()} == {
        k: v["pid"] for k, v in before.items()}


def test_sighup_reloads_and_sigterm_stops_gracefully(daemon: Daemon) -> None:
    daemon.config.write_text(daemon.config.read_text() + hello("viahup"))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: daemon.status().get("viahup#0", {}).get("state") == "ready")
    # audited as `corral reload` is: the Dispatcher's row, naming the signal
    reloads = [e for e in daemon.json("audit")["entries"] if e["method"] == "config.reload"]
    assert [(e["outcome"], e["who"], e["uid"], e["pid"]) for e in reloads] == [
        ("ok", "signal SIGHUP", os.geteuid(), daemon.proc.pid)]
    assert daemon.json("history", "viahup")["revisions"][0]["who"] == "signal SIGHUP"
    pids = [a["pid"] for a in daemon.status().values()]
    assert daemon.stop(signal.SIGTERM) == 0
    assert not any(psutil.pid_exists(p) for p in pids)
    log = (daemon.state / "logs" / "hello.log").read_text()
    assert "shutting_down: supervisor shutting down" in log


def test_sigint_stops_gracefully_and_the_process_is_titled(daemon: Daemon) -> None:
    assert daemon.proc is not None
    title = Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes().split(b"\0")[0]
    assert title.startswith(b"corral: supervisor")
    pids = [a["pid"] for a in daemon.status().values()]
    assert daemon.stop(signal.SIGINT) == 0
    assert not any(psutil.pid_exists(p) for p in pids)


def test_sd_notify_protocol(tmp: Path) -> None:
    d = Daemon(tmp, hello("hello", replicas=2), watchdog_usec=400_000)
    try:
        d.start()
        ready = d.notify.wait_for("READY")
        assert ready["READY"] == "1" and ready["MAINPID"] == str(d.proc.pid)  # type: ignore[union-attr]
        assert ready["STATUS"] == "1 agent, 2/2 replicas serving, 0 failed"
        d.notify.wait_for("WATCHDOG")
        d.cli("reload")
        assert d.notify.wait_for("RELOADING")["RELOADING"] == "1"
        assert d.stop() == 0
        assert d.notify.wait_for("STOPPING")["STOPPING"] == "1"
    finally:
        d.close()


def test_check_config(tmp: Path) -> None:
    def check(text: str) -> subprocess.CompletedProcess[str]:
        p = tmp / "c.toml"
        p.write_text(text)
        return corral_run(["check-config", "--config", str(p)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)})

    # (the agents run as root: pytest's tmp and this interpreter are out of a dynamic
    # uid's reach, tests/test_dynamic_users.py)
    r = check("[supervisor]\ndynamic_uids = []\n" + hello("a") + hello("b"))
    assert (r.returncode, r.stdout) == (0, f"{tmp}/c.toml: ok (2 agents, 0 MCP servers)\n")
    r = check("[agents.a]\ncommand = ['x']\n[agents.a.limits]\nmemory = 5\n")
    assert r.returncode == 1
    assert r.stderr == (f"corral: invalid config: {tmp}/c.toml: agents.a.limits: Object "
                        "contains unknown field `memory` (did you mean `memory_mb`?)\n")
    r = check("[agents.a]\ncommand = = ['x']\n")
    assert r.returncode == 1
    assert r.stderr == (f"corral: invalid config: {tmp}/c.toml: syntax error: Invalid value "
                        "(at line 2, column 11)\n")
    r = check("[agents.'bad name']\ncommand = 'x'\n")
    assert r.stderr == (f"corral: invalid config: {tmp}/c.toml: agents.'bad name': name must "
                        "be 1-64 characters of [A-Za-z0-9_-], starting with a letter or digit\n")
    r = check("[supervisor]\nheartbeat_interval = 0\n")
    assert "supervisor.heartbeat_interval: Expected `float` > 0.0" in r.stderr
    (tmp / "conf.d").mkdir()
    (tmp / "conf.d" / "x.toml").write_text(hello("inc"))
    r = check('[supervisor]\ndynamic_uids = []\ninclude = ["conf.d/*.toml"]\n' + hello("main"))
    assert r.stdout.endswith("ok (2 agents, 0 MCP servers)\n")
    (tmp / "conf.d" / "y.toml").write_text("[supervisor]\n")
    r = check('[supervisor]\ninclude = ["conf.d/*.toml"]\n')
    assert r.stderr.endswith("conf.d/y.toml: supervisor: not allowed in an included file "
                             "(it holds [agents] and [mcp_servers] tables)\n")
    (tmp / "conf.d" / "y.toml").write_text("[agent.x]\n")
    r = check('[supervisor]\ninclude = ["conf.d/*.toml"]\n')
    assert r.stderr.endswith("conf.d/y.toml: agent: not allowed in an included file (it "
                             "holds [agents] and [mcp_servers] tables) (did you mean "
                             "`agents`?)\n")
    # every error of the file at once, one a line, in the file's order, then a count;
    # the good tables between them are not refused
    (tmp / "conf.d" / "y.toml").write_text("[agents.inc2]\ncommand = 'true'\nreplica = 1\n")
    r = check('[supervisor]\ninclude = ["conf.d/*.toml"]\nheartbeat_interval = 0\n'
              "[nope]\n" + hello("ok1") + "[agents.bad1]\ncommand = 'x'\nrestart = 'sometimes'\n"
              + hello("ok2") + "[mcp_servers.m]\ncommand = 'true'\ninstance = 2\n"
              "[tenants.t]\nmax_agents = -1\n")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert [ln.split(": ", 4)[3] for ln in lines[:-1]] == [
        "supervisor.heartbeat_interval", "nope", "agents.bad1.restart",
        "tenants.t.max_agents", "mcp_servers.m"], lines
    assert lines[-1] == f"corral: 5 errors in {tmp}/c.toml"
    # the commands too, each of them, beside the file's other errors (issue 36)
    r = check("[agents.a]\ncommand = 'no-such-prog-a'\n[agents.b]\ncommand = 'x'\n"
              "replicas = 'two'\n[agents.c]\ncommand = './no-such-c'\n"
              "[mcp_servers.m]\ncommand = 'no-such-mcp'\n")
    lines = r.stderr.splitlines()
    assert [ln.split(": ", 4)[3] for ln in lines[:-1]] == [
        "agents.b.replicas", "agents.a.command", "agents.c.command",
        "mcp_servers.m.command"], lines
    assert lines[2].endswith(f"./no-such-c: no such file ({tmp}/no-such-c)")
    assert lines[-1] == f"corral: 4 errors in {tmp}/c.toml"
    r = check("[agents.a]\ncommand = 'no-such-prog-a'\n[agents.c]\ncommand = 'no-such-c'\n")
    lines = r.stderr.splitlines()
    assert [ln.split(": ", 4)[3] for ln in lines[:-1]] == [
        "agents.a.command", "agents.c.command"], lines
    assert lines[-1] == f"corral: 2 errors in {tmp}/c.toml"


@pytest.mark.parametrize("text,where,unknown,near", [
    ("[agents.a]\ncommand = 'true'\nreplica = 2\n", "agents.a", "replica", "replicas"),
    ("[agents.a]\ncommand = 'true'\n[agents.a.limits]\nrss = 1\n", "agents.a.limits", "rss",
     "rss_mb"),
    ("[mcp_servers.m]\ncommand = 'true'\ninstance = 2\n", "mcp_servers.m", "instance",
     "instances"),
    ("[http]\nlisten_on = '127.0.0.1:7070'\n", "http", "listen_on", "listen"),
    ("[supervisor]\nheartbeat_intervall = 1\n", "supervisor", "heartbeat_intervall",
     "heartbeat_interval"),
    ("[gateway]\nmax_session = 3\n", "gateway", "max_session", "max_sessions"),
])
def test_check_config_names_the_nearest_key(tmp: Path, text: str, where: str, unknown: str,
                                            near: str) -> None:
    p = tmp / "c.toml"
    p.write_text(text)
    r = corral_run(["check-config", str(p)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", f"corral: invalid config: {p}: {where}: Object contains unknown field "
               f"`{unknown}` (did you mean `{near}`?)\n")


def test_check_config_says_nothing_of_a_key_near_none(tmp: Path) -> None:
    p = tmp / "c.toml"
    p.write_text("[agents.a]\ncommand = 'true'\nzzz = 1\n")
    r = corral_run(["check-config", str(p)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stderr) == (
        1, f"corral: invalid config: {p}: agents.a: Object contains unknown field `zzz`\n")
    p.write_text("[agent.a]\ncommand = 'true'\n")
    r = corral_run(["check-config", str(p)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stderr) == (
        1, f"corral: invalid config: {p}: agent: unknown top-level key (did you mean "
           "`agents`?)\n")


def test_completion_script() -> None:
    r = corral_run(["completion", "bash"], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "_CORRAL_COMPLETE" in r.stdout


@pytest.mark.parametrize(("words", "cword", "out"), [
    ("corral ru", "1", "plain,run\nplain,run-cancel\nplain,run-status\nplain,runs\n"),
    ("corral runs s", "2", "plain,signal\n"),
    ("corral mcp s", "2", "plain,serve\nplain,start\nplain,status\nplain,stop\n")])
def test_the_completion_script_completes(words: str, cword: str, out: str) -> None:
    """What the script of `corral completion bash` runs at each Tab: the commands' names,
    through the CLI's escaping stream (its bytes were refused with a TypeError there, a
    traceback at each Tab and nothing completed)."""
    r = corral_run([], env={**os.environ, "PYTHONPATH": str(ROOT), "COMP_WORDS": words,
                            "COMP_CWORD": cword, "_CORRAL_COMPLETE": "bash_complete"})
    assert (r.returncode, r.stdout, r.stderr) == (0, out, "")


def test_systemd_unit_verifies_cleanly(tmp: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    corral_bin = Path(sys.executable).parent / "corral"
    unit = (ROOT / "systemd" / "corral.service").read_text()
    assert "Type=notify" in unit and "KillMode=mixed" in unit and "WatchdogSec=" in unit
    good = tmp / "corral.service"
    good.write_text(unit.replace("/opt/corral/bin/corral", quoted(str(corral_bin))))
    r = subprocess.run([analyze, "verify", str(good)], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    bad = tmp / "broken.service"  # the check can fail: a typo is reported
    bad.write_text(good.read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True)
    assert "Failed to parse service type" in r.stderr


def test_top_refreshes(unchanged: Daemon) -> None:
    r = unchanged.cli("top", "-n", "2", "-d", "0.05")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert sum(1 for x in lines if x.startswith("corral top - ")) == 2
    assert sum(1 for x in lines if x.split()[:2] == ["NAME", "STATE"]) == 2
    assert any(x.startswith("hello#0 ") and " ready " in x for x in lines)


def test_top_quits_on_q(unchanged: Daemon) -> None:
    import pty
    import select
    import termios

    main, term = pty.openpty()
    before = termios.tcgetattr(term)
    top = corral_popen(["--socket", str(unchanged.sock), "top", "-d",
                        "0.2"], stdin=term, stdout=term, stderr=term,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = bytearray()

    def screens() -> int:
        if select.select([main], [], [], 0.1)[0]:
            seen.extend(os.read(main, 65536))
        return seen.count(b"corral top - ")

    try:
        wait_until(lambda: screens() >= 1, what="the first screen")
        # it reads keys as they are pressed: no Enter needed, nothing echoed
        wait_until(lambda: not termios.tcgetattr(term)[3] & (termios.ICANON | termios.ECHO),
                   what="cbreak")
        os.write(main, b"x")  # any other key: it goes on refreshing
        drawn = screens()
        wait_until(lambda: screens() >= drawn + 2, what="screens after x")
        assert top.poll() is None
        os.write(main, b"q")
        assert top.wait(10) == 0
        assert termios.tcgetattr(term) == before  # the terminal is given back as it was
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
        os.close(main)
        os.close(term)


def test_a_restart_counts_when_decided_during_its_backoff(tmp: Path) -> None:
    d = Daemon(tmp, f"""
[agents.slow]
command = ["{PY}", "{EXAMPLES}/hello.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
backoff_initial = 60.0
backoff_max = 60.0
""")
    try:
        d.start()
        pid = d.status()["slow#0"]["pid"]
        os.kill(pid, signal.SIGKILL)
        st = wait_until(lambda: (s := d.status()["slow#0"])["state"] == "backoff" and s,
                        what="backoff")
        # the restart is decided, so counted, long before the process starts again
        assert (st["restarts"], st["pid"]) == (1, None)
        row = d.cli("status").stdout.splitlines()[1].split()
        assert row[:5] == ["slow#0", "backoff", "-", "-", "1"]
        sup = d.json("stats")["supervisor"]
        assert (sup["restarts"], sup["restarts_by_cause"]) == (1, {"crash": 1})
        assert d.stop() == 0
    finally:
        d.close()


def test_raw_log_format_keeps_stderr_as_written(tmp: Path) -> None:
    d = Daemon(tmp, chatty(tmp, "plain", 3, crash=True), extra='log_format = "raw"')
    try:
        d.start()
        wait_until(lambda: d.status()["plain#0"]["state"] == "terminated")
        assert (d.state / "logs" / "plain.log").read_text() == (
            "line 0\nline 1\nline 2\nlast words\n")
        daemon_log = (d.state / "logs" / "corral.log").read_text()
        assert " plain#0[" in daemon_log and "event: starting -> terminated: exited with " \
            "status 9" in daemon_log
        tagged = d.cli("logs", "plain", "-n", "2").stdout.splitlines()
        assert tagged[0].endswith(" stderr: last words")  # corral logs still tags lines
        assert d.stop() == 0
    finally:
        d.close()


def test_daemon_start_failures_are_clear(tmp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = corral_run(["daemon", "--config", str(tmp / "none.toml")], env=env)
    assert (r.returncode, r.stderr) == (
        1, f"corral: no config file at {tmp}/none.toml (give one with --config)\n")
    d = Daemon(tmp, hello("hello"))
    try:
        r = corral_run(["--socket", "/dev/null/corral.sock", "daemon", "--config", str(d.config)],
                       timeout=20, env=env)
        assert r.returncode == 1
        assert r.stderr.startswith("corral: cannot listen on /dev/null/corral.sock: ")
        # a path past a unix socket's bound: the bound named, not the OS's reason (it has
        # none: Python refuses the path before the kernel sees it)
        far = tmp / ("x" * (108 - len(str(tmp)))) / "corral.sock"
        r = corral_run(["--socket", str(far), "daemon", "--config", str(d.config)], timeout=20,
                       env=env)
        assert (r.returncode, r.stderr.splitlines()[-1]) == (1, (
            f"corral: cannot listen on {far}: its path is {len(str(far))} bytes, over "
            "SOCKET_PATH_MAX (107)"))
    finally:
        d.close()


def test_a_socket_nobody_listens_on_exits_3(tmp: Path) -> None:
    path = tmp / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))  # bound, never listening: what a killed daemon leaves behind
    try:
        r = corral_run(["--socket", str(path), "status"],
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 3
        assert r.stderr.startswith(f"corral: cannot reach the corral daemon at {path}: "
                                   "nothing is listening (a stale socket?)\n")
    finally:
        s.close()


def test_info_prints_sections_as_indented_key_value_lines(unchanged: Daemon) -> None:
    r = unchanged.cli("info")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    at = lines.index("containment:")  # a section, not a Python dict on one line
    assert lines[at + 1].startswith("  mode: ")
    assert not any("{" in line for line in lines), r.stdout
    r = unchanged.cli("add", "--help")
    assert "restart. A command that is not an executable" in " ".join(r.stdout.split())


def test_run_waits_for_its_task_past_the_clients_timeout_and_a_silent_daemon_is_named(
        daemon: Daemon) -> None:
    """`corral run` waits for the task's end however long it waits in the queue (here:
    its agent's replicas paused), not the client's timeout for calls answered at once;
    a call the daemon does not answer within that timeout ends with one line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CORRAL_CLIENT_TIMEOUT": "0.5"}
    base = ["--socket", str(daemon.sock)]
    assert daemon.cli("pause", "hello").returncode == 0
    run = corral_popen([*base, "run", "hello", "--input", "{}", "--json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: daemon.status_json()["tasks"]["hello"]["queue_depth"] == 1,
                   what="the task queued")
        # three client timeouts with the task still waiting: the run still waits
        with pytest.raises(subprocess.TimeoutExpired):
            run.wait(timeout=1.5)
        assert daemon.cli("resume", "hello").returncode == 0
        out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        assert json.loads(out)["status"] == "succeeded"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    # the daemon stopped (SIGSTOP, by pid): a status call gives up with its reason
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        r = corral_run([*base, "status"], env=env, timeout=30)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", "corral: the daemon did not answer agents.status within 0.5 s\n")
