"""Issue 3 (daemon, CLI, logs) benchmarks, side by side in one run.

    .venv/bin/python -m bench.bench_daemon [--quick]

1. `corral status` with 100 agents: wall time of the command, beside `supervisorctl status`
   with 100 programs
2. one worker writing 1,000,000 stderr lines as fast as it can: lines/s into the log file
   and lines lost, beside supervisord for the same program
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .harness import (
    BIN,
    ENV,
    HELLO,
    PY,
    ROOT,
    CorralDaemon,
    Supervisord,
    cleanup,
    corral_agents,
    median,
    report,
    workdir,
)

QUICK = "--quick" in sys.argv
RUNS = 5 if QUICK else 20
LINES = 1_000_000
FLOOD = ROOT / "bench" / "flood.py"


def time_cmd(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - t0


def status_side_by_side() -> dict[str, list[float]]:
    d = workdir("status")
    (d / "c").mkdir()
    (d / "s").mkdir()
    c = CorralDaemon(d / "c", "".join(
        corral_agents(1, [PY, str(HELLO)], name=f"a{i:03d}") for i in range(100)))
    s = Supervisord(d / "s", 100, f"{PY} {HELLO}")
    out: dict[str, list[float]] = {"corral": [], "supervisorctl": []}
    try:
        c.start()
        s.start(100)
        for _ in range(RUNS):
            out["corral"].append(time_cmd([str(BIN / "corral"), "--socket", str(c.sock),
                                           "status"]))
            out["supervisorctl"].append(time_cmd([str(BIN / "supervisorctl"), "-c",
                                                  str(s.conf), "status"]))
    finally:
        c.stop()
        s.stop()
        cleanup(d)
    return out


def count_lines(path: Path, marker: bytes) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(marker)  # whole: a chunked count misses straddlers


def wait_file(path: Path, last: bytes, timeout: float = 300) -> float:
    """Seconds from the flood program's own start stamp until the file's last bytes
    contain `last` (polled every 1 ms)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 4096))
                if last in f.read():
                    end = time.time()
                    f.seek(0)
                    head = f.read(4096)
                    start = float(head.split(b"start ", 1)[1].split(b"\n", 1)[0])
                    return end - start
        time.sleep(0.001)
    raise TimeoutError(f"{path} never got {last!r}")


def logs_corral(fmt: str = "tagged") -> tuple[float, int]:
    d = workdir("logc")
    c = CorralDaemon(d, "", f'log_max_bytes = 4000000000\nlog_format = "{fmt}"')
    try:
        c.start()
        agent = d / "flood.toml"
        agent.write_text(corral_agents(1, [PY, str(FLOOD), str(LINES)], name="flood",
                                       extra='restart = "never"'))
        subprocess.run([str(BIN / "corral"), "--socket", str(c.sock), "add", str(agent)],
                       check=True, stdout=subprocess.DEVNULL, env=ENV)
        tag = b" stderr: " if fmt == "tagged" else b"\n"
        secs = wait_file(d / "logs" / "flood.log", tag + b"line %d\n" % (LINES - 1))
        got = count_lines(d / "logs" / "flood.log", tag[1:] + b"line " if fmt == "tagged"
                          else b"line ")
        return secs, got
    finally:
        c.stop()
        cleanup(d)


def logs_supervisord() -> tuple[float, int]:
    d = workdir("logs")
    s = Supervisord(d, 1, f"{PY} {FLOOD} {LINES}",
                    "autostart = false\nstderr_logfile_maxbytes = 0")
    try:
        s.proc = subprocess.Popen([str(BIN / "supervisord"), "-c", str(s.conf)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                s.rpc().supervisor.getState()
                break
            except OSError:
                time.sleep(0.01)
        path = d / "logs" / "w_000.err"
        s.rpc().supervisor.startProcess("w:w_000", False)
        secs = wait_file(path, b"\nline %d\n" % (LINES - 1))
        got = count_lines(path, b"line ")
        return secs, got
    finally:
        s.stop()
        cleanup(d)


def main() -> None:
    st = status_side_by_side()
    logs: dict[str, dict[str, list[float]]] = {
        k: {"seconds": [], "lost": []} for k in ("corral", "corral_raw", "supervisord")}
    for _ in range(2 if QUICK else 5):
        for name, fn in (("corral", logs_corral), ("corral_raw", lambda: logs_corral("raw")),
                         ("supervisord", logs_supervisord)):
            secs, got = fn()
            logs[name]["seconds"].append(round(secs, 3))
            logs[name]["lost"].append(LINES - got)
    mc, ms = median(st["corral"]), median(st["supervisorctl"])
    lc, ls = median(logs["corral"]["seconds"]), median(logs["supervisord"]["seconds"])
    lr = median(logs["corral_raw"]["seconds"])
    report("daemon", {
        "status_100": {
            "corral_ms": round(mc * 1000, 1), "supervisorctl_ms": round(ms * 1000, 1),
            "ratio_corral_over_supervisorctl": round(mc / ms, 2), "runs": RUNS,
        },
        "log_throughput": {
            "lines": LINES,
            "corral_lines_per_s": round(LINES / lc),
            "supervisord_lines_per_s": round(LINES / ls),
            "ratio_corral_over_supervisord": round(ls / lc, 2),
            "corral_raw_format_lines_per_s": round(LINES / lr),
            "ratio_corral_raw_over_supervisord": round(ls / lr, 2),
            "corral_lost": logs["corral"]["lost"],
            "corral_raw_lost": logs["corral_raw"]["lost"],
            "supervisord_lost": logs["supervisord"]["lost"],
            "runs": logs,
        },
    })


if __name__ == "__main__":
    main()
