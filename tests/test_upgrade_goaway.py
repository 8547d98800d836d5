"""`corral upgrade`'s drain (decisions 915-919): no control request is lost without a word
across the exec. The old image stops reading, answers what it read, tells each client
the last request it read (`daemon.going_away`) and closes; a client sends again, to the
next image, only what was not read. The race is made by hand: the new install's boot
waits on a FIFO the test writes once the client has read the notice, so the request is
sent while no image reads it, every time."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import methods as m
from corral.cli.client import Client, GoneAway, Unreachable
from corral.methods import GOING_AWAY

from .conftest import ROOT
from .daemon_harness import Daemon, corral_popen, free_port, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_upgrade import install, worker

pytestmark = pytest.mark.long


def gated(tmp: Path) -> tuple[Path, int]:
    """A second install whose new image waits, before it takes anything, for a byte on a
    FIFO; the FIFO, and the fd the test releases it by (held open: the image's open of it
    never blocks, only its read)."""
    gate = tmp / "gate"
    os.mkfifo(gate)
    fd = os.open(gate, os.O_RDWR)
    new = install(tmp, "gated", ("daemon/boot.py", "    global committed\n",
                                 f"    global committed\n    open({str(gate)!r}, 'rb')"
                                 ".read(1)\n"))
    return new, fd


@contextlib.contextmanager
def gated_daemon() -> Iterator[tuple[Daemon, Path, int]]:
    """A started daemon of one worker, and the gated install it may upgrade to (`gated`):
    its gate's fd is the test's to write, closed, with the daemon stopped, after."""
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"))
    new, gate = gated(tmp)
    try:
        d.start()
        yield d, new, gate
    finally:
        os.close(gate)
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def log_of(d: Daemon) -> str:
    return (d.state / "logs" / "corral.log").read_text()


def drained(d: Daemon, count: int = 1) -> None:
    """Until the old image has drained its control connections and gone to its exec."""
    wait_until(lambda: log_of(d).count("upgrading: handing ") >= count,
               what="the old image's exec")


def upgrade_to(d: Daemon, new: Path) -> str:
    """`corral upgrade --no-wait`: the version it goes to."""
    r = d.cli("upgrade", "--pythonpath", str(new), "--no-wait", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    return str(json.loads(r.stdout)["to_version"])


def tasks_of(d: Daemon) -> list[str]:
    return [t["task_id"] for t in d.ask("tasks.list", {"agent": "w"})["tasks"]]


def test_a_call_sent_as_the_old_image_holds_is_answered_by_the_new_one_once() -> None:
    with gated_daemon() as (d, new, gate):
        assert d.proc is not None
        # both connected to the old image, and one call each answered by it
        sender, idle = Client(d.sock, timeout=60), Client(d.sock, timeout=60)
        assert sender.ask(m.DaemonInfo()).pid == idle.ask(m.DaemonInfo()).pid == d.proc.pid
        version = upgrade_to(d, new)
        drained(d)
        notes: list[tuple[str, Any]] = []

        def told(method: str, params: Any) -> None:
            notes.append((method, params))
            if method == GOING_AWAY:  # sent before the next image exists: now it may
                os.write(gate, b"x")

        accepted = sender.ask(m.TasksSubmit(agent="w", input={"do": "echo", "value": 1}),
                              on_notification=told)
        why = f"upgrading to corral {version}"
        assert notes == [(GOING_AWAY, {"last_id": 1, "reason": why})]
        # answered by the new image, and made once: one task
        assert tasks_of(d) == [accepted.task_id]
        task = wait_until(lambda: (t := d.task(accepted.task_id))["status"] == "succeeded"
                          and t, what="the task's end")
        assert len(task["attempts"]) == 1
        # the client that sent nothing meanwhile: told, and its next call answered
        seen: list[tuple[str, Any]] = []
        assert idle.ask(m.DaemonInfo(), on_notification=lambda *n: seen.append(n)).pid \
            == d.proc.pid
        assert seen == [(GOING_AWAY, {"last_id": 1, "reason": why})]
        assert d.json("upgrade", "--report")["state"] == "done"
        assert re.search(r"upgrading: \d+ control connections? told to go away", log_of(d))
        sender.close()
        idle.close()
        assert d.stop() == 0


def test_a_call_the_next_image_never_takes_is_not_made_and_says_so() -> None:
    with gated_daemon() as (d, new, gate):
        assert d.proc is not None
        bounded = Client(d.sock, timeout=60, resume_wait=1.0)
        bounded.ask(m.DaemonInfo())
        version = upgrade_to(d, new)
        drained(d)
        # the new image does not come within the client's bound: not made, and said so
        began = time.monotonic()
        with pytest.raises(GoneAway) as caught:
            bounded.ask(m.TasksSubmit(agent="w", input={"do": "echo", "value": 1}))
        took = time.monotonic() - began
        assert str(caught.value) == (
            f"the corral daemon at {d.sock} went away (upgrading to corral {version}) "
            "before it read tasks.submit, and did not come back within 1 s: tasks.submit "
            "was not made")
        assert 1.0 <= took < 10.0, took
        bounded.close()
        os.write(gate, b"x")  # the new image now: the call given up on was not made
        wait_until(lambda: d.ask("daemon.upgrade", {"report": True})["state"] == "done",
                   what="the upgrade's end")
        assert tasks_of(d) == []
        # the daemon killed while the next image is awaited: said at once
        waiting = Client(d.sock, timeout=60, resume_wait=60.0)
        waiting.ask(m.DaemonInfo())
        upgrade_to(d, new)
        drained(d, 2)

        def kill(method: str, params: Any) -> None:
            if method == GOING_AWAY:
                assert d.proc is not None
                d.proc.send_signal(signal.SIGKILL)
                d.proc.wait(10)

        began = time.monotonic()
        with pytest.raises(GoneAway) as caught:
            waiting.ask(m.TasksSubmit(agent="w", input={"do": "echo", "value": 2}),
                        on_notification=kill)
        assert time.monotonic() - began < 10.0
        assert str(caught.value) == (
            f"the corral daemon at {d.sock} went away (upgrading to corral {version}) "
            "before it read tasks.submit, and did not come back: tasks.submit was not made")
        waiting.close()


def test_a_hold_that_hands_nothing_over_serves_again_what_waited_meanwhile() -> None:
    """A program never ready: the hand-over waits its 10 s for it, dispatch held and the
    sockets drained, then is refused. The calls made meanwhile, on the control socket
    and over HTTP, waited in the backlogs (this image read none of them) and are answered
    by it once it serves again, once."""
    tmp = shared_tmpdir()
    port = free_port()
    d = Daemon(tmp, worker("w") + '[agents.n]\ncommand = ["sleep", "1000"]\n'
               'protocol = "none"\nready = "notify"\nstart_timeout = 120.0\n',
               f'[http]\nlisten = "127.0.0.1:{port}"\n')
    try:
        d.start(wait_ready=False)
        assert d.proc is not None

        def w_ready() -> bool:
            try:
                return d.status().get("w#0", {}).get("state") == "ready"
            except Unreachable:  # (the socket is made once the set-up is over)
                return False

        wait_until(w_ready, what="w ready")
        c = Client(d.sock, timeout=60)
        c.ask(m.DaemonInfo())
        # an HTTP keep-alive connection, idle once answered
        kept = socket.create_connection(("127.0.0.1", port), timeout=30)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: corral\r\n\r\n")
        head = b""
        while b'"ok"}' not in head:
            head += kept.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        r = d.cli("upgrade", "--no-wait")
        assert r.returncode == 0, r.stderr + r.stdout
        # (the drain follows this line with no turn of the loop between: nothing sent
        # once it is written is read by this image until it serves again)
        wait_until(lambda: "holding dispatch" in log_of(d), timeout=30, what="the hold")
        # the idle keep-alive connection is closed by the drain (a request on it at the
        # exec would have been lost)
        assert kept.recv(4096) == b""
        kept.close()
        answered: list[tuple[int, str]] = []

        def get() -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=60) as res:
                answered.append((res.status, res.headers.get("Connection", "")))

        http = threading.Thread(target=get, daemon=True)
        http.start()
        notes: list[str] = []
        accepted = c.ask(m.TasksSubmit(agent="w", input={"do": "echo", "value": 1}),
                         on_notification=lambda method, _: notes.append(method))
        # answered once this image served again: after the refusal
        assert d.ask("daemon.upgrade", {"report": True})["state"] == "refused"
        assert notes == [GOING_AWAY]
        assert tasks_of(d) == [accepted.task_id]
        http.join(60)
        assert [status for status, _ in answered] == [200]
        assert "upgrade refused, nothing changed: n#0 could not be handed over" in log_of(d)
        c.close()
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_wait_the_hold_would_not_end_is_answered_at_once_and_corral_run_waits_again(
        ) -> None:
    """`tasks.run` waits for its task's end, which a held dispatch would not bring: the
    drain answers it at once, UNAVAILABLE, saying the task runs on; `corral run` then
    waits again for the task it was told was accepted, and the task is made once."""
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"))
    release = tmp / "release"
    try:
        d.start()
        assert d.proc is not None
        run = corral_popen(
            ["--socket", str(d.sock), "run", "w", "--input",
             json.dumps({"do": "await", "path": str(release)})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        tid = wait_until(lambda: (ids := tasks_of(d)) and ids[0], what="the task")
        wait_until(lambda: d.task(tid)["status"] == "running", what="running")
        ended: list[BaseException] = []

        def wait() -> None:
            try:
                with Client(d.sock, timeout=None) as c:
                    c.ask(m.TasksGet(task_id=tid))  # (connected: the drain tells it)
                    c.ask(m.TasksRun(agent="w", input={"do": "echo", "value": 1}))
            except BaseException as exc:
                ended.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        wait_until(lambda: len(tasks_of(d)) == 2, what="the second run's task")
        r = d.cli("upgrade")
        assert r.returncode == 0, r.stderr + r.stdout
        waiter.join(60)
        version = d.json("upgrade", "--report")["to_version"]
        assert [(type(e).__name__, str(e)) for e in ended] == [("GoneAway", (
            f"the corral daemon is upgrading to corral {version}: it ended this call "
            "unfinished; what it did stands (a task it submitted runs on: see `corral "
            "tasks`), ask again"))]
        release.touch()
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert json.loads(out) == {"awaited": str(release)}
        assert f"lost the daemon while waiting for task {tid}; reconnecting" in err
        # made once each: the awaited task and the second run's
        assert len(tasks_of(d)) == 2
        assert d.task(tid)["status"] == "succeeded" and len(d.task(tid)["attempts"]) == 1
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)
