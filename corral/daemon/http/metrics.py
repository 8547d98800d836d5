"""`/metrics`: Prometheus' exposition, by the official `prometheus_client` (OpenMetrics
when the scraper asks for it), of figures the daemon already holds (DESIGN section 12;
decision 68).

A scrape copies plain numbers out of the engine on the loop (one pass over the agents:
each replica's heartbeat sample and state, the task counters, the queue's depths, the task
times `history.TaskTimes` keeps), then builds the metric families and encodes them in a
thread, where the daemon's own `process_*` figures are read too: nothing is measured per
agent and the loop holds no encoder. Labels are names (agent, state, cause, outcome,
server, route, code), never a task, request or session id; a removed agent's series are
gone at the next scrape.

Who may scrape: with `[http] metrics_public = true` on a loopback address (or a unix
socket) anyone who reaches it; otherwise a caller one of `ctx.authenticators` recognises,
holding `metrics:read`. 401 and 403 are problem+json.
"""

from __future__ import annotations

import asyncio
import gc
import platform
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ... import __version__, jsonrpc
from ...jsonrpc import RpcError
from ...supervisor.lifecycle import Cause
from ...supervisor.process_replica import Event
from ..addresses import local_listen
from ..api import Caller, http_status
from ..history import BUCKETS
from ..services import Services
from .auth import NO_TOKEN, authenticate
from .context import HttpContext
from .route import problem

SCOPE = "metrics:read"
OUTCOMES = ("succeeded", "failed", "timed_out", "cancelled", "lost", "refused")
_LE = (*(f"{b:g}" for b in BUCKETS), "+Inf")


class Restarts:
    """Restarts per agent by the cause that ended the life restarted, counted from the
    event stream (the engine counts them by cause for the whole fleet only): O(1) per
    event. Counted when decided, as the machine counts them (lifecycle.Step.tally)."""

    def __init__(self, services: Services) -> None:
        self.sup = services.sup
        self.by_agent: dict[str, dict[str, int]] = {}

    def on_event(self, e: Event) -> None:
        if e.cause is not Cause.POLICY_RESTART or e.kind != "agent":
            return
        agent = self.sup.agents.get(e.name)
        if agent is None or e.replica >= len(agent.replicas):
            return
        # the machine keeps what ended the life it restarts (lifecycle.Machine)
        cause = str(getattr(agent.replicas[e.replica], "_restart_cause", Cause.CRASH))
        counts = self.by_agent.setdefault(e.name, {})
        counts[cause] = counts.get(cause, 0) + 1

    def forget_gone(self) -> None:
        agents = self.sup.agents
        if len(self.by_agent) > len(agents) or any(n not in agents for n in self.by_agent):
            for name in [n for n in self.by_agent if n not in agents]:
                del self.by_agent[name]


@dataclass(slots=True)
class AgentFigures:
    name: str
    states: dict[str, int]
    restarts: dict[str, int]
    cpu_seconds: float
    rss_bytes: int
    counts: dict[str, int] | None
    queued: int


@dataclass(slots=True)
class Snapshot:
    """What a scrape shows, copied on the loop: plain values only."""

    agents: list[AgentFigures] = field(default_factory=list)
    mcp: dict[str, tuple[int, int]] = field(default_factory=dict)  # server: calls, errors
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    # every agent's task times: bucket counts and their sum
    duration: tuple[list[int], float] = ([], 0.0)
    wait: tuple[list[int], float] = ([], 0.0)


def take(services: Services, restarts: Restarts, requests: dict[tuple[str, str], int]
         ) -> Snapshot:
    """One pass over the agents, on the loop."""
    sup = services.sup
    times = services.history.times
    times.poll()
    restarts.forget_gone()
    by_agent = sup.tasks.by_agent
    depth = sup.tasks.queue.depth
    out = Snapshot(requests=dict(requests))
    for name, agent in sup.agents.items():
        states: dict[str, int] = {}
        cpu = 0.0
        rss = 0
        for r in agent.replicas:
            states[r.state] = states.get(r.state, 0) + 1
            s = r.sample
            cpu += s.cpu_seconds
            rss += s.rss_bytes
        q = by_agent.get(name)
        out.agents.append(AgentFigures(
            name, states, dict(restarts.by_agent.get(name, ())), cpu, rss,
            dict(q.counts) if q is not None else None, depth(name)))
    out.duration = (list(times.duration.buckets), times.duration.sum)
    out.wait = (list(times.wait.buckets), times.wait.sum)
    for server, entry in sup.mcp.servers.items():
        calls = errors = 0
        for instance in entry.all():
            calls += instance.client.calls
            errors += instance.client.errors
        out.mcp[server] = (calls, errors)
    return out


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    cumulative = 0
    out: list[tuple[str, float]] = []
    for le, n in zip(_LE, counts, strict=True):
        cumulative += n
        out.append((le, cumulative))
    return out


class Families(Collector):
    """The metric families of one snapshot (built where the encoder runs)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """One family at a time, each built in a pass of its own: the caller encodes
        each before the next is made."""
        snap = self.snapshot
        agents = snap.agents
        info = InfoMetricFamily("corral_build", "The corral that runs.")
        info.add_metric([], {"version": __version__,
                             "python": platform.python_version()})
        yield info
        # the states and outcomes an agent has: a zero for each of the others would be
        # most of the exposition, and of the scrape's time
        replicas = GaugeMetricFamily("corral_agent_replicas",
                                     "An agent's replicas in each lifecycle state.",
                                     labels=("agent", "state"))
        for a in agents:
            for state, n in a.states.items():
                replicas.add_metric([a.name, state], n)
        yield replicas
        restarts = CounterMetricFamily(
            "corral_agent_restarts", "An agent's restarts, by what ended the life "
            "restarted.", labels=("agent", "cause"))
        for a in agents:
            for cause, n in a.restarts.items():
                restarts.add_metric([a.name, cause], n)
        yield restarts
        cpu = CounterMetricFamily("corral_agent_cpu_seconds",
                                  "CPU time of an agent's live processes, as last sampled.",
                                  labels=("agent",))
        for a in agents:
            cpu.add_metric([a.name], a.cpu_seconds)
        yield cpu
        rss = GaugeMetricFamily("corral_agent_resident_memory_bytes",
                                "Resident memory of an agent's processes, as last sampled.",
                                labels=("agent",))
        for a in agents:
            rss.add_metric([a.name], a.rss_bytes)
        yield rss
        tasks = CounterMetricFamily("corral_tasks", "An agent's tasks by outcome.",
                                    labels=("agent", "outcome"))
        for a in agents:
            counts = a.counts
            if counts is not None:
                for outcome in OUTCOMES:
                    if counts[outcome]:
                        tasks.add_metric([a.name, outcome], counts[outcome])
        yield tasks
        queued = GaugeMetricFamily("corral_tasks_queued", "An agent's tasks waiting.",
                                   labels=("agent",))
        for a in agents:
            queued.add_metric([a.name], a.queued)
        yield queued
        duration = HistogramMetricFamily(
            "corral_task_duration_seconds", "Tasks' execution time (started to finished), "
            "every agent's.")
        duration.add_metric([], _buckets(snap.duration[0]), snap.duration[1])
        yield duration
        wait = HistogramMetricFamily(
            "corral_task_queue_wait_seconds", "Tasks' time from accepted to started, every "
            "agent's.")
        wait.add_metric([], _buckets(snap.wait[0]), snap.wait[1])
        yield wait
        mcp = CounterMetricFamily("corral_mcp_calls", "Calls to each MCP server, by "
                                  "outcome.", labels=("server", "outcome"))
        for server, (calls, errors) in snap.mcp.items():
            mcp.add_metric([server, "ok"], calls - errors)
            mcp.add_metric([server, "error"], errors)
        yield mcp
        http = CounterMetricFamily("corral_http_requests", "Requests to the daemon's HTTP "
                                   "server, by route and status.", labels=("route", "code"))
        for (route, code), n in snap.requests.items():
            http.add_metric([route, code], n)
        yield http


class One(Collector):
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


def encode(families: Iterator[Metric], accept: str | None) -> Iterator[bytes]:
    """The exposition one family at a time (a family is never split: the formats want
    each in one group); OpenMetrics' `# EOF` only once, at the end."""
    encoder, _ = choose_encoder(accept or "")
    for family in families:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(One(family))
        body = encoder(registry)
        yield body.removesuffix(EOF)
    process = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=process)
    yield encoder(process)


EOF = b"# EOF\n"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup(app: web.Application, ctx: HttpContext) -> None:
    services = ctx.services
    restarts = Restarts(services)
    subscription = services.sup.stream.subscribe(restarts.on_event, Event)
    requests: dict[tuple[str, str], int] = {}
    public = ctx.settings.metrics_public and local_listen(ctx.settings.listen)

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        # the route's pattern, never the path asked (an id in a path is no label)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            key = (route, str(exc.status))
            requests[key] = requests.get(key, 0) + 1
            raise
        key = (route, str(response.status))
        requests[key] = requests.get(key, 0) + 1
        return response

    def who(request: web.Request) -> Caller | web.Response:
        try:
            return authenticate(ctx, request)
        except RpcError as exc:
            if exc.message != NO_TOKEN:  # a token, not a valid one
                return problem(http_status(exc.code), "unauthorized", exc.message,
                               exc.code)
        refused = problem(401, "unauthorized", f"unauthorized: /metrics needs a bearer "
                                               f"token with the {SCOPE} scope",
                          jsonrpc.UNAUTHORIZED)
        refused.headers["WWW-Authenticate"] = 'Bearer realm="corral"'
        return refused

    async def metrics(request: web.Request) -> web.Response:
        if not public:
            caller = who(request)
            if isinstance(caller, web.Response):
                return caller
            if not caller.may(SCOPE):
                return problem(403, "forbidden", f"forbidden: /metrics needs the {SCOPE} "
                                                 f"scope, which {caller.who} does not hold",
                               jsonrpc.FORBIDDEN)
        snapshot = take(services, restarts, requests)
        accept = request.headers.get("Accept")
        parts = []
        # on the loop, a family per turn: a thread would hold the GIL against the loop
        # for the whole encoding (every syscall of the loop then waits its turn)
        chunks = encode(Families(snapshot).collect(), accept)
        while True:
            # a family's objects are acyclic and gone by the end of its turn: the cyclic
            # collector would only promote them, and then walk the whole heap for them
            gc.disable()
            try:
                part = next(chunks, None)
            finally:
                gc.enable()
            if part is None:
                break
            parts.append(part)
            await asyncio.sleep(0)
        response = web.Response(body=b"".join(parts))
        response.headers["Content-Type"] = choose_encoder(accept or "")[1]
        return response

    async def unsubscribe(app: web.Application) -> None:
        services.sup.stream.unsubscribe(subscription)

    app.middlewares.append(count)
    app.router.add_get("/metrics", metrics)
    app.on_cleanup.append(unsubscribe)

