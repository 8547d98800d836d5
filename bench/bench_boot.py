"""A daemon's boot to READY and stop: CPU per boot and time to READY, trees A/B.

Each boot is `python -m corral daemon --config X` run in a tree (its working directory and
PYTHONPATH: a `git archive`d copy of another commit runs in the same venv), with NOTIFY_SOCKET
set: the bench waits for READY=1, sends SIGTERM and reaps the daemon with `wait4`, whose
rusage is the daemon's user+sys plus that of every child it reaped (the agents', in the
hello variant). Two configs: "empty" ([supervisor] socket and state_dir, no agent) and
"hello" (two examples/hello.py agents, the test harness's settings). Boots alternate
between the trees boot by boot (A B, then B A, ...), so a change of load falls on both.
More configs: "http" ([http] listen on a free port), "cluster" ([cluster] on a
redis-server the bench starts, as tests/cluster's daemons are) and "tracing" ([tracing]
alone: the exporter process the daemon starts is among its reaped children).

Each boot's CPU is split at READY: the daemon's own (its threads', not its children's) read
from /proc/PID/stat as READY arrives (`boot_cpu_ms`, in the kernel's clock ticks: the
interpreter, the imports and the set-up; a forked daemon's, the set-up alone), the rest its
stop and its children.

With --fork, each daemon is forked as the test suite starts it: by the tree's own
tests/forkserver.py (its server has imported the CLI's and the daemon's modules once), so
a boot's CPU is what a daemon still pays after the fork (wait4's of the child).

    .venv/bin/python -m bench.bench_boot -n 20 --tree A=/tmp/boot-a --tree B=.
        -> bench/results/bench_boot.json (bench_boot_fork.json with --fork)

A tree given to --tree should be byte-compiled first (`python -m compileall -q corral`),
as an installed one is: a boot would otherwise compile ~500 modules.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
OUT = ROOT / "bench" / "results" / "bench_boot.json"
READY_WAIT = 60.0


def config(tree: Path, scratch: Path, variant: str, redis: str | None = None) -> str:
    head = f'[supervisor]\nsocket = "{scratch}/corral.sock"\nstate_dir = "{scratch}/state"\n'
    if variant == "empty":
        return head
    if variant == "http":
        return head + '[http]\nlisten = "127.0.0.1:0"\n'
    if variant == "tracing":  # (its exporter a process of the daemon's: its CPU counted)
        return head + "[tracing]\n"
    if variant == "cluster":
        key = scratch / "cluster.key"
        key.write_text(os.urandom(32).hex())
        key.chmod(0o600)
        return head + (f'[cluster]\nredis = "{redis}"\nname = "bench"\n'
                       f'node = "{scratch.name}"\nkey_file = "{key}"\n')
    agents = "".join(textwrap.dedent(f"""
        [agents.{name}]
        command = ["{sys.executable}", "{tree}/examples/hello.py"]
        env = {{ PYTHONPATH = "{tree}" }}
        replicas = 1
        backoff_initial = 0.05
        stop_timeout = 10.0
        """) for name in ("one", "two"))
    # as the tests' daemons (tests/daemon_harness.py): the agents run as the daemon's user,
    # their interpreter and files under root's directories, which no dynamic uid may reach
    return (head + f'log_dir = "{scratch}/state/logs"\ndrain_timeout = 0\n'
            + "dynamic_uids = []\n" + agents)


def fork_server(tree: Path) -> Any:
    """The tree's own tests/forkserver.py, its server started (its PYTHONPATH the tree)."""
    spec = importlib.util.spec_from_file_location(f"forkserver_{abs(hash(tree))}",
                                                  tree / "tests" / "forkserver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ForkServer()


def boot(tree: Path, variant: str, server: Any = None, redis: str | None = None
         ) -> dict[str, float]:
    """One boot to READY and stop: its CPU (daemon and reaped children) and its times;
    forked by `server` (the tree's fork server) if given."""
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        scratch = Path(tmp)
        path = scratch / "corral.toml"
        path.write_text(config(tree, scratch, variant, redis))
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(scratch / "notify"))
        notify.settimeout(READY_WAIT)
        env = {**os.environ, "PYTHONPATH": str(tree), "NOTIFY_SOCKET": str(scratch / "notify"),
               "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("CORRAL_SOCKET", None)
        argv = ["daemon", "--config", str(path)]
        t0 = time.perf_counter()
        # run in the tree: `python -m` puts the working directory first on sys.path,
        # ahead of PYTHONPATH (from another tree, that tree's corral would run)
        proc = (server.popen(argv, env=env, cwd=str(tree)) if server is not None else
                subprocess.Popen([sys.executable, "-m", "corral", *argv], env=env, cwd=tree))
        try:
            deadline = t0 + READY_WAIT
            while True:
                notify.settimeout(max(0.1, deadline - time.perf_counter()))
                msg = notify.recv(4096).decode()
                if "READY=1" in msg.split("\n"):
                    break
            ready = time.perf_counter() - t0
            at_ready = own_cpu(proc.pid)
            proc.terminate()
            if server is not None:  # its server reaps it, and says its rusage's CPU
                status = proc.wait()
                cpu, user, system = proc.cpu, float("nan"), float("nan")
            else:
                _, wstatus, ru = os.wait4(proc.pid, 0)  # reaped here, for its rusage
                status = proc.returncode = os.waitstatus_to_exitcode(wstatus)
                cpu, user, system = ru.ru_utime + ru.ru_stime, ru.ru_utime, ru.ru_stime
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            notify.close()
        total = time.perf_counter() - t0
        if status != 0:
            raise RuntimeError(f"daemon of {tree} ({variant}) exited with status {status}")
        return {"cpu_ms": cpu * 1000, "boot_cpu_ms": at_ready * 1000, "user_ms": user * 1000,
                "sys_ms": system * 1000, "ready_ms": ready * 1000,
                "stop_ms": (total - ready) * 1000}


def own_cpu(pid: int) -> float:
    """A live process's own CPU so far (user + system, its threads' too), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.9 + 0.5) - 1)]


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {f"{k}_{stat}": round(f(r[k] for r in rows), 1)  # type: ignore[operator]
            for k in ("cpu_ms", "boot_cpu_ms", "ready_ms") for stat, f in
            (("median", lambda xs: statistics.median(list(xs))),
             ("p90", lambda xs: p90(list(xs))))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20, help="boots per tree and variant")
    p.add_argument("--tree", action="append", default=[],
                   help="NAME=PATH of a corral tree (default: this one)")
    p.add_argument("--variant", action="append",
                   choices=("empty", "hello", "http", "cluster", "tracing"), default=[])
    p.add_argument("--fork", action="store_true",
                   help="fork each daemon from the tree's tests/forkserver.py server")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    out = args.out or (OUT.with_name("bench_boot_fork.json") if args.fork else OUT)
    trees = [(name, Path(path).resolve()) for name, _, path in
             (t.partition("=") for t in args.tree)] or [("this", ROOT)]
    variants = args.variant or ["empty", "hello"]
    for _, tree in trees:  # each tree's daemon imports that tree's corral
        where = subprocess.run([sys.executable, "-c", "import corral; print(corral.__file__)"],
                               cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                               capture_output=True, text=True, check=True).stdout.strip()
        if not where.startswith(str(tree) + os.sep):
            raise SystemExit(f"{tree}: its daemon would import {where}")
    rows: dict[str, dict[str, list[dict[str, float]]]] = {
        v: {name: [] for name, _ in trees} for v in variants}
    servers = {name: fork_server(tree) if args.fork else None for name, tree in trees}
    redis = None
    with tempfile.TemporaryDirectory(prefix="bench-boot-redis-") as where:
        if "cluster" in variants:
            redis = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket",
                                      f"{where}/redis.sock", "--save", "", "--appendonly",
                                      "no"], stdout=subprocess.DEVNULL)
            while not os.path.exists(f"{where}/redis.sock"):  # (its own start: no event)
                time.sleep(0.01)
        url = f"unix://{where}/redis.sock"
        load = [os.getloadavg()[0]]
        try:
            for i in range(args.n):
                order = trees if i % 2 == 0 else trees[::-1]
                for variant in variants:
                    for name, tree in order:
                        rows[variant][name].append(boot(tree, variant, servers[name], url))
                load.append(os.getloadavg()[0])
                print(f"round {i + 1}/{args.n} load {load[-1]:.2f}", file=sys.stderr)
        finally:
            if redis is not None:
                redis.terminate()
                redis.wait()
            for server in servers.values():
                if server is not None:
                    server.close()
    result: dict[str, Any] = {"n": args.n, "trees": {n: str(t) for n, t in trees},
                              "fork": args.fork,
                              "load_1min": [round(x, 2) for x in load], "variants": {}}
    for variant in variants:
        result["variants"][variant] = {name: {**summary(rs), "boots": rs}
                                       for name, rs in rows[variant].items()}
        for name, rs in rows[variant].items():
            s = summary(rs)
            print(f"{variant:6} {name:6} cpu median {s['cpu_ms_median']:7.1f} ms "
                  f"p90 {s['cpu_ms_p90']:7.1f} ms   ready median {s['ready_ms_median']:7.1f}"
                  f" ms p90 {s['ready_ms_p90']:7.1f} ms   to READY cpu median "
                  f"{s['boot_cpu_ms_median']:7.1f} ms")
        if len(trees) == 2:  # each round's two boots, the second tree's over the first's
            (first, a), (second, b) = rows[variant].items()
            ratio = statistics.median(y["cpu_ms"] / x["cpu_ms"] for x, y in zip(a, b, strict=True))
            result["variants"][variant]["ratio"] = round(ratio, 3)
            print(f"{variant:6} {second}/{first} cpu, median of the rounds' ratios {ratio:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
