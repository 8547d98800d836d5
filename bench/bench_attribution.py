"""Issue 54 item 1: what attributing a gateway tool call to its task attempt costs.

    .venv/bin/python -m bench.bench_attribution [--quick] [--floor-only]

The real daemon in this process with its HTTP gateway, an agent's worker
(bench/attrib_agent.py) making sequential tool calls with the official MCP SDK's client
through the gateway, and a stdio MCP server (bench/min_mcp_server.py). Three kinds of
task, alternated round by round (a load that comes and goes falls on all alike):

- unattributed: the replica's address, its agent at two task slots (no task's call: the
  gateway's client path, as before attribution);
- attributed: the attempt's address (`ctx.mcp_url`), `retries = 0` (a step of the task,
  in its budget and its trace, nothing journaled: no later attempt could read it);
- attributed and journaled: the same with `retries = 1` (the step journal's commit).

Per call, medians over ROUNDS tasks of CALLS calls: `client_us`, timed in the worker
around each call (the whole HTTP round trip); `daemon_us`, GatewayService.call's time
in the daemon (the tool server's stdio round trip included, the HTTP layers not); and
`own_us`, its time before and after the pool's call of the server (the gateway's layers
and the task's step alone). The
attribution's cost is the attributed less the unattributed, on each.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from .harness import supervisor_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
QUICK = "--quick" in sys.argv
FLOOR_ONLY = "--floor-only" in sys.argv  # the daemon's side alone, no HTTP round trips
CALLS = 200 if QUICK else 500
ROUNDS = 3 if QUICK else 7


def config(state: Path) -> str:
    agent = ROOT / "bench" / "attrib_agent.py"
    server = ROOT / "bench" / "min_mcp_server.py"
    common = f"""command = ["{PY}", "{agent}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["fast__*"]
        max_tool_calls_per_task = 100000"""
    return supervisor_section(state) + textwrap.dedent(f"""

        [agents.slots]
        {common}
        max_concurrent_tasks = 2

        [agents.plain]
        {common}

        [agents.durable]
        {common}
        retries = 1

        [mcp_servers.fast]
        command = ["{PY}", "{server}"]

        [gateway]
        listen = "127.0.0.1:0"
        rate_per_minute = 0
    """)


class TimedCalls:
    """GatewayService.call timed, by the agent whose replica made it: its whole time, and
    its own: the time from its start to the pool's call of the tool server and from that
    call's end to its own (what the gateway's layers and the task's step add, apart from
    the server's round trip; spans of some µs, which a loaded machine's waits for a core
    rarely fall in, where they fill the round trip). The bench's calls are sequential, so
    the pool's call inside is this call's."""

    def __init__(self, gateway: Any) -> None:
        self.call = gateway.call
        self.pool_call = gateway.tools.call
        self.pool = (0.0, 0.0)
        self.took: dict[str, list[float]] = {}
        self.own: dict[str, list[float]] = {}

    async def __call__(self, ident: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await self.call(ident, *args, **kwargs)
        finally:
            t1 = time.perf_counter()
            began, ended = self.pool
            agent = ident.name.partition("#")[0]
            self.took.setdefault(agent, []).append(t1 - t0)
            self.own.setdefault(agent, []).append((began - t0) + (t1 - ended))

    async def timed_pool(self, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await self.pool_call(*args, **kwargs)
        finally:
            self.pool = (began, time.perf_counter())

    def median_us(self, agent: str) -> tuple[float, float]:
        took, own = self.took.pop(agent, []), self.own.pop(agent, [])
        return (statistics.median(took) * 1e6 if took else 0.0,
                statistics.median(own) * 1e6 if own else 0.0)


async def measure() -> dict[str, Any]:
    from corral.daemon.daemon import Daemon
    from corral.supervisor import State
    from corral.taskoptions import TaskOptions

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-attrib-"))
    try:
        (tmp / "corral.toml").write_text(config(tmp))
        d = Daemon(tmp / "corral.toml")
        run = asyncio.ensure_future(d.run())
        await d.set_up.wait()
        gateway = d.services.gateway
        timed = gateway.call = TimedCalls(gateway)
        gateway.tools.call = timed.timed_pool  # the engine's tool router calls it too
        for name in ("slots", "plain", "durable"):
            await d.sup.wait_state(name, State.READY, timeout=30)
        kinds = {"unattributed": ("slots", "replica"), "attributed": ("plain", "attempt"),
                 "attributed_journaled": ("durable", "attempt")}
        client: dict[str, list[float]] = {k: [] for k in kinds}
        daemon: dict[str, list[float]] = {k: [] for k in kinds}
        own: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(0 if FLOOR_ONLY else ROUNDS):
            for kind, (agent, via) in kinds.items():
                res = await d.sup.tasks.run(agent, {"calls": CALLS, "via": via},
                                            TaskOptions(timeout=300))
                assert res.status == "succeeded", res.error
                client[kind].append(statistics.median(res.output["seconds"]) * 1e6)
                whole, itself = timed.median_us(agent)
                daemon[kind].append(whole)
                own[kind].append(itself)
        counts = {"attributed": gateway.attributed, "unattributed": gateway.unattributed}
        floored = await floor(d, tmp)
        d.request_stop()
        await asyncio.wait_for(run, 30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if FLOOR_ONLY:
        return {"floor": floored}
    out: dict[str, Any] = {f"{k}_client_us": round(statistics.median(v), 1)
                           for k, v in client.items()}
    out.update({f"{k}_daemon_us": round(statistics.median(v), 1) for k, v in daemon.items()})
    out.update({f"{k}_own_us": round(statistics.median(v), 1) for k, v in own.items()})
    for side in ("client", "daemon", "own"):
        base = out[f"unattributed_{side}_us"]
        out[f"attribution_{side}_us"] = round(out[f"attributed_{side}_us"] - base, 1)
        out[f"journal_{side}_us"] = round(out[f"attributed_journaled_{side}_us"]
                                          - out[f"attributed_{side}_us"], 1)
    out["counted"] = counts
    out["floor"] = floored
    return out


async def held(d: Any, agent: str, tmp: Path) -> tuple[Any, str, Any]:
    """A task of `agent` held running (bench/attrib_agent.py's `hold`): its replica, its
    id, and the future of its end (the file's removal ends it)."""
    from corral.taskoptions import TaskOptions

    path = tmp / f"hold-{agent}"
    done = asyncio.ensure_future(d.sup.tasks.run(agent, {"hold": str(path), "via": ""},
                                                 TaskOptions(timeout=600)))
    while not path.exists():
        await asyncio.sleep(0.01)
    return d.sup.agents[agent].replicas[0], path.read_text(), done


async def floor(d: Any, tmp: Path, calls: int = 2000, rounds: int = 9) -> dict[str, float]:
    """The daemon's side alone, in its loop: GatewayService.call with an agent replica's
    identity, the pool's call answered at once (no server, no HTTP: the gateway's layers
    and the task's step alone; the audit row, the same for every kind, left out), for
    an unattributed call (two slots, no mark), an attributed one (a held task's mark,
    nothing journaled) and an attributed, journaled one (`retries = 1`): µs per call,
    medians of `rounds` runs of `calls`, the kinds alternated."""
    import msgspec

    from corral.daemon.attribution import AttemptMark

    gateway = d.services.gateway
    answer = {"content": [{"type": "text", "text": "x"}], "isError": False}

    async def pool(*args: Any, **kwargs: Any) -> Any:
        return answer

    gateway.call, gateway.tools.call = gateway.call.call, pool
    gateway.audit = lambda *row: None
    idents, ends = {}, []
    for kind, agent in (("unattributed", "slots"), ("attributed", "plain"),
                        ("attributed_journaled", "durable")):
        replica, task_id, end = await held(d, agent, tmp)
        ident = msgspec.structs.replace(gateway.identify(agent=agent), name=replica.label,
                                        owner=replica.label, replica=replica)
        if kind != "unattributed":
            ident = msgspec.structs.replace(ident, mark=AttemptMark(task_id, 1))
        idents[kind] = ident
        ends.append((tmp / f"hold-{agent}", end))
    xs: dict[str, list[float]] = {k: [] for k in idents}
    for _ in range(rounds):
        for kind, ident in idents.items():
            t0 = time.perf_counter()
            for i in range(calls):
                await gateway.call(ident, "fast__echo", {"text": str(i)})
            xs[kind].append((time.perf_counter() - t0) / calls * 1e6)
    for path, end in ends:
        path.unlink()
        await end
    out = {f"{k}_us": round(statistics.median(v), 2) for k, v in xs.items()}
    out["attribution_us"] = round(out["attributed_us"] - out["unattributed_us"], 2)
    out["journal_us"] = round(out["attributed_journaled_us"] - out["attributed_us"], 2)
    return out


def lookup_ns(n: int = 200_000) -> dict[str, float]:
    """The lookup alone (attribution.Attribution.task_of), no process: ns per call for an
    attempt's mark and for a replica running one task (a task in a table of 10,000)."""
    from types import SimpleNamespace

    from corral.daemon.attribution import AttemptMark, Attribution

    replica = SimpleNamespace(label="a#0", tasks_running=1, last_task="t5000",
                              spec=SimpleNamespace(max_concurrent_tasks=1))
    active = {f"t{i}": SimpleNamespace(replica=replica if i == 5000 else None, running=True,
                                       attempt=1) for i in range(10_000)}
    attribution = Attribution(active)  # type: ignore[arg-type]
    mark = AttemptMark("t5000", 1)
    out = {}
    for what, given in (("mark", mark), ("one_task", None)):
        t0 = time.perf_counter()
        for _ in range(n):
            attribution.task_of(replica, given)
        out[f"{what}_ns"] = round((time.perf_counter() - t0) / n * 1e9, 1)
    return out


def main() -> None:
    try:
        import uvloop
        result = uvloop.run(measure())
    except ImportError:
        result = asyncio.run(measure())
    result["lookup"] = lookup_ns()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
