"""`corral logs` after a restart of the daemon shows what came before it, read back from
the log files the earlier daemon wrote (as `supervisorctl tail` and `pm2 logs` do): a
new user's trial found the lines of a restart on request gone from `corral logs` while
still in hello.log (issue 36)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.daemon.logreadback import read_back
from corral.daemon.logs import LogHub
from corral.jsonrpc import LineBlock

from .daemon_harness import hello, in_process
from .test_http_api import SOCKET


def test_the_file_is_read_back_in_batches_before_this_daemons_lines(tmp_path: Path) -> None:
    earlier = LogHub(tmp_path)
    earlier.emit("hello", 0, 41, "stderr", LineBlock.of([b"one", b"two"]), when=1000.0)
    earlier.emit("hello", 1, 42, "event", LineBlock.of([b"ready"]), when=1001.5)
    earlier.close()
    with (tmp_path / "hello.log").open("ab") as f:
        f.write(b"a line not in corral's form\n")
    hub = LogHub(tmp_path)
    hub.emit("hello", 0, 43, "stderr", LineBlock.of([b"three"]), when=2000.0)
    got = [(ln.time, ln.replica, ln.pid, ln.stream, ln.text)
           for ln in hub.tail(["hello"], 10, None)]
    assert got == [(1000.0, 0, 41, "stderr", "one"), (1000.0, 0, 41, "stderr", "two"),
                   (1001.5, 1, 42, "event", "ready"), (2000.0, 0, 43, "stderr", "three")]
    # once: asked again, nothing twice
    assert len(hub.tail(["hello"], 10, None)) == 4
    hub.close()
    # a budget that cuts into a line leaves that line out, not a piece of it
    whole = (tmp_path / "hello.log").stat().st_size
    assert [b[4].count for b in read_back(tmp_path / "hello.log", whole, 60)] == [1]


@pytest.mark.deadline(120)
async def test_logs_after_a_restart_show_the_earlier_daemons_lines(tmp_path: Path) -> None:
    async with in_process(tmp_path, hello("hello")) as d:
        first = d.sup.agent("hello").replicas[0].pid
    async with in_process(tmp_path, hello("hello")) as d:
        lines = (await d.dispatcher.call(SOCKET, "logs.tail",
                                         {"names": ["hello"], "lines": 100})).lines
        said = [(ln.pid, ln.text) for ln in lines]
        assert (first, "starting -> ready: initialized") in said
        second = d.sup.agent("hello").replicas[0].pid
        assert said[-1] == (second, "starting -> ready: initialized")
        timed = [(ln.time, ln.pid, ln.text) for ln in lines]
        assert len(timed) == len(set(timed))  # none twice
        assert [t for t, _, _ in timed] == sorted(t for t, _, _ in timed)
