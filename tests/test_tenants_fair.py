"""Tenants sharing the machine fairly (issue 23): a tenant's cpu_weight as its processes'
nice value where no cgroup weighs CPU, and the event bus kept apart per tenant. Against
the real daemon in this process; processes are real."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller, Discard
from corral.daemon.tokens import tokens_of
from corral.jsonrpc import RpcError
from corral.supervisor.caps import NICE, PROLOGUE_NAME, nice_for_weight, wrap_argv
from corral.supervisor.config import Limits

from .daemon_harness import in_process
from .test_gateway_stdio import wait_until_async
from .test_tenants import sleeper
from .test_tokens import cli


# -- cpu_weight as nice -----------------------------------------------------------------------
def test_cpu_weight_maps_to_nice_as_the_kernels_weights_do() -> None:
    # 100 is cgroup v2's default weight (nice 0); each factor 1.25 below it is one step
    assert [nice_for_weight(w) for w in (0, 100, 1000, 10000)] == [0, 0, 0, 0]
    assert [nice_for_weight(w) for w in (80, 50, 10, 2, 1)] == [1, 3, 10, 18, 19]


def test_the_prologue_execs_nice_only_when_a_nice_value_is_asked() -> None:
    assert wrap_argv(["agent", "x"], Limits()) == ["agent", "x"]
    # the shell writes the session's autogroup nice value, then execs nice, then the agent
    assert wrap_argv(["agent"], Limits(nice=7)) == [
        "/bin/sh", "-c", '{ echo 7 >/proc/self/autogroup; } 2>/dev/null; exec "$@"',
        PROLOGUE_NAME, NICE, "-n", "7", "agent"]
    argv = wrap_argv(["agent"], Limits(nice=7, open_files=64))
    assert argv[:3] == ["/bin/sh", "-c", 'ulimit -n 64 || exit 126; { echo 7 '
                        '>/proc/self/autogroup; } 2>/dev/null; exec "$@"']
    assert argv[-4:] == [NICE, "-n", "7", "agent"]


def autogroup_nice(pid: int) -> int:
    """The nice value of the process's session's autogroup (sched(7))."""
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


@pytest.mark.parametrize("warm", [False, True])
async def test_a_tenants_cpu_weight_is_its_processes_nice_value(tmp_path: Path,
                                                                warm: bool) -> None:
    start = "warm = true\n" if warm else ""
    toml = textwrap.dedent("""
        [tenants.low]
        cpu_weight = 10
        [tenants.high]
        cpu_weight = 400
    """)
    agents = (sleeper("lo", "low", start) + sleeper("hi", "high", start)
              + sleeper("own", "low", start + "limits = { nice = 15 }\n"))
    async with in_process(tmp_path, agents, toml) as d:
        sup = d.sup
        pids = {n: sup.agents[n].replicas[0].pid for n in ("lo", "hi", "own")}
        assert all(pids.values())
        nices = {n: os.getpriority(os.PRIO_PROCESS, pid) for n, pid in pids.items()
                 if pid is not None}
        # the tenant's weight, or the agent's own nice where it is lower priority still:
        # an increment (`nice -n`) on the daemon's own, which a niced run's is
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert nices == {n: min(19, base + v) for n, v in (("lo", 10), ("hi", 0), ("own", 15))}
        # and each one's session (its own) weighs as much against other sessions, where
        # the kernel weighs sessions (autogroups), not processes, against each other
        if Path("/proc/self/autogroup").exists():
            assert {n: autogroup_nice(pid) for n, pid in pids.items() if pid is not None
                    } == {"lo": 10, "hi": 0, "own": 15}
        assert sup.stats.cold_fallbacks == 0


# -- the event bus, per tenant ----------------------------------------------------------------
class Collect(Discard):
    """A follower's channel: what it was sent, in order (always writable, as Discard)."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[dict[str, Any]] = []

    def notify(self, method: str, params: Any) -> None:
        if method == "events.event":
            self.got.append(msgspec.json.decode(bytes(params)))

    def seen(self) -> list[tuple[str, str | None]]:
        return [(e["topic"], e.get("tenant")) for e in self.got]


async def test_each_tenant_publishes_and_follows_its_own_part_of_the_bus(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, sleeper("a1", "a") + sleeper("b1", "b"),
                          "[tenants.a]\n[tenants.b]\n") as d:
        tokens = tokens_of(d.services.store)
        callers = {}
        for t in ("a", "b"):
            _, token = await tokens.create(f"t{t}", ["events", "tasks:run"], None, None, t)
            callers[t] = Caller(via="http", token=token.name, scopes=token.scopes, tenant=t)
        ca, cb, op = callers["a"], callers["b"], Caller(via="socket")
        call = d.dispatcher.call
        for name in ("a1", "b1"):
            await call(op, "tasks.run", msgspec.json.encode(
                {"agent": name, "input": {"do": "subscribe", "topic": "orders.*"}}))
        bus = d.sup.events
        channels = {who: Collect() for who in ("a", "b", "op", "op-b")}
        follows = [asyncio.ensure_future(call(c, "events.follow", p, channels[who]))
                   for who, c, p in (("a", ca, {"pattern": "orders.*"}),
                                     ("b", cb, {"pattern": "orders.*"}),
                                     ("op", op, {"pattern": "orders.*"}),
                                     ("op-b", op, {"pattern": "orders.*", "tenant": "b"}))]
        try:
            await wait_until_async(lambda: len(bus.followers) == 4)
            # a tenant's event reaches its worker and follower, and the operator's
            assert (await call(ca, "events.publish", {"topic": "orders.1"})).delivered == 3
            assert (await call(cb, "events.publish", {"topic": "orders.2"})).delivered == 4
            # the operator's without a tenant is every tenant's; with one, that tenant's
            assert (await call(op, "events.publish", {"topic": "orders.3"})).delivered == 6
            assert (await call(op, "events.publish", {"topic": "orders.4", "tenant": "a"})
                    ).delivered == 3
            # a worker publishes in its agent's tenant
            await call(op, "tasks.run", msgspec.json.encode({"agent": "a1", "input": {
                "do": "publish", "topic": "orders.5", "data": 5}}))
            await wait_until_async(lambda: len(channels["op"].got) == 5)
            assert channels["a"].seen() == [("orders.1", "a"), ("orders.3", None),
                                            ("orders.4", "a"), ("orders.5", "a")]
            assert channels["b"].seen() == channels["op-b"].seen() == [
                ("orders.2", "b"), ("orders.3", None)]
            assert [t for t, _ in channels["op"].seen()] == [f"orders.{i}" for i in
                                                             range(1, 6)]
            assert channels["a"].got[-1]["source"] == "a1#0"

            # another tenant answers as one that does not exist, for both verbs
            for method, params in (("events.publish", {"topic": "x"}),
                                   ("events.follow", {"pattern": "*"})):
                with pytest.raises(RpcError) as e:
                    await call(ca, method, {**params, "tenant": "b"})
                with pytest.raises(RpcError) as ghost:
                    await call(op, method, {**params, "tenant": "zz"})
                assert (e.value.code, e.value.message) == (
                    jsonrpc.NOT_FOUND, "no such tenant: b"), method
                assert (ghost.value.code, ghost.value.message) == (
                    jsonrpc.NOT_FOUND, "no such tenant: zz"), method
            assert len(bus.followers) == 4 and len(channels["op"].got) == 5
            # the CLI names the tenant; the operator's may be any that exists
            code, out, err = await cli(d, "events", "publish", "orders.6", "6", "--tenant",
                                       "b")
            assert (code, out.strip()) == (0, "delivered to 4 subscribers"), err
            code, out, err = await cli(d, "events", "publish", "orders.7", "--tenant", "zz")
            assert (code, err.strip()) == (1, "corral: no such tenant: zz")
            await wait_until_async(lambda: len(channels["b"].got) == 3)
            assert channels["b"].seen()[-1] == ("orders.6", "b")
            assert channels["a"].seen()[-1] == ("orders.5", "a")
        finally:
            for f in follows:
                f.cancel()
            await asyncio.gather(*follows, return_exceptions=True)

