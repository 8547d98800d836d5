"""`/metrics` (docs/http.md, "Metrics and history"): Prometheus' exposition of figures the
daemon already holds. The per-agent families, nearly all of the exposition, are written
line by line here (`render`), a slice of the agents per turn of the loop; every other
family is `prometheus_client`'s own (a test holds the lines to what it makes of the same
figures). Labels are names, never a task, request or session id.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import platform
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
from prometheus_client.utils import floatToGoString

from ... import __version__, jsonrpc
from ...jsonrpc import RpcError
from ...supervisor.addresses import local_listen
from ...supervisor.lifecycle import Cause
from ...supervisor.process_replica import Transition
from ...supervisor.stream import Roster
from ..caller import Caller
from ..history import BUCKETS
from ..services import Services
from ..traces import Traces
from .auth import NO_TOKEN, authenticate
from .context import HttpContext
from .route import CHALLENGE, bearer_refusal, problem

SCOPE = "metrics:read"
OUTCOMES = ("succeeded", "failed", "timed_out", "cancelled", "lost", "refused")
_LE = (*(f"{b:g}" for b in BUCKETS), "+Inf")
SLICE = 0.002  # seconds of per-agent lines written before the loop turns


class Restarts:
    """Restarts per agent by the cause that ended the life restarted, counted from the
    event stream (the engine counts them by cause for the whole fleet only); an agent's
    go with it, at the roster's change that removed it (once at each scrape, a daemon
    nobody scraped kept one a name ever restarted, its agents made and removed under new
    names)."""

    def __init__(self, services: Services) -> None:
        self.agents = services.agents
        self.by_agent: dict[str, dict[str, int]] = {}

    def on_roster(self, e: Roster) -> None:
        if e.agent not in self.agents:
            self.by_agent.pop(e.agent, None)

    def on_event(self, e: Transition) -> None:
        if e.cause is not Cause.POLICY_RESTART or e.kind != "agent":
            return
        agent = self.agents.get(e.name)
        if agent is None or e.replica >= len(agent.replicas):
            return
        # the machine keeps what ended the life it restarts (lifecycle.Machine)
        cause = str(getattr(agent.replicas[e.replica], "_restart_cause", Cause.CRASH))
        counts = self.by_agent.setdefault(e.name, {})
        counts[cause] = counts.get(cause, 0) + 1


@dataclass(slots=True)
class AgentFigures:
    name: str
    states: dict[str, int]
    restarts: dict[str, int]
    cpu_seconds: float
    rss_bytes: int
    counts: dict[str, int] | None
    queued: int
    tenant: str = "default"  # every agent family's series carries it (docs/tenants.md)


def figures(name: str, agent: Any, restarts: Restarts, by_agent: dict[str, Any],
            depth: Callable[[str], int]) -> AgentFigures:
    states: dict[str, int] = {}
    cpu = 0.0
    rss = 0
    for r in agent.replicas:
        states[r.state] = states.get(r.state, 0) + 1
        sample = r.sample
        cpu += sample.cpu_seconds
        rss += sample.rss_bytes
    q = by_agent.get(name)
    return AgentFigures(name, states, dict(restarts.by_agent.get(name, ())), cpu, rss,
                        dict(q.counts) if q is not None else None, depth(name),
                        agent.spec.tenant)


@dataclass(frozen=True, slots=True)
class PerAgent:
    """A family with a series per agent (and per `label`, when it has one)."""

    name: str
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily]
    documentation: str
    label: str | None = None

    def empty(self) -> Metric:
        labels = ("agent", "tenant") if self.label is None else (
            "agent", "tenant", self.label)
        return self.kind(self.name, self.documentation, labels=labels)


# in the exposition's order; the agent's own lines come from `render`, in this order too.
# An agent has series only for the states and outcomes it has: a zero for each of the
# others would be most of the exposition, and of the scrape's time
PER_AGENT = (
    PerAgent("corral_agent_replicas", GaugeMetricFamily,
             "An agent's replicas in each lifecycle state.", "state"),
    PerAgent("corral_agent_restarts", CounterMetricFamily,
             "An agent's restarts, by what ended the life restarted.", "cause"),
    PerAgent("corral_agent_cpu_seconds", CounterMetricFamily,
             "CPU time of an agent's live processes, as last sampled."),
    PerAgent("corral_agent_resident_memory_bytes", GaugeMetricFamily,
             "Resident memory of an agent's processes, as last sampled."),
    PerAgent("corral_tasks", CounterMetricFamily, "An agent's tasks by outcome.",
             "outcome"),
    PerAgent("corral_tasks_queued", GaugeMetricFamily, "An agent's tasks waiting."),
)
TASKS_FAMILY = 4  # corral_tasks' place in PER_AGENT


# prometheus_client's own formatting of a value (Go's: `1.0`, `1.2345678e+07`, `+Inf`)
number: Callable[[float], str] = floatToGoString


def integer(n: int) -> str:
    """A count as floatToGoString writes it: below a million it is `repr(float(n))`,
    `n.0` (most of the exposition's values, for a third of the formatting's time)."""
    return f"{n}.0" if 0 <= n < 1_000_000 else number(n)


def escape(value: str) -> str:
    """A label value as prometheus_client escapes it (either format)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def task_lines(agent: str, tenant: str, counts: dict[str, int]) -> str:
    return "".join(f'corral_tasks_total{agent},outcome="{outcome}",{tenant} '
                   f"{integer(counts[outcome])}\n" for outcome in OUTCOMES if counts[outcome])


def render(a: AgentFigures) -> tuple[str, str, str, str, str, str]:
    """The agent's sample lines of each PER_AGENT family, as prometheus_client writes
    them in both formats: a microsecond a line against its encoder's six."""
    agent = f'{{agent="{escape(a.name)}"'
    tenant = f'tenant="{escape(a.tenant)}"}}'
    replicas = "".join(f'corral_agent_replicas{agent},state="{escape(state)}",{tenant} '
                       f"{integer(n)}\n" for state, n in a.states.items())
    restarts = "".join(f'corral_agent_restarts_total{agent},cause="{escape(cause)}",'
                       f"{tenant} {integer(n)}\n" for cause, n in a.restarts.items())
    tasks = task_lines(agent, tenant, a.counts) if a.counts is not None else ""
    return (replicas, restarts,
            f"corral_agent_cpu_seconds_total{agent},{tenant} {number(a.cpu_seconds)}\n",
            f"corral_agent_resident_memory_bytes{agent},{tenant} {integer(a.rss_bytes)}\n",
            tasks,
            f"corral_tasks_queued{agent},{tenant} {integer(a.queued)}\n")


@dataclass(slots=True)
class Snapshot:
    """The fleet-wide figures of a scrape, copied on the loop."""

    mcp: dict[str, tuple[int, int]]  # server: calls, errors
    # agent replicas' gateway tool calls: a task attempt's steps, and no task's
    replica_calls: tuple[int, int]
    requests: dict[tuple[str, str], int]
    # every agent's task times: bucket counts and their sum
    duration: tuple[list[int], float]
    wait: tuple[list[int], float]
    # the autoscaler's: decisions by (agent, direction); (agent, desired, current)
    decisions: dict[tuple[str, str], int]
    scaled: list[tuple[str, int, int]]
    # agents with [health] only: failed checks by (agent, check), ready replicas by agent
    health_failures: dict[tuple[str, str], int]
    refusals: dict[tuple[str, str], int]
    ready: dict[str, tuple[int, str]]  # (count, tenant)
    # what agents reported (usage/report): (agent, model, input, output, dollars)
    usage: list[tuple[str, str, int, int, float]]
    # with [cluster]: this node's figures (ClusterNode.status) and the nodes as its
    # last beat read them (no Redis call in a scrape)
    cluster: dict[str, Any] | None
    nodes: list[Any]


def take(s: Services, requests: dict[tuple[str, str], int]) -> Snapshot:
    times = s.history.times
    return Snapshot(
        mcp={server: (sum(i.client.calls for i in entry.all()),
                      sum(i.client.errors for i in entry.all()))
             for server, entry in s.tools.servers.items()},
        replica_calls=(s.gateway.attributed, s.gateway.unattributed),
        requests=dict(requests),
        duration=(list(times.duration.buckets), times.duration.sum),
        wait=(list(times.wait.buckets), times.wait.sum),
        decisions=dict(s.elastic.counts),
        scaled=[(name, e.desired, len(s.agents[name].replicas))
                for name, e in s.elastic.entries.items() if name in s.agents],
        health_failures=dict(s.health.failures),
        refusals=s.refusals.counts,
        ready={name: (sum(1 for r in agent.replicas if r.serving and r.health_ready),
                      agent.spec.tenant)
               for name, agent in s.agents.items() if agent.spec.health is not None},
        usage=[(reporter, model, u.input_tokens, u.output_tokens, u.cost_usd)
               for reporter, used in s.budgets.usage.items()
               for model, u in used.models.items()],
        cluster=s.cluster.status(), nodes=s.cluster.views())


def build_info() -> Metric:
    info = InfoMetricFamily("corral_build", "The corral that runs.")
    info.add_metric([], {"version": __version__, "python": platform.python_version()})
    return info


def fleet_families(snap: Snapshot) -> Iterator[Metric]:
    for name, documentation, (counts, total) in (
            ("corral_task_duration_seconds", "Tasks' execution time (started to finished), "
             "every agent's.", snap.duration),
            ("corral_task_queue_wait_seconds", "Tasks' time from accepted to started, every "
             "agent's.", snap.wait)):
        times = HistogramMetricFamily(name, documentation)
        times.add_metric([], list(zip(_LE, itertools.accumulate(counts), strict=True)), total)
        yield times
    # only agents that reported: most fleets have none, and a series per agent and model
    # of zeros would be noise
    yield family(CounterMetricFamily, "corral_agent_tokens", "Tokens an agent reported "
                 "(usage/report), by model and kind (input, output).",
                 ("agent", "model", "kind"),
                 [s for agent, model, inp, out, _ in snap.usage
                  for s in (((agent, model, "input"), inp), ((agent, model, "output"), out))])
    yield family(CounterMetricFamily, "corral_agent_cost_usd", "Dollars an agent reported "
                 "(usage/report), by model.", ("agent", "model"),
                 [((agent, model), dollars) for agent, model, _, _, dollars in snap.usage])
    yield family(CounterMetricFamily, "corral_mcp_calls", "Calls to each MCP server, by "
                 "outcome.", ("server", "outcome"),
                 [s for server, (calls, errors) in snap.mcp.items()
                  for s in (((server, "ok"), calls - errors), ((server, "error"), errors))])
    yield family(CounterMetricFamily, "corral_gateway_replica_calls", "Agent replicas' tool "
                 "calls through the MCP gateway, by attribution: task (a step of the task "
                 "attempt it is for), none (no attempt's: made as any client's).",
                 ("attribution",), zip([("task",), ("none",)], snap.replica_calls, strict=True))
    yield from autoscale_families(snap)
    yield family(CounterMetricFamily, "corral_http_requests", "Requests to the daemon's HTTP "
                 "server, by route and status.", ("route", "code"), snap.requests.items())
    yield family(CounterMetricFamily, "corral_health_check_failures", "Failed health checks "
                 "([health]), by agent and check (readiness, liveness).", ("agent", "check"),
                 snap.health_failures.items())
    yield family(GaugeMetricFamily, "corral_agent_ready_replicas", "An agent's serving "
                 "replicas that pass their readiness check (agents with [health]).",
                 ("agent", "tenant"),
                 [((agent, tenant), n) for agent, (n, tenant) in snap.ready.items()])
    yield family(CounterMetricFamily, "corral_boundary_refusals", "What corral's boundary "
                 "refused an agent (boundary.refused), by agent and kind (connect, send, bind, "
                 "open, policy, pin, taint).", ("agent", "kind"), snap.refusals.items())


def family(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str,
           documentation: str, labels: tuple[str, ...],
           samples: Iterable[tuple[Sequence[str], float]]) -> Metric:
    made = kind(name, documentation, labels=labels)
    for key, value in samples:
        made.add_metric(list(key), value)
    return made


def autoscale_families(snap: Snapshot) -> Iterator[Metric]:
    yield family(CounterMetricFamily, "corral_autoscale_decisions", "The autoscaler's "
                 "changes of an agent's replica count, by direction (up, down, wake, sleep, "
                 "hibernate, held).", ("agent", "direction"), sorted(snap.decisions.items()))
    yield family(GaugeMetricFamily, "corral_autoscale_replicas", "An elastic agent's replica "
                 "count: the one its autoscaler wants (desired) and the one it has "
                 "(current).", ("agent", "kind"),
                 [s for agent, desired, current in snap.scaled
                  for s in (((agent, "desired"), desired), ((agent, "current"), current))])


# this node's cluster counters: (family, help, key in ClusterNode.status)
CLUSTER_COUNTERS = (
    ("corral_cluster_tasks_claimed", "Cluster tasks this node claimed.", "claimed"),
    ("corral_cluster_outcomes_published", "Outcomes this node wrote to the cluster.",
     "published"),
    ("corral_cluster_late_writes_refused", "Outcomes of this node the fence refused.",
     "late_writes_refused"),
    ("corral_cluster_fences", "Times this node fenced itself.", "fences"),
)


def cluster_families(snap: Snapshot) -> Iterator[Metric]:
    """The cluster as this node's last beat saw it, and this node's own counters."""
    st = snap.cluster
    if st is None:
        return
    me = str(st["node"])
    nodes = ("node",)
    yield family(GaugeMetricFamily, "corral_cluster_node_up", "1 while a node's liveness key "
                 "exists, else 0 (every node that ever beat).", nodes,
                 [((n.node,), 1 if n.alive else 0) for n in snap.nodes])
    yield family(GaugeMetricFamily, "corral_cluster_node_load", "A node's tasks running and "
                 "waiting, at its last beat.", nodes, [((n.node,), n.load) for n in snap.nodes])
    yield family(GaugeMetricFamily, "corral_cluster_node_capacity", "A node's task slots of "
                 "serving replicas, at its last beat.", nodes,
                 [((n.node,), n.capacity) for n in snap.nodes])
    for name, text, key in CLUSTER_COUNTERS:
        yield family(CounterMetricFamily, name, text, nodes, [((me,), int(st[key]))])
    yield family(CounterMetricFamily, "corral_cluster_takeovers", "Tasks of dead nodes this "
                 "node's reaper took over, by outcome (requeued, lost).", ("node", "outcome"),
                 [((me, outcome), int(st[outcome])) for outcome in ("requeued", "lost")])
    yield family(GaugeMetricFamily, "corral_cluster_outbox", "Outcomes waiting for Redis on "
                 "this node.", nodes, [((me,), int(st["outbox"]))])
    yield family(GaugeMetricFamily, "corral_cluster_agent_replicas", "Replicas of cluster "
                 "agents placed on this node.", ("node", "agent"),
                 [((me, agent), len(slots)) for agent, slots in st["agents"]["placed"].items()])
    yield family(CounterMetricFamily, "corral_cluster_trust_refused", "Records read from Redis "
                 "whose MAC did not verify with this node's cluster key ([cluster] key_file), "
                 "by kind: never run, placed or told.", ("node", "kind"),
                 [((me, kind), int(count))
                  for kind, count in sorted(st["trust"]["refused"].items())])
    yield family(GaugeMetricFamily, "corral_cluster_key", "1 when this node has a cluster key "
                 "([cluster] key_file), else 0: without one a writer of Redis runs commands "
                 "here.", nodes, [((me,), 1 if st["trust"]["key"] else 0)])
    yield family(GaugeMetricFamily, "corral_cluster_redis_warnings", "What the cluster's Redis "
                 "risks by its settings as this node last read them (appendonly, "
                 "appendfsync, maxmemory-policy): 0 as docs/cluster.md asks.", nodes,
                 [((me,), len(st["redis_warnings"]))])


def trace_families(traces: Traces | None) -> Iterator[Metric]:
    if traces is None:
        return
    yield family(CounterMetricFamily, "corral_trace_spans_exported", "Spans the collector "
                 "took.", (), [((), traces.exported)])
    yield family(CounterMetricFamily, "corral_trace_spans_dropped", "Spans dropped: the "
                 "buffer was full, or their export failed (the collector away).", (),
                 [((), traces.dropped)])


class Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


Encoder = Callable[[Collector], bytes]


def encode(encoder: Encoder, families: list[Metric]) -> bytes:
    """Families in the negotiated format, without OpenMetrics' `# EOF` (written once, at
    the end)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(families))
    return encoder(registry).removesuffix(EOF)


def process_figures(encoder: Encoder) -> bytes:
    """The daemon's own process_* family, and OpenMetrics' `# EOF` when it is that."""
    process = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=process)
    return encoder(process)


EOF = b"# EOF\n"


@functools.lru_cache(maxsize=8)
def heads(content_type: str) -> list[bytes]:
    """Each PER_AGENT family's HELP and TYPE lines as prometheus_client writes them in a
    format (they differ between the formats), made once per format: by its content type
    (a few: a client's Accept names a version), as OpenMetrics' encoder is a new partial
    at each choose_encoder."""
    return [encode(choose_encoder(content_type)[0], [f.empty()]) for f in PER_AGENT]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def exposition(services: Services, restarts: Restarts,
                     requests: dict[tuple[str, str], int], heads: list[bytes],
                     encoder: Encoder) -> bytes:
    services.history.times.poll()
    fleet = take(services, requests)
    by_agent = services.task_engine.by_agent
    depth = services.task_engine.queue.depth
    lines: list[list[str]] = [[] for _ in PER_AGENT]
    agents = list(services.agents.items())
    clock = time.perf_counter
    # a slice of the agents per turn of the loop (a series is one agent's: nothing needs
    # two agents read at one instant), the cyclic collector off within it: what a slice
    # makes is acyclic and gone by its end, and collected would only set off full passes
    i = 0
    while i < len(agents):
        until = clock() + SLICE
        gc.disable()
        try:
            while i < len(agents) and clock() < until:
                name, agent = agents[i]
                i += 1
                for family, text in zip(lines, render(figures(
                        name, agent, restarts, by_agent, depth)), strict=True):
                    if text:
                        family.append(text)
        finally:
            gc.enable()
        await asyncio.sleep(0)
    # removed agents' task counts go on being said: a counter never goes backwards
    tasks_family = lines[TASKS_FAMILY]
    for name, (tenant, counts) in services.task_engine.retired.by_name.items():
        if name not in services.agents:
            tasks_family.append(task_lines(f'{{agent="{escape(name)}"',
                                           f'tenant="{escape(tenant)}"}}', counts))
    parts = [encode(encoder, [build_info()])]
    for head, family in zip(heads, lines, strict=True):
        parts += [head, "".join(family).encode()]
    await asyncio.sleep(0)
    parts.append(encode(encoder, [*fleet_families(fleet), *cluster_families(fleet),
                                  *trace_families(services.traces)]))
    # counting the open files walks /proc/self/fd, its syscalls without the GIL
    parts.append(await asyncio.to_thread(process_figures, encoder))
    return b"".join(parts)


def setup(app: web.Application, ctx: HttpContext) -> None:
    services = ctx.services
    restarts = Restarts(services)
    subscriptions = (services.stream.subscribe(restarts.on_event, Transition),
                     services.stream.subscribe(restarts.on_roster, Roster))
    requests = ctx.requests
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
                return bearer_refusal(exc)
        return problem(401, f"unauthorized: /metrics needs a bearer token with the {SCOPE} "
                            "scope", jsonrpc.UNAUTHORIZED, CHALLENGE)

    async def metrics(request: web.Request) -> web.Response:
        if not public:
            caller = who(request)
            if isinstance(caller, web.Response):
                return caller
            if not caller.may(SCOPE):
                return problem(403, f"forbidden: /metrics needs the {SCOPE} scope, which "
                                    f"{caller.who} does not hold", jsonrpc.FORBIDDEN)
            if caller.limited:  # the fleet's series: every tenant's and every agent's
                whose = (f"limited to agents matching {caller.agents}"
                         if caller.agents is not None
                         else f"a caller of tenant {caller.tenant}")
                return problem(403, f"forbidden: /metrics is every agent's; "
                               f"{caller.who}, {whose}, reads theirs at /api/v1/stats",
                               jsonrpc.FORBIDDEN)
        encoder, content_type = choose_encoder(request.headers.get("Accept") or "")
        return web.Response(body=await exposition(services, restarts, requests,
                                                  heads(content_type), encoder),
                            headers={"Content-Type": content_type})

    async def unsubscribe(app: web.Application) -> None:
        for subscription in subscriptions:
            services.stream.unsubscribe(subscription)

    app.middlewares.append(count)
    app.router.add_get("/metrics", metrics)
    app.on_cleanup.append(unsubscribe)

