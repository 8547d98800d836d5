"""Resource caps: how they are put in force, and how an exit is explained by them.

Caps hold before the agent's first instruction with no Python in the forked child
(preexec_fn is unsafe in a threaded process): the child execs a POSIX shell prologue that
lowers its rlimits with `ulimit` and `exec`s the agent. subprocess dropped privileges
before that, so the unprivileged user cannot raise the limits again.
"""

from __future__ import annotations

import math
import re
import resource
import shutil
import signal

from .config import Limits

SHELL = "/bin/sh"
# argv[0] of the prologue; shows in ps only for the microseconds before exec
PROLOGUE_NAME = "corral-caps"


# where `nice` is (coreutils); dash has no builtin for it. The prologue execs it, and it
# execs the agent: the pid stays the same
NICE = shutil.which("nice") or "/usr/bin/nice"
# The session's autogroup (sched(7)): the scheduler weighs each session as one group, and
# every replica is a session of its own, so its nice value is written there too, or it
# would weigh nothing against other sessions (no file, or a refused write: left as it was)
AUTOGROUP = "/proc/self/autogroup"
# cgroup v2's cpu.weight of a group with no weight of its own (nice 0's share)
DEFAULT_CPU_WEIGHT = 100
# each nice step is about 1.25 times less CPU than the one before (the kernel's
# sched_prio_to_weight table), as cpu.weight's steps are proportional
NICE_STEP = 1.25
KEEP = -2  # in rlimits(): leave this hard limit as it is
MIB = 1024 * 1024
# the shell's flag for each rlimit, and its unit in bytes (dash: -v KiB, -f/-c 512 bytes)
_ULIMIT = {
    resource.RLIMIT_AS: ("v", 1024),
    resource.RLIMIT_CPU: ("t", 1),
    resource.RLIMIT_NOFILE: ("n", 1),
    resource.RLIMIT_NPROC: ("p", 1),
    resource.RLIMIT_FSIZE: ("f", 512),
    resource.RLIMIT_CORE: ("c", 512),
}


def rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for each cap in force, for both start paths (the prologue,
    a zygote's child). The CPU hard limit is a second above the soft one, so SIGXCPU
    (nameable) comes before SIGKILL; of core, only the soft limit is set."""
    out = []
    if limits.memory_mb:
        out.append((resource.RLIMIT_AS, limits.memory_mb * MIB, limits.memory_mb * MIB))
    if limits.cpu_seconds:
        out.append((resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1))
    if limits.open_files:
        out.append((resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    if limits.processes:
        out.append((resource.RLIMIT_NPROC, limits.processes, limits.processes))
    if limits.file_size_mb:
        out.append((resource.RLIMIT_FSIZE, limits.file_size_mb * MIB,
                    limits.file_size_mb * MIB))
    if limits.core_mb or resource.getrlimit(resource.RLIMIT_CORE)[0] != 0:
        out.append((resource.RLIMIT_CORE, limits.core_mb * MIB, KEEP))
    return out


def nice_for_weight(cpu_weight: int) -> int:
    """The nice value that gives a process about the share a cgroup's cpu.weight gives.
    A weight above 100 is nice 0: an unprivileged daemon may lower a process's priority
    but never raise it, so tenants are favoured by lowering the others' weights."""
    if cpu_weight <= 0 or cpu_weight >= DEFAULT_CPU_WEIGHT:
        return 0
    return min(19, round(math.log(DEFAULT_CPU_WEIGHT / cpu_weight, NICE_STEP)))


def ulimit_script(limits: Limits) -> str:
    """The shell prologue for these limits. The soft limit must be lowered before the
    hard one or the kernel refuses (EINVAL)."""
    parts = []
    for which, soft, hard in rlimits(limits):
        flag, unit = _ULIMIT[which]
        if soft == hard:
            parts.append(f"ulimit -{flag} {soft // unit}")
            continue
        parts.append(f"ulimit -S -{flag} {soft // unit}")
        if hard != KEEP:
            parts.append(f"ulimit -H -{flag} {hard // unit}")
    return "; ".join(parts)


# The spawn gate: the prologue reads one line from stdin before anything else, so the
# parent can put the process in its cgroup before the agent's first instruction. The
# shell's `read` takes one byte at a time from a pipe, so nothing of the protocol that
# follows is consumed. An EOF (the parent could not place it, or died) exits 125.
GATE = "read _ || exit 125"


def wrap_argv(argv: list[str], limits: Limits, *, gate: bool = False) -> list[str]:
    """The argv to exec: the agent's own when nothing needs setting (an exec saved)."""
    if limits.nice:
        argv = [NICE, "-n", str(limits.nice), *argv]
    script = ulimit_script(limits)
    if script:
        script = f"{script} || exit 126; "
    if limits.nice:
        # the shell opens the file, so /proc/self is the process that becomes the agent
        script += f"{{ echo {limits.nice} >{AUTOGROUP}; }} 2>/dev/null; "
    if gate:
        script = f"{GATE}; {script}"
    if not script:
        return list(argv)
    return [SHELL, "-c", f'{script}exec "$@"', PROLOGUE_NAME, *argv]


def disable_own_core_dumps() -> None:
    """The daemon's soft RLIMIT_CORE to 0: inherited by every agent, so agents without caps
    need no shell prologue at all."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


def raise_own_open_files() -> int:
    """The daemon's soft RLIMIT_NOFILE up to the hard limit: a supervisor holds several
    fds per agent and per client, and the soft default (often 1024) is not a budget
    anyone chose. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


# each cap an exit may be explained by: its key, the Limits field, how a reason names it
_NAMED = (("memory", "memory_mb", "memory limit (RLIMIT_AS {} MiB)"),
          ("cpu", "cpu_seconds", "CPU time limit (RLIMIT_CPU {} s)"),
          ("files", "open_files", "open files limit (RLIMIT_NOFILE {})"),
          ("processes", "processes", "process limit (RLIMIT_NPROC {})"),
          ("file_size", "file_size_mb", "file size limit (RLIMIT_FSIZE {} MiB)"))


def describe(limits: Limits) -> dict[str, str]:
    return {cap: text.format(getattr(limits, field)) for cap, field, text in _NAMED
            if getattr(limits, field)}


def oom_reason(limits: Limits) -> str:
    if limits.memory_mb:
        return f"memory limit (memory.max {limits.memory_mb} MiB): killed by the OOM killer"
    return "killed by the OOM killer (memory.events oom_kill)"


# What a process prints when a cap bites, in C (strerror) and in Python; checked against
# the last lines of its stderr, and only for caps that are in force.
_SYMPTOMS = {
    "memory": ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc"),
    "files": ("Too many open files",),
    "processes": ("Resource temporarily unavailable", "Cannot fork", "can't fork"),
    "file_size": ("File too large",),
}


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


LAST_LINE_CHARS = 200  # of the last stderr line an exit reason carries


# the line node ends an uncaught exception's report with (its version), below the stack
_NODE_FOOTER = re.compile(r"Node\.js v\d+\S*")


def last_line(stderr_tail: list[str]) -> str:
    """The line a crash says about itself, trimmed: the last non-blank stderr line (a
    Python traceback ends with the exception), but for node's report (its last line its
    version) the error line its stack trace is under."""
    lines = [t for t in (line.strip() for line in stderr_tail) if t]
    if lines and _NODE_FOOTER.fullmatch(lines[-1]):
        text = _node_error(lines) or lines[-1]
    else:
        text = lines[-1] if lines else ""
    return text if len(text) <= LAST_LINE_CHARS else text[: LAST_LINE_CHARS - 1] + "…"


def _node_error(lines: list[str]) -> str | None:
    """node's error line (`TypeError: …`): the line after the caret under the throwing
    source line, else the line above the stack's first frame; None if neither is there."""
    carets = [i for i, t in enumerate(lines) if set(t) == {"^"}]
    if carets and carets[-1] + 1 < len(lines) - 1:
        return lines[carets[-1] + 1]
    frame = next((i for i, t in enumerate(lines) if t.startswith("at ")), 0)
    return lines[frame - 1] if frame > 0 else None


def explain_exit(
    returncode: int,
    limits: Limits,
    stderr_tail: list[str],
    *,
    cpu_seconds_used: float | None = None,
    command: str | None = None,
) -> str:
    """The reason for an exit that corral did not cause, in words that name the cap; an
    exit that names no cap carries the process's last stderr line."""
    caps = describe(limits)
    if returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU and "cpu" in caps:
            return caps["cpu"]
        if sig == signal.SIGXFSZ and "file_size" in caps:
            return caps["file_size"]
        if (
            sig == signal.SIGKILL
            and "cpu" in caps
            and cpu_seconds_used is not None
            and cpu_seconds_used >= limits.cpu_seconds - 0.5
        ):
            return caps["cpu"]
        return _with_last_line(f"killed by {signal_name(sig)}", stderr_tail)
    if returncode == 126 and any("ulimit" in line for line in stderr_tail):
        return "could not apply resource limits: " + last_line(stderr_tail)
    tail = "\n".join(stderr_tail[-20:])
    for cap, symptoms in _SYMPTOMS.items():
        if cap in caps and any(s in tail for s in symptoms):
            return caps[cap]
    if returncode == 0:
        return "exited with status 0"
    if returncode == 127 and any("not found" in line for line in stderr_tail[-3:]):
        return f"command not found (status 127): {command}" if command else \
            "command not found (status 127)"
    return _with_last_line(f"exited with status {returncode}", stderr_tail)


def _with_last_line(reason: str, stderr_tail: list[str]) -> str:
    line = last_line(stderr_tail)
    return f"{reason}: {line}" if line else reason
