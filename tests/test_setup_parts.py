"""test.sh's set-up parts (scripts/setup-part.sh) and a test's wait for one
(tests/setup_parts.py): the part holds its lock from before it starts until it ends, its
status is there when the lock is free, a failure is told, and pytest is not left holding
a lock of its own."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ROOT, after_the_parts
from .setup_parts import VARIABLE, failed, installed, wait_for

# a part that ends when the test says: it reads a line from a FIFO the test writes
PART = """read line < "$GO"
[ "$line" = ok ] || exit 7
"""


def start(tmp: Path, name: str) -> tuple[subprocess.Popen[str], Path, dict[str, str]]:
    """A shell that sources scripts/setup-part.sh, starts part NAME, says its pid and
    waits for it; the part ends at the line the test writes to GO."""
    parts = tmp / "parts"
    parts.mkdir(exist_ok=True)
    go = tmp / f"{name}.go"
    os.mkfifo(go)
    (tmp / f"{name}.sh").write_text(PART)
    env = {**os.environ, VARIABLE: str(parts), "GO": str(go)}
    sh = subprocess.Popen(
        ["sh", "-c", f'. "$1"; part {name} "$2"; echo $!; ls /proc/$$/fd; echo end; wait $!', "sh",
         str(ROOT / "scripts" / "setup-part.sh"), str(tmp / f"{name}.sh")],
        env=env, stdout=subprocess.PIPE, text=True)
    return sh, go, env


def held(lock: Path) -> bool:
    """Whether another holds `lock` now (flock -n fails at once: no wait)."""
    return subprocess.run(["flock", "-n", "-s", str(lock), "true"]).returncode != 0


def test_a_part_holds_its_lock_till_it_ends_and_a_waiter_reads_its_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sh, go, env = start(tmp_path, "servers")
    parts = Path(env[VARIABLE])
    try:
        assert sh.stdout is not None
        pid = int(sh.stdout.readline())
        # held from before the part began, by the part: the shell that started it keeps
        # no fd on the lock (fd 9 closed), so nothing it starts after holds it
        assert held(parts / "servers.lock")
        shell_fds = set(iter(lambda: sh.stdout.readline().strip(), "end"))
        assert "9" not in shell_fds, shell_fds
        assert os.readlink(f"/proc/{pid}/fd/9") == str(parts / "servers.lock")
        assert not (parts / "servers.status").exists()
        monkeypatch.setenv(VARIABLE, str(parts))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(failed, "servers")
            # the waiter reads the status only once the lock is free: had it not waited,
            # it would have found no status (FileNotFoundError), not None
            with open(go, "w") as f:
                f.write("ok\n")
            assert waiting.result(timeout=60) is None
        assert (parts / "servers.status").read_text() == "0\n"
        assert not held(parts / "servers.lock")
        assert sh.wait(timeout=60) == 0
    finally:
        if sh.poll() is None:
            sh.kill()
            sh.wait()


def test_a_failed_part_is_told_to_its_waiters_with_its_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sh, go, env = start(tmp_path, "tools")
    try:
        with open(go, "w") as f:
            f.write("no\n")  # the part's `exit 7`
        assert sh.wait(timeout=60) == 0  # the part's shell: its status is in the file
    finally:
        if sh.poll() is None:
            sh.kill()
            sh.wait()
    assert (Path(env[VARIABLE]) / "tools.status").read_text() == "7\n"
    assert (Path(env[VARIABLE]) / "tools.status").read_text() == "7\n"
    monkeypatch.setenv(VARIABLE, env[VARIABLE])
    assert failed("tools") == ("test.sh's set-up part 'tools' failed (exit 7): its output "
                               "says why")
    # a part this run has not (installed before it, or pytest run by hand): no wait
    assert failed("frameworks") is None
    monkeypatch.delenv(VARIABLE)
    assert failed("tools") is None


class Marked:
    """What wait_for reads of a test: its marks."""

    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self.marks = [m.mark for m in marks]

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [m for m in self.marks if m.name == name]


def test_a_test_marked_installed_skips_with_its_parts_failure_or_its_checks_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    for name, status in (("servers", "0"), ("tools", "3")):
        (parts / f"{name}.lock").touch()
        (parts / f"{name}.status").write_text(f"{status}\n")
    monkeypatch.setenv(VARIABLE, str(parts))
    checked: list[str] = []

    def check(reason: str | None) -> Callable[[], str | None]:
        def what_is_missing() -> str | None:
            checked.append(str(reason))
            return reason
        return what_is_missing

    wait_for(Marked(installed("servers", check=check(None))))  # type: ignore[arg-type]
    wait_for(Marked(installed("servers")))  # type: ignore[arg-type]
    with pytest.raises(pytest.skip.Exception, match=r"^the SDK is not installed$"):
        wait_for(Marked(installed("servers", check=check("the SDK is not installed"))))  # type: ignore[arg-type]
    # a part that failed is the reason, and what the test needs is not looked for
    with pytest.raises(pytest.skip.Exception,
                       match=r"^test.sh's set-up part 'tools' failed \(exit 3\)"):
        wait_for(Marked(installed("servers", "tools", check=check("unasked"))))  # type: ignore[arg-type]
    assert checked == ["None", "the SDK is not installed"]


class Item:
    """What after_the_parts reads of a test: its closest marker by name."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def get_closest_marker(self, name: str) -> object:
        return name if name in self.names else None


def test_a_file_that_needs_a_part_is_handed_out_once_the_parts_are_likely_done(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    files = {"long": [Item()], "needs": [Item("installed")], "mid": [Item()],
             "needs2": [Item(), Item("installed")], "short": [Item()], "last": [Item()],
             "alone": [Item("alone")]}
    seconds = {"long": 150.0, "needs": 100.0, "mid": 100.0, "needs2": 50.0, "short": 10.0,
               "last": 5.0, "alone": 1.0}
    order = list(files)

    def moved(files: dict[str, list[Item]]) -> list[str]:
        return after_the_parts([p for p in order if p in files], files,  # type: ignore[arg-type]
                               seconds, None)  # type: ignore[arg-type]

    # 150 s over 2 workers is not yet 120 s; 250 s is: both go after "mid", in their order
    assert moved(files) == ["long", "mid", "needs", "needs2", "short", "last", "alone"]
    # never after a file holding a test marked alone (the run's last turns)
    del files["mid"]
    assert moved(files) == ["long", "short", "last", "needs", "needs2", "alone"]
    # nor lost when the run has nothing after them
    del files["alone"]
    assert moved(files) == ["long", "short", "last", "needs", "needs2"]
