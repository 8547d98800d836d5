"""The conformance suite's clients as forks of one process (tests/conformance_zygote.py):
a forked client ends as a fresh one would, with its status and its error on its own
stderr, and the suite's kill of what it started reaches the client. (The clients that
pass are tests/test_conformance.py's and tests/test_client_conformance_revisions.py's.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from .conformance_zygote import zygote
from .conftest import ROOT
from .test_daemon_cli import wait_until

CLIENT = str(Path(__file__).with_name("conformance_client.py"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MCP_CONFORMANCE_SCENARIO": "tools_call"}


def forks_of_the_zygote() -> list[psutil.Process]:
    """The clients the test's zygote (a child of this process) runs now."""
    return [c for p in psutil.Process().children()
            if any("conformance_zygote.py" in a for a in p.cmdline()) for c in p.children()]


def test_a_forked_client_that_fails_ends_as_a_fresh_one(tmp_path: Path) -> None:
    """Its server refuses the connection: the fork's status and the error it says are
    a fresh interpreter's, on the launcher's own stderr."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/mcp"
    fresh = subprocess.run([sys.executable, CLIENT, url], capture_output=True, text=True,
                           env=ENV, cwd=tmp_path, timeout=120)
    with zygote(tmp_path) as client:
        forked = subprocess.run([*client, url], capture_output=True, text=True, env=ENV,
                                cwd=tmp_path, timeout=120)
    assert fresh.returncode == 1, fresh.stderr
    assert (forked.returncode, forked.stdout) == (1, fresh.stdout), forked.stderr
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]


def test_the_launchers_kill_reaches_the_client(tmp_path: Path) -> None:
    """The suite ends a client past its timeout by killing what it started: the launcher
    passes SIGTERM on to the fork (whose server never answers), which ends, and the
    launcher with it."""
    with socket.socket() as silent, zygote(tmp_path) as client:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections queued, never accepted nor answered
        launcher = subprocess.Popen([*client, f"http://127.0.0.1:{silent.getsockname()[1]}"
                                     "/mcp"], env=ENV, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            [fork] = wait_until(forks_of_the_zygote, what="the client forked")
            launcher.send_signal(signal.SIGTERM)
            assert launcher.wait(30) == 1
            _, alive = psutil.wait_procs([fork], timeout=30)  # (the zygote's to reap)
            assert alive == []
        finally:
            launcher.kill()
            launcher.wait()
