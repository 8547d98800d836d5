"""Shared fixtures: a real Supervisor on uvloop, and checks that nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import os
import resource
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import uvloop

from corral.supervisor import AgentSpec, Supervisor

# pytest keeps each test file's rewritten (assert-introspecting) byte-code in __pycache__,
# but writes none where PYTHONDONTWRITEBYTECODE is set (this machine's shell sets it):
# every run's every worker then rewrote and compiled all 250 test files again, two
# thirds of a collection's CPU (bench/RESULTS.md, pytest's own overhead). Written from
# here on, for this process only (the CLIs, daemons and workers it starts keep the
# variable); the files conftest.py reaches before this line are few.
sys.dont_write_bytecode = False

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PY = sys.executable


def pytest_configure(config: pytest.Config) -> None:
    """A suite started as a background job of a non-interactive shell (CI runners, `cmd &`)
    inherits SIGINT ignored, and so would every CLI it starts: the tests that press Ctrl-C
    on `corral tail` would wait for an exit that cannot come. Give SIGINT back its
    terminal meaning in this process; its children then start with the default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    in_collection_order(config)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Iterator[None]:
    """The collection's objects (every test module and what it imports: a worker collects
    the whole suite) live as long as the process. The collector's passes among them while
    importing find nothing, and frozen they are out of the passes the tests' own garbage
    brings on, each of which walked the whole heap (corral/cli/entry.py does the same)."""
    gc.disable()
    try:
        return (yield)
    finally:
        gc.freeze()
        gc.enable()


def pytest_asyncio_loop_factories(config: object, item: object) -> dict[str, object]:
    """Every async test runs on uvloop, as the daemon does."""
    return {"uvloop": uvloop.new_event_loop}


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def live_children() -> list[psutil.Process]:
    """This process's descendants, its fork server (tests/forkserver.py) and its MCP SDK
    and agents' servers (tests/warmforks.py) left out, were it one: they live as long as
    this process."""
    from . import forkserver, warmforks

    servers = {forkserver.server_pid(), *warmforks.server_pids()}
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in servers]


def agent(name: str, script: str = "hello.py", **kw: object) -> AgentSpec:
    """An AgentSpec running examples/SCRIPT with this interpreter; fast timings for tests."""
    defaults: dict[str, object] = {
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        # a limit, not a wait: a Python start is ~0.2 s here but seconds on a loaded 2-core
        # machine, and a start timed out there is a restart no test asked for
        "start_timeout": 30.0,
        # a limit too: an asked worker exits in ~50 ms, but a loaded machine can take more
        # than 2 s, and a stop escalated to SIGTERM reads "stopped (SIGTERM after 2 s)"
        "stop_timeout": 10.0,
    }
    defaults.update(kw)
    env = dict(defaults.pop("env", {}) or {})  # type: ignore[call-overload]
    env.setdefault("PYTHONPATH", str(ROOT))
    command = defaults.pop("command", [PY, str(EXAMPLES / script)])
    return AgentSpec(name=name, command=command, env=env, **defaults)  # type: ignore[arg-type]


async def all_ready(sup: Supervisor, name: str, timeout: float = 10.0) -> None:
    """Wait until every replica of `name` has answered initialize."""
    from corral.supervisor import State

    for i in range(len(sup.agent(name).replicas)):
        await sup.wait_state(name, State.READY, replica=i, timeout=timeout)


# a test's own asyncio children, which the in-process supervisors and daemons the tests
# make are given (Supervisor's `spared`)
SPARED: set[int] = set()


@pytest.fixture(autouse=True)
def _a_tests_own_children_are_its_own(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test's asyncio subprocesses (a CLI beside an in-process daemon) are the test's:
    its supervisor is given them, or containment's tick could reap one before the test's
    wait learns the status (the wait then hangs), or kill it as a re-parented orphan.
    What a wider fixture spared before the test (a server a module's tests share) stays
    spared after it."""
    real = asyncio.create_subprocess_exec
    wider = set(SPARED)

    async def spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await real(*args, **kwargs)
        SPARED.add(proc.pid)
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    spare_the_fork_server()
    yield
    SPARED.intersection_update(wider)


DAEMON_TITLE = "corral: supervisor"  # a daemon's process title (corral/daemon/daemon.py)


@pytest.fixture(autouse=True, scope="module")
def _a_files_daemons_end_with_it() -> Iterator[None]:
    """No daemon a test file started outlives the file: one left running would take a
    later test's Redis as its own when that test's server gets the port its own had (a
    node refused at start by "another live daemon beating as node a", ci34). Killed by
    pid, and the file's last test fails naming them."""
    yield
    from . import forkserver

    server = forkserver.server_pid()
    mine = live_children()
    with contextlib.suppress(psutil.Error):  # (the fork server's are its, not ours)
        mine += psutil.Process(server).children(recursive=True) if server else []
    left = []
    for p in mine:
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE and " ".join(p.cmdline()).startswith(
                    DAEMON_TITLE):
                left.append((p.pid, p.ppid()))
                p.kill()
    assert not left, f"daemons left running by this file (pid, parent): {left}"


@pytest.fixture(autouse=True, scope="session")
def _fork_server() -> None:
    """This process's fork server, started before the first test: not while a test's
    in-process Supervisor makes this process a subreaper, which the server, re-parented
    at its start, would then be a child of (tests/forkserver.py)."""
    from . import forkserver

    if forkserver.enabled():
        forkserver.server()


def spare_the_fork_server() -> None:
    """This process's fork server (tests/forkserver.py) and MCP SDK and agents' servers
    (tests/warmforks.py) are its children for the whole run: an in-process supervisor's
    sweep of re-parented orphans would kill them."""
    from . import forkserver, warmforks

    # (the warm servers that run: one a test killed is started again where next used)
    for pid in (forkserver.server_pid(), *warmforks.servers()):
        if pid is not None:
            SPARED.add(pid)


@pytest.fixture(scope="module")
def warm_mcp_sdk() -> None:
    """This process's MCP SDK server (tests/warmforks.py), for the tests whose daemons
    start MCP servers on the official SDK by `warmforks.sdk_command`: each a fork of it,
    not an interpreter that imports the SDK again (~1.4 s of CPU a start). Asked by each
    module that uses it, before the module's own daemons: one a test killed since is
    started again there."""
    from . import warmforks

    pid = warmforks.sdk_server()
    if pid is not None:
        SPARED.add(pid)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A new state database (migrated), for the journal in-process."""
    from corral.daemon.storeschema import open_database

    path = tmp_path / "state" / "corral.db"
    open_database(path).close()
    return path


@pytest.fixture
async def sup() -> AsyncIterator[Supervisor]:
    """A supervisor with a fast heartbeat; on teardown, asserts no fd, process or zombie
    outlives it."""
    before = open_fds()
    # 2 s: short enough for hang tests, long enough for a loaded CI machine's workers
    s = Supervisor(heartbeat_interval=0.1, heartbeat_timeout=2.0, spared=SPARED)
    s.open()
    try:
        yield s
    finally:
        await s.close(graceful=False)
    leaked = open_fds() - before
    # the loop's own fds may have been created lazily during the test; only pipes and
    # pidfds are ours
    ours = {fd for fd in leaked if _is_pipe_or_pidfd(fd)}
    assert not ours, f"leaked fds: {sorted(ours)}"
    children = live_children()
    zombies = [p for p in children if p.status() == psutil.STATUS_ZOMBIE]
    for p in children:
        p.kill()
    assert not zombies, f"zombies left: {zombies}"
    assert not children, f"processes left: {[(p.pid, p.cmdline()) for p in children]}"


def _is_pipe_or_pidfd(fd: int) -> bool:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return target.startswith("pipe:") or "pidfd" in target


# -- running workers as an unprivileged user ---------------------------------------------
NOBODY_PY = "/usr/bin/python3"


def nobody_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to drop a worker to user nobody (the suite is not running as root)"
    try:
        import pwd

        pwd.getpwnam("nobody")
    except KeyError:
        return "no user 'nobody' on this machine"
    if not os.access(NOBODY_PY, os.X_OK):
        return f"{NOBODY_PY} (a Python that nobody may run) is missing"
    return None


@pytest.fixture
def world_readable_tree() -> Iterator[Path]:
    """A copy of the worker SDK and examples that user nobody can read."""
    d = Path(tempfile.mkdtemp(prefix="corral-nobody-"))
    try:
        (d / "corral" / "worker").mkdir(parents=True)
        shutil.copy(ROOT / "corral" / "__init__.py", d / "corral" / "__init__.py")
        for sdk in (ROOT / "corral" / "worker").glob("*.py"):  # the SDK is every module there
            shutil.copy(sdk, d / "corral" / "worker")
        shutil.copytree(EXAMPLES, d / "examples")
        for p in [d, *d.rglob("*")]:
            mode = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | stat.S_IWUSR
            if p.is_dir():
                mode |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
            p.chmod(mode)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- hangs fail fast ----------------------------------------------------------------------
# pytest-timeout's SIGALRM cannot interrupt a loop parked in uvloop's C code, so every
# async test also runs under an asyncio deadline that fails just that test, and keeps
# pytest-timeout's thread method as the backstop (it ends the whole process: in a
# pytest-xdist worker, the crash took the run with it, as xdist could not give a
# replaced worker its file). A sync test's timeout is SIGALRM's (pyproject), which fails
# that test alone, its processes killed by its own teardown. The deadline is a hang's
# bound: at 45 s it was within reach of tests that take seconds on a quiet host, on two
# cores shared by five workers at load 40, and it costs a passing test nothing
ASYNC_TEST_TIMEOUT = 90.0
# The backstop comes this long after the deadline at the least: the deadline fails the test
# alone, and its teardown (a daemon stopped, its agents ended) runs within this. A backstop
# at the deadline's own second (test_schemathesis's 300 and 300), or below it (a deadline
# over pyproject's timeout, no marker of its own), ended the worker first: its clock starts
# at the test's setup, the deadline's at its call (a worker crash at load 30)
BACKSTOP_GRACE = 60.0


def backstop(item: pytest.Item, deadline: float) -> pytest.MarkDecorator:
    """An async test's pytest-timeout marker, by the thread method: its own seconds, if it
    gave some, else the run's, and never before `deadline` and its grace."""
    given = item.get_closest_marker("timeout")
    seconds = given.kwargs.get("timeout", given.args[0] if given.args else None) if given \
        else None
    if seconds is None:  # pyproject's, or the command line's (pytest-timeout's reading)
        seconds = getattr(item.config, "_env_timeout", None)
    if not seconds:  # no timeout asked for (0 turns it off)
        return pytest.mark.timeout(seconds, method="thread")
    return pytest.mark.timeout(max(float(seconds), deadline + BACKSTOP_GRACE),
                               method="thread")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):
        items[:] = longest_first(config, items)
    import asyncio
    import functools
    import inspect

    for item in items:
        fn = getattr(item, "obj", None)
        if fn is None or not inspect.iscoroutinefunction(fn) or hasattr(fn, "_deadline"):
            continue
        limit = ASYNC_TEST_TIMEOUT
        marker = item.get_closest_marker("deadline")
        if marker is not None:
            limit = float(marker.args[0])

        def wrap(f: object, limit: float = limit) -> object:
            @functools.wraps(f)  # type: ignore[arg-type]
            async def with_deadline(*args: object, **kwargs: object) -> object:
                # only the deadline's own expiry is a hang: a TimeoutError of the test's
                # own wait (a bound it gave) is its failure, told as it is
                deadline = asyncio.timeout(limit)
                try:
                    async with deadline:
                        return await f(*args, **kwargs)  # type: ignore[operator]
                except TimeoutError:
                    if not deadline.expired():
                        raise
                    pytest.fail(f"test hung: no result within {limit:g} s")

            with_deadline._deadline = True  # type: ignore[attr-defined]
            return with_deadline

        item.obj = wrap(fn)  # type: ignore[attr-defined]
        item.add_marker(backstop(item, limit), append=False)


# -- beside other tests (pytest-xdist, `./test.sh` runs files in parallel) ----------------
def in_collection_order(config: pytest.Config) -> None:
    """The files go to the workers in the order the workers collected them (pytest-xdist
    would reorder them by their count of tests, which put the soak's four tests, three
    minutes of one process, at the end of the run, where nothing else ran beside it)."""
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False


# a test's time where its file has none kept yet: the suite's mean, 1.1 s a test function
# in tests/durations.json. Ranked at 0 s, the files new since (48 of 306, the contract
# suite's among them) were handed out after every file kept, and a long one of them,
# started last, ran on with the other workers idle
UNKNOWN_TEST_SECONDS = 1.0


def longest_first(config: pytest.Config, items: list[pytest.Item]) -> list[pytest.Item]:
    """A worker's collection, its files longest first: a file's time in the last run
    (pytest's cache), else as tests/durations.json keeps it (a fresh clone has no cache:
    scripts/suite_times.py --write), else a minute for a file marked `long` (minutes by
    design, new since), else a second a test for a file new since (UNKNOWN_TEST_SECONDS),
    and the files with more tests first among equals; the files
    holding a test marked `alone` after all the others. Each file's tests keep their
    order. Every worker reads the same cache, so each collects in one order: the longest
    files start first, and the run does not end on a long file with nothing beside it."""
    cache = getattr(config, "cache", None)
    seconds: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        seconds.update(json.loads((Path(__file__).parent / "durations.json").read_text()))
    if cache is not None:
        seconds.update(cache.get("corral/durations", {}))
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def rank(path: str) -> tuple[bool, float, int]:
        known = seconds.get(path)
        if known is None:
            known = 60.0 if any(i.get_closest_marker("long") for i in files[path]) \
                else UNKNOWN_TEST_SECONDS * len(files[path])
        # a file holding a test marked `alone` goes last: its turn waits for every test
        # beside it to end, the other workers held at the gate meanwhile, and one of them
        # is the soak's, a minute and a half in its first test's setup
        alone = any(i.get_closest_marker("alone") for i in files[path])
        return (alone, -known, -len(files[path]))

    return [item for path in sorted(files, key=rank) for item in files[path]]


class Turns:
    """Whose turn it is across the workers of one run: every test holds a shared lock
    while it runs, a test marked `alone` the exclusive one, so it runs with no other test
    beside it (it counts what a whole user runs, as RLIMIT_NPROC of user nobody does, or
    every process of that user). The exclusive one waits while any test runs, the tests
    asked for meanwhile going first: a file holding a test marked `alone` is handed out
    last (`longest_first`), so it runs once the others are done, rather than holding the
    workers that still had tests at the gate while the ones running ended (a turnstile
    did: the run's tail was that wait, then the `alone` test, then theirs). Locks held
    by a worker that dies go with its fds."""

    def __init__(self, directory: Path) -> None:
        self.lock = open(directory / "corral-turns.lock", "a")  # noqa: SIM115

    @contextlib.contextmanager
    def take(self, alone: bool) -> Iterator[None]:
        fcntl.flock(self.lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)


_TURNS: Turns | None = None
# An async test's backstop (`backstop`) ends its worker with every thread's stack written
# to the worker's terminal, which pytest-xdist sends nowhere: a run said only "[gwN] node
# down: Not properly terminated", the test and what held it unknown. This long before the
# backstop, the stacks go to the run's own stderr (pytest's faulthandler's copy of it)
STACKS_AHEAD = 5.0


@contextlib.contextmanager
def stacks_ahead(item: pytest.Item) -> Iterator[None]:
    """Every thread's stack written to the run's stderr STACKS_AHEAD before the test's
    backstop ends its process, if it is still running then."""
    import faulthandler

    from _pytest.faulthandler import fault_handler_stderr_fd_key

    marker = item.get_closest_marker("timeout")
    seconds = marker.kwargs.get("timeout", marker.args[0] if marker.args else None) \
        if marker is not None and marker.kwargs.get("method") == "thread" else None
    stderr = item.config.stash.get(fault_handler_stderr_fd_key, None)
    if not seconds or stderr is None:
        yield
        return
    faulthandler.dump_traceback_later(max(1.0, float(seconds) - STACKS_AHEAD), file=stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """A test's turn, taken outside its setup, teardown and timeout (the wait for one is
    not the test's time). Only in a worker: a run of one process has no one beside it."""
    global _TURNS
    if not hasattr(item.config, "workerinput"):
        yield
        return
    if _TURNS is None:
        # a worker's basetemp is a directory of the run's own (popen-gwN): its parent
        # is the one directory every worker of this run shares, and no other run
        _TURNS = Turns(item.config._tmp_path_factory.getbasetemp().parent)  # type: ignore[attr-defined]
    asked = time.monotonic()
    with _TURNS.take(item.get_closest_marker("alone") is not None), stacks_ahead(item):
        # what the turn cost, carried by the setup's report (scripts/suite_times.py)
        began = time.monotonic()
        item.user_properties.append((_TURN_MARK, round(began - asked, 4)))
        yield
    timeline = os.environ.get("CORRAL_TEST_TIMELINE")
    if timeline:
        # each test's worker, turn asked, begun and ended (monotonic: one clock for the
        # machine), a line each, to see what a parallel run's workers did when; and the
        # worker's pid and its fork server's, which process accounting's records name as
        # the parents of what a test started (the file's true CPU: a worker's
        # RUSAGE_CHILDREN counts a long-lived child's at whichever test reaps it), and the
        # worker's own CPU so far (its in-process daemons' threads in it)
        from . import forkserver

        own = resource.getrusage(resource.RUSAGE_SELF)
        with open(timeline, "a") as out:
            out.write(json.dumps([item.config.workerinput["workerid"],  # type: ignore[attr-defined]
                                  item.nodeid, round(asked, 3), round(began, 3),
                                  round(time.monotonic(), 3), os.getpid(),
                                  forkserver.server_pid(),
                                  round(own.ru_utime + own.ru_stime, 3)]) + "\n")


# Each file's time in the last run that ran it, kept in pytest's cache: scripts/flaky.py
# repeats the slowest files (those that wait on processes, beats and deadlines, where a
# race shows first) without a list kept by hand. Beside it, the CPU the file's tests
# spent (this process and every child it reaped, and theirs): a file whose time is mostly
# not CPU waits on beats, deadlines and backoffs, and so can share a core with others
# (bench/RESULTS.md, the suite's section).
_FILE_SECONDS: dict[str, float] = {}
_FILE_CPU: dict[str, float] = {}
_FILE_TURNS: dict[str, float] = {}
# and each test's time and CPU (its phases summed): the tests that wait longest on the
# daemons' timers, beside their CPU (scripts/suite_times.py --tests)
_TEST_TIMES: dict[str, list[float]] = {}
_CPU_MARK = "cpu_seconds"
_TURN_MARK = "turn_seconds"
HELD_ALARM = 0.1  # seconds after the report: in the phase that follows it
_cpu_since = 0.0


def _cpu_now() -> float:
    from . import forkserver, warmforks

    mine = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    # and the fork server's children (their parent is the server, which reports each
    # one's wait4 rusage as it ends), and the server's own; and the MCP SDK and agents'
    # servers' children (tests/warmforks.py)
    return (mine.ru_utime + mine.ru_stime + reaped.ru_utime + reaped.ru_stime
            + forkserver.reported_cpu() + warmforks.reported_cpu())


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    global _cpu_since
    del nodeid, location
    _cpu_since = _cpu_now()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: object) -> Iterator[None]:
    """Each phase's report carries the CPU spent since the last, so that a worker's reach
    the controller (pytest-xdist sends a report's user_properties). A test's SIGALRM
    (pytest-timeout) that comes while pytest makes the report is held until it is made:
    raised in pytest's own formatting of a failure, it was an INTERNALERROR that ended a
    parallel run. Held, it comes at once after, in the next phase. A failure whose
    traceback pytest cannot format (`unformatted`) is reported without it."""
    global _cpu_since
    held: list[int] = []
    alarm = signal.signal(signal.SIGALRM, lambda signum, frame: held.append(signum))
    try:
        outcome = yield
    finally:
        signal.signal(signal.SIGALRM, alarm)
        if held:
            signal.setitimer(signal.ITIMER_REAL, HELD_ALARM)
    try:
        report = outcome.get_result()
    except SystemError as exc:
        report = unformatted(item, call, exc)  # type: ignore[arg-type]
        outcome.force_result(report)
    now = _cpu_now()
    report.user_properties.append((_CPU_MARK, round(now - _cpu_since, 4)))
    _cpu_since = now


def unformatted(item: pytest.Item, call: pytest.CallInfo[None], exc: SystemError
                ) -> pytest.TestReport:
    """The phase's report, failed, with its exception and why its traceback is missing:
    CPython 3.11.7's ast.parse, in pytest's reading of the failing lines, raised "AST
    constructor recursion depth mismatch" on a loaded host, out of the report's making,
    an INTERNALERROR that ended the worker and the parallel run with it (CI b2, suite 1)."""
    said = call.excinfo.exconly() if call.excinfo is not None else "(no exception)"
    return pytest.TestReport(
        item.nodeid, item.location, {k: 1 for k in item.keywords}, "failed",
        f"{said}\n(its traceback not formatted: {type(exc).__name__}: {exc})", call.when,
        [], call.duration, call.start, call.stop, user_properties=list(item.user_properties))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration
    cpu = sum(float(v) for k, v in report.user_properties if k == _CPU_MARK)  # type: ignore[arg-type]
    _FILE_CPU[path] = _FILE_CPU.get(path, 0.0) + cpu
    spent = _TEST_TIMES.setdefault(report.nodeid, [0.0, 0.0])
    spent[0] += report.duration
    spent[1] += cpu
    if report.when == "setup":
        turn = sum(float(v) for k, v in report.user_properties if k == _TURN_MARK)  # type: ignore[arg-type]
        _FILE_TURNS[path] = _FILE_TURNS.get(path, 0.0) + turn


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    # a worker's reports reach the controller too, which keeps the times of all of them
    if cache is None or not _FILE_SECONDS or hasattr(session.config, "workerinput"):
        return
    for key, seconds in (("corral/durations", _FILE_SECONDS), ("corral/cpu", _FILE_CPU),
                         ("corral/turns", _FILE_TURNS)):
        known = cache.get(key, {})
        known.update({f: round(s, 2) for f, s in seconds.items()})
        cache.set(key, known)
    kept = cache.get("corral/tests", {})
    kept.update({t: [round(w, 3), round(c, 3)] for t, (w, c) in _TEST_TIMES.items()})
    cache.set("corral/tests", kept)

