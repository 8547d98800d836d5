"""Finished tasks' payloads go back to the system (memory.py): after enough bytes are let
go, the heap is trimmed once, a moment later, and not before. SQLite's pages come from a
fixed slab, not from malloc, in a process that asked before its first connection. The
daemon's threads share one glibc arena, and its latency windows hold a double a value."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corral.daemon import heapdump
from corral.daemon.logfiles import LogPlace, RotatingFile, Rotation
from corral.daemon.logs import LogHub
from corral.daemon.steplog import StepLog
from corral.jsonrpc import LineBlock
from corral.percentile import Window
from corral.supervisor import State, Supervisor, memory
from corral.supervisor.config import ProcessSpec
from corral.supervisor.configload import check_command
from corral.supervisor.memory import SLAB_SLOTS, TRIM_AFTER, TRIM_DELAY, Releaser, _malloc_trim
from corral.supervisor.tasks.stepjournal import Step

from .conftest import ROOT, agent
from .daemon_harness import PY, free_port, in_process
from .sandboxprobe import sandbox_refusal
from .test_gateway_stdio import wait_until_async


def test_this_machines_malloc_can_be_trimmed() -> None:
    # glibc: the call exists; where it does not (musl), trim() does nothing, quietly
    assert _malloc_trim() is not None


async def test_a_trim_comes_once_enough_was_let_go_and_a_delay_later() -> None:
    r = Releaser()
    loop = asyncio.get_running_loop()
    r.let_go(TRIM_AFTER - 1)
    # not enough yet: a trim armed here would come TRIM_DELAY after it, too early below
    await asyncio.sleep(TRIM_DELAY / 4)
    r.let_go(1)
    armed = loop.time()
    r.let_go(TRIM_AFTER)  # more while one is due: the same one (a second would count 2)
    assert r.trims == 0 and r.released == 2 * TRIM_AFTER
    await wait_until_async(lambda: r.trims, 10)
    # (less a millisecond: the loop's clock counts in them)
    assert TRIM_DELAY - 0.001 <= loop.time() - armed < TRIM_DELAY + 5  # (a busy machine)
    assert r.trims == 1 and r.released == 0


async def test_finished_tasks_payloads_are_let_go_and_trimmed(sup: Supervisor) -> None:
    sup.add(agent("echo", "hello.py", max_concurrent_tasks=4))
    await sup.wait_all_serving(timeout=30)
    pad = "x" * 200_000
    n = TRIM_AFTER // 200_000 + 2
    for i in range(n):
        result = await sup.tasks.run("echo", {"name": pad, "i": i})
        assert result.status == "succeeded"
    memory = sup.tasks.memory
    # each task's input (and any output dropped past keep_tasks_mb) was counted
    assert memory.total >= n * 200_000
    # not yet trimmed (a fast machine): a trim is due within TRIM_DELAY
    await wait_until_async(lambda: memory.trims >= 1, TRIM_DELAY + 10)
    assert memory.trims >= 1 and memory.released < TRIM_AFTER


_SLAB_PROBE = """
import ctypes, ctypes.util, json, os, sqlite3, sys
from corral.supervisor import memory
first = None
if sys.argv[1] == "open":  # a connection open before: SQLite is not shut under it
    first = sqlite3.connect(":memory:")
done, again = memory.page_slab(), memory.page_slab()
lib = ctypes.CDLL(ctypes.util.find_library("sqlite3"))
db = sqlite3.connect(sys.argv[2])
db.execute("CREATE TABLE t (x)")
db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 4000)
db.commit()
assert db.execute("SELECT count(*) FROM t").fetchone() == (4000,)
now, top = ctypes.c_int64(), ctypes.c_int64()
status = [lib.sqlite3_status64(op, ctypes.byref(now), ctypes.byref(top), 0) == 0
          and top.value for op in (1, 2)]  # PAGECACHE_USED (slots), _OVERFLOW (bytes)
print(json.dumps({"done": done, "again": again, "slots": status[0],
                  "overflow": status[1]}))
# db left open: closed by the interpreter's exit, after every Python object is gone
"""


def _slab_probe(tmp_path: Path, how: str, **env: str) -> dict[str, Any]:
    db = tmp_path / f"{how}{len(env)}.db"
    run = subprocess.run([sys.executable, "-c", _SLAB_PROBE, how, str(db)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env})
    # 0: a connection closed at the exit, after the module's objects, wrote to a slab
    # that was still mapped (a Python-owned one was unmapped by then: SIGSEGV)
    assert run.returncode == 0, run.stderr
    said: dict[str, Any] = json.loads(run.stdout)
    return said


def test_sqlites_pages_come_from_the_slab_in_a_process_with_no_connection(
        tmp_path: Path) -> None:
    said = _slab_probe(tmp_path, "fresh")
    assert said["done"] is True and said["again"] is False  # once a process
    # every page of the ~2 MB table's writes and reads was a slot; none from malloc
    assert 100 < said["slots"] <= SLAB_SLOTS and said["overflow"] == 0, said


def test_no_slab_under_an_open_connection_or_when_the_variable_says_0(
        tmp_path: Path) -> None:
    for said in (_slab_probe(tmp_path, "open"),
                 _slab_probe(tmp_path, "fresh", CORRAL_SQLITE_SLAB="0")):
        assert said["done"] is False and said["slots"] == 0 and said["overflow"] > 0, said


_ARENA_PROBE = """
import json, sys, threading
from corral.daemon.heapdump import _malloc_heaps
from corral.supervisor import memory
done = memory.arena_bound() if sys.argv[1] == "bound" else None
held, ready, go = [], threading.Barrier(9), threading.Event()

def work() -> None:
    held.append([bytes(4096) for _ in range(8)])  # blocks past pymalloc's: glibc's
    ready.wait()  # every thread alive at once, so none takes another's arena
    go.wait()

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
ready.wait()
heaps = len(_malloc_heaps() or [])
go.set()
for t in threads:
    t.join()
print(json.dumps({"done": done, "heaps": heaps}))
"""


def _arena_probe(how: str, **env: str) -> dict[str, Any]:
    run = subprocess.run([sys.executable, "-c", _ARENA_PROBE, how], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    said: dict[str, Any] = json.loads(run.stdout)
    return said


def test_the_daemons_threads_share_one_arena_beside_the_main_one() -> None:
    assert _arena_probe("bound") == {"done": True, "heaps": memory.ARENAS}
    # as glibc is, eight threads allocating at once take arenas of their own
    assert _arena_probe("as is")["heaps"] > memory.ARENAS


def test_the_operators_own_arena_bound_is_kept() -> None:
    said = _arena_probe("bound", MALLOC_ARENA_MAX="4")
    assert said == {"done": False, "heaps": 4}
    said = _arena_probe("bound", GLIBC_TUNABLES="glibc.malloc.arena_max=3")
    assert said == {"done": False, "heaps": 3}


def test_a_latency_window_keeps_its_latest_values_oldest_first_in_a_double_each() -> None:
    w = Window(3)
    w.extend([0.1, 0.2])
    assert list(w) == [0.1, 0.2] and len(w) == 2
    w.extend([0.3, 0.4, 0.5])  # past its size: the oldest make room
    assert list(w) == [0.3, 0.4, 0.5] and len(w) == 3
    w.append(0.6)
    assert list(w) == [0.4, 0.5, 0.6] and sorted(w) == [0.4, 0.5, 0.6]
    # its values in one array, not a float object each
    assert w.values.itemsize == 8 and len(w.values) == 3
    w.clear()
    w.append(0.7)
    assert list(w) == [0.7]


def counting_interns(monkeypatch: Any) -> list[str]:
    """Each string interned from now on (until `monkeypatch.undo()`), in order."""
    interned: list[str] = []
    real = sys.intern

    def counted(text: str) -> str:
        interned.append(text)
        return real(text)

    monkeypatch.setattr(sys, "intern", counted)
    return interned


def test_the_step_logs_batches_and_a_logs_rotations_intern_no_string(
        tmp_path: Path, monkeypatch: Any) -> None:
    # pathlib interns each part of a path it parses: a name made again and again, in a
    # Path, churns the interpreter's table of interned strings, which the churn doubles
    log = StepLog(tmp_path / "step-log")
    rotating = RotatingFile(LogPlace(str(tmp_path / "agent.log"), Rotation(10, 2, 0.0, True)))
    interned = counting_interns(monkeypatch)
    for seq in range(1, 4):
        assert log.append(Step("t1", seq, "tool", 1, b"", None))
        assert log.rotate() is not None  # a batch's file closed; the next one begins
        rotating.write(b"a" * 10)  # past its size: rotated, its copy gzipped on a thread
    rotating.close()
    assert interned == []
    _ = tmp_path / "made"  # (what a Path does: the count can fail)
    monkeypatch.undo()
    assert interned == ["made"]
    assert sorted(os.listdir(tmp_path)) == ["agent.log", "agent.log.1.gz", "agent.log.2.gz",
                                            "step-log"]
    assert len(os.listdir(log.dir)) == 3


def test_agents_log_files_placed_and_heap_dumps_named_intern_no_string(
        tmp_path: Path, monkeypatch: Any) -> None:
    # each agent's log file is placed at its open, and each heap dump has a new name: as
    # Paths, pathlib interned every agent's file name and every dump's, a slot of the
    # interned table each as agents come and go (chatN.log) and dumps are written
    hub = LogHub(tmp_path / "logs")
    logs, dumps = f"{tmp_path}/logs", f"{tmp_path}/dumps"
    os.mkdir(dumps)
    heapdump.write(dumps, 0)  # (its modules imported first, as in a daemon that dumps)
    interned = counting_interns(monkeypatch)
    names = [f"chat{secrets.token_hex(4)}" for _ in range(3)]
    for n, name in enumerate(names, 1):
        hub.emit(name, 0, 1, "stderr", LineBlock.one(f"line of {name}"))
        assert hub.path_of(name) == f"{logs}/{name}.log"
        hub.forget(name)  # its file rotated aside: a copy name, then gone for good
        heapdump.write(dumps, n)
    hub.close()
    assert interned == [], interned
    _ = tmp_path / "made"  # (what a Path does: the count can fail)
    monkeypatch.undo()
    assert interned == ["made"]
    assert sorted(os.listdir(dumps)) == [f"heap-{n}.json" for n in range(4)]
    # each forgotten agent's file moved to its first copy, an empty one begun in its place
    assert sorted(f for f in os.listdir(logs) if f.startswith("chat")) == sorted(
        f"{name}.log{copy}" for name in names for copy in ("", ".1"))


def test_an_agents_command_checked_interns_no_string(tmp_path: Path, monkeypatch: Any) -> None:
    # an agent's command is checked at each add and reload: by pathlib, each part of its
    # path was interned, and a part no other live string shares (a venv's `.venv`) was
    # added to the interned table anew at each check, and let go after
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "plain.py").write_text("")
    specs = [ProcessSpec(command=[f"{tmp_path}/./run.sh", "x"]),
             ProcessSpec(command=["./plain.py"], cwd=f"{tmp_path}/"),
             ProcessSpec(command=["sub/../missing"], cwd=str(tmp_path))]
    said = [None, f"./plain.py: not executable ({tmp_path}/plain.py)",
            f"sub/../missing: no such file ({tmp_path}/sub/../missing)"]
    interned = counting_interns(monkeypatch)
    whys = [check_command(spec) for spec in specs]
    _ = Path("made")  # (what a Path does: the count can fail)
    monkeypatch.undo()
    assert interned == ["made"]
    assert whys == said  # shown as pathlib showed them


@pytest.mark.skipif(sandbox_refusal(None) is not None, reason="no sandbox here")
@pytest.mark.deadline(180)
async def test_an_agents_sandboxed_starts_intern_no_new_string(
        tmp_path: Path, monkeypatch: Any) -> None:
    # a sandboxed start parsed its interpreter's paths (the venv, where it resolves to,
    # pyvenv.cfg's home, the relay's) with pathlib, which interned each part, freed at
    # the start's end: a slot of the interned table each, at every start. A string is
    # interned anew where intern() hands back a copy of it made here (an equal one alive
    # is shared; a one-character string is the interpreter's own, never freed)
    home = tmp_path / "home"
    home.mkdir()
    box = textwrap.dedent(f"""
        [agents.box]
        command = ["{PY}", "{ROOT / 'tests' / 'sandbox_agent.py'}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{home}"
        egress = "gateways"
        stop_timeout = 5.0
        start_timeout = 60.0
        [gateway]
        listen = "127.0.0.1:{free_port()}"
    """)
    new: list[str] = []
    real = sys.intern

    def counted(text: str) -> str:
        fresh = text[:1] + text[1:]
        out = real(fresh)
        if out is fresh and len(text) > 1:
            new.append(text)
        return out

    async with in_process(tmp_path, box) as d:
        pid = d.sup.agents["box"].replicas[0].pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:  # what is measured: a sandbox's
            assert f.read().split(b"\0")[0].endswith(b"bwrap")
        monkeypatch.setattr(sys, "intern", counted)
        for _ in range(3):
            await d.sup.restart("box")
            await d.sup.wait_state("box", {State.READY, State.IDLE, State.BUSY}, timeout=60)
        assert new == []
        made = secrets.token_hex(4)
        _ = Path(f"/{made}")  # (what a new part does: the count can fail)
        monkeypatch.undo()
    assert new == [made]
