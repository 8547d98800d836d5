"""Tasks and events end to end: `corral run`, `tasks`, `task`, `cancel`, `events`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.text import iso_time

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, corral_popen, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until

# minutes of this file: a parallel run starts it first (tests/conftest.py longest_first)
pytestmark = pytest.mark.long


def misbehave(name: str, extra: str = "") -> str:
    return (f'[agents.{name}]\ncommand = ["{PY}", "{EXAMPLES}/misbehave.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\nbackoff_initial = 0.05\n'
            f'max_concurrent_tasks = 4\n{extra}\n')


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(),
                        misbehave("work", "replicas = 2") + misbehave("other")) as d:
        yield d


def test_run_json_and_plain(daemon: Daemon) -> None:
    r = daemon.cli("run", "work", "--input", '{"do": "echo", "x": 1}', "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == {"task_id", "status", "output", "error", "attempts"}
    assert (res["status"], res["output"], res["error"]) == (
        "succeeded", {"do": "echo", "x": 1}, None)
    r = daemon.cli("run", "work", "--input", '{"do": "echo"}')
    assert (r.returncode, json.loads(r.stdout)) == (0, {"do": "echo"})


def test_run_failure_timeout_and_exit_codes(daemon: Daemon) -> None:
    r = daemon.cli("run", "work", "--input", '{"do": "fail"}')
    assert r.returncode == 1
    assert r.stderr.startswith("corral: task ") and r.stderr.endswith(
        " failed: failed on request\n")
    r = daemon.cli("run", "work", "--input", '{"do": "sleep", "seconds": 10}', "--timeout",
                   "0.2", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "timed_out"
    r = daemon.cli("run", "nope", "--input", "null")
    assert (r.returncode, r.stderr) == (1, "corral: no such agent: nope (agents: other, "
                                           "work)\n")


def test_an_unknown_agent_is_answered_with_the_agents_there_are(daemon: Daemon) -> None:
    # the closest name when one is near, else every agent there is
    for args, said in ((("run", "wrok", "--input", "null"), "wrok (did you mean `work`?)"),
                       (("run", "nosuch", "--input", "null"), "nosuch (agents: other, work)"),
                       (("logs", "nosuch"), "nosuch (agents: other, work)"),
                       (("describe", "othr"), "othr (did you mean `other`?)"),
                       (("stats", "--since", "1h", "--agent", "nosuch"),
                        "nosuch (and no history of one; agents: other, work)")):
        r = daemon.cli(*args)
        assert (r.returncode, r.stdout, r.stderr) == (
            1, "", f"corral: no such agent: {said}\n"), args
    assert daemon.cli("remove", "work", "other").returncode == 0
    r = daemon.cli("run", "work", "--input", "null")
    assert (r.returncode, r.stderr) == (1, "corral: no such agent: work (there are no "
                                           "agents)\n")


def test_input_forms_and_bad_input(daemon: Daemon, tmp_path: Path) -> None:
    f = tmp_path / "in.json"
    f.write_text('{"do": "echo", "from": "file"}')
    r = daemon.cli("run", "work", "--input", f"@{f}")
    assert json.loads(r.stdout) == {"do": "echo", "from": "file"}
    r = daemon.cli("run", "work", "--input", "-", input='{"do": "echo", "from": "stdin"}')
    assert json.loads(r.stdout) == {"do": "echo", "from": "stdin"}
    # no --input: null, for an agent that takes none
    r = daemon.cli("run", "work")
    assert (r.returncode, r.stdout.strip()) == (0, "null"), r.stderr
    r = daemon.cli("run", "work", "--input", "{not json")
    assert r.returncode == 2 and "Invalid value for --input: not JSON" in r.stderr
    big = tmp_path / "big.json"
    big.write_text('"' + "x" * (100 * 1024 * 1024) + '"')
    r = daemon.cli("run", "work", "--input", f"@{big}")
    assert r.returncode == 1
    assert r.stderr.startswith("corral: input too large: 104857602 bytes is over the")


def test_detach_task_wait_list_and_cancel(daemon: Daemon) -> None:
    tid = daemon.cli("run", "work", "--input", '{"do": "echo"}', "--detach").stdout.strip()
    # its input, asked for, once it ran
    assert 'input: {"do": "echo"}' in daemon.cli("task", tid, "--wait", "--input").stdout
    r = daemon.cli("task", tid, "--wait", "--json")
    info = json.loads(r.stdout)
    assert (info["task_id"], info["status"], info["agent"]) == (tid, "succeeded", "work")
    slow = daemon.cli("run", "other", "--input", '{"do": "sleep", "seconds": 30}',
                      "--detach").stdout.strip()
    listed = json.loads(daemon.cli("tasks", "--agent", "other", "--json").stdout)["tasks"]
    assert [(t["task_id"], t["status"]) for t in listed] == [(slow, "running")]
    r = daemon.cli("cancel", slow)
    assert (r.returncode, r.stdout) == (0, f"{slow}: cancelled\n")
    r = daemon.cli("cancel", slow)
    assert (r.returncode, r.stderr) == (1, f"corral: task {slow} already finished "
                                           "(cancelled)\n")
    r = daemon.cli("cancel", "unknown-id")
    assert (r.returncode, r.stderr) == (1, "corral: no such task: unknown-id\n")
    table = daemon.cli("tasks").stdout.splitlines()
    assert table[0].split() == ["TASK", "AGENT", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED"]
    # `corral stats` counts the cancelled task apart from the failed ones
    stats = daemon.cli("stats").stdout.splitlines()
    head = stats[1].split()
    assert head[7:11] == ["FAILED", "LOST", "CANCELLED", "QUEUED"], stats
    row = next(line.split() for line in stats if line.startswith("other "))
    assert (row[head.index("FAILED")], row[head.index("CANCELLED")]) == ("0", "1"), stats


def test_progress_is_streamed_by_run(daemon: Daemon) -> None:
    r = daemon.cli("run", "work", "--input", '{"do": "progress", "steps": 2}')
    assert r.returncode == 0
    assert r.stderr == "progress: 1/2 step 1\nprogress: 2/2 step 2\n"
    tid = daemon.cli("run", "work", "--input", '{"do": "progress", "steps": 2}',
                     "--detach").stdout.strip()
    info = json.loads(daemon.cli("task", tid, "--wait", "--json").stdout)
    assert info["progress"] == {"progress": 2, "total": 2, "message": "step 2"}


def test_many_clients_at_once(daemon: Daemon) -> None:
    def one(i: int) -> tuple[int, object]:
        r = daemon.cli("run", "work", "--input", json.dumps({"do": "echo", "i": i}))
        return r.returncode, json.loads(r.stdout)["i"] if r.returncode == 0 else r.stderr

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    assert results == [(0, i) for i in range(32)]
    st = json.loads(daemon.cli("stats", "--json").stdout)
    assert st["tasks"]["agents"]["work"]["succeeded"] == 32
    status = daemon.json("status")
    assert status["tasks"]["work"]["accepted"] == 32


def test_events_publish_and_tail(daemon: Daemon) -> None:
    def follow(*args: str) -> subprocess.Popen[str]:
        return corral_popen(["--socket", str(daemon.sock), "events",
                             "tail", "orders.*", *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})

    tail, plain = follow("--json"), follow()
    assert tail.stdout is not None and plain.stdout is not None
    try:
        wait_until(lambda: daemon.ask("daemon.info")["event_followers"] == 2)
        r = daemon.cli("events", "publish", "orders.new", '{"id": 1}')
        assert (r.returncode, r.stdout) == (0, "delivered to 2 subscribers\n")
        first = json.loads(tail.stdout.readline())
        assert (first["topic"], first["data"], first["source"]) == ("orders.new", {"id": 1},
                                                                   f"uid {os.geteuid()}")
        # a line as `corral logs` writes one: its time in ISO 8601, UTC, to the ms
        assert plain.stdout.readline() == (f"{iso_time(first['time'], ms=True)} orders.new "
                                           f"from uid {os.geteuid()}: {{\"id\": 1}}\n")
        daemon.cli("run", "work", "--input",
                   '{"do": "publish", "topic": "orders.paid", "data": 2}')
        second = json.loads(tail.stdout.readline())
        assert (second["topic"], second["data"]) == ("orders.paid", 2)
        assert second["source"].startswith("work#")
        assert plain.stdout.readline() == (f"{iso_time(second['time'], ms=True)} orders.paid "
                                           f"from {second['source']}: 2\n")
        r = daemon.cli("events", "publish", "x", "{bad")
        assert r.returncode == 2
    finally:
        for p in (tail, plain):
            p.kill()
            p.wait()


def test_checkpoints_survive_a_daemon_restart(daemon: Daemon) -> None:
    r = daemon.cli("run", "other", "--input", '{"do": "checkpoint", "state": [1, 2]}')
    assert r.returncode == 0
    assert daemon.stop() == 0
    daemon.start()
    r = daemon.cli("run", "other", "--input", '{"do": "state"}')
    assert json.loads(r.stdout) == {"state": [1, 2]}
