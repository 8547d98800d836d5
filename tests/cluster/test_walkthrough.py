"""docs/cluster.md's "Two nodes on one machine", run as it is written: its lines one after
another, from a copy of the repository's examples, with only Redis's port changed to a free
one (issue 36, "The cluster for a newcomer")."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ..conftest import ROOT
from ..daemon_harness import free_port
from ..test_daemon_cli import wait_until

pytestmark = pytest.mark.timeout(180)


def walkthrough() -> list[str]:
    """The section's shell lines, comments left out."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    section = text.split("## Two nodes on one machine\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [ln for ln in block[1].splitlines() if ln.strip() and not ln.startswith("#")]


def answers(sock: Path) -> bool:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "corral"), "--socket", str(sock),
                           "info"], capture_output=True).returncode == 0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory of a short path: the nodes' sockets lie four levels under the repository,
    and a pytest-xdist worker's tmp_path (popen-gwN/...) took them past a unix socket's 107
    bytes (each daemon refused to listen, and the walkthrough waited for nodes that never
    answered)."""
    d = Path(tempfile.mkdtemp(prefix="corral-walk-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_two_nodes_on_one_machine_as_the_docs_say(short_dir: Path) -> None:
    port = str(free_port())
    here = short_dir / "repo"
    (here / "examples" / "cluster").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "hello.py", here / "examples" / "hello.py")
    for n in ("a", "b"):
        toml = (ROOT / "examples" / "cluster" / f"node-{n}.toml").read_text()
        assert ":6390/" in toml
        (here / "examples" / "cluster" / f"node-{n}.toml").write_text(
            toml.replace(":6390/", f":{port}/"))
    (here / ".venv").symlink_to(ROOT / ".venv")
    lines = [ln.replace("6390", port) for ln in walkthrough()]
    assert len(lines) == 10, lines
    started: list[subprocess.Popen[str]] = []
    outputs: list[str] = []
    sock = {n: here / "examples" / "cluster" / f".node-{n}" / "corral.sock" for n in "ab"}
    try:
        for line in lines:
            if line.endswith(" &"):
                # in the background, as the shell would; bash execs the one command, so
                # the pid is the daemon's (or Redis's)
                started.append(subprocess.Popen(["bash", "-c", line[:-2]], cwd=here,
                                                text=True, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE))
                continue
            if " nodes" in line:  # a person waits for the daemons to be up, and both seen
                wait_until(lambda: all(answers(s) for s in sock.values()), 60,
                           "both nodes answering")
                wait_until(lambda cmd=line + " --json": sum(  # type: ignore[misc]
                    n["alive"] for n in json.loads(subprocess.run(
                        ["bash", "-c", cmd], cwd=here, capture_output=True,
                        text=True).stdout)["nodes"]) == 2, 30, "both nodes alive")
            done = subprocess.run(["bash", "-c", line], cwd=here, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            outputs.append(done.stdout)
        # the first is the key's (no output), made readable by its owner alone
        assert (here / "examples" / "cluster" / "cluster.key").stat().st_mode & 0o777 == 0o600
        nodes, ran, tasks = outputs[1], json.loads(outputs[2]), outputs[3]
        rows = {r.split()[0]: r.split()[1] for r in nodes.splitlines()[1:]}
        assert rows == {"a": "alive", "b": "alive"}, nodes
        assert ran["greeting"] == "hello, cluster"
        assert len(tasks.splitlines()) == 2 and " hello " in tasks.splitlines()[1], tasks
        # the last three stopped every process the walkthrough started
        for p in started:
            assert p.wait(60) == 0, p.stderr.read() if p.stderr else ""
    finally:
        for p in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(p.pid).children(recursive=True):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
            if p.poll() is None:
                p.kill()
                p.wait()
