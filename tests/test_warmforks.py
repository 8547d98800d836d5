"""The tests' programs as forks of one process (tests/warmforks.py): a forked
conformance client ends as a fresh one would, with its status and its error on its own
stderr, and the suite's kill of what it started reaches the client; a fork's launcher
ends as its fork does (by its status, or its signal) whatever the server's other forks
do, a launcher killed outright takes its fork with it, and a launch with no server is a
cold start. An agent's server imported its preload once, for every fork, and a server
started bare holds none of the test's variables. (The clients that
pass are tests/test_conformance.py's and tests/test_client_conformance_revisions.py's.)"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from . import warmforks
from .conftest import ROOT, spare_the_fork_server
from .test_daemon_cli import wait_until
from .warmforks import (
    CLIENT_IMPORTS,
    agent_command,
    launch,
    reported_cpu,
    sdk_command,
    sdk_server,
    sdk_server_pid,
    served,
    servers,
    zygote,
)

CLIENT = str(Path(__file__).with_name("conformance_client.py"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MCP_CONFORMANCE_SCENARIO": "tools_call"}


def forks_of_the_zygote() -> list[psutil.Process]:
    """The clients the test's zygote (a child of this process) runs now."""
    return [c for p in psutil.Process().children()
            if any("warmforks.py" in a for a in p.cmdline()) for c in p.children()]


def test_a_forked_client_that_fails_ends_as_a_fresh_one(tmp_path: Path) -> None:
    """Its server refuses the connection: the fork's status and the error it says are
    a fresh interpreter's, on the launcher's own stderr."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/mcp"
    fresh = subprocess.run([sys.executable, CLIENT, url], capture_output=True, text=True,
                           env=ENV, cwd=tmp_path, timeout=120)
    with zygote(tmp_path, CLIENT, CLIENT_IMPORTS) as client:
        forked = subprocess.run([*client, url], capture_output=True, text=True, env=ENV,
                                cwd=tmp_path, timeout=120)
    assert fresh.returncode == 1, fresh.stderr
    assert (forked.returncode, forked.stdout) == (1, fresh.stdout), forked.stderr
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]


def test_the_launchers_kill_reaches_the_client(tmp_path: Path) -> None:
    """The suite ends a client past its timeout by killing what it started: the launcher
    passes SIGTERM on to the fork (whose server never answers), which ends, and the
    launcher with it."""
    with socket.socket() as silent, zygote(tmp_path, CLIENT, CLIENT_IMPORTS) as client:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections queued, never accepted nor answered
        launcher = subprocess.Popen([*client, f"http://127.0.0.1:{silent.getsockname()[1]}"
                                     "/mcp"], env=ENV, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            [fork] = wait_until(forks_of_the_zygote, what="the client forked")
            launcher.send_signal(signal.SIGTERM)
            assert launcher.wait(30) == -signal.SIGTERM
            _, alive = psutil.wait_procs([fork], timeout=30)  # (the zygote's to reap)
            assert alive == []
        finally:
            launcher.kill()
            launcher.wait()


# a program that says its argv and pid, then ends as its first argument says: "exit N",
# "kill" (SIGKILL, by itself), "spin" (once it spent a second of CPU) or "wait" (until
# its stdin ends)
PROGRAM = """
import os, signal, sys
print(" ".join(sys.argv[1:]), os.getpid(), flush=True)
if sys.argv[1] == "exit":
    sys.exit(int(sys.argv[2]))
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "spin":  # until its CPU reaches a second
    while sum(os.times()[:2]) < 1:
        pass
    sys.exit(0)
sys.stdin.read()
"""


@pytest.fixture
def program(tmp_path: Path) -> str:
    path = tmp_path / "program.py"
    path.write_text(PROGRAM)
    return str(path)


def test_a_launch_ends_with_its_fork_while_a_later_fork_runs(tmp_path: Path,
                                                            program: str) -> None:
    """The server's forks hold no other fork's request: a launch whose fork ended has
    its status at once, while a fork started after it still runs."""
    with zygote(tmp_path, program, ()) as command:
        launched = []
        try:
            for _ in range(2):  # the second forked once the first said it runs
                launched.append(subprocess.Popen([*command, "wait"], stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, text=True))
                assert launched[-1].stdout is not None
                assert launched[-1].stdout.readline().startswith("wait ")
            first, later = launched
            first.communicate("", timeout=30)
            assert (first.returncode, later.poll()) == (0, None)
        finally:
            for launcher in launched:
                launcher.kill()
                launcher.communicate(timeout=30)


def test_a_fork_killed_by_a_signal_ends_its_launcher_by_it(tmp_path: Path,
                                                           program: str) -> None:
    with zygote(tmp_path, program, ()) as command:
        killed = subprocess.run([*command, "kill"], capture_output=True, text=True,
                                timeout=30)
    assert killed.returncode == -signal.SIGKILL, killed.stderr


def test_a_launcher_killed_outright_takes_its_fork_with_it(tmp_path: Path,
                                                           program: str) -> None:
    """A daemon's SIGKILL of its server's process group reaches the launcher alone: its
    fork, waiting on a stdin still open, ends by the launcher's end."""
    with zygote(tmp_path, program, ()) as command:
        launcher = subprocess.Popen([*command, "wait"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert launcher.stdout is not None
            fork = psutil.Process(int(launcher.stdout.readline().split()[-1]))
            launcher.kill()
            assert launcher.wait(30) == -signal.SIGKILL
            fork.wait(30)  # (psutil.TimeoutExpired: the fork ran on)
        finally:
            launcher.kill()
            launcher.wait()
            assert launcher.stdin is not None
            launcher.stdin.close()


def test_a_launch_with_no_server_is_a_cold_start(tmp_path: Path, program: str) -> None:
    """No server at the path: the launcher becomes `python PROGRAM ARGS` itself."""
    missing = str(tmp_path / "no-server")
    cold = subprocess.run([sys.executable, "-I", "-S", launch.__code__.co_filename, "launch",
                           missing, program, "exit", "4"], capture_output=True, text=True,
                          timeout=60)
    said, _ = cold.stdout.rsplit(maxsplit=1)
    assert (cold.returncode, said) == (4, "exit 4"), cold.stderr


@pytest.mark.skipif(os.environ.get("CORRAL_TEST_WARM") == "0",
                    reason="CORRAL_TEST_WARM=0: no MCP SDK server")
@pytest.mark.usefixtures("warm_mcp_sdk")
def test_the_sdk_servers_forks_cpu_is_the_tests(program: str) -> None:
    """The worker's MCP SDK server is reaped at the worker's end: the CPU of each fork is
    counted as it ends (tests/conftest.py adds it to the test's), not then."""
    before = reported_cpu()
    spun = subprocess.run([*sdk_command(program), "spin"], capture_output=True, text=True,
                          timeout=60)
    assert (spun.returncode, spun.stdout.split()[0]) == (0, "spin"), spun.stderr
    assert 1 <= reported_cpu() - before < 5


@pytest.mark.skipif(os.environ.get("CORRAL_TEST_WARM") == "0",
                    reason="CORRAL_TEST_WARM=0: no MCP SDK server")
@pytest.mark.usefixtures("warm_mcp_sdk")
def test_an_sdk_server_a_test_killed_is_started_again_where_next_used(program: str) -> None:
    """A test that ends what its cgroup holds, or an in-process supervisor not told to
    spare it, may kill the worker's server: each test's setup leaves it ended (a file
    whose every test killed it had it started again, its imports made anew, at every
    test), and the next module that uses it starts another (`warm_mcp_sdk`), whose forks'
    CPU is counted after the first's."""
    killed = psutil.Process(sdk_server_pid())
    before = reported_cpu()
    killed.kill()
    killed.wait(30)
    spare_the_fork_server()  # (each test's setup)
    # (not started again there: the agents' servers an earlier test of this worker
    # started may run beside it)
    assert (sdk_server_pid(), killed.pid in servers()) == (killed.pid, False)
    sdk_server()  # (warm_mcp_sdk, at the next module that uses it)
    assert sdk_server_pid() not in (None, killed.pid)
    spun = subprocess.run([*sdk_command(program), "spin"], capture_output=True, text=True,
                          timeout=60)
    assert (spun.returncode, spun.stdout.split()[0]) == (0, "spin"), spun.stderr
    assert 1 <= reported_cpu() - before < 5


# a program that says which of the modules its arguments name were imported before it
# ran, and its pid
SAYS_IMPORTED = """
import os, sys
print(*[m in sys.modules for m in sys.argv[1:]], os.getpid(), flush=True)
"""


@pytest.fixture
def says_imported(tmp_path: Path) -> str:
    path = tmp_path / "says_imported.py"
    path.write_text(SAYS_IMPORTED)
    return str(path)


def test_a_servers_preload_is_imported_once_for_every_fork(
        tmp_path: Path, says_imported: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three launches: the server imported its preload once, at its start, and each
    fork found it imported, none importing it again."""
    said = tmp_path / "said"
    monkeypatch.setenv("CORRAL_TEST_IMPORT_SAID", str(said))
    module = "tests.servers.said_import"
    with served(tmp_path, (module,)) as (server, launcher):
        runs = [subprocess.run([*launcher, says_imported, module], capture_output=True,
                               text=True, timeout=60) for _ in range(3)]
        assert [(run.returncode, run.stdout.split()[0]) for run in runs] == \
            [(0, "True")] * 3, [run.stderr for run in runs]
        forks = {int(run.stdout.split()[1]) for run in runs}
        assert said.read_text().split() == [str(server.pid)]
        assert len(forks) == 3 and server.pid not in forks


def test_a_bare_server_holds_none_of_the_tests_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agents' server is started bare: a variable the test set for its daemon (a
    provider's key) is neither in a fork's environment nor in the memory that
    /proc/PID/environ shows of it (the server's own); a fork has its launcher's."""
    monkeypatch.setenv("CORRAL_TEST_SET", "by-the-test")
    program = tmp_path / "environ.py"
    program.write_text("import os\n"
                       "print(os.environ.get('CORRAL_TEST_SET'), os.environ.get('MINE'),\n"
                       "      b'CORRAL_TEST_SET' in open('/proc/self/environ', 'rb').read())\n")
    with served(tmp_path, (), bare=True) as (_, launcher):
        run = subprocess.run([*launcher, str(program)], capture_output=True, text=True,
                             timeout=60, env={"MINE": "launcher's", "PATH": os.defpath})
    assert (run.returncode, run.stdout.split()) == (0, ["None", "launcher's", "False"]), \
        run.stderr


@pytest.mark.skipif(os.environ.get("CORRAL_TEST_WARM") == "0",
                    reason="CORRAL_TEST_WARM=0: no agents' server")
def test_an_agent_command_is_a_fork_of_its_preloads_server_which_is_spared(
        says_imported: str) -> None:
    """`agent_command` starts this process's agents' server of the preload it names
    (one a preload), spared by the in-process daemons and none of a test's children."""
    from .conftest import SPARED, live_children

    command = agent_command(says_imported, "fractions")
    assert agent_command(says_imported, "fractions") == command  # the same server
    other = agent_command(says_imported)
    path = command[command.index("launch") + 1]
    assert other[other.index("launch") + 1] != path
    [server] = [p for p in psutil.Process().children() if path in p.cmdline()]
    assert server.pid in SPARED and server.pid not in {p.pid for p in live_children()}
    launched = subprocess.Popen([*command, "fractions"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    out, err = launched.communicate(timeout=60)
    imported, pid = out.split()
    assert (launched.returncode, imported) == (0, "True"), err
    assert int(pid) != launched.pid  # a fork, not the launcher become the program


async def test_a_server_slower_than_a_tests_wait_fails_that_test_saying_so_and_serves_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server whose preload takes longer than READY_WAIT (a loaded host's imports): the
    async test that asked for it fails saying so, rather than hold its event loop until
    the backstop ends its worker, and the server, left starting, is the next asker's."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("CORRAL_TEST_IMPORT_GATE", str(gate))
    monkeypatch.setattr(warmforks, "READY_WAIT", 0.5)
    module = "tests.servers.gated_import"
    server = warmforks._Server("gated", (module,), bare=False)
    try:
        with pytest.raises(RuntimeError) as raised:
            server.server()
        pid = server.pid()
        assert str(raised.value) == (
            f"the warm server of ['{module}'] (pid {pid}) was not ready within 0.5 s: its "
            "imports, slowed by a loaded host (it goes on starting for the next test)")
        assert server.proc is not None and server.proc.poll() is None
        gate.touch()
        monkeypatch.setattr(warmforks, "READY_WAIT", 60.0)
        assert server.server() == pid  # the same server, ready now
    finally:
        if server.proc is not None:
            warmforks.stop(server.proc, server.path)


def test_a_server_started_early_is_not_waited_for_and_its_first_use_waits_for_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`prestart`'s start (`_Server.spawned`): the server starts and nothing waits for
    its preload, still being imported; its first use gets that same server once ready."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("CORRAL_TEST_IMPORT_GATE", str(gate))
    server = warmforks._Server("early", ("tests.servers.gated_import",), bare=False)
    try:
        server.spawned()
        assert server.proc is not None and server.proc.poll() is None
        assert not server.ready
        pid = server.pid()
        gate.touch()
        assert server.server() == pid
        assert server.ready
    finally:
        if server.proc is not None:
            warmforks.stop(server.proc, server.path)


WORKER = """
import sys, time
from tests import warmforks
server = warmforks._Server("orphan", (), bare=True)
print(server.server(), server.path, flush=True)
time.sleep(600)
"""


def test_a_server_ends_with_the_worker_that_started_it_killed_outright() -> None:
    """A pytest worker killed outright (SIGKILL: xdist's, or a backstop's, at load) runs
    no atexit: its server, whose stdout the worker alone read, sees that end closed and
    ends too, its socket gone. On the tree before it lived on, an orphan."""
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ,
                                                        "PYTHONPATH": str(ROOT)})
    server: psutil.Process | None = None
    try:
        assert worker.stdout is not None
        pid, path = worker.stdout.readline().split()
        server = psutil.Process(int(pid))
        assert server.ppid() == worker.pid and os.path.exists(path)
        worker.kill()
        assert worker.wait(30) == -signal.SIGKILL
        try:
            server.wait(30)
        except psutil.TimeoutExpired:
            pytest.fail(f"the server (pid {pid}) outlived its killed worker by 30 s")
        assert not os.path.exists(path) and not os.path.exists(path + ".cpu")
    finally:
        worker.kill()
        worker.wait()
        if server is not None and server.is_running():
            server.kill()
            server.wait(30)
        for made in (f"/tmp/corral-warm-orphan-{worker.pid}",
                     f"/tmp/corral-warm-orphan-{worker.pid}.cpu"):
            with contextlib.suppress(OSError):
                os.unlink(made)
