"""Warm starts: agents forked from a zygote are, to corral and to /proc, what a cold
start is; every way a zygote fails ends in a cold start with the reason in the log."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import socket
import struct
import termios
from pathlib import Path

import psutil
import pytest

from corral.supervisor import Limits, LogBatch, State, Supervisor
from corral.supervisor.containment import TOKEN_VARIABLE
from corral.supervisor.replica import Replica
from corral.supervisor.zygote import Key, ZygoteUnavailable

from .conftest import NOBODY_PY, PY, ROOT, agent, nobody_reason

LIMITS = Limits(memory_mb=512, cpu_seconds=100, open_files=200, processes=4000,
                file_size_mb=50)


def proc_view(pid: int) -> dict[str, object]:
    """What /proc says about a process that corral controls: caps, ids, session, env."""
    base = f"/proc/{pid}"
    status = dict(line.split(":\t", 1) for line in Path(f"{base}/status").read_text()
                  .splitlines() if ":\t" in line)
    stat = Path(f"{base}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return {
        "limits": Path(f"{base}/limits").read_text(),
        "uid": status["Uid"], "gid": status["Gid"], "groups": status["Groups"],
        "pgid == pid": int(fields[2]) == pid, "sid == pid": int(fields[3]) == pid,
        "cgroup": Path(f"{base}/cgroup").read_text(),
        "cwd": os.readlink(f"{base}/cwd"),
        "fds": sorted(os.listdir(f"{base}/fd")),
        "title": Path(f"{base}/cmdline").read_bytes().split(b"\0")[0].rstrip(),
    }


async def environment(sup: Supervisor, name: str) -> dict[str, str]:
    """The agent's own os.environ (/proc/PID/environ is the memory setproctitle writes the
    title over), without the two variables that name the agent."""
    env = (await sup.tasks.run(name, {"do": "env"})).output
    assert isinstance(env, dict)
    for k in ("CORRAL_AGENT", "CORRAL_PROCTITLE", TOKEN_VARIABLE):
        env.pop(k)
    return env


def notes(sup: Supervisor) -> list[str]:
    """corral's own log lines about agents, as they come."""
    got: list[str] = []

    def on_log(r: Replica, stream: str, lines: object) -> None:
        if stream == "corral":
            got.extend(bytes(line).decode() for line in lines)  # type: ignore[attr-defined]

    sup.stream.subscribe(lambda e: on_log(*e), LogBatch)
    return got


async def test_a_forked_agent_looks_in_proc_exactly_like_a_cold_start(
        sup: Supervisor, tmp_path: Path) -> None:
    common = {"limits": LIMITS, "cwd": str(tmp_path), "env": {"ANSWER": "42"}}
    sup.add(agent("cold", "misbehave.py", **common))
    sup.add(agent("warm", "misbehave.py", warm=True, **common))
    cold = await sup.wait_state("cold", State.READY)
    warm = await sup.wait_state("warm", State.READY)
    assert cold.pid and warm.pid
    assert await environment(sup, "warm") == await environment(sup, "cold")
    zygote = next(iter(sup.zygotes.zygotes.values()))
    assert zygote.spawned == 1 and sup.stats.cold_fallbacks == 0
    c, w = proc_view(cold.pid), proc_view(warm.pid)
    assert w["title"] == b"corral: agent warm#0" and c["title"] == b"corral: agent cold#0"
    del c["title"], w["title"]
    assert w == c
    assert w["pgid == pid"] and w["sid == pid"]
    assert "Max open files            200                  200" in str(w["limits"])


async def test_a_forked_agent_s_collector_leaves_the_zygote_s_heap_alone(
        sup: Supervisor, tmp_path: Path) -> None:
    """The zygote freezes its heap before it forks: a child's collections walk only what
    the child made (walking the zygote's objects wrote to, and so copied, their pages in
    every child)."""
    script = tmp_path / "census.py"
    script.write_text(  # (run() freezes the agent's own heap too: counted before it)
        "import gc\nfrozen = gc.get_freeze_count()\nfrom corral.worker import run\n"
        "run(lambda i, c: frozen)\n")
    sup.add(agent("cold", command=[PY, str(script)]))
    sup.add(agent("warm", command=[PY, str(script)], warm=True))
    await sup.wait_state("cold", State.READY)
    await sup.wait_state("warm", State.READY)
    warm = (await sup.tasks.run("warm", None)).output
    cold = (await sup.tasks.run("cold", None)).output
    assert sup.stats.cold_fallbacks == 0
    assert isinstance(warm, int) and warm > 1000 and cold == 0


async def test_a_warm_agents_exit_reasons_and_restarts_are_those_of_a_cold_one(
        sup: Supervisor, tmp_path: Path) -> None:
    sup.add(agent("crashy", "misbehave.py", warm=True, limits=Limits(file_size_mb=1)))
    r = await sup.wait_state("crashy", State.READY)
    first = r.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await sup.wait_state("crashy", State.BACKOFF)
    assert r.last_exit == "killed by SIGKILL"
    await sup.wait_state("crashy", State.READY)
    assert (await sup.tasks.run("crashy", {"do": "crash"})).status == "lost"
    await sup.wait_state("crashy", State.BACKOFF)
    assert r.last_exit == "exited with status 3: crashing on request"
    await sup.wait_state("crashy", State.READY)
    await sup.tasks.run("crashy", {"do": "write", "mb": 5, "path": str(tmp_path / "f")})
    await sup.wait_state("crashy", State.BACKOFF)
    assert r.last_exit == "file size limit (RLIMIT_FSIZE 1 MiB)"
    assert next(iter(sup.zygotes.zygotes.values())).spawned == 3
    assert sup.stats.cold_fallbacks == 0


@pytest.mark.skipif(nobody_reason() is not None, reason=nobody_reason() or "")
async def test_a_forked_agent_runs_as_its_user_like_a_cold_one(
        sup: Supervisor, world_readable_tree: Path) -> None:
    tree = world_readable_tree
    common = {"command": [NOBODY_PY, str(tree / "examples" / "misbehave.py")],
              "env": {"PYTHONPATH": str(tree)}, "cwd": str(tree), "user": "nobody",
              "limits": LIMITS}
    sup.add(agent("cold", **common))
    sup.add(agent("warm", warm=True, **common))
    cold = await sup.wait_state("cold", State.READY)
    warm = await sup.wait_state("warm", State.READY)
    assert cold.pid and warm.pid and sup.stats.cold_fallbacks == 0
    assert await environment(sup, "warm") == await environment(sup, "cold")
    c, w = proc_view(cold.pid), proc_view(warm.pid)
    del c["title"], w["title"]
    assert w == c
    assert str(w["uid"]).split() == ["65534"] * 4 and str(w["groups"]).strip() == ""
    zygote = next(iter(sup.zygotes.zygotes.values()))
    assert proc_view(zygote.pid)["uid"] == w["uid"]  # type: ignore[arg-type]


def unread(sock: socket.socket | None) -> int:
    """The bytes sent on `sock` that its peer has not read yet (the kernel's SIOCOUTQ)."""
    assert sock is not None
    return int(struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0])


async def test_a_zygote_killed_mid_spawn_means_a_cold_start_and_a_new_zygote(
        sup: Supervisor) -> None:
    said = notes(sup)
    sup.add(agent("phoenix", warm=True, backoff_initial=0.5, backoff_max=0.5))
    r = await sup.wait_state("phoenix", State.READY)
    zygote = next(iter(sup.zygotes.zygotes.values()))
    assert zygote.pid is not None and r.pid is not None
    os.kill(r.pid, signal.SIGKILL)
    await sup.wait_state("phoenix", State.BACKOFF)
    os.kill(zygote.pid, signal.SIGSTOP)  # it will take the restart's request, not answer
    await sup.wait_state("phoenix", State.STARTING)
    while not unread(zygote.sock):  # the request is in the zygote's socket
        await asyncio.sleep(0.01)
    os.kill(zygote.pid, signal.SIGKILL)
    await sup.wait_state("phoenix", State.READY, timeout=15)
    assert said == ["warm start unavailable, starting cold: zygote died mid-spawn: "
                    "zygote exited"]
    assert sup.stats.cold_fallbacks == 1
    # supervised: a zygote that served is started again, and the next start is warm
    while not (sup.zygotes.zygotes and next(iter(sup.zygotes.zygotes.values())).alive):
        await asyncio.sleep(0.01)
    fresh = next(iter(sup.zygotes.zygotes.values()))
    assert fresh is not zygote and fresh.pid != zygote.pid
    assert r.pid is not None
    os.kill(r.pid, signal.SIGKILL)
    await sup.wait_state("phoenix", State.BACKOFF)
    await sup.wait_state("phoenix", State.READY)
    assert fresh.spawned == 1 and sup.stats.cold_fallbacks == 1


async def test_a_preload_that_fails_to_import_is_a_cold_start_with_the_error(
        sup: Supervisor) -> None:
    said = notes(sup)
    sup.add(agent("nopre", preload=["no_such_module_here"]))
    await sup.wait_state("nopre", State.READY)
    # (once per start: a restart under load says it again, from the remembered failure)
    assert set(said) == {"warm start unavailable, starting cold: preload failed: "
                         "ModuleNotFoundError: No module named 'no_such_module_here'"}
    assert not sup.zygotes.zygotes and sup.zygotes.failures == 1


@pytest.mark.parametrize("entry", ["lib", ""])
async def test_a_relative_pythonpath_is_read_from_the_agent_s_cwd_warm_as_cold(
        sup: Supervisor, tmp_path: Path, entry: str) -> None:
    """docs/frameworks.md's table: a relative PYTHONPATH beside `preload` (decision 2115).
    The zygote runs at /, where its Python took `lib` for /lib, and an empty entry (the
    cwd, to Python's startup) for /: every fork exited at its import
    (ModuleNotFoundError) where a cold start of the same agent served; and two agents
    writing the same entry in two directories are two zygotes, each its own."""
    for where in ("east", "west"):
        (tmp_path / where / entry).mkdir(parents=True, exist_ok=True)
        (tmp_path / where / "bin").mkdir()
        (tmp_path / where / entry / "shelf.py").write_text(f"WHERE = {where!r}\n")
        # (in a directory of its own: Python puts a script's first on its path)
        (tmp_path / where / "bin" / "agent.py").write_text(
            "import shelf\nfrom corral.worker import run\nrun(lambda i, c: shelf.WHERE)\n")

    def spec(where: str) -> dict[str, object]:
        return {"command": [PY, "bin/agent.py"], "cwd": str(tmp_path / where),
                "env": {"PYTHONPATH": f"{entry}{os.pathsep}{ROOT}"}}

    sup.add(agent("cold", **spec("east")))
    sup.add(agent("east", preload=["json"], **spec("east")))
    sup.add(agent("west", preload=["json"], **spec("west")))
    replicas = [await sup.wait_state(name, State.READY) for name in ("cold", "east", "west")]
    assert [(await sup.tasks.run(name, None)).output for name in ("cold", "east", "west")] \
        == ["east", "east", "west"]
    assert [(r.restarts, r.last_exit) for r in replicas] == [(0, None)] * 3
    assert sorted(z.key.pythonpath or "" for z in sup.zygotes.zygotes.values()) == [
        f"{os.path.join(tmp_path / where, entry) if entry else tmp_path / where}"
        f"{os.pathsep}{ROOT}" for where in ("east", "west")]
    assert [z.spawned for z in sup.zygotes.zygotes.values()] == [1, 1]
    assert sup.stats.cold_fallbacks == 0


async def test_a_preload_that_starts_a_thread_is_refused_with_the_reason(
        sup: Supervisor, tmp_path: Path) -> None:
    (tmp_path / "poller.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), name='poller', daemon=True)"
        ".start()\n")
    said = notes(sup)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sup.add(agent("threaded", preload=["poller"],
                  env={"PYTHONPATH": f"{tmp_path}:{root}"}))
    await sup.wait_state("threaded", State.READY)
    assert set(said) == {"warm start unavailable, starting cold: preload started threads, "
                         "which a fork would not copy: poller"}


async def test_a_command_a_zygote_cannot_run_starts_cold_with_the_reason(
        sup: Supervisor) -> None:
    said = notes(sup)
    sup.add(agent("flags", warm=True, command=[PY, "-X", "dev", "-c", "pass"],
                  restart="never"))
    await sup.wait_state("flags", State.TERMINATED)
    assert said[0] == ("warm start unavailable, starting cold: command is not "
                       "`PYTHON script.py ...` or `PYTHON -m module ...`")


async def test_a_zygote_retired_while_it_starts_is_closed_and_never_served(
        sup: Supervisor) -> None:
    """A release pruned while its zygote starts: the zygote is closed once its start ends
    (its waiter told why, to start cold), not kept serving an interpreter about to go."""
    key = Key(PY, (), None, None, None)
    waiter = asyncio.ensure_future(sup.zygotes.get(key, lambda: dict(os.environ)))
    await asyncio.sleep(0)  # the waiter's first step, which begins the zygote's start
    assert not waiter.done() and sup.zygotes.zygotes == {}
    sup.zygotes.retire(lambda k: k == key)
    with pytest.raises(ZygoteUnavailable, match="zygote retired while it started"):
        await asyncio.wait_for(waiter, 15)
    assert sup.zygotes.zygotes == {} and sup.zygotes.started == 0
    # a zygote is its interpreter reading its program from stdin
    assert not [c.pid for c in psutil.Process().children() if c.cmdline()[:2] == [PY, "-"]]
    # the key is not retired for ever: the next start of it serves
    z = await asyncio.wait_for(sup.zygotes.get(key, lambda: dict(os.environ)), 15)
    assert z.alive and sup.zygotes.zygotes == {key: z}
