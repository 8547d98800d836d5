"""Issue 54's model gateway benchmark, side by side in one run.

    .venv/bin/python -m bench.bench_model_gateway [--quick] [--no-litellm] [--floor-only]

Chat Completions calls to one stand-in upstream (tests/servers/model_upstream.py, its own
process), made by one client (bench/model_client.py, a corral worker: its calls through
corral are its task's, so journaled as a task's are) over a keep-alive connection to
each target, interleaved call by call with direct's, one peer at a time:
- direct: the stand-in itself;
- corral: corral's model gateway (`[gateway] listen`, `[models.bench]`), with the
  replica's own OPENAI_BASE_URL and OPENAI_API_KEY; twice: a task's calls (attributed,
  each a journaled step) and calls of no task (an agent running two tasks at a time);
- litellm: LiteLLM's proxy (pinned, bench/requirements-litellm.txt, in its own venv at
  bench/.work/litellm), one worker, no database.
Measured: a small completion's whole time, and a streamed one's time to its first
content token; added = the target's percentile less direct's.

`--floor-only`: the daemon's side alone, in its loop (`floor`), no process but the
daemon's and its held agents.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

from .harness import (
    BIN,
    ENV,
    PY,
    ROOT,
    CorralDaemon,
    free_port,
    report,
    supervisor_section,
    workdir,
)

QUICK = "--quick" in sys.argv
FLOOR_ONLY = "--floor-only" in sys.argv
CALLS = 300 if QUICK else 2000
STREAMS = 200 if QUICK else 1000
WARMUP = 50 if QUICK else 200
PEER_CALLS = 100 if QUICK else 500  # LiteLLM's, whole and streamed: it is ~50x slower
STAND_IN = ROOT / "tests" / "servers" / "model_upstream.py"
CLIENT = ROOT / "bench" / "model_client.py"
LITELLM_VENV = ROOT / "bench" / ".work" / "litellm"
LITELLM_PINS = ROOT / "bench" / "requirements-litellm.txt"
LITELLM_KEY = "sk-bench-litellm-master"  # its proxy refuses to start without one


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Until `url` answers (a server's start; polled: it is not ours to notify us), or
    its process exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError as exc:
            if proc.poll() is not None:
                raise RuntimeError(f"{url}: its server exited ({proc.returncode})") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer in {timeout:g} s: {exc}") from None
            time.sleep(0.2)


def litellm_bin() -> Path | None:
    """LiteLLM's proxy, installed from its pins into a venv of its own (its dependencies
    are not corral's); None, said, when it does not install."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    uv = BIN / "uv"
    made = subprocess.run([str(uv), "venv", "-q", "-p", PY, str(LITELLM_VENV)])
    pip = subprocess.run([str(uv), "pip", "install", "-q", "-p",
                          str(LITELLM_VENV / "bin" / "python"), "-r", str(LITELLM_PINS)])
    if made.returncode or pip.returncode or not exe.exists():
        print("LiteLLM's proxy did not install: measured without it", file=sys.stderr)
        return None
    return exe


def start_litellm(d: Path, upstream: str) -> tuple[subprocess.Popen[bytes], str] | None:
    exe = litellm_bin() if "--no-litellm" not in sys.argv else None
    if exe is None:
        return None
    config = d / "litellm.yaml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "model_list": [{"model_name": "bench", "litellm_params": {
            "model": "openai/bench", "api_base": f"{upstream}/v1",
            "api_key": "sk-litellm-upstream"}}],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        "general_settings": {"master_key": LITELLM_KEY}}))
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"],
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
        stdout=subprocess.DEVNULL, stderr=(d / "litellm.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health/liveliness", 300, proc)
    return proc, url


def corral_fleet(upstream: str, port: int) -> str:
    agent = f"""
        command = ["{PY}", "{CLIENT}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        start_timeout = 60
    """
    return f"""
[gateway]
listen = "127.0.0.1:{port}"

[models.bench]
url = "{upstream}/v1"
format = "openai"

[agents.journaled]
retries = 1
{agent}
[agents.unattributed]
max_concurrent_tasks = 2
{agent}
"""


def run_client(daemon: CorralDaemon, agent: str, targets: dict[str, list[str]],
               pairs: list[dict[str, Any]]) -> dict[str, Any]:
    task = {"pairs": pairs, "warmup": WARMUP, "targets": targets}
    r = subprocess.run([str(BIN / "corral"), "run", agent, "--input", json.dumps(task),
                        "--timeout", "1800", "--json"], capture_output=True, text=True,
                       env={**ENV, "CORRAL_SOCKET": str(daemon.sock)}, timeout=1900)
    if r.returncode:
        raise RuntimeError(f"corral run {agent}: {r.stdout[-500:]} {r.stderr[-500:]}")
    out: dict[str, Any] = json.loads(r.stdout)["output"]
    return out


def corral_pairs(daemon: CorralDaemon, targets: dict[str, list[str]]
                 ) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Each agent's pairs through corral, its calls in two runs: the agents in turn, the
    first one's first and last (ABBA), after a run of each not measured. The first run
    after the daemon's start was the slower, direct's calls as much as corral's: an agent
    always run first had its pairs' added time look the larger for it."""
    half = [{"peer": "corral", "calls": CALLS // 2, "streams": STREAMS // 2}]
    for agent in ("unattributed", "journaled"):
        run_client(daemon, agent, targets, [{"peer": "corral", "calls": WARMUP,
                                             "streams": WARMUP}])
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for agent in ("journaled", "unattributed", "unattributed", "journaled"):
        got = run_client(daemon, agent, targets, half)["corral"]
        into = out.setdefault(agent, {})
        for target, measures in got.items():
            for measure, xs in measures.items():
                into.setdefault(target, {}).setdefault(measure, []).extend(xs)
    return out


def summary(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """A pair's p50 and p99 in ms, and what the peer adds to direct's."""
    out: dict[str, Any] = {}
    for measure in ("whole", "first_token"):
        direct = samples["direct"][measure]
        base = (percentile(direct, 0.5), percentile(direct, 0.99))
        for name, by in samples.items():
            p50, p99 = percentile(by[measure], 0.5), percentile(by[measure], 0.99)
            row = out.setdefault(name, {})
            row[measure] = {"p50_ms": round(p50 * 1e3, 3), "p99_ms": round(p99 * 1e3, 3),
                            "added_p50_ms": round((p50 - base[0]) * 1e3, 3),
                            "added_p99_ms": round((p99 - base[1]) * 1e3, 3)}
    return out


def floor_config(state: Path) -> str:
    agent = f"""command = ["{PY}", "{ROOT / 'bench' / 'attrib_agent.py'}"]
        env = {{ PYTHONPATH = "{ROOT}" }}"""
    return supervisor_section(state) + textwrap.dedent(f"""
        [gateway]
        listen = "127.0.0.1:0"
        rate_per_minute = 0

        [models.bench]
        url = "http://127.0.0.1:9/v1"
        format = "openai"

        [agents.slots]
        {agent}
        max_concurrent_tasks = 2

        [agents.plain]
        {agent}

        [agents.durable]
        {agent}
        retries = 1
    """)


class _Answered:
    """The upstream's answer to a small completion, read at once (the floor's: no
    upstream, no connection)."""

    status = 200
    headers = {"content-type": "application/json"}
    body = json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "bench",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "echo: hi there"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}).encode()

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        pass


async def floor(calls: int = 2000, rounds: int = 9) -> dict[str, Any]:
    """The daemon's side of a small completion alone, in its loop: ModelGateway.serve of
    a request made in-process (no HTTP, its answer not written), the upstream answering
    at once, by a held task's replica (bench/attrib_agent.py's `hold`): of no task (two
    slots), a task's not journaled (no retry left) and a task's journaled (`retries =
    1`): µs per call, medians of `rounds` runs of `calls`, the kinds alternated."""
    from aiohttp.test_utils import make_mocked_request

    from corral.daemon.daemon import Daemon
    from corral.daemon.gatewayaccess import hash_token
    from corral.daemon.models.wire import ENDPOINTS
    from corral.supervisor import State
    from corral.taskoptions import TaskOptions

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-modelfloor-"))
    (tmp / "corral.toml").write_text(floor_config(tmp))
    d = Daemon(tmp / "corral.toml")
    run = asyncio.ensure_future(d.run())
    await d.set_up.wait()
    models = d.services.models
    assert models is not None
    answer = _Answered()

    async def send(*args: Any) -> _Answered:
        return answer

    models.upstream.send = send  # type: ignore[method-assign]
    endpoint = next(e for e in ENDPOINTS if e.path == "/v1/chat/completions")
    raw = json.dumps({"model": "bench", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi there"}]}).encode()
    kinds, ends = {}, []
    for kind, agent in (("no_task", "slots"), ("task", "plain"), ("task_journaled", "durable")):
        await d.sup.wait_state(agent, State.READY, timeout=60)
        path = tmp / f"hold-{agent}"
        ends.append((path, asyncio.ensure_future(d.sup.tasks.run(
            agent, {"hold": str(path), "via": ""}, TaskOptions(timeout=600)))))
        while not path.exists():
            await asyncio.sleep(0.01)
        replica = d.sup.agents[agent].replicas[0]
        d.services.gateway.replica_tokens[hash_token(f"floor-{agent}")] = replica
        # one request a kind, served again and again (its body read once): a mocked
        # request is too slow to make to leave out of a call's time
        r = make_mocked_request("POST", endpoint.path, headers={
            "Authorization": f"Bearer floor-{agent}", "Content-Type": "application/json"})
        r._read_bytes = raw
        kinds[kind] = r
    # each kind's wall time, and its CPU: the loop's thread's and the whole process's
    # (the writer thread's batches too), which the other work on the machine moves less
    clocks = {"": time.perf_counter, "_loop_cpu": time.thread_time,
              "_cpu": time.process_time}
    xs: dict[str, list[float]] = {k + c: [] for k in kinds for c in clocks}
    for _ in range(rounds):
        for kind, r in kinds.items():
            t0 = {c: clock() for c, clock in clocks.items()}
            for _ in range(calls):
                res = await models.serve(r, endpoint)
                assert res.status == 200, res
            for c, clock in clocks.items():
                xs[kind + c].append((clock() - t0[c]) / calls * 1e6)
    for path, end in ends:
        path.unlink()
        await end
    d.request_stop()
    await asyncio.wait_for(run, 30)
    shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {f"{k}_us": round(statistics.median(v), 2) for k, v in xs.items()}
    for c in clocks:
        out[f"attribution{c}_us"] = round(out[f"task{c}_us"] - out[f"no_task{c}_us"], 2)
        out[f"journal{c}_us"] = round(out[f"task_journaled{c}_us"] - out[f"task{c}_us"], 2)
    out["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return out


def main() -> None:
    if FLOOR_ONLY:
        import uvloop
        print(json.dumps(uvloop.run(floor()), indent=1))
        return
    d = workdir("models")
    port = free_port()
    stand_in = subprocess.Popen([PY, str(STAND_IN), str(port)], env=ENV,
                                stdout=subprocess.PIPE)
    upstream = f"http://127.0.0.1:{port}"
    litellm = None
    daemon = None
    try:
        assert stand_in.stdout is not None
        stand_in.stdout.readline()  # its address: it listens
        targets = {"direct": [upstream + "/v1", "sk-bench"]}
        daemon = CorralDaemon(d, corral_fleet(upstream, free_port()))
        daemon.start()
        results = {f"{agent} corral": summary(samples)
                   for agent, samples in corral_pairs(daemon, targets).items()}
        # LiteLLM's proxy started only now: its own loops take no CPU from corral's pairs
        litellm = start_litellm(d, upstream)
        if litellm is not None:
            targets["litellm"] = [litellm[1], LITELLM_KEY]
            peer = [{"peer": "litellm", "calls": PEER_CALLS, "streams": PEER_CALLS}]
            results["litellm"] = summary(run_client(daemon, "unattributed", targets,
                                                    peer)["litellm"])
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        report("model_gateway", {"calls": CALLS, "streams": STREAMS, "warmup": WARMUP,
                                 "litellm_calls": PEER_CALLS if litellm else 0,
                                 "uptime": load, **results})
    finally:
        if daemon is not None:
            daemon.stop()
        for proc in (stand_in, litellm[0] if litellm else None):
            if proc is not None:
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
