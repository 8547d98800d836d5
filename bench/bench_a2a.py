"""Issue 87/90: A2A `SendMessage` (JSON-RPC binding, blocking) to a trivial agent, corral's
door beside the A2A TCK's reference server (`sut/a2a-python`, `a2a-sdk` 1.3.0, patched as
the kit's ORIGIN.md says), in one run, driven by the same load generator.

corral: `corral daemon` serving bench/echo_agent.py (REPLICAS workers) at /a2a/echo, every
message a durable task (journaled, its output an artifact), anonymous on loopback. The
reference: its own process (uvicorn, in-memory task store), its default branch completing
each task with a message. The load generator: CONC clients on one uvloop in a process of its
own, each sending its next message when the last is answered (one keep-alive connection
each, HTTP/1.1 written and read by hand: aiohttp's client cost as much CPU a message as
corral's daemon, on the cores both servers share), every messageId new (corral's
idempotency key: a repeated one would be a replay); each answer checked for a completed
task or a message.

    .venv/bin/python -m bench.bench_a2a [--messages 5000] [--conc 10,50] [--replicas 2]
        [--rounds 1] [--memory 100000] [--no-peer] [--vs TREE [--swap]] [--profile FILE]

Each figure gives the messages per second, the latency's p50 and p99, and for corral the
CPU the daemon spent a message (its process's user + system time over the figure; what
the shared cores' load does not change much), and its main thread's alone (`loop_cpu_us`:
the event loop, one core at most, so what bounds the rate on an idle second core), and
that thread's wait for a core while it could run (`loop_wait_us`: how loaded the host was
for it; /proc's schedstat).
`--rounds R` takes each figure R times, the servers alternated figure by figure, and
gives each one's median (and its rounds).
`--vs TREE`: beside this tree's daemon, the daemon of another checkout (e.g. a worktree of
the commit before a change; the agent and the load generator are this tree's), in place
of the reference: corral's own A/B, paired, both daemons started the one way and the
servers' order turned each round (A B, B A, ...). The daemon started first measured up to
~1.15x the CPU a message of the one started second in A/A runs (same code, load ~15), so
a claim takes both orders: `--swap` starts TREE's first. `--profile FILE`: py-spy (if installed)
samples the daemon's threads over one more c=10 figure, FILE its raw collapsed stacks.
`--pycount N`: after the figures, each tree's daemon started again with
bench/gateways/pycount_site and the bytecode instructions its main thread runs counted over N
messages at c=10 (what the load does not change: a round's CPU moves ±20 % at load 20).

`--memory N` sends N messages to corral alone at c=10 and reports the daemon's RSS after
a tenth of them (warm) and at the end. The reference server's venv is made once under
$CORRAL_PEERS (default ~/.cache/corral-peers/a2a-sut) with pinned packages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from .bench_scale import loadavg
from .harness import ROOT, CorralDaemon, cleanup, free_port, report, workdir

ECHO = ROOT / "bench" / "echo_agent.py"
PYCOUNT_SITE = ROOT / "bench" / "gateways" / "pycount_site"
# the kit beside the checkout, as scripts/a2a-tck.sh finds it
TCK = next((p for p in (Path(os.environ.get("CORRAL_A2A_TCK", "/nonexistent")),
                        ROOT.parent / "shared" / "a2a-tck",
                        ROOT.parent.parent / "shared" / "a2a-tck")
            if (p / "run_tck.py").exists()), ROOT.parent / "shared" / "a2a-tck")
PEERS = Path(os.environ.get("CORRAL_PEERS", Path.home() / ".cache" / "corral-peers"))
SUT_PINS = ["a2a-sdk[http-server,grpc]==1.3.0", "grpcio==1.78.0", "uvicorn==0.54.0",
            "starlette==1.10.0", "sse-starlette==3.7.0", "packaging==26.3"]


def sut_python() -> Path:
    """The reference server's interpreter: a venv of its own, made once under its pins."""
    venv = PEERS / "a2a-sut"
    stamp = venv / ".pins"
    if not stamp.exists() or stamp.read_text() != " ".join(SUT_PINS):
        shutil.rmtree(venv, ignore_errors=True)
        uv = Path(sys.executable).parent / "uv"
        subprocess.run([str(uv), "venv", "-q", "-p", sys.executable, str(venv)], check=True)
        subprocess.run([str(uv), "pip", "install", "-q", *SUT_PINS],
                       env={**os.environ, "VIRTUAL_ENV": str(venv)}, check=True)
        stamp.write_text(" ".join(SUT_PINS))
    return venv / "bin" / "python"


def sut_agent(into: Path) -> Path:
    """The kit's reference agent, patched for a2a-sdk 1.3.0 as its ORIGIN.md says."""
    agent = into / "sut_agent.py"
    shutil.copy(TCK / "sut" / "a2a-python" / "sut_agent.py", agent)
    patch = TCK / "sut-patches" / "sut_agent-sdk1.3.0.patch"
    subprocess.run(["patch", "-s", str(agent), str(patch)], check=True)
    return agent


LOADGEN = r"""
import asyncio, os, sys, time
from urllib.parse import urlsplit
import msgspec, uvloop
url, total, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
where = urlsplit(url)
host, port = where.hostname, where.port or 80
HEAD = (f"POST {where.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nA2A-Version: 1.0\r\nContent-Length: %d\r\n\r\n"
        ).encode()
BODY = (b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"messageId":'
        b'"bench-' + os.urandom(8).hex().encode() + b'-%d","role":"ROLE_USER",'
        b'"parts":[{"text":"hi"}]}}}')
lat, bad, sent = [], [], [0]

def check(status, body):
    if status == 200:
        res = msgspec.json.decode(body).get("result") or {}
        state = (res.get("task") or {}).get("status", {}).get("state")
        if "message" in res or state == "TASK_STATE_COMPLETED":
            return
    bad.append(f"{status} {body[:300].decode(errors='replace')}")

def response(buf):
    # (status, body) of the whole response at buf's start, taken from it; None: not all in
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        eol = head.find(b"\r\n", i + 2)
        size = int(head[i + 17:eol if eol > 0 else None])
        if len(buf) < end + 4 + size:
            return None
        body, at = bytes(buf[end + 4:end + 4 + size]), end + 4 + size
    else:  # chunked
        at, parts, n = end + 4, [], 1
        while n:
            eol = buf.find(b"\r\n", at)
            if eol < 0:
                return None
            n = int(bytes(buf[at:eol]).split(b";")[0], 16)
            if len(buf) < eol + 4 + n:
                return None
            parts.append(bytes(buf[eol + 2:eol + 2 + n]))
            at = eol + 4 + n
        body = b"".join(parts)
    del buf[:at]
    return int(head[9:12]), body

class Client(asyncio.Protocol):
    # one keep-alive connection sending its next message when the last is answered
    def __init__(self, n, done):
        self.left, self.done, self.buf = n, done, bytearray()

    def connection_made(self, transport):
        self.transport = transport
        self.send()

    def send(self):
        if self.left == 0:
            self.transport.close()
            return self.done.set_result(None)
        self.left -= 1
        sent[0] += 1
        body = BODY % sent[0]
        self.t = time.perf_counter()
        self.transport.write(HEAD % len(body) + body)

    def data_received(self, data):
        self.buf += data
        got = response(self.buf)
        if got is not None:
            lat.append(time.perf_counter() - self.t)
            check(*got)
            self.send()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed by the server"))

async def main():
    loop = asyncio.get_running_loop()
    dones = [loop.create_future() for _ in range(conc)]
    t = time.perf_counter()
    for done in dones:
        await loop.create_connection(lambda: Client(total // conc, done), host, port)
    await asyncio.gather(*dones)
    wall = time.perf_counter() - t
    print(msgspec.json.encode({"wall": wall, "lat": lat, "bad": len(bad),
                               "first_bad": bad[:1]}).decode())

uvloop.run(main())
"""


def cpu(pid: int | None) -> tuple[float, float, float]:
    """The CPU (user + system) a process has spent, what its main thread has (corral's
    event loop: one core at most, so the rate's bound), and what its live children have."""
    if pid is None:
        return 0.0, 0.0, 0.0
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    main = next((th.user_time + th.system_time for th in proc.threads() if th.id == pid), 0.0)
    kids = 0.0
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            kids += c.user + c.system
    return t.user + t.system, main, kids


def waited(pid: int | None) -> float:
    """The seconds the process's main thread (corral's loop) has waited for a core while it
    could run (/proc's schedstat): what a loaded host adds to each of its turns."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except OSError:
        return 0.0
    return int(stat[1]) / 1e9


def drive(url: str, total: int, conc: int, pid: int | None = None) -> dict[str, Any]:
    """`total` messages at `conc`; with `pid`, the CPU that server process spent a
    message (and its children: corral's workers), its loop's wait for a core, and the
    load generator's CPU."""
    wait = waited(pid)
    before, main, kids = cpu(pid)
    gen = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", LOADGEN, url, str(total), str(conc)],
                         capture_output=True, text=True, check=True)
    gen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after, main_after, kids_after = cpu(pid)
    wait_after = waited(pid)
    got = json.loads(out.stdout)
    lat = sorted(got["lat"])
    n = max(1, len(lat))
    spent = {"daemon_cpu_us": round((after - before) / n * 1e6),
             "loop_cpu_us": round((main_after - main) / n * 1e6),
             "loop_wait_us": round((wait_after - wait) / n * 1e6),
             "workers_cpu_us": round((kids_after - kids) / n * 1e6)} if pid is not None else {}
    spent["loadgen_cpu_us"] = round((gen_after.ru_utime + gen_after.ru_stime - gen.ru_utime
                                     - gen.ru_stime) / n * 1e6)
    return {"messages": len(lat), "per_s": round(len(lat) / got["wall"]),
            "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 2),
            "errors": got["bad"], "first_error": got["first_bad"]} | spent


FIGURES = ("per_s", "p50_ms", "p99_ms", "daemon_cpu_us", "loop_cpu_us", "loop_wait_us",
           "workers_cpu_us", "loadgen_cpu_us")


def served(figure: dict[str, Any]) -> float:
    """The CPU a message of the server and its workers."""
    return float(figure["daemon_cpu_us"] + figure["workers_cpu_us"])


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure of several rounds: the median of each number, the rounds beside it."""
    if len(runs) == 1:
        return runs[0]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs)
                           for k in FIGURES if k in runs[0]}
    out["errors"] = sum(r["errors"] for r in runs)
    out["rounds"] = [{k: r[k] for k in FIGURES if k in r} for r in runs]
    return out


def corral_config(port: int, replicas: int) -> tuple[str, str]:
    agents = f"""
[agents.echo]
command = ["{sys.executable}", "{ECHO}"]
env = {{ PYTHONPATH = "{ROOT}" }}
description = "returns its input"
replicas = {replicas}
max_concurrent_tasks = 64
"""
    extra = f"""
[http]
listen = "127.0.0.1:{port}"
rate_per_minute = 0
[a2a]
anonymous = ["echo"]
"""
    return agents, extra


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    import socket
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


class Server:
    """One server under the load generator: started, warmed, driven figure by figure."""

    name = ""
    url = ""
    pid: int | None = None  # the process whose CPU a message is counted (corral's daemon)

    def figure(self, total: int, conc: int) -> dict[str, Any]:
        return drive(self.url, total, conc, self.pid)

    def close(self) -> None:
        raise NotImplementedError


def launcher_of(tree: Path | None) -> list[str] | None:
    """The command running another checkout's daemon (None: this tree's), byte-compiled
    as this one is."""
    if tree is None:
        return None
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "corral")],
                   check=True)
    return [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1));"
            " from corral.cli.entry import main; main()", str(tree), "daemon"]


class Corral(Server):
    def __init__(self, replicas: int, tree: Path | None = None, name: str = "",
                 counts: Path | None = None, mode: str = "ops") -> None:
        port = free_port()
        self.dir = workdir("a2a")
        self.name = name or ("corral" if tree is None else f"corral@{tree}")
        agents, extra = corral_config(port, replicas)
        launcher = launcher_of(tree)
        if counts is not None:  # (pycount_site's hook first on its path, as pycount.py's)
            launcher = ["env", f"PYTHONPATH={PYCOUNT_SITE}:{tree or ROOT}",
                        f"CORRAL_PYCOUNT={counts}", f"CORRAL_PYCOUNT_MODE={mode}",
                        *(launcher_of(tree or ROOT) or [])]
        # (the [http] and [a2a] tables after the agents: CorralDaemon's `extra` is inside
        # its [supervisor] table)
        self.daemon = CorralDaemon(self.dir, agents + extra, launcher=launcher)
        self.daemon.start()
        assert self.daemon.proc is not None
        self.pid = self.daemon.proc.pid
        self.url = f"http://127.0.0.1:{port}/a2a/echo"
        drive(self.url, 200, 10)  # warm: the workers' first tasks, the door's first routes

    def memory(self, total: int) -> dict[str, Any]:
        proc = psutil.Process(self.pid)
        warm = drive(self.url, total // 10, 10)
        rss_warm = proc.memory_info().rss
        rest = drive(self.url, total - total // 10, 10)
        rss_end = proc.memory_info().rss
        return {"messages": warm["messages"] + rest["messages"],
                "errors": warm["errors"] + rest["errors"],
                "rss_warm_mb": round(rss_warm / 2**20, 1),
                "rss_end_mb": round(rss_end / 2**20, 1),
                "ratio": round(rss_end / rss_warm, 3)}

    def profile(self, out: Path, total: int) -> dict[str, Any]:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            return {"skipped": "py-spy is not installed (pip install py-spy)"}
        proc = subprocess.Popen([spy, "record", "--pid", str(self.pid), "--rate", "500",
                                 "--format", "raw", "--threads", "--gil", "--nonblocking",
                                 "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)  # attached
            got = drive(self.url, total, 10, self.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        return got | {"stacks": str(out)}

    def close(self) -> None:
        self.daemon.stop()
        cleanup(self.dir)


def pycount(tree: Path | None, total: int, top: int = 0, mode: str = "ops"
            ) -> dict[str, Any]:
    """The bytecode instructions the daemon's main thread runs a message, over `total`
    messages at c=10 (a daemon of its own, warmed first); with `top`, its `top` largest
    functions' (`mode` lines: lines'; calls: calls and resumes) a message too."""
    with tempfile.TemporaryDirectory(prefix="corral-a2a-pycount-") as tmp:
        out = Path(tmp) / "counts"
        server = Corral(2, tree, counts=out, mode=mode)
        try:
            drive(server.url, 500, 10)
            os.kill(server.pid or 0, signal.SIGRTMIN + 5)
            _appears(Path(f"{out}.on"))
            got = drive(server.url, total, 10)
            os.kill(server.pid or 0, signal.SIGRTMIN + 6)
            _appears(out)
        finally:
            server.close()
        rows = [line.split("\t") for line in out.read_text().splitlines()]
    n = max(got["messages"], 1)
    ops = sum(int(row[0]) for row in rows if row[1] == "py")
    counted: dict[str, Any] = {"messages": got["messages"], "errors": got["errors"],
                               "ops": round(ops / n, 1)}
    if top:
        counted["top"] = [f"{int(row[0]) / n:8.1f} {row[2]} {_short(row[3]) or '(C)'}"
                          for row in rows if row[1] == "py" or mode == "calls"][:top]
    return counted


def _short(path: str) -> str:
    """A counted function's file, from the package's or the library's root."""
    for root in ("/corral/", "/site-packages/", "/lib/python3"):
        if root in path:
            return path[path.index(root) + 1:]
    return path


def _appears(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not write {path} in {timeout:g} s")
        time.sleep(0.05)


class Reference(Server):
    name = "reference"

    def __init__(self) -> None:
        python = sut_python()
        port = free_port()
        self.tmp = tempfile.TemporaryDirectory()
        agent = sut_agent(Path(self.tmp.name))
        self.proc = subprocess.Popen([str(python), str(agent)], cwd=self.tmp.name,
                                     env={**os.environ, "SUT_HOST": f"127.0.0.1:{port}",
                                          "GRPC_PORT": str(free_port())},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(port, self.proc)
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{port}/"
        drive(self.url, 200, 10)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.tmp.cleanup()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--conc", default="10,50")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--memory", type=int, default=0)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--vs", type=Path, help="another checkout's daemon in the reference's place")
    p.add_argument("--swap", action="store_true", help="with --vs: its daemon started first")
    p.add_argument("--profile", type=Path)
    p.add_argument("--pycount", type=int, default=0, metavar="N")
    p.add_argument("--top", type=int, default=0, metavar="K",
                   help="with --pycount: the K largest functions' (or lines') counts too")
    p.add_argument("--mode", choices=("ops", "lines", "calls"), default="ops",
                   help="with --top: each function's bytecodes, each line's, or each "
                   "function's calls and resumes (the total is bytecodes only with ops)")
    p.add_argument("--out", default="a2a", help="bench/results/OUT.json")
    args = p.parse_args()
    concs = [int(c) for c in args.conc.split(",")]
    result: dict[str, Any] = {"load_before": loadavg(), "messages": args.messages,
                              "replicas": args.replicas, "rounds": args.rounds,
                              "id": uuid.uuid4().hex[:8]}
    servers: list[Server] = []
    try:
        # (with --vs both daemons start the one way, and `--swap` starts the other's
        # first: in A/A runs the daemon started first spent up to ~1.15x the CPU a message
        # of the one started second; a claim is both orders' figures)
        if args.vs is not None and args.swap:
            servers.append(Corral(args.replicas, args.vs.resolve()))
        servers.append(Corral(args.replicas, None if args.vs is None else ROOT, "corral"))
        if args.vs is not None and not args.swap:
            servers.append(Corral(args.replicas, args.vs.resolve()))
        elif args.vs is None and not args.no_peer:
            servers.append(Reference())
        servers.sort(key=lambda s: s.name != "corral")  # this tree's first in the results
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {s.name: {} for s in servers}
        for r in range(args.rounds):
            for c in concs:
                # each figure of the servers in turn, the first of a round going second in
                # the next (A B B A ...): drift, and what the other's figure left, hit both
                for s in servers if r % 2 == 0 else servers[::-1]:
                    runs[s.name].setdefault(f"c{c}", []).append(s.figure(args.messages, c))
        for s in servers:
            result[s.name] = {c: medians(r) for c, r in runs[s.name].items()}
        if len(servers) == 2:
            a, b = servers
            result["ratio"] = {c: round(result[a.name][c]["per_s"] / result[b.name][c]["per_s"],
                                        2) for c in result[b.name]}
            # the reference's p50 over corral's: how many times faster corral answers
            result["p50_ratio"] = {c: round(result[b.name][c]["p50_ms"] /
                                            result[a.name][c]["p50_ms"], 2)
                                   for c in result[b.name]}
            # the servers' CPU a message (corral's daemon and its workers, the reference's
            # one process): what the shared cores' load changes least
            result["cpu_ratio"] = {c: round(served(result[a.name][c]) /
                                            served(result[b.name][c]), 3)
                                   for c in result[b.name]}
        first = servers[0]
        if args.memory and isinstance(first, Corral):
            result["corral"]["memory"] = first.memory(args.memory)
        if args.profile is not None and isinstance(first, Corral):
            result["corral"]["profile"] = first.profile(args.profile, args.messages)
    finally:
        for s in servers:
            s.close()
    if args.pycount:
        trees = {"corral": None} | ({} if args.vs is None else {
            f"corral@{args.vs.resolve()}": args.vs.resolve()})
        for name, tree in trees.items():
            result.setdefault(name, {})["pycount"] = pycount(
                tree, args.pycount, args.top, args.mode)
    result["load_after"] = loadavg()
    report(args.out, result)


if __name__ == "__main__":
    main()
