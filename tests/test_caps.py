"""Caps are in force before the agent's first instruction, and exits name them."""

from __future__ import annotations

import resource
import signal
import subprocess

from corral.supervisor.caps import disable_own_core_dumps, explain_exit, wrap_argv
from corral.supervisor.config import Limits


def limits_of(argv: list[str]) -> dict[str, tuple[str, str]]:
    out = subprocess.run(wrap_argv(argv, LIM), capture_output=True, text=True, check=True)
    rows = {}
    for line in out.stdout.splitlines()[1:]:
        name = line[:26].strip()
        soft, hard = line[26:].split()[:2]
        rows[name] = (soft, hard)
    return rows


LIM = Limits(memory_mb=256, cpu_seconds=3, open_files=64, processes=7, file_size_mb=1)


def test_limits_hold_for_the_exec_d_program() -> None:
    # `cat` reads its own limits: the first program instruction already runs under them
    rows = limits_of(["cat", "/proc/self/limits"])
    assert rows["Max address space"] == (str(256 * 1024 * 1024),) * 2
    assert rows["Max cpu time"] == ("3", "4")
    assert rows["Max open files"] == ("64", "64")
    assert rows["Max processes"] == ("7", "7")
    assert rows["Max file size"] == (str(1024 * 1024),) * 2
    assert rows["Max core file size"][0] == "0"


def test_no_caps_needs_no_prologue_once_core_dumps_are_off() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (min(hard, 1 << 20), hard))
        argv = wrap_argv(["true"], Limits())
        assert argv[2] == 'ulimit -S -c 0 || exit 126; exec "$@"'
        disable_own_core_dumps()
        assert wrap_argv(["true"], Limits()) == ["true"]
        assert wrap_argv(["true"], Limits(core_mb=1))[2] == (
            'ulimit -S -c 2048 || exit 126; exec "$@"')
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def test_exit_reasons_name_the_cap() -> None:
    assert explain_exit(-signal.SIGXCPU, LIM, []) == "CPU time limit (RLIMIT_CPU 3 s)"
    assert explain_exit(-signal.SIGKILL, LIM, [], cpu_seconds_used=3.9) == (
        "CPU time limit (RLIMIT_CPU 3 s)")
    assert explain_exit(-signal.SIGKILL, LIM, [], cpu_seconds_used=0.1) == "killed by SIGKILL"
    assert explain_exit(1, LIM, ["Traceback", "MemoryError"]) == (
        "memory limit (RLIMIT_AS 256 MiB)")
    assert explain_exit(70, LIM, ["OSError: [Errno 24] Too many open files"]) == (
        "open files limit (RLIMIT_NOFILE 64)")
    assert explain_exit(70, LIM, ["BlockingIOError: [Errno 11] Resource temporarily "
                                  "unavailable"]) == "process limit (RLIMIT_NPROC 7)"
    assert explain_exit(70, LIM, ["OSError: [Errno 27] File too large"]) == (
        "file size limit (RLIMIT_FSIZE 1 MiB)")
    assert explain_exit(-signal.SIGXFSZ, LIM, []) == "file size limit (RLIMIT_FSIZE 1 MiB)"
    # a symptom without its cap in force is not blamed on a cap
    # ... but the reason carries the last stderr line
    assert explain_exit(1, Limits(), ["MemoryError"]) == "exited with status 1: MemoryError"
    assert explain_exit(-signal.SIGSEGV, LIM, []) == "killed by SIGSEGV"
    assert explain_exit(0, LIM, []) == "exited with status 0"


def test_an_exit_without_a_cap_carries_its_last_stderr_line_trimmed() -> None:
    tb = ["Traceback (most recent call last):", '  File "a.py", line 1, in <module>',
          "ModuleNotFoundError: No module named 'nosuch'", "   ", ""]
    assert explain_exit(1, Limits(), tb) == (
        "exited with status 1: ModuleNotFoundError: No module named 'nosuch'")
    assert explain_exit(-signal.SIGSEGV, Limits(), ["  boom  "]) == "killed by SIGSEGV: boom"
    long = explain_exit(2, Limits(), ["x" * 500])
    assert long == "exited with status 2: " + "x" * 199 + "…"
    # nothing said: nothing added
    assert explain_exit(2, Limits(), ["", " "]) == "exited with status 2"
