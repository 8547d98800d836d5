"""The `corral` command: a thin client of the daemon's control socket.

Exit codes: 0 ok, 1 the operation failed, 2 usage error, 3 cannot reach the daemon.
Each client command's help is its control method's docstring (corral.methods).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import msgspec

from .. import methods as m
from ..methods import REGISTRY, LogLine
from ..text import did_you_mean, iso_time, plural
from .client import (
    CLIENT_TIMEOUT,
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    CallFailed,
    Client,
    Disconnected,
    Unreachable,
)


def doc(method: str) -> str:
    # cleandoc: a docstring's continuation lines are indented, and click would keep that
    # indent inside the wrapped paragraph ("restart.     Unless ...")
    return inspect.cleandoc(REGISTRY[method].doc)


class Ctx:
    def __init__(self, socket: str | None) -> None:
        self.socket = socket

    def client(self, wait_forever: bool = False) -> Client:
        from ..paths import client_socket

        path = client_socket(self.socket)
        return Client(path, timeout=None) if wait_forever else Client(path)

    def reachable(self) -> bool:
        """Whether the daemon answers a ping now."""
        try:
            with self.client() as c:
                c.ask("daemon.info", {})
            return True
        except (Unreachable, CallFailed, TimeoutError, OSError):
            return False

    def call(self, method: str, params: msgspec.Struct | None = None, *,
             reachable: bool = True, wait_forever: bool = False, **kw: Any) -> Any:
        """Call and answer the result; exit with the reason on failure. With
        `reachable=False` an unreachable daemon raises Unreachable for the caller;
        `wait_forever` drops the client's timeout (for a call the daemon bounds itself)."""
        try:
            with self.client(wait_forever) as c:
                # the Struct itself: msgspec encodes it (and a Raw input in it) as it is
                return c.ask(method, params if params is not None else {}, **kw)
        except Unreachable as exc:
            if not reachable:
                raise
            click.echo(f"corral: {exc}", err=True)
            sys.exit(EXIT_UNREACHABLE)
        except CallFailed as exc:
            click.echo(f"corral: {exc.message}", err=True)
            sys.exit(EXIT_FAILED)
        except TimeoutError:
            click.echo(f"corral: the daemon did not answer {method} within "
                       f"{CLIENT_TIMEOUT:g} s", err=True)
            sys.exit(EXIT_FAILED)


pass_ctx = click.make_pass_decorator(Ctx)
socket_option = click.option(
    "--socket", "socket_", envvar="CORRAL_SOCKET", metavar="PATH",
    help="The daemon's control socket (default: CORRAL_SOCKET, else the standard place).")


# the names users of supervisord, PM2, docker and kubectl type first, for ours
ALIASES = {"ls": "status", "list": "status", "ps": "status", "delete": "remove",
           "rm": "remove", "show": "describe", "monit": "top"}
# never offered as a guess: a typo must not be one Enter away from losing work
DESTRUCTIVE = frozenset({"shutdown", "remove", "stop", "restart", "cancel", "drain",
                         "rollback", "signal", "scale", "pause", "deploy", "reload"})


class _Group(click.Group):
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, ALIASES.get(cmd_name, cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if (name and not name.startswith("-") and not ctx.resilient_parsing
                and self.get_command(ctx, name) is None):
            import difflib

            safe = [c for c in (*self.list_commands(ctx), *ALIASES) if c not in DESTRUCTIVE]
            near = difflib.get_close_matches(name, safe, n=3)
            hint = f" Did you mean {' or '.join(repr(c) for c in near)}?" if near else ""
            risky = difflib.get_close_matches(name, sorted(DESTRUCTIVE), n=1)
            if risky:
                hint += f" (`{risky[0]}` is never guessed: type it whole.)"
            ctx.fail(f"No such command {name!r}.{hint} (`corral --help` lists them.)")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's whole first sentence, not cut to the width click chooses."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
        by: dict[str, list[str]] = {}
        for alias, name in ALIASES.items():
            by.setdefault(name, []).append(alias)
        with formatter.section("Aliases"):
            formatter.write_dl([(name, ", ".join(a)) for name, a in sorted(by.items())])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Ctrl-C ends a follow or top: exit 130 as shells expect, with no "Aborted!",
            # no traceback, and no second interrupt raised while the interpreter shuts
            # down ("Exception ignored ... KeyboardInterrupt")
            import signal as signals

            signals.signal(signals.SIGINT, signals.SIG_IGN)
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@socket_option
@click.version_option(package_name="corral")
@click.pass_context
def cli(ctx: click.Context, socket_: str | None) -> None:
    """corral: a supervisor for AI-agent processes."""
    ctx.obj = Ctx(socket_)


def _complete_agents(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    try:
        root = ctx.find_root().obj or Ctx(None)
        with root.client() as c:
            st: m.AgentsStatusResult = c.ask("agents.status", {})
        return sorted({a.name for a in st.agents if a.name.startswith(incomplete)})
    except Exception:
        return []


names_arg = click.argument("names", nargs=-1, shell_complete=_complete_agents)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _print_json(obj: Any) -> None:
    """A result (a Struct: its fields in their order, absent ones left out) or plain
    values, as `--json` prints them."""
    click.echo(json.dumps(msgspec.to_builtins(obj), indent=2, sort_keys=False))


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*headers).rstrip())
    for r in rows:
        click.echo(fmt.format(*r).rstrip())


def _human_bytes(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _ms(v: float) -> str:
    """A latency in ms, as people read them: 0.42, 12.3, 5764."""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _human_time(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# -- the daemon ---------------------------------------------------------------------------
def _default_config() -> str:
    from ..paths import default_config

    return str(default_config())


@cli.command()
@click.option("--config", "-c", "config", metavar="PATH", default=None,
              help="Config file (default: /etc/corral/corral.toml for root, else "
                   "~/.config/corral/corral.toml).")
@pass_ctx
def daemon(obj: Ctx, config: str | None) -> None:
    """Run the supervisor daemon in the foreground (systemd runs it this way too)."""
    from ..daemon.daemon import run_daemon

    path = Path(config or _default_config())
    if not path.exists():
        click.echo(f"corral: no config file at {path} (give one with --config)", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(run_daemon(path, obj.socket))


@cli.command("check-config")
@click.argument("path", required=False, metavar="[PATH]")
@click.option("--config", "-c", "config", metavar="PATH", default=None,
              help="Config file to check (default: as for `corral daemon`).")
@click.option("--no-check", is_flag=True,
              help="Do not check that each command is an executable (one that will exist "
                   "later).")
def check_config(path: str | None, config: str | None, no_check: bool) -> None:
    """Validate a config file (and its includes) without starting anything: every key, and
    that every agent's and MCP server's command is an executable on PATH or a file."""
    from ..supervisor.config import ConfigError, check_commands, load_config

    if path and config and path != config:
        raise click.UsageError("give the config file once: PATH or --config")
    where = Path(path or config or _default_config())
    if _is_manifest(where):
        _check_manifest(where)
        return
    try:
        cfg = load_config(where)
        if not no_check:
            check_commands(cfg, str(where))
    except ConfigError as exc:
        errors = str(exc).splitlines()
        for line in errors:  # every error of the file, one a line
            click.echo(f"corral: invalid config: {line}", err=True)
        if len(errors) > 1:
            click.echo(f"corral: {plural(len(errors), 'error')} in {where}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"{where}: ok ({plural(len(cfg.agents), 'agent')}, "
               f"{plural(len(cfg.mcp_servers), 'MCP server')})")


def _is_manifest(path: Path) -> bool:
    """An agent package (its directory, pyproject.toml, or a TOML file with an [agent]
    table) rather than a daemon's config file."""
    if path.is_dir() or path.name == "pyproject.toml":
        return True
    try:
        return bool(re.search(rb"(?m)^\s*\[agent\]", path.read_bytes()))
    except OSError:
        return False


def _check_manifest(path: Path) -> None:
    from ..daemon.packages.manifest import read_manifest
    from ..supervisor.config import ConfigError

    try:
        manifest = read_manifest(path.resolve())
    except ConfigError as exc:
        click.echo(f"corral: invalid manifest: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    lock = f"lock {manifest.lock.name}" if manifest.lock else "no dependencies"
    click.echo(f"{manifest.file}: ok (package {manifest.name}, version "
               f"{manifest.version or '-'}, {lock})")


# -- reading ------------------------------------------------------------------------------
# (paused: an operator's choice, not a failure)
RUNNING_STATES = ("starting", "ready", "busy", "idle", "paused")
EXIT_NOT_RUNNING = 3  # as `systemctl status`: some listed agent is failed or not running


@cli.command(help=doc("agents.status") + "\n\nExits 3 (as `systemctl status` does) when "
             "any listed replica is failed or not running, so scripts can check health.")
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
@pass_ctx
def status(obj: Ctx, names: tuple[str, ...], watch: bool, tenant: str | None,
           cluster: bool, as_json: bool) -> None:
    if watch:
        if tenant is not None or cluster:
            raise click.UsageError("--tenant or --cluster and --watch: name the agents to "
                                   "watch instead")
        _watch(obj, names, as_json)
        return
    st: m.AgentsStatusResult = obj.call("agents.status", m.AgentsStatus(names=list(names),
                                                                         tenant=tenant))
    nodes: m.NodesResult | None = obj.call("nodes.list", m.NodesList()) if cluster else None
    down = any(a.state not in RUNNING_STATES for a in st.agents)
    if as_json:
        if nodes is None:
            _print_json(st)
        else:
            click.echo(json.dumps({**msgspec.to_builtins(st),
                                   "nodes": msgspec.to_builtins(nodes.nodes)}, indent=2))
    else:
        _print_status(st, with_mcp=not names)
        if nodes is not None:
            click.echo("")
            _print_nodes(nodes)
        for notice in st.notices:  # the daemon's own (a drain, an extra not serving)
            click.echo(f"corral: {notice}", err=True)
    if down:
        sys.exit(EXIT_NOT_RUNNING)


def _watch(obj: Ctx, names: tuple[str, ...], as_json: bool) -> None:
    def on_note(method: str, params: Any) -> None:
        if as_json:
            click.echo(json.dumps({"event": method, **params}))
        elif method == "agents.snapshot":
            if params["resync"]:
                missed = params["missed"]
                click.echo(f"corral: {'some' if missed is None else missed} change(s) "
                           "missed; the fleet as it is now:", err=True)
            _print_status(msgspec.convert({"agents": params["replicas"], "mcp_servers": [],
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

    obj.call("agents.watch", m.AgentsWatch(names=list(names)), on_notification=on_note)


# the states of a replica that takes work (supervisor/lifecycle.py SERVING, which the CLI
# does not import)
SERVING_STATES = frozenset({"ready", "idle", "busy"})


def _print_status(st: m.AgentsStatusResult, with_mcp: bool) -> None:
    rows = []
    for a in st.agents:
        serving = a.state in SERVING_STATES
        # readiness ([health]): serving, but no new task goes to it
        unready = serving and a.ready is False
        rows.append([
            f"{a.name}#{a.replica}",
            f"{a.state} (unready)" if unready else a.state, str(a.pid or "-"),
            _human_time(a.uptime), str(a.restarts), f"{a.cpu_percent:.1f}",
            _human_bytes(a.rss_bytes) if a.rss_bytes else "-",
            a.reason if not serving else (
                f"unready: {a.health}" if unready and a.health else
                # a plain program's own word (STATUS= on its $NOTIFY_SOCKET)
                f"status: {a.status_text}" if a.status_text else
                f"last exit: {a.last_exit}" if a.last_exit else ""),
        ])
    _table(rows, ["AGENT", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "REASON"])
    if with_mcp and st.mcp_servers:
        click.echo()
        _print_mcp(st.mcp_servers)
    for name, e in st.elastic.items():
        line = (f"{name}: {e.state}, {plural(e.replicas, 'replica')} (autoscale "
                f"{e.min_replicas}..{e.max_replicas}, wants {e.desired})")
        if e.state == "asleep":
            line += "; a task wakes it"
        click.echo(line + (f"; last: {e.last}" if e.last else ""))
    for name, slots in st.cluster_slots.items():
        click.echo(f"{name}: cluster agent, {plural(len(slots), 'slot')}"
                   + "".join(f"; slot {i} on {node}" if node else
                             f"; slot {i} waiting for a node with room"
                             for i, node in enumerate(slots)))
    for name, t in st.tasks.items():
        if t and t.accepted:
            rate = t.success_rate
            click.echo(f"{name}: {plural(t.accepted, 'task')}, {t.running} running, "
                       f"{t.queue_depth} queued"
                       + (f", {rate:.1%} succeeded" if rate is not None else ""))


@cli.command(help=doc("stats.get") + "\n\nWith --since: the metrics history instead "
                                      "(stats.history).")
@click.option("--since", default=None, metavar="DURATION",
              help="The metrics history of the last DURATION (30s, 5m, 2h, 1d).")
@click.option("--agent", default=None, help="With --since: one agent's history.")
@click.option("--resolution", type=click.Choice(["raw", "minute", "hour"]), default=None,
              help="With --since: the samples' resolution (default: the finest kept).")
@json_option
@pass_ctx
def stats(obj: Ctx, since: str | None, agent: str | None, resolution: str | None,
          as_json: bool) -> None:
    if since is not None:
        _stats_history(obj, since, agent, resolution, as_json)
        return
    if agent is not None or resolution is not None:
        raise click.UsageError("--agent and --resolution go with --since")
    st: m.StatsResult = obj.call("stats.get")
    if as_json:
        _print_json(st)
        return
    s = st.supervisor
    click.echo(f"uptime {_human_time(s.uptime)}  active {s.active}  spawned "
               f"{s.spawned}  restarts {s.restarts}  failures {s.failures}  "
               f"log lines {s.log_lines}"
               + (f" ({s.log_lines_dropped} not in their files)"
                  if s.log_lines_dropped else ""))
    rows = []
    for n, a in st.agents.items():
        t = st.tasks.agents.get(n)
        lat = t.latency_ms if t is not None else None
        rows.append([n, str(a.serving) + "/" + str(a.replicas), str(a.restarts),
                     f"{a.cpu_percent:.1f}", _human_bytes(a.rss_bytes),
                     *(str(v) for v in ((t.accepted, t.succeeded,
                                         t.failed + t.timed_out + t.lost, t.cancelled,
                                         t.queue_depth)
                                        if t is not None else (0, 0, 0, 0, 0))),
                     "-" if lat is None or lat.p50 is None else "/".join(
                         _ms(v) for v in (lat.p50, lat.p95, lat.p99) if v is not None)])
    _table(rows, ["AGENT", "SERVING", "RESTARTS", "CPU%", "RSS", "TASKS", "OK", "FAILED",
                  "CANCELLED", "QUEUED", "P50/P95/P99 MS"])
    _print_usage(st.agents)
    _print_gateway(st.gateway)


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
        _table(rows, ["AGENT", "MODEL", "INPUT TOKENS", "OUTPUT TOKENS", "COST USD",
                      "REPORTS"])
    if windows:
        click.echo("")
        _table(windows, ["AGENT", "TOKENS/MINUTE", "TOKENS/DAY", "USD/DAY", "WAITING"])


_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _parse_since(value: str | None) -> float | None:
    if value is None:
        return None
    mt = _SINCE.match(value)
    if mt:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}[mt.group(2)]
        return time.time() - float(mt.group(1)) * mult
    try:
        from datetime import datetime

        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter("use a duration like 30s, 5m, 2h, 1d or an ISO time",
                                 param_hint="--since") from None


def _log_options(fn: Any) -> Any:
    options: list[Callable[[Any], Any]] = [
        names_arg,
        click.option("-n", "--lines", default=50, show_default=True,
                     type=click.IntRange(min=0), help="How many past lines to show."),
        click.option("--since", default=None, metavar="WHEN",
                     help="Only lines since WHEN: 30s, 5m, 2h, 1d or an ISO time."),
        click.option("--grep", default=None, metavar="TEXT",
                     help="Only lines holding TEXT (a fixed string, as grep -F)."),
        click.option("--stream", "streams", multiple=True,
                     type=click.Choice(["stdout", "stderr", "event"]),
                     help="Only lines of this stream (repeat for several): an agent's "
                          "stdout or stderr, or corral's events about it."),
        click.option("--reconnect", type=click.FloatRange(min=0), default=60.0,
                     show_default=True, metavar="SECONDS",
                     help="Following: if the daemon goes away (a restart), wait this long "
                          "for it and go on from the last line shown."),
        json_option,
        pass_ctx,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command(help=doc("logs.tail") + " NAME#N: one replica's. With -f, new lines as they "
             "come, across restarts and rotation; a reader too slow to keep up is told how "
             "many lines it missed.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@_log_options
def logs(obj: Ctx, names: tuple[str, ...], follow: bool, lines: int, since: str | None,
         grep: str | None, streams: tuple[str, ...], reconnect: float, as_json: bool) -> None:
    _logs(obj, follow, _log_query(names, lines, since, grep, streams), reconnect, as_json)


@cli.command(help="`corral logs -f`: print the last lines, then new ones until Ctrl-C.")
@_log_options
def tail(obj: Ctx, names: tuple[str, ...], lines: int, since: str | None, grep: str | None,
         streams: tuple[str, ...], reconnect: float, as_json: bool) -> None:
    _logs(obj, True, _log_query(names, lines, since, grep, streams), reconnect, as_json)


def _log_query(names: tuple[str, ...], lines: int, since: str | None, grep: str | None,
               streams: tuple[str, ...]) -> m.LogsTail:
    try:
        return msgspec.convert({"names": list(names), "lines": lines,
                                "since": _parse_since(since), "grep": grep or None,
                                "streams": list(streams)}, m.LogsTail)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(str(exc).replace("$.", ""), param_hint="--grep") from None


# how many of the lines a follow missed while the daemon was away it asks for
LOG_BACKLOG = 100_000


def _logs(obj: Ctx, follow: bool, want: m.LogsTail, reconnect: float, as_json: bool) -> None:
    last: list[float] = []  # the time of the newest line shown

    def show(items: list[LogLine]) -> None:
        for line in items:
            if last and line.time <= last[0]:
                continue  # shown before the daemon went away (the last one again too)
            if as_json:
                click.echo(json.dumps(msgspec.to_builtins(msgspec.structs.asdict(line))))
            else:
                click.echo(line.render())
            last[:] = [line.time]

    if not follow:
        res: m.LogLines = obj.call("logs.tail", want)
        show(res.lines)
        return

    def on_note(method: str, params: Any) -> None:
        if method == "logs.lines":
            show(msgspec.convert(params, m.LogLines).lines)
        elif method == "logs.missed":
            click.echo(f"corral: missed {plural(params['count'], 'line')} (reading too slowly)",
                       err=True)
        sys.stdout.flush()

    params = m.LogsFollow(**msgspec.structs.asdict(want))
    while True:
        try:
            obj.call("logs.follow", params, on_notification=on_note, reachable=False,
                     wait_forever=True)
            return
        except Disconnected:
            pass
        # the daemon went away (a restart, an upgrade): wait for it, then go on from the
        # newest line shown (the new daemon's tail reads it back from the log files), as
        # `corral run` waits again for its task
        click.echo("corral: lost the daemon; reconnecting", err=True)
        deadline = time.monotonic() + reconnect
        while not obj.reachable():
            if time.monotonic() >= deadline:
                click.echo(f"corral: the daemon did not come back within {reconnect:g} s",
                           err=True)
                sys.exit(EXIT_UNREACHABLE)
            time.sleep(0.2)
        if last:
            params = m.LogsFollow(**{**msgspec.structs.asdict(want), "since": last[0],
                                     "lines": LOG_BACKLOG})


# -- changing -----------------------------------------------------------------------------
def _selection_command(verb: str, done: str) -> None:
    """`corral start|stop|restart NAME…|--all`: one shape, three control methods."""
    method = f"agents.{verb}"
    params = REGISTRY[method].params

    def command(obj: Ctx, names: tuple[str, ...], all_: bool, **extra: Any) -> None:
        all_, targets = _selection(names, all_)
        res = obj.call(method, params(names=targets, all=all_, **extra))
        asleep = getattr(res, "asleep", [])
        if getattr(res, done) or not asleep:
            click.echo(f"{done}: {', '.join(getattr(res, done)) or 'nothing'}")
        if asleep:
            click.echo(f"asleep, not started (scaled to zero: a task wakes it): "
                       f"{', '.join(asleep)}")

    fn: Any = pass_ctx(command)
    if verb == "restart":
        fn = click.option(
            "--rolling", is_flag=True,
            help="Replace replicas one at a time, each new one ready before the old one "
                 "stops (no downtime, no task dropped).")(fn)
    fn = click.option("--all", "all_", is_flag=True, help="Every agent (also: `all`).")(fn)
    fn = names_arg(fn)
    cli.command(verb, help=doc(method) + "\n\nNAME#N: one replica; `all` (or --all): "
                "every agent.")(fn)


def _selection(names: tuple[str, ...], all_: bool) -> tuple[bool, list[str]]:
    """`all` as a name means --all (the supervisorctl habit), unless an agent is named so
    (it cannot be: `all` is taken as the alias, so names stay unambiguous)."""
    if "all" in names:
        if len(names) > 1:
            raise click.UsageError("`all` means every agent: name no others with it")
        return True, []
    if not names and not all_:
        raise click.UsageError("name at least one agent (NAME or NAME#N), or all")
    return all_, list(names)


for _verb, _done in (("start", "started"), ("stop", "stopped"), ("restart", "restarted")):
    _selection_command(_verb, _done)


@cli.command(help=doc("agents.signal"))
@click.argument("sig", metavar="SIGNAL")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete_agents)
@pass_ctx
def signal(obj: Ctx, sig: str, names: tuple[str, ...]) -> None:
    all_, targets = _selection(names, False)
    res: m.SignalResult = obj.call("agents.signal",
                                   m.AgentsSignal(names=targets, all=all_, signal=sig))
    for s in res.signalled:
        click.echo(f"{res.signal} sent to {s.replica} (pid {s.pid})")


def _pause_command(verb: str) -> None:
    """`corral pause|resume NAME[#N]`: one shape, two control methods."""
    method = f"agents.{verb}"
    params = REGISTRY[method].params

    def command(obj: Ctx, target: str, as_json: bool) -> None:
        try:
            name, index = m.parse_target(target)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="NAME[#N]") from None
        res: m.PauseResult = obj.call(method, params(name=name, replica=index))
        if as_json:
            _print_json(res)
            return
        for r in res.replicas:
            click.echo(f"{res.agent}#{r.replica}: {r.state}"
                       + (f" (pid {r.pid})" if r.pid else ""))

    fn: Any = json_option(pass_ctx(command))
    fn = click.argument("target", metavar="NAME[#N]", shell_complete=_complete_agents)(fn)
    cli.command(verb, help=doc(method) + "\n\nNAME: every replica; NAME#N: one.")(fn)


for _verb in ("pause", "resume"):
    _pause_command(_verb)


@cli.command(help="Print the pid of each running replica of NAME (or of NAME#N), one a line; "
                  "exits 1 when none is running.")
@click.argument("target", shell_complete=_complete_agents)
@pass_ctx
def pid(obj: Ctx, target: str) -> None:
    try:
        name, index = m.parse_target(target)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME[#N]") from None
    st: m.AgentsStatusResult = obj.call("agents.status", m.AgentsStatus(names=[name]))
    reps = [a for a in st.agents if index is None or a.replica == index]
    if index is not None and not reps:
        click.echo(f"corral: no such replica: {target}", err=True)
        sys.exit(EXIT_FAILED)
    pids = [a.pid for a in reps if a.pid]
    for p in pids:
        click.echo(p)
    if not pids:
        click.echo(f"corral: {target} has no running process", err=True)
        sys.exit(EXIT_FAILED)


_POLICY = ("restart", "max_restarts", "restart_window", "backoff_initial", "backoff_max",
           "stable_after", "start_timeout", "stop_timeout")
_TASKS = ("max_concurrent_tasks", "max_queue", "task_timeout", "cancel_grace", "retries",
          "rate_per_minute", "max_tool_calls_per_task")
_DESCRIBED = {"name", "command", "release", "version", "cwd", "user", "group", "env",
              "replicas", "autostart", "limits", "tools", *_POLICY, *_TASKS}


def _spec_value(v: Any) -> str:
    """A spec's value on one line: a table as its keys' `k = v`, a list joined."""
    if v is None or v == [] or v == {}:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return ", ".join(f"{k} = {_spec_value(x) if isinstance(x, dict) else json.dumps(x)}"
                         for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(x if isinstance(x, str) else json.dumps(x) for x in v)
    return str(v)


@cli.command(help=doc("agents.describe"))
@click.argument("name", shell_complete=_complete_agents)
@json_option
@pass_ctx
def describe(obj: Ctx, name: str, as_json: bool) -> None:
    res: m.DescribeResult = obj.call("agents.describe", m.AgentsDescribe(name=name))
    if as_json:
        _print_json(res)
        return
    spec = res.spec
    click.echo(f"name: {res.name}")
    click.echo(f"origin: {res.origin}")
    click.echo(f"revision: {res.revision if res.revision is not None else '-'}")
    click.echo(f"command: {' '.join(shlex.quote(a) for a in res.argv)}")
    if spec.get("release"):  # an agent package's
        click.echo(f"release: {os.path.basename(spec['release'])} (version "
                   f"{spec.get('version') or '-'}, {spec['release']})")
    click.echo(f"cwd: {spec['cwd']}")
    click.echo(f"user: {spec['user'] or '-'}" + (f" group: {spec['group']}"
                                                   if spec["group"] else ""))
    click.echo(f"env keys: {', '.join(spec['env']) or '-'}")
    click.echo(f"replicas: {spec['replicas']}  autostart: {str(spec['autostart']).lower()}")
    click.echo("policy: " + ", ".join(f"{k} = {spec[k]}" for k in _POLICY))
    click.echo("tasks: " + ", ".join(f"{k} = {spec[k]}" for k in _TASKS))
    limits = {k: v for k, v in spec["limits"].items() if v}
    click.echo("limits: " + (", ".join(f"{k} = {v}" for k, v in limits.items()) or "none"))
    click.echo(f"tools: {', '.join(spec['tools']) or '-'}")
    # every other key the daemon gave, as it is in effect: none hidden behind --json
    for key in sorted(set(spec) - _DESCRIBED):
        click.echo(f"{key}: {_spec_value(spec[key])}")
    for r in res.replicas:
        click.echo(f"{res.name}#{r.replica}: {r.state}"
                   + (f" (pid {r.pid})" if r.pid else ""))


@cli.command(help="Print the version of this corral (and of the daemon, when it runs).")
@pass_ctx
def version(obj: Ctx) -> None:
    from .. import __version__
    from .client import Unreachable

    click.echo(f"corral {__version__}")
    try:
        with obj.client() as c:
            info: m.DaemonInfoResult = c.ask("daemon.info", {})
        click.echo(f"daemon {info.version} (pid {info.pid}, {info.socket})")
    except Unreachable:
        click.echo("daemon: not reachable")


def _read_agents_file(path: str) -> dict[str, dict[str, Any]]:
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        click.echo(f"corral: {path}: syntax error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    agents = data.get("agents")
    if not isinstance(agents, dict) or not agents:
        click.echo(f"corral: {path}: no [agents.NAME] tables", err=True)
        sys.exit(EXIT_FAILED)
    base = Path(path).resolve().parent
    for table in agents.values():
        if isinstance(table, dict):
            cwd = table.get("cwd")
            if cwd is None:
                table["cwd"] = str(base)
            elif isinstance(cwd, str) and not os.path.isabs(cwd):
                table["cwd"] = str((base / cwd).resolve())
    return agents


@cli.command(short_help="Add agents at runtime from a TOML file or flags.")
@click.argument("file", required=False)
@click.option("--name", help="Agent name (with --command instead of FILE).")
@click.option("--command", "command", help="Command line, split like a shell would.")
@click.option("--replicas", type=click.IntRange(min=0), default=None)
@click.option("--restart", "restart_", type=click.Choice(["always", "on-failure", "never"]),
              default=None)
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE")
@click.option("--cwd", default=None)
@click.option("--tenant", default=None,
              help="The tenant the agent is in, its quotas counted (default: default).")
@click.option("--no-check", is_flag=True,
              help="Add even if the command is not (yet) an executable on PATH or a file.")
@click.option("--cluster", "cluster", is_flag=True,
              help="A cluster agent: its spec kept in the cluster's Redis, its replicas "
                   "placed on live nodes (docs/cluster.md).")
@click.option("--protocol", type=click.Choice(["corral", "none"]), default=None,
              help='"none": any program (a web server, a script), supervised but given no '
                   "tasks; its stdout and stderr are its log (default: corral, a worker).")
@click.option("--ready", "ready", type=click.Choice(["started", "notify"]), default=None,
              help="With --protocol none: ready once started (default), or once it sends "
                   "READY=1 to $NOTIFY_SOCKET.")
@pass_ctx
def add(obj: Ctx, file: str | None, name: str | None, command: str | None,
        replicas: int | None, restart_: str | None, env: tuple[str, ...],
        cwd: str | None, tenant: str | None, no_check: bool, cluster: bool,
        protocol: str | None, ready: str | None) -> None:
    if file and (name or command):
        raise click.UsageError("give a FILE or --name/--command, not both")
    for flag, value, shape in (("tenant", tenant, "NAME"), ("protocol", protocol, "none"),
                               ("ready", ready, "notify")):
        if file and value is not None:
            raise click.UsageError(f"--{flag} goes with --name/--command; in a FILE, write "
                                   f'{flag} = "{shape}" in each [agents.NAME] table')
    if file:
        agents = _read_agents_file(file)
    else:
        if not (name and command):
            raise click.UsageError("give a FILE, or both --name and --command")
        table: dict[str, Any] = {"command": command, "cwd": os.path.abspath(cwd or ".")}
        if replicas is not None:
            table["replicas"] = replicas
        if restart_:
            table["restart"] = restart_
        if tenant is not None:
            table["tenant"] = tenant
        if protocol is not None:
            table["protocol"] = protocol
        if ready is not None:
            table["ready"] = ready
        if env:
            pairs = [e.split("=", 1) for e in env]
            if any(len(p) != 2 for p in pairs):
                raise click.BadParameter("use KEY=VALUE", param_hint="--env")
            table["env"] = dict(pairs)
        agents = {name: table}
    res: m.Added = obj.call("agents.add", m.AgentsAdd(agents=agents, check=not no_check,
                                                      cluster=cluster))
    click.echo(f"added: {', '.join(res.added)}")
add.help = doc("agents.add") + "\n\nFILE holds [agents.NAME] tables as in the config file."


@cli.command(help=doc("agents.update") + "\n\nExample: corral update web --env LEVEL=debug "
             "--unset-env OLD --set limits.memory_mb=512")
@click.argument("name", shell_complete=_complete_agents)
@click.option("--command", "command", help="A new command line, split like a shell would.")
@click.option("--replicas", type=click.IntRange(min=0), default=None)
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Set a variable.")
@click.option("--unset-env", "unset_env", multiple=True, metavar="KEY",
              help="Take a variable away.")
@click.option("--set", "set_", multiple=True, metavar="KEY=JSON",
              help="Any key of the table (dots into tables: limits.memory_mb=512); the "
                   "value is JSON (a bare word is a string); null takes the key away.")
@click.option("--no-check", is_flag=True,
              help="Take a command that is not (yet) an executable on PATH or a file.")
@pass_ctx
def update(obj: Ctx, name: str, command: str | None, replicas: int | None,
           env: tuple[str, ...], unset_env: tuple[str, ...], set_: tuple[str, ...],
           no_check: bool) -> None:
    patch: dict[str, Any] = {}
    for item in set_:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: use KEY=JSON", param_hint="--set")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare word: a string, as a person means it
        *tables, last = key.split(".")
        at = patch
        for t in tables:
            at = at.setdefault(t, {})
            if not isinstance(at, dict):
                raise click.BadParameter(f"{key}: {t} is set to a value above",
                                         param_hint="--set")
        at[last] = value
    if command is not None:
        patch["command"] = command
    if replicas is not None:
        patch["replicas"] = replicas
    if env or unset_env:
        pairs = [e.split("=", 1) for e in env]
        if any(len(p) != 2 for p in pairs):
            raise click.BadParameter("use KEY=VALUE", param_hint="--env")
        patch.setdefault("env", {}).update({**dict(pairs), **dict.fromkeys(unset_env)})
    if not patch:
        raise click.UsageError("nothing to change: give --command, --replicas, --env, "
                               "--unset-env or --set")
    res: m.Updated = obj.call("agents.update", m.AgentsUpdate(name=name, set=patch,
                                                              check=not no_check))
    click.echo(f"{name}: " + (f"revision {res.revision}: {res.change}"
                              if res.revision is not None else res.change))


@cli.command(help=doc("agents.remove"))
@click.argument("names", nargs=-1, required=True, shell_complete=_complete_agents)
@pass_ctx
def remove(obj: Ctx, names: tuple[str, ...]) -> None:
    res: m.Removed = obj.call("agents.remove", m.AgentsRemove(names=list(names)))
    click.echo(f"removed: {', '.join(res.removed)}")


@cli.command(help=doc("agents.scale"), context_settings={"ignore_unknown_options": True})
@click.argument("name", shell_complete=_complete_agents)
# a plain argument, checked here: as an IntRange, "four" read "'four' is not a valid
# integer range" and "-1" was taken for an option ("No such option '-1'")
@click.argument("replicas", metavar="N")
@pass_ctx
def scale(obj: Ctx, name: str, replicas: str) -> None:
    if not (replicas.isascii() and replicas.isdigit()):
        raise click.UsageError(f"replicas must be a whole number ≥ 0, not {replicas!r}")
    res: m.Scaled = obj.call("agents.scale", m.AgentsScale(name=name, replicas=int(replicas)))
    click.echo(f"{res.name}: {plural(res.replicas, 'replica')}")


@cli.command(help=doc("agents.history"))
@click.argument("name", shell_complete=_complete_agents)
@click.option("-n", "--limit", default=100, show_default=True, type=click.IntRange(min=0))
@json_option
@pass_ctx
def history(obj: Ctx, name: str, limit: int, as_json: bool) -> None:
    res: m.HistoryResult = obj.call("agents.history", m.AgentsHistory(name=name, limit=limit))
    if as_json:
        _print_json(res)
        return
    _print_history(res)


def _print_history(res: m.HistoryResult) -> None:
    rows = [[("* " if r.revision == res.current else "  ") + str(r.revision),
             _stamp(r.time), r.who, r.change] for r in res.revisions]
    headers = ["  REV", "TIME", "WHO", "CHANGE"]
    if any(r.release for r in res.revisions):  # an agent package: which release, version
        rows = [[*row[:2], r.release or "-", r.version or "-", *row[2:]]
                for row, r in zip(rows, res.revisions, strict=True)]
        headers = [*headers[:2], "RELEASE", "VERSION", *headers[2:]]
    _table(rows, headers)
    if res.scaling:  # the autoscaler's changes: not revisions, the spec is unchanged
        click.echo()
        _table([[_stamp(s.time), s.direction, f"{s.previous} -> {s.replicas}", s.reason]
                for s in res.scaling], ["TIME", "AUTOSCALE", "REPLICAS", "REASON"])


def _stamp(t: float) -> str:
    """A time in a table: ISO 8601, UTC, as in the logs."""
    return iso_time(t)


@cli.command(help=doc("agents.rollback") + "\n\nREV: a revision's number (`corral history "
             "NAME`), or a package's release as `corral releases NAME` prints it (the newest "
             "revision that ran it).")
@click.argument("name", shell_complete=_complete_agents)
@click.argument("rev", required=False)
@pass_ctx
def rollback(obj: Ctx, name: str, rev: str | None) -> None:
    revision = release = None
    if rev is not None and rev.isdigit():
        revision = int(rev)
        if revision < 1:
            raise click.BadParameter("a revision is 1 or more", param_hint="REV")
    else:
        release = rev
    res: m.RollbackResult = obj.call("agents.rollback", m.AgentsRollback(
        name=name, revision=revision, release=release))
    click.echo(f"{name}: rolled back to revision {res.restored} (now revision "
               f"{res.revision})" + (f": {res.change}" if res.change else ""))


@cli.command(help=doc("packages.deploy") + "\n\nPATH: the package's directory (or its "
             "manifest file); the daemon reads it, so it must be on the daemon's host.")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", default=None, help="The agent's name (default: the manifest's).")
@json_option
@pass_ctx
def deploy(obj: Ctx, path: str, name: str | None, as_json: bool) -> None:
    def progress(method: str, params: Any) -> None:
        if method == "packages.progress" and not as_json:
            click.echo(f"corral: {params.get('message')}", err=True)

    params = m.PackagesDeploy(path=os.path.abspath(path), name=name)
    # no client timeout: a build is bounded by the daemon's build_timeout, a switch by
    # healthy_deadline, and Ctrl-C ends the wait
    res: m.DeployResult = obj.call("packages.deploy", params, on_notification=progress,
                                   wait_forever=True)
    if as_json:
        _print_json(res)
        return
    version = f" (version {res.version})" if res.version else ""
    if not res.changed:
        click.echo(f"{res.name}: release {res.release}{version} is current already")
        return
    built = "built" if res.built else "kept from before, not built again"
    click.echo(f"{res.name}: now release {res.release}{version} ({built}), revision "
               f"{res.revision}" + (f"; was {res.previous}" if res.previous else ""))


@cli.command(help=doc("packages.releases"))
@click.argument("name", shell_complete=_complete_agents)
@json_option
@pass_ctx
def releases(obj: Ctx, name: str, as_json: bool) -> None:
    res: m.ReleasesResult = obj.call("packages.releases", m.PackagesReleases(name=name))
    if as_json:
        _print_json(res)
        return
    rows = [[("* " if r.current else "  ") + r.release, r.version or "-",
             _stamp(r.built_at) if r.built_at else "-",
             _human_bytes(r.size_bytes) if r.size_bytes is not None else "-",
             r.python_version or "-", ",".join(map(str, r.revisions)) or "-"]
            for r in res.releases]
    _table(rows, ["  RELEASE", "VERSION", "BUILT", "SIZE", "PYTHON", "REVISIONS"])


@cli.command(help=doc("audit.list"))
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(min=0))
@json_option
@pass_ctx
def audit(obj: Ctx, limit: int, as_json: bool) -> None:
    res: m.AuditResult = obj.call("audit.list", m.AuditList(limit=limit))
    if as_json:
        _print_json(res)
        return
    # who acted as revisions name it: a token by its name, a socket peer by uid and pid
    rows = [[_stamp(e.time), e.who or f"uid {e.uid} pid {e.pid}", e.tenant or "-", e.method,
             e.outcome, json.dumps(e.params)[:60]] for e in res.entries]
    _table(rows, ["TIME", "WHO", "TENANT", "METHOD", "OUTCOME", "PARAMS"])


@cli.command(help=doc("config.reload") + "\n\nPrints each agent and MCP server added, removed "
             "or changed, then how many are unchanged; an agent whose change did not take "
             "is named on stderr with the reason.")
@json_option
@pass_ctx
def reload(obj: Ctx, as_json: bool) -> None:
    res: m.ReloadResult = obj.call("config.reload")
    if as_json:
        _print_json(res)
        return
    mcp = res.mcp_servers
    rows = [[kind, name, "failed" if kind == "agent" and name in res.failed else change]
            for kind, changes in (("agent", msgspec.structs.asdict(res)), ("MCP server", mcp))
            for change in ("added", "removed", "changed")
            for name in changes.get(change) or []]
    rows += [["gateway", "", change] for change in res.gateway]
    if rows:
        _table(rows, ["KIND", "NAME", "CHANGE"])
    else:
        click.echo("nothing changed")
    click.echo(f"unchanged: {plural(len(res.unchanged), 'agent')}, "
               f"{plural(len(mcp.get('unchanged') or []), 'MCP server')}")
    for name, why in res.failed.items():
        click.echo(f"corral: {name} was not changed: {why}", err=True)


@cli.command(help=doc("daemon.shutdown") + "\n\nReturns once the daemon is gone, saying "
             "what it drained.")
@click.option("--no-wait", is_flag=True,
              help="Return once the daemon has begun to stop, not once it is gone.")
@click.option("--now", is_flag=True,
              help="No drain: stop the agents at once; running tasks are handed to the "
                   "next daemon. During a drain: cut it short.")
@pass_ctx
def shutdown(obj: Ctx, no_wait: bool, now: bool) -> None:
    from .stopping import shutdown as stop

    try:
        stop(obj.client(wait_forever=True), now=now, wait=not no_wait)
    except Unreachable as exc:
        click.echo(f"corral: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except CallFailed as exc:
        click.echo(f"corral: {exc.message}", err=True)
        sys.exit(EXIT_FAILED)


@cli.command(help=doc("daemon.info"))
@json_option
@pass_ctx
def info(obj: Ctx, as_json: bool) -> None:
    res: m.DaemonInfoResult = obj.call("daemon.info")
    if as_json:
        _print_json(res)
        return
    for k, v in msgspec.to_builtins(res).items():
        if k == "extras":  # one line each: serving, or why not and when it is retried
            click.echo(f"{k}:" + ("" if v else " -"))
            for e in v:
                click.echo(f"  {e['name']} on {e['address']}: " + (
                    "serving" if e["serving"] else
                    f"not serving ({e['error']}); attempt {e['attempts'] + 1} in "
                    f"{e['retry_in'] or 0:.0f} s"))
        elif isinstance(v, dict):  # a section (containment): one indented line per key
            click.echo(f"{k}:")
            for kk, vv in v.items():
                click.echo(f"  {kk}: {_plain(vv)}")
        else:
            click.echo(f"{k}: {_human_time(v) if k == 'uptime' else _plain(v)}")


def _plain(value: Any) -> str:
    """A value as a person reads it: lists comma-separated, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


@cli.command()
@click.option("-d", "--interval", default=1.0, show_default=True,
              type=click.FloatRange(min=0.05), help="Seconds between refreshes.")
@click.option("-n", "--iterations", default=0, type=click.IntRange(min=0),
              help="Stop after this many refreshes (0: until Ctrl-C).")
@click.option("-l", "--log-lines", default=10, show_default=True, type=click.IntRange(min=0),
              help="Recent log lines shown under the table (0: no log pane).")
@pass_ctx
def top(obj: Ctx, interval: float, iterations: int, log_lines: int) -> None:
    """Every replica and tool server, busiest first, and the latest log lines, refreshed
    until q (or Ctrl-C)."""
    with _keys() as pause:
        _top(obj, interval, iterations, log_lines, pause)


@contextlib.contextmanager
def _keys() -> Any:
    """A pause between refreshes that a key press of q ends for good: with the terminal
    read a key at a time (no Enter needed, nothing echoed) and given back as it was,
    however the command ends. Without a terminal on stdin, a plain sleep."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is None:
        def sleep(seconds: float) -> bool:
            time.sleep(seconds)
            return False

        yield sleep
        return
    import select
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)  # Ctrl-C still interrupts (ISIG stays on)

    def pause(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                continue
            keys = os.read(fd, 64)
            if b"q" in keys.lower():
                return True
            if not keys:  # the terminal is gone: no key will come
                time.sleep(max(0.0, deadline - time.monotonic()))
        return False

    try:
        yield pause
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _top(obj: Ctx, interval: float, iterations: int, log_lines: int,
         pause: Callable[[float], bool]) -> None:
    clear = sys.stdout.isatty()
    count = 0
    # Ctrl-C ends it quietly (main)
    while True:
        st: m.AgentsStatusResult = obj.call("agents.status", m.AgentsStatus())
        rows: list[tuple[str, m.ReplicaStatus | m.McpInstanceStatus]] = sorted(
            [*((f"{a.name}#{a.replica}", a) for a in st.agents),
             *((f"mcp {s.name}#{s.instance}", s) for s in st.mcp_servers)],
            key=lambda kv: (-kv[1].cpu_percent, -kv[1].rss_bytes))
        if clear:
            click.echo("\x1b[H\x1b[2J", nl=False)
        click.echo(time.strftime("corral top - %H:%M:%S") +
                   f"  {plural(len(st.agents), 'replica')}, "
                   f"{plural(len(st.mcp_servers), 'server')}")
        _table([[name, a.state, str(a.pid or "-"), f"{a.cpu_percent:.1f}",
                 _human_bytes(a.rss_bytes) if a.rss_bytes else "-",
                 str(a.tasks_running), _human_time(a.uptime), str(a.restarts)]
                for name, a in rows],
               ["NAME", "STATE", "PID", "CPU%", "RSS", "ACTIVE", "UPTIME", "RESTARTS"])
        if log_lines:
            recent: list[LogLine] = obj.call("logs.tail", m.LogsTail(lines=log_lines)).lines
            click.echo(f"\n-- last {plural(len(recent), 'log line')} --")
            width = shutil.get_terminal_size().columns
            for line in recent:
                text = line.render()
                click.echo(text[:width] if clear else text)
        sys.stdout.flush()
        count += 1
        if (iterations and count >= iterations) or pause(interval):
            return


# -- tasks --------------------------------------------------------------------------------
MAX_INPUT = 16 * 1024 * 1024 - 4096


def _read_input(value: str) -> msgspec.Raw:
    if value == "-":
        data = sys.stdin.buffer.read()
    elif value.startswith("@"):
        try:
            data = Path(value[1:]).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}",
                                     param_hint="--input") from None
    else:
        data = value.encode()
    if len(data) > MAX_INPUT:
        click.echo(f"corral: input too large: {len(data)} bytes is over the {MAX_INPUT}-byte "
                   "limit", err=True)
        sys.exit(EXIT_FAILED)
    try:
        # checked here (a clear usage error), sent on as the bytes it is: no objects built
        raw: msgspec.Raw = msgspec.json.decode(data, type=msgspec.Raw)
    except msgspec.DecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    return raw


reconnect_option = click.option(
    "--reconnect", type=click.FloatRange(min=0), default=60.0, show_default=True,
    metavar="SECONDS",
    help="If the daemon goes away while waiting (a restart), reconnect for this long and "
         "wait again for the same task.")


def _wait_again(obj: Ctx, task_id: str, reconnect: float) -> m.TaskInfo:
    """The daemon went away while we waited: reconnect and wait for the task by its id
    (the journal keeps it across a restart of the daemon)."""
    click.echo(f"corral: lost the daemon while waiting for task {task_id}; reconnecting",
               err=True)
    deadline = time.monotonic() + reconnect
    while True:
        try:
            with obj.client(wait_forever=True) as c:
                info: m.TaskInfo = c.ask("tasks.get", {"task_id": task_id, "wait": True})
                return info
        except Unreachable as exc:
            if time.monotonic() >= deadline:
                click.echo(f"corral: {exc}", err=True)
                sys.exit(EXIT_UNREACHABLE)
            time.sleep(0.2)
        except CallFailed as exc:
            click.echo(f"corral: {exc.message}", err=True)
            sys.exit(EXIT_FAILED)


@cli.command("run", help=doc("tasks.run") + "\n\nExits 0 only when the task succeeded.")
@click.argument("agent", shell_complete=_complete_agents)
@click.option("--input", "input_", default="null", metavar="JSON|@FILE|-",
              help="The task's input: JSON, @file with JSON, or - for stdin (default: "
                   "null, for an agent that takes none).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds the task may run once started (default: the agent's "
                   "task_timeout); time waiting in the queue is not counted, and `run` "
                   "waits for the task's end however long it waits.")
@click.option("--priority", type=int, default=0, show_default=True,
              help="Higher runs first among waiting tasks.")
@click.option("--detach", is_flag=True, help="Print the task id and return at once.")
@click.option("--local", is_flag=True,
              help="With [cluster]: run it on this node, not on whichever node has room.")
@reconnect_option
@json_option
@pass_ctx
def run_task(obj: Ctx, agent: str, input_: str, timeout: float | None, priority: int,
             detach: bool, local: bool, reconnect: float, as_json: bool) -> None:
    task_input = _read_input(input_)
    accepted: list[str] = []

    def on_note(method: str, params: Any) -> None:
        if method == "task.accepted":
            accepted.append(params["task_id"])
        elif method == "task.progress" and not as_json:
            total = f"/{params['total']:g}" if params.get("total") is not None else ""
            msg = f" {params['message']}" if params.get("message") else ""
            click.echo(f"progress: {params.get('progress', 0):g}{total}{msg}", err=True)

    params = m.TasksRun(agent=agent, input=task_input, timeout=timeout, priority=priority,
                        detach=detach, local=local)
    if detach:  # answered at once, with the id of the task that runs on
        got: m.TaskAccepted = obj.call("tasks.run", params, result=m.TaskAccepted)
        click.echo(json.dumps(msgspec.to_builtins(got)) if as_json else got.task_id)
        return
    res: m.TaskResult
    try:
        # the outcome comes when the task ends, however long it waits in the queue (a
        # sleeping agent, a budget, an unready replica): no client timeout
        res = obj.call("tasks.run", params, on_notification=on_note, reachable=False,
                       wait_forever=True)
    except Unreachable as exc:
        if not accepted:  # never acknowledged: it may not exist
            click.echo(f"corral: {exc}", err=True)
            sys.exit(EXIT_UNREACHABLE)
        info = _wait_again(obj, accepted[0], reconnect)
        res = m.TaskResult(info.task_id, info.status, info.output, info.error, info.attempts)
    if as_json:
        _print_json(res)
    elif res.status == "succeeded":
        click.echo(json.dumps(res.output, indent=2))
    else:
        why = res.error.message if res.error is not None else ""
        click.echo(f"corral: task {res.task_id} {res.status}: {why}", err=True)
    if res.status != "succeeded":
        sys.exit(EXIT_FAILED)


def _duration(value: str | None) -> float | None:
    """Seconds from 90, 90s, 15m, 1h or 2d."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
    if match is None:
        raise click.BadParameter(f"not a duration: {value} (examples: 90s, 15m, 1h, 2d)",
                                 param_hint="--since")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


@cli.command("tasks", help=doc("tasks.list"))
@click.option("--agent", default=None, shell_complete=_complete_agents)
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(min=0))
@click.option("--since", default=None, metavar="DURATION",
              help="Only tasks created within this long ago: 90s, 15m, 1h, 2d.")
@click.option("--status", default=None,
              type=click.Choice(["queued", "running", "succeeded", "failed", "timed_out",
                                 "cancelled", "lost"]),
              help="Only tasks with this status.")
@click.option("--before", default=None, metavar="TASK_ID",
              help="Only tasks accepted before this one: the next page (older tasks).")
@click.option("--local", is_flag=True,
              help="With [cluster]: this node's own tasks (run with --local), not the "
                   "cluster's.")
@json_option
@pass_ctx
def tasks_list(obj: Ctx, agent: str | None, limit: int, since: str | None,
               status: str | None, before: str | None, local: bool, as_json: bool) -> None:
    res: m.TaskList = obj.call("tasks.list", m.TasksList(
        agent=agent, limit=limit, status=status, since=_duration(since), before=before,
        local=local))
    if as_json:
        _print_json(res)
        return
    now = time.time()
    rows = [[t.task_id, t.agent, t.status, str(t.priority), str(t.attempts),
             _human_time(now - t.created) + " ago"] for t in res.tasks]
    head = ["TASK", "AGENT", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED"]
    if any(isinstance(t.node, str) for t in res.tasks):  # a cluster's tasks
        for row, t in zip(rows, res.tasks, strict=True):
            row.insert(3, t.node if isinstance(t.node, str) else "-")
        head.insert(3, "NODE")
    _table(rows, head)
    if isinstance(res.next, str):
        click.echo(f"older tasks: the same with --before {res.next}", err=True)


@cli.command("task", help=doc("tasks.get"))
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task has finished.")
@click.option("--input", "with_input", is_flag=True,
              help="Show the input it was sent too (kept with its record; tasks:read).")
@reconnect_option
@json_option
@pass_ctx
def task_get(obj: Ctx, task_id: str, wait: bool, with_input: bool, reconnect: float,
             as_json: bool) -> None:
    res: m.TaskInfo
    try:
        res = obj.call("tasks.get", m.TasksGet(task_id=task_id, wait=wait, input=with_input),
                       reachable=not wait, wait_forever=wait)
    except Unreachable:
        res = _wait_again(obj, task_id, reconnect)
    if as_json:
        _print_json(res)
        return
    if with_input:
        click.echo("input: " + (json.dumps(res.input) if res.input is not msgspec.UNSET
                                else "(not kept: a cluster task, or a daemon without a "
                                     "journal)"))
    for key in ("task_id", "agent", "status", "priority", "queue_wait", "tool_calls",
                "progress", "output", "error"):
        val = msgspec.to_builtins(getattr(res, key))
        if key == "output" and res.output_dropped:
            val = "(dropped from memory: the daemon keeps tasks_kept_mb of outputs)"
        if val is not None:
            click.echo(f"{key}: {json.dumps(val) if isinstance(val, dict | list) else val}")
    if res.waiting is not None:
        click.echo(f"waiting: {res.waiting}")
    if res.usage is not None:
        u = res.usage
        click.echo(f"usage: {u.input_tokens + u.output_tokens:,} tokens ({u.input_tokens:,} "
                   f"in, {u.output_tokens:,} out), ${u.cost_usd:.4f}, models "
                   + ", ".join(sorted(u.models)))
    for i, a in enumerate(res.attempts, 1):
        click.echo(f"attempt {i}: {_where(a)}{a.outcome}" + (f" ({a.error})" if a.error
                                                            else ""))


def _where(a: m.Attempt) -> str:
    """Where an attempt ran, as far as it is known: a cluster attempt a node claimed but
    had not yet given to a replica (cluster.records.NOT_STARTED) names none, nor a pid."""
    node = f"node {a.node} " if isinstance(a.node, str) else ""
    if a.replica < 0:
        return f"{node}(claimed, {'waiting for' if a.outcome == 'running' else 'never on'} " \
               "a replica) "
    return f"{node}replica {a.replica} " + (f"pid {a.pid} " if a.pid is not None else "")


@cli.command("nodes", help=doc("nodes.list"))
@json_option
@pass_ctx
def nodes_list(obj: Ctx, as_json: bool) -> None:
    res: m.NodesResult = obj.call("nodes.list", m.NodesList())
    if as_json:
        _print_json(res)
        return
    _print_nodes(res)


def _print_nodes(res: m.NodesResult) -> None:
    now = time.time()
    rows = [[n.node, ("draining" if n.draining else "alive") if n.alive else "dead",
             str(n.incarnation), str(n.load), str(n.capacity),
             _human_time(now - n.last_beat) + " ago",
             ",".join(a + ("*" if a in n.placed else "") for a in n.agents)]
            for n in res.nodes]
    _table(rows, ["NODE", "STATE", "INCARNATION", "LOAD", "CAPACITY", "LAST BEAT", "AGENTS"])
    for line in _key_warnings(res.nodes):
        click.echo(line, err=True)
    for line in res.warnings:
        click.echo(f"WARNING: {line} (docs/cluster.md#what-redis-must-be)", err=True)


def _key_warnings(nodes: list[m.NodeInfo]) -> list[str]:
    """What the alive nodes' cluster keys say of the cluster's trust (decision 162)."""
    alive = [n for n in nodes if n.alive]
    out = []
    bare = [n.node for n in alive if not n.key]
    if bare:
        out.append(f"WARNING: {', '.join(bare)} {'has' if len(bare) == 1 else 'have'} no "
                   "[cluster] key_file: anyone who can write to the cluster's Redis can run "
                   "commands there (as the agents' users, root by default) and forge task "
                   "outcomes (docs/cluster.md#securing-redis)")
    keys = {n.key for n in alive if n.key}
    if len(keys) > 1:
        out.append("WARNING: the nodes' cluster keys differ (`corral nodes --json`: key): "
                   "each refuses the agent tables and outcomes the others sign")
    return out


@cli.command("drain", help=doc("nodes.drain"))
@click.argument("node")
@pass_ctx
def nodes_drain(obj: Ctx, node: str) -> None:
    res: m.DrainResult = obj.call("nodes.drain", m.NodesDrain(node=node))
    click.echo(f"node {res.node} (incarnation {res.incarnation}) drains; `corral nodes` "
               "shows it dead once it has left")


@cli.command("cancel", help=doc("tasks.cancel"))
@click.argument("task_id")
@pass_ctx
def task_cancel(obj: Ctx, task_id: str) -> None:
    res: m.TaskInfo = obj.call("tasks.cancel", m.TasksCancel(task_id=task_id))
    click.echo(f"{res.task_id}: {res.status}")


@cli.group()
def events() -> None:
    """Publish events and watch the event bus."""


@events.command("publish", help=doc("events.publish"))
@click.argument("topic")
@click.argument("data", required=False, default="null")
@click.option("--tenant", default=None, help="Only this tenant's workers and followers.")
@pass_ctx
def events_publish(obj: Ctx, topic: str, data: str, tenant: str | None) -> None:
    try:
        value = msgspec.json.decode(data.encode())
    except msgspec.DecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from None
    res: m.Delivered = obj.call("events.publish", m.EventsPublish(topic=topic, data=value,
                                                                  tenant=tenant))
    click.echo(f"delivered to {plural(res.delivered, 'subscriber')}")


@events.command("tail", help=doc("events.follow") + "\n\nOne line each: the time (ISO 8601, "
                "UTC, as in `corral logs`), the topic, who published it and the data as JSON; "
                "with --json, each event as a JSON object (its time in seconds since the "
                "epoch, as every --json prints times).")
@click.argument("pattern", default="*")
@click.option("--tenant", default=None, help="Only this tenant's events (and every "
              "tenant's).")
@json_option
@pass_ctx
def events_tail(obj: Ctx, pattern: str, tenant: str | None, as_json: bool) -> None:
    def on_note(method: str, params: Any) -> None:
        if method == "events.event":
            click.echo(json.dumps(params) if as_json else
                       f"{iso_time(params['time'], ms=True)} {params['topic']} from "
                       f"{params['source']}: {json.dumps(params['data'])}")
        elif method == "events.missed":
            click.echo(f"corral: missed {plural(params['count'], 'event')}", err=True)
        sys.stdout.flush()

    obj.call("events.follow", m.EventsFollow(pattern=pattern, tenant=tenant),
             on_notification=on_note)


# -- MCP tools ----------------------------------------------------------------------------
@cli.group("tools", invoke_without_command=True, help=doc("tools.list"))
@click.option("--agent", default=None, shell_complete=_complete_agents)
@json_option
@click.pass_context
def tools(ctx: click.Context, agent: str | None, as_json: bool) -> None:
    if ctx.invoked_subcommand is not None:
        return
    obj: Ctx = ctx.obj
    res: m.ToolList = obj.call("tools.list", m.ToolsList(agent=agent))
    allow = res.allow if isinstance(res.allow, list) else []
    empty = None if agent is None else (
        f"no tools match agent {agent}'s allowlist: {', '.join(allow)}" if allow
        else f"no tools: agent {agent} has an empty allowlist (its `tools` key)")
    _show_listing(res, as_json, ["TOOL", "ARGUMENTS", "DESCRIPTION"],
                  [[t["name"], ", ".join(f"{name}{'' if required else '?'}"
                                         + (f": {kind}" if kind else "")
                                         for name, kind, required, _ in _arguments(t)),
                    _first_line(t.get("description"))] for t in res.tools],
                  empty=empty)


@tools.command("describe")
@click.argument("name", metavar="SERVER__TOOL")
@json_option
@pass_ctx
def tools_describe(obj: Ctx, name: str, as_json: bool) -> None:
    """One tool: its whole description and each argument (from its input schema): type,
    whether it is required, what it is for."""
    server = name.split("__", 1)[0] if "__" in name else None
    if server is None:
        raise click.BadParameter("tools are named SERVER__TOOL", param_hint="SERVER__TOOL")
    res: m.ToolList = obj.call("tools.list", m.ToolsList(server=server))
    tool = next((t for t in res.tools if t["name"] == name), None)
    if tool is None:
        for why in res.unavailable.values():
            click.echo(f"corral: MCP server {server} is not serving: {why}", err=True)
        if not res.unavailable:
            click.echo(f"corral: no such tool: {name}"
                       + did_you_mean(name, [t["name"] for t in res.tools]), err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        _print_json(tool)
        return
    click.echo(f"{name} (MCP server {tool.get('server', server)})")
    description = tool.get("description")
    if isinstance(description, str) and description.strip():
        click.echo(inspect.cleandoc(description))
    rows = [[arg, kind or "-", "yes" if required else "no", about]
            for arg, kind, required, about in _arguments(tool)]
    click.echo()
    if rows:
        _table(rows, ["ARGUMENT", "TYPE", "REQUIRED", "DESCRIPTION"])
    else:
        click.echo("no arguments")


def _arguments(tool: dict[str, Any]) -> list[tuple[str, str, bool, str]]:
    """A tool's arguments from its input schema (a JSON Schema object): name, type,
    required, and what the schema says of it (description, default, allowed values)."""
    schema = tool.get("inputSchema")
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return []
    required = schema.get("required") if isinstance(schema, dict) else None
    needed = set(required) if isinstance(required, list) else set()
    out = []
    for arg, prop in props.items():
        prop = prop if isinstance(prop, dict) else {}
        text = prop.get("description")
        about = [" ".join(text.split())] if isinstance(text, str) and text.strip() else []
        if "default" in prop:
            about.append(f"default: {json.dumps(prop['default'])}")
        if isinstance(prop.get("enum"), list):
            about.append("one of: " + ", ".join(json.dumps(v) for v in prop["enum"]))
        out.append((str(arg), _schema_type(prop), arg in needed, "; ".join(about)))
    return out


def _schema_type(prop: dict[str, Any]) -> str:
    """A JSON Schema's type as a person reads it: string, integer|null, string[]."""
    kind = prop.get("type")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if kind == "array" and isinstance(prop.get("items"), dict):
        inner = _schema_type(prop["items"])
        return f"{inner}[]" if inner and "|" not in inner else "array"
    if isinstance(kind, str):
        return kind
    for key in ("anyOf", "oneOf"):
        if isinstance(prop.get(key), list):
            kinds = [_schema_type(p) for p in prop[key] if isinstance(p, dict)]
            return "|".join(k for k in kinds if k)
    return ""


def _first_line(text: Any) -> str:
    return text.strip().splitlines()[0][:70] if isinstance(text, str) and text.strip() else ""


def _show_listing(res: m.ToolList | m.ResourceList | m.PromptList, as_json: bool,
                  headers: list[str],
                  rows: list[list[str]], empty: str | None = None) -> None:
    """A listing of the MCP servers' (tools, resources, prompts): as JSON or a table (or
    `empty` when there are no rows); then the servers that could not answer, named on
    stderr, and exit 1 when one of them has failed."""
    if as_json:
        _print_json(res)
    elif not rows and empty is not None:
        click.echo(empty)
    else:
        _table(rows, headers)
    for name, reason in sorted(res.unavailable.items()):
        click.echo(f"corral: MCP server {name} is not serving: {reason}", err=True)
    if res.failed:
        sys.exit(EXIT_FAILED)


def _show_content(res: dict[str, Any], as_json: bool, key: str) -> None:
    """One resource read or prompt got: as JSON, or its contents (messages) as text."""
    if as_json:
        _print_json(res)
    else:
        _print_content(res.get(key) or [])


def _print_content(items: list[dict[str, Any]]) -> None:
    for item in items:
        if isinstance(item.get("text"), str):
            click.echo(item["text"])
        elif isinstance(item.get("content"), dict):  # a prompt message
            click.echo(f"[{item.get('role', '')}] ", nl=False)
            _print_content([item["content"]])
        else:
            click.echo(json.dumps(item))


@cli.command("resources", context_settings={"ignore_unknown_options": False})
@click.argument("words", nargs=-1, metavar="[SERVER] | [SERVER] read URI")
@click.option("--agent", default=None, shell_complete=_complete_agents,
              help="List what this agent's allowlist admits.")
@json_option
@pass_ctx
def resources(obj: Ctx, words: tuple[str, ...], agent: str | None, as_json: bool) -> None:
    """The MCP servers' resources and templates, or of one SERVER; `read URI` reads one."""
    server, rest = _split_words(words, "read")
    if rest:
        if len(rest) != 1:
            raise click.UsageError("usage: corral resources [SERVER] read URI")
        res = obj.call("resources.read", m.ResourcesRead(uri=rest[0], server=server))
        _show_content(res, as_json, "contents")
        return
    listed: m.ResourceList = obj.call("resources.list",
                                      m.ResourcesList(server=server, agent=agent))
    rows = [[r["server"], r.get("uri", ""), r.get("name", ""), r.get("mimeType", "")]
            for r in listed.resources]
    rows += [[t["server"], t.get("uriTemplate", ""), t.get("name", ""), "(template)"]
             for t in listed.resource_templates]
    _show_listing(listed, as_json, ["SERVER", "URI", "NAME", "TYPE"], rows)


def _split_words(words: tuple[str, ...], verb: str) -> tuple[str | None, list[str] | None]:
    """[SERVER] or [SERVER] VERB ARGS...: (server, args after the verb or None)."""
    if verb in words:
        i = words.index(verb)
        if i > 1:
            raise click.UsageError(f"one SERVER at most before {verb}")
        return (words[0] if i == 1 else None), list(words[i + 1:])
    if len(words) > 1:
        raise click.UsageError(f"one SERVER at most (or {verb} ...)")
    return (words[0] if words else None), None


@cli.command("prompts")
@click.argument("words", nargs=-1, metavar="[SERVER] | get SERVER__PROMPT")
@click.option("--args", "args", default="{}", metavar="JSON",
              help="The prompt's arguments, a JSON object of strings.")
@click.option("--agent", default=None, shell_complete=_complete_agents,
              help="List what this agent's allowlist admits.")
@json_option
@pass_ctx
def prompts(obj: Ctx, words: tuple[str, ...], args: str, agent: str | None,
            as_json: bool) -> None:
    """The MCP servers' prompts (SERVER__PROMPT), or of one SERVER; `get NAME` gets one."""
    server, rest = _split_words(words, "get")
    if rest is not None:
        if len(rest) != 1:
            raise click.UsageError("usage: corral prompts get SERVER__PROMPT [--args JSON]")
        arguments = _json_object(args, "--args")
        name = rest[0] if server is None or "__" in rest[0] else f"{server}__{rest[0]}"
        res = obj.call("prompts.get", m.PromptsGet(name=name, arguments=arguments))
        _show_content(res, as_json, "messages")
        return
    listed: m.PromptList = obj.call("prompts.list", m.PromptsList(server=server, agent=agent))
    rows = [[p["name"], ", ".join(a.get("name", "") + ("" if a.get("required") else "?")
                                  for a in p.get("arguments") or []),
             _first_line(p.get("description"))] for p in listed.prompts]
    _show_listing(listed, as_json, ["PROMPT", "ARGUMENTS", "DESCRIPTION"], rows)


def _json_object(text: str, hint: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text.encode())
    except msgspec.DecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=hint) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=hint)
    return value


@tools.command("call", help=doc("tools.call"))
@click.argument("name")
@click.option("--args", "args", default="{}", metavar="JSON",
              help="The arguments, a JSON object.")
@json_option
@pass_ctx
def tools_call(obj: Ctx, name: str, args: str, as_json: bool) -> None:
    arguments = _json_object(args, "--args")
    res = obj.call("tools.call", m.ToolsCall(name=name, arguments=arguments))
    if as_json:
        _print_json(res)
    else:
        for item in res.get("content") or []:
            click.echo(item.get("text") if item.get("type") == "text" else json.dumps(item))
    if res.get("isError"):
        sys.exit(EXIT_FAILED)


@cli.group("mcp")
def mcp_group() -> None:
    """The MCP tool servers corral runs."""


@mcp_group.command("status", help=doc("mcp.status"))
@json_option
@pass_ctx
def mcp_status(obj: Ctx, as_json: bool) -> None:
    res: m.McpStatusResult = obj.call("mcp.status")
    if as_json:
        _print_json(res)
        return
    _print_mcp(res.mcp_servers)
    _print_gateway(res.gateway)


def _print_gateway(gw: m.GatewayStats) -> None:
    """Gateway calls per client and per tool, when there were any."""
    for what, stats in (("clients", gw.clients), ("tools", gw.tools)):
        rows = [[name, str(s.calls), str(s.errors),
                 *(f"{v:.1f}" if v is not None else "-"
                   for v in (s.p50_ms, s.p95_ms, s.p99_ms))]
                for name, s in stats.items()]
        if rows:
            click.echo("")
            _table(rows, ["GATEWAY " + what[:-1].upper(), "CALLS", "ERRORS", "P50 MS",
                          "P95 MS", "P99 MS"])


@mcp_group.command("serve")
@click.option("--agent", metavar="NAME", help="Serve only what this agent's allowlist admits.")
@click.option("--token", envvar="CORRAL_MCP_TOKEN", metavar="TOKEN",
              help="Serve only what this gateway token's allowlist admits "
                   "(default: CORRAL_MCP_TOKEN).")
@click.option("--reconnect", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="How long to try the daemon again after losing it, then exit 1.")
@pass_ctx
def mcp_serve(obj: Ctx, agent: str | None, token: str | None, reconnect: float) -> None:
    """Serve every MCP server corral runs as one MCP server over stdio (for a host:
    {"command": "corral", "args": ["mcp", "serve"]}); tools, resources and prompts are
    named SERVER__NAME."""
    from ..paths import client_socket
    from .mcp_serve import run_serve

    sys.exit(run_serve(client_socket(obj.socket), agent, token, reconnect))


def _mcp_verb(verb: str, done: str) -> None:
    @mcp_group.command(verb, help=doc(f"mcp.{verb}"))
    @click.argument("name")
    @pass_ctx
    def command(obj: Ctx, name: str) -> None:
        res: m.McpInstances = obj.call(f"mcp.{verb}", REGISTRY[f"mcp.{verb}"].params(name=name))
        click.echo(f"{done} {name} ({plural(res.instances, 'instance')})")


for _verb, _done in (("start", "started"), ("stop", "stopped"), ("restart", "restarted")):
    _mcp_verb(_verb, _done)


@mcp_group.command("login")
@click.argument("name")
@click.option("--config", "-c", "config", metavar="PATH", default=None,
              help="Config file (default: as for `corral daemon`).")
@click.option("--port", type=int, default=0, show_default=True,
              help="Loopback port for the redirect (0: any free port).")
def mcp_login(name: str, config: str | None, port: int) -> None:
    """Authorize corral for a remote server with auth = "oauth" (OAuth 2.1, PKCE)."""
    import asyncio

    from .login import LoginError, login

    try:
        path = asyncio.run(login(Path(config or _default_config()), name, port,
                                 lambda text: click.echo(text)))
    except LoginError as exc:
        click.echo(f"corral: login to {name} failed: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"logged in to {name}; tokens in {path}")


ANY_AGENT = "any agent"


def _print_mcp(servers: list[m.McpInstanceStatus]) -> None:
    rows = [[f"{s.name}#{s.instance}", s.state, str(s.pid or "-"),
             s.protocol_version or "-", str(s.tools), str(s.calls), str(s.errors),
             s.owner or ANY_AGENT] for s in servers]
    # FOR: the agent a per-agent instance serves; one of the pool serves any agent that
    # may use the server (which tenants may: its `tenant` and `shared`, docs/tenants.md)
    _table(rows, ["SERVER", "STATE", "PID", "PROTOCOL", "TOOLS", "CALLS", "ERRORS", "FOR"])


@cli.group("systemd")
def systemd_group() -> None:
    """corral as a systemd service."""


@systemd_group.command("install")
@click.option("--unit-dir", default="/etc/systemd/system", show_default=True,
              metavar="DIR", help="Where to write corral.service.")
@click.option("--config", "config", default="/etc/corral/corral.toml", show_default=True,
              metavar="PATH", help="The config the unit runs with (a starter one is written "
                                   "if it does not exist).")
@click.option("--force", is_flag=True, help="Replace a corral.service that differs.")
@click.option("--dry-run", is_flag=True, help="Write nothing: print what would be written "
                                              "(the unit's text among it).")
def systemd_install(unit_dir: str, config: str, force: bool, dry_run: bool) -> None:
    """Write the systemd unit (pointing at this installation) and a starter config, from
    the installed package; then run the `systemctl` commands it prints."""
    from .install import install, next_steps

    try:
        done = install(Path(unit_dir), Path(config), force, dry_run)
    except (OSError, FileExistsError) as exc:
        click.echo(f"corral: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    for line in done:
        click.echo(line)
    if not dry_run:
        click.echo(next_steps(Path(unit_dir)))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(corral completion bash)"."""
    from click.shell_completion import get_completion_class

    comp_cls = get_completion_class(shell)
    assert comp_cls is not None
    comp = comp_cls(cli, {}, "corral", "_CORRAL_COMPLETE")
    click.echo(comp.source())


# -- tokens (issue 21) ---------------------------------------------------------------------
@cli.group()
def token() -> None:
    """Bearer tokens of the HTTP API: create (shown once), list, revoke."""


def _lifetime(value: str | None) -> float | None:
    try:
        seconds = _duration(value)
    except click.BadParameter as exc:
        exc.param_hint = "--expires"
        raise
    if seconds is not None and seconds <= 0:
        raise click.BadParameter("a token's lifetime must be positive", param_hint="--expires")
    return seconds


def _when(t: float | None) -> str:
    return "never" if t is None else _stamp(t)


@token.command("create", help=doc("tokens.create"))
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="SCOPE",
              type=click.Choice(sorted(m.SCOPES)), help="A scope it holds (repeat).")
@click.option("--agents", default=None, metavar="GLOB",
              help="Only agents whose names match GLOB (e.g. 'web-*').")
@click.option("--expires", default=None, metavar="DURATION",
              help="Lifetime, e.g. 30d or 12h (default: never expires).")
@click.option("--tenant", default=None, metavar="TENANT",
              help="A tenant's token: it sees and acts on that tenant's objects only.")
@json_option
@pass_ctx
def token_create(obj: Ctx, name: str, scopes: tuple[str, ...], agents: str | None,
                 expires: str | None, tenant: str | None, as_json: bool) -> None:
    res: m.TokenCreated = obj.call("tokens.create", m.TokensCreate(
        name=name, scopes=list(scopes), agents=agents, expires_in=_lifetime(expires),
        tenant=tenant))
    if as_json:
        _print_json(res)
        return
    click.echo(res.token)
    click.echo(f"corral: token {res.name} ({', '.join(res.scopes)}"
               f"{f'; agents {res.agents}' if res.agents else ''}"
               f"{f'; tenant {res.tenant}' if res.tenant else ''}; expires "
               f"{_when(res.expires)}): it is shown this once", err=True)


@token.command("list", help=doc("tokens.list"))
@json_option
@pass_ctx
def token_list(obj: Ctx, as_json: bool) -> None:
    res: m.TokenList = obj.call("tokens.list")
    if as_json:
        _print_json(res)
        return
    _table([[t.name, ",".join(t.scopes), t.agents or "*", t.tenant or "*",
             _stamp(t.created), _when(t.expires)] for t in res.tokens],
           ["NAME", "SCOPES", "AGENTS", "TENANT", "CREATED", "EXPIRES"])


@token.command("revoke", help=doc("tokens.revoke"))
@click.argument("name")
@pass_ctx
def token_revoke(obj: Ctx, name: str) -> None:
    res: m.TokenInfo = obj.call("tokens.revoke", m.TokensRevoke(name=name))
    click.echo(f"revoked token {res.name}")




# -- tenants (issue 23) --------------------------------------------------------------------
@cli.group(invoke_without_command=True, help=doc("tenants.list"))
@json_option
@pass_ctx
@click.pass_context
def tenants(ctx: click.Context, obj: Ctx, as_json: bool) -> None:
    if ctx.invoked_subcommand is not None:
        return
    res: m.TenantList = obj.call("tenants.list")
    if as_json:
        _print_json(res)
        return
    rows = []
    for t in res.tenants:
        q, u = t.quotas, t.use

        def beside(used: float, key: str, q: dict[str, Any] = q) -> str:
            quota = q.get(key)
            return f"{used:g}/{quota:g}" if quota else f"{used:g}"

        rows.append([t.name, beside(u.agents, "max_agents"),
                     beside(u.replicas, "max_replicas"), beside(u.queued, "max_queue"),
                     beside(u.running, "max_concurrent_tasks"),
                     beside(u.tokens_last_minute, "tokens_per_minute"),
                     ", ".join(f"{k}={v}" for k, v in q.items() if k not in _SHOWN_BESIDE)
                     or "-"])
    _table(rows, ["TENANT", "AGENTS", "REPLICAS", "QUEUED", "RUNNING", "TOKENS/MIN",
                  "OTHER"])


_SHOWN_BESIDE = {"max_agents", "max_replicas", "max_queue", "max_concurrent_tasks",
                 "tokens_per_minute"}


@tenants.command("add", help=doc("tenants.add") + "\n\nFILE holds [tenants.NAME] tables.")
@click.argument("file")
@pass_ctx
def tenants_add(obj: Ctx, file: str) -> None:
    import tomllib

    try:
        with open(file, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.UsageError(f"{file}: {exc}") from None
    tables = data.get("tenants")
    if not isinstance(tables, dict) or not tables:
        raise click.UsageError(f"{file}: no [tenants.NAME] tables")
    res: m.Added = obj.call("tenants.add", m.TenantsAdd(tenants=tables))
    click.echo(f"added: {', '.join(res.added)}")


@tenants.command("set", help=doc("tenants.set"))
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@pass_ctx
def tenants_set(obj: Ctx, name: str, pairs: tuple[str, ...]) -> None:
    import tomllib

    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"use KEY=VALUE, not {pair!r}", param_hint="KEY=VALUE")
        try:  # a TOML value (4, 2.5, "bwrap"); a bare word is a string
            changes[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            changes[key] = value
    res: m.TenantEntry = obj.call("tenants.set", m.TenantsSet(name=name, set=changes))
    click.echo(f"tenant {res.name}: " + (", ".join(f"{k}={v}" for k, v in res.quotas.items())
                                         or "no quotas"))


@tenants.command("remove", help=doc("tenants.remove"))
@click.argument("names", nargs=-1, required=True)
@pass_ctx
def tenants_remove(obj: Ctx, names: tuple[str, ...]) -> None:
    res: m.Removed = obj.call("tenants.remove", m.TenantsRemove(names=list(names)))
    click.echo(f"removed: {', '.join(res.removed)}")


# -- metrics history (issue 21) ------------------------------------------------------------
def _stats_history(obj: Ctx, since: str, agent: str | None, resolution: str | None,
                   as_json: bool) -> None:
    mt = _SINCE.match(since)
    if not mt:
        raise click.BadParameter("use a duration like 30s, 5m, 2h or 1d",
                                 param_hint="--since")
    seconds = float(mt.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[mt.group(2)]
    if seconds <= 0:
        raise click.BadParameter("the duration must be more than 0", param_hint="--since")
    h: m.MetricsHistoryResult = obj.call("stats.history", m.StatsHistory(
        since=seconds, agent=agent, resolution=resolution))  # type: ignore[arg-type]
    if as_json:
        _print_json(h)
        return
    click.echo(f"{agent or 'fleet'}: {plural(len(h.samples), 'sample')} at the "
               f"{h.resolution} resolution (every {h.interval:g} s)"
               + (", the newest only" if h.truncated else ""))
    rows = []
    for x in h.samples:
        rows.append([_stamp(x.time), f"{x.agents:g}", f"{x.serving:g}/{x.replicas:g}",
                     f"{x.cpu_percent:.1f}", _human_bytes(x.rss_bytes), f"{x.queued:g}",
                     f"{x.per_minute:g}",
                     "-" if x.error_rate is None else f"{x.error_rate * 100:.1f}",
                     "-" if x.avg_ms is None else "/".join(
                         _ms(v) for v in (x.avg_ms, x.p50_ms, x.p95_ms) if v is not None)])
    _table(rows, ["TIME", "AGENTS", "SERVING", "CPU%", "RSS", "QUEUED", "EXEC/MIN",
                  "ERR%", "AVG/P50/P95 MS"])



# -- the dashboard (issue 21) --------------------------------------------------------------
@cli.command("ui", help=doc("ui.login"))
@json_option
@pass_ctx
def ui_login(obj: Ctx, as_json: bool) -> None:
    res: m.UiLoginResult = obj.call("ui.login", m.UiLogin())
    if as_json:
        _print_json(res)
        return
    # the link alone on stdout, so that `xdg-open "$(corral ui)"` works
    click.echo(res.url)
    left = max(0, round(res.expires - time.time()))
    click.echo(f"corral: open this link in a browser on this machine within {left} s; "
               f"it works once", err=True)


def main() -> None:
    cli(prog_name="corral")
