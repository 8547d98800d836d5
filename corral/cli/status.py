"""Reading the fleet: `status` (and its --watch) and `stats` (and its history)."""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec

from .. import methods as m
from ..text import iso_time, plural
from .app import Ctx, command, json_option, names_arg
from .durations import duration
from .render import dumps, human_bytes, human_time, millis, print_json, stamp, table

# (paused: an operator's choice, not a failure)
RUNNING_STATES = ("starting", "ready", "busy", "idle", "paused")
EXIT_NOT_RUNNING = 3  # as `systemctl status`: some listed agent is failed or not running


# One rounding rule for every number `status` and `stats` print: a count is an integer, an
# average (a gauge averaged over a period, a rate) and a percentage one decimal, a latency
# as `millis` says it, bytes as `human_bytes`.
def count(v: float) -> str:
    return f"{v:.0f}"


def average(v: float) -> str:
    return f"{v:.1f}"


percent = average


@command(m.AgentsStatus, more="\n\nNAME#N: one replica. Exits 3 (as `systemctl status` "
             "does) when any listed replica is failed or not running, so scripts can check "
             "health; a one-shot that exited cleanly is `done`, not counted.")
@names_arg
@click.option("--watch", is_flag=True,
              help="Then a line per replica state change as it happens (agents.watch), "
                   "until interrupted; with --json, each notification as a JSON line.")
@click.option("--tenant", default=None, metavar="TENANT",
              help="Only the agents of this tenant.")
@click.option("--cluster", "cluster", is_flag=True,
              help="Then the nodes of this daemon's cluster (as `corral nodes`); with "
                   "--json, under \"nodes\".")
@json_option
def status(obj: Ctx, names: tuple[str, ...], watch: bool, tenant: str | None,
           cluster: bool, as_json: bool) -> None:
    if watch:
        if tenant is not None or cluster:
            raise click.UsageError("--tenant or --cluster and --watch: name the agents to "
                                   "watch instead")
        _watch(obj, names, as_json)
        return
    st: m.AgentsStatusResult = obj.call(m.AgentsStatus(names=list(names), tenant=tenant))
    nodes: m.NodesResult | None = obj.call(m.NodesList()) if cluster else None
    # a one-shot that exited cleanly (done) did its work: not down as a failure is
    down = any(a.state not in RUNNING_STATES and not a.done for a in st.agents)
    if as_json:
        print_json(st if nodes is None else {**msgspec.to_builtins(st), "nodes": nodes.nodes})
    else:
        print_status(st, with_mcp=not names)
        if nodes is not None:
            # the other commands' modules are imported where they are needed (app.COMMANDS)
            from .cluster import print_nodes

            click.echo("")
            print_nodes(nodes)
        for notice in st.notices:  # the daemon's own (a drain, an extra not serving)
            click.echo(f"corral: {notice}", err=True)
    if down:
        sys.exit(EXIT_NOT_RUNNING)


def _watch(obj: Ctx, names: tuple[str, ...], as_json: bool) -> None:
    def on_note(method: str, params: Any) -> None:
        if as_json:
            click.echo(dumps({"event": method, **params}))
        elif method == "agents.snapshot":
            if params["resync"]:
                missed = params["missed"]
                click.echo(f"corral: {'some' if missed is None else missed} change(s) "
                           "missed; the fleet as it is now:", err=True)
            print_status(msgspec.convert({"agents": params["replicas"], "mcp_servers": [],
                                          "tasks": {}}, m.AgentsStatusResult),
                         with_mcp=False)
        elif method == "agents.transition":
            pid = f"[{params['pid']}]" if params["pid"] else ""
            # the time as log lines stamp it
            click.echo(f"{iso_time(params['time'], ms=True)} "
                       f"{params['agent']}#{params['replica']}{pid} "
                       f"{params['previous']} -> {params['state']}: {params['reason']}")
        elif method == "agents.health":
            click.echo(f"{iso_time(params['time'], ms=True)} "
                       f"{params['agent']}#{params['replica']} {params['text']}")
        elif method == "agents.roster":
            n = len(params["replicas"])
            click.echo(f"{iso_time(params['time'], ms=True)} {params['agent']}: "
                       + ("removed" if params.get("removed", not n) else plural(n, "replica")))
        sys.stdout.flush()

    obj.call(m.AgentsWatch(names=list(names)), on_notification=on_note)


# the states of a replica that takes work (supervisor/lifecycle.py SERVING, which the CLI
# does not import)
SERVING_STATES = frozenset({"ready", "idle", "busy"})


def print_status(st: m.AgentsStatusResult, with_mcp: bool) -> None:
    rows = []
    for a in st.agents:
        serving = a.state in SERVING_STATES
        # readiness ([health]): serving, but no new task goes to it
        unready = serving and a.ready is False
        rows.append([
            f"{a.name}#{a.replica}",
            f"{a.state} (unready)" if unready else "done" if a.done else
            f"{a.state} (draining)" if a.draining else a.state,
            str(a.pid or "-"),
            human_time(a.uptime), str(a.restarts), percent(a.cpu_percent),
            human_bytes(a.rss_bytes) if a.rss_bytes else "-",
            # a stop by hand holds it down (across daemon restarts): whose, since when
            f"stopped by {a.stopped_by} at {iso_time(a.stopped_at)}"
            if a.stopped_by is not None and a.stopped_at is not None else
            a.reason if not serving else (
                f"unready: {a.health}" if unready and a.health else
                # a plain program's own word (STATUS= on its $NOTIFY_SOCKET)
                f"status: {a.status_text}" if a.status_text else
                f"last exit: {a.last_exit}" if a.last_exit else ""),
        ])
    table(rows, ["AGENT", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "REASON"])
    for a in st.agents:
        if a.boundary is not None:  # the layer a sandboxed agent runs under
            click.echo(f"{a.name}#{a.replica}: {a.boundary}")
    if with_mcp and st.mcp_servers:
        from .mcp import print_mcp

        click.echo()
        print_mcp(st.mcp_servers)
    for name, e in st.elastic.items():
        line = (f"{name}: {e.state}, {plural(e.replicas, 'replica')} (autoscale "
                f"{e.min_replicas}..{e.max_replicas}, wants {e.desired})")
        if e.state == "asleep":
            line += "; a task wakes it"
        click.echo(line + (f"; last: {e.last}" if e.last else ""))
    for name, slots in st.cluster_slots.items():
        # replicas are numbered on each node, slots by the cluster: say which is which
        here = {slot: i for i, slot in enumerate(st.cluster_replicas.get(name, []))}
        click.echo(f"{name}: cluster agent, {plural(len(slots), 'slot')}"
                   + "".join((f"; slot {i} on {node}" if node else
                              f"; slot {i} waiting for a node with room")
                             + (f" (here: {name}#{here[i]})" if i in here else "")
                             for i, node in enumerate(slots)))
    for name, t in st.tasks.items():
        if t and t.accepted:
            rate = t.success_rate
            click.echo(f"{name}: {plural(t.accepted, 'task')}, {t.running} running, "
                       f"{t.queue_depth} queued"
                       + (f", {rate:.1%} succeeded" if rate is not None else ""))


@command(m.StatsGet, more="\n\nWith --since: the metrics history instead "
                                      "(stats.history).")
@click.option("--since", default=None, metavar="DURATION",
              help="The metrics history of the last DURATION (30s, 5m, 2h, 1d).")
@click.option("--agent", default=None, help="With --since: one agent's history.")
@click.option("--resolution", type=click.Choice(["raw", "minute", "hour"]), default=None,
              help="With --since: the samples' resolution (default: the finest kept).")
@json_option
def stats(obj: Ctx, since: str | None, agent: str | None, resolution: str | None,
          as_json: bool) -> None:
    if since is not None:
        _stats_history(obj, since, agent, resolution, as_json)
        return
    if agent is not None or resolution is not None:
        raise click.UsageError("--agent and --resolution go with --since")
    st: m.StatsResult = obj.call_json(m.StatsGet(), as_json)
    s = st.supervisor
    # the agents' restarts, as the rows below count them; a removed one's said apart
    restarts = str(sum(a.restarts for a in st.agents.values())) + (
        f" (and {s.restarts_removed} of removed agents and replicas)"
        if s.restarts_removed else "")
    click.echo(f"uptime {human_time(s.uptime)}  active {s.active}  spawned "
               f"{s.spawned}  restarts {restarts}  failures {s.failures}  "
               f"log lines {s.log_lines}"
               + (f" ({s.log_lines_dropped} not in their files)"
                  if s.log_lines_dropped else ""))
    rows = []
    for n, a in st.agents.items():
        t = st.tasks.agents.get(n)
        lat = t.latency_ms if t is not None else None
        rows.append([n, str(a.serving) + "/" + str(a.replicas), str(a.restarts),
                     percent(a.cpu_percent), human_bytes(a.rss_bytes),
                     *(str(v) for v in ((t.accepted, t.succeeded, t.failed + t.timed_out,
                                         t.lost, t.cancelled, t.queue_depth)
                                        if t is not None else (0, 0, 0, 0, 0, 0))),
                     "-" if lat is None or lat.p50 is None else "/".join(
                         millis(v) for v in (lat.p50, lat.p95, lat.p99) if v is not None)])
    # a lost task (its worker died under it: a cap, a crash) is not one that failed
    table(rows, ["AGENT", "SERVING", "RESTARTS", "CPU%", "RSS", "TASKS", "OK", "FAILED",
                 "LOST", "CANCELLED", "QUEUED", "P50/P95/P99 MS"])
    _print_usage(st.agents)
    from .mcp import print_gateway

    print_gateway(st.gateway)


def _print_usage(agents: dict[str, m.AgentStats]) -> None:
    """Token and cost usage per agent and model, when an agent reported any; then its
    budgets' windows, and why its tasks wait if a budget holds them."""
    rows, windows = [], []
    for name, a in agents.items():
        u = a.usage
        if u is None:
            continue
        for model, mu in sorted(u.models.items()):
            rows.append([name, model, f"{mu.input_tokens:,}", f"{mu.output_tokens:,}",
                         f"{mu.cost_usd:.4f}", str(mu.reports)])
        windows.append([name, f"{u.tokens_last_minute:,.0f}", f"{u.tokens_last_day:,.0f}",
                        f"{u.cost_usd_last_day:.4f}", u.waiting or "-"])
    if rows:
        click.echo("")
        table(rows, ["AGENT", "MODEL", "INPUT TOKENS", "OUTPUT TOKENS", "COST USD",
                     "REPORTS"])
    if windows:
        click.echo("")
        table(windows, ["AGENT", "TOKENS/MINUTE", "TOKENS/DAY", "USD/DAY", "WAITING"])


def _stats_history(obj: Ctx, since: str, agent: str | None, resolution: str | None,
                   as_json: bool) -> None:
    seconds = duration(since) or 0.0
    if seconds <= 0:
        raise click.BadParameter("the duration must be more than 0", param_hint="--since")
    h: m.MetricsHistoryResult = obj.call_json(m.StatsHistory(
        since=seconds, agent=agent, resolution=resolution), as_json)  # type: ignore[arg-type]
    click.echo(f"{agent or 'fleet'}: {plural(len(h.samples), 'sample')} at the "
               f"{h.resolution} resolution (every {h.interval:g} s)"
               + (", the newest only" if h.truncated else ""))
    rows = []
    # a raw sample's gauges are counts; a minute's or an hour's, their averages
    gauge = count if h.resolution == "raw" else average
    for x in h.samples:
        rows.append([stamp(x.time), gauge(x.agents), f"{gauge(x.serving)}/{gauge(x.replicas)}",
                     percent(x.cpu_percent), human_bytes(x.rss_bytes), gauge(x.queued),
                     average(x.per_minute),
                     "-" if x.error_rate is None else percent(x.error_rate * 100),
                     "-" if x.avg_ms is None else "/".join(
                         millis(v) for v in (x.avg_ms, x.p50_ms, x.p95_ms) if v is not None)])
    table(rows, ["TIME", "AGENTS", "SERVING", "CPU%", "RSS", "QUEUED", "EXEC/MIN",
                 "ERR%", "AVG/P50/P95 MS"])
