"""The daemon's side of each control method in corral.methods, one function each."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .. import __version__, jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.config import ConfigError, check_command, parse_agents
from ..supervisor.core import SupervisorError
from ..supervisor.lifecycle import State
from ..supervisor.tasks import TERMINAL
from ..text import plural
from .control import implements
from .follow import Latest, drain
from .revisions import (
    Revision,
    Write,
    forgetting_scaled,
    recording,
    setting_scaled,
    unrecording,
)
from .store import StateStore, StoreError, what_to_do
from .taskjournal import TaskJournalError

if TYPE_CHECKING:
    from ..supervisor.core import Agent
    from ..supervisor.replica import Replica
    from .control import Connection
    from .daemon import Daemon

FOLLOW_BATCH = 500
STATUSES = TERMINAL | {"queued", "running"}
CLI_OWNER = "corral-cli"  # whose instance a per-agent server uses for operators' calls


def _targets(d: Daemon, names: list[str], all_: bool) -> list[tuple[Agent, int | None]]:
    """(agent, replica index or None for every replica) for NAME / NAME#N targets; unknown
    names and replicas are refused before anything is done."""
    assert d.sup is not None
    if all_:
        return [(a, None) for a in d.sup.agents.values()]
    if not names:
        raise RpcError(jsonrpc.INVALID_PARAMS, "name at least one agent, or all")
    out: list[tuple[Agent, int | None]] = []
    for target in names:
        try:
            name, index = m.parse_target(target)
        except ValueError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
        agent = d.sup.agent(name)
        if index is not None and index >= len(agent.replicas):
            raise RpcError(jsonrpc.NOT_FOUND, f"no such replica: {target} ({name} has "
                                              f"{plural(len(agent.replicas), 'replica')})")
        out.append((agent, index))
    return out


def _label(agent: Agent, index: int | None) -> str:
    return agent.name if index is None else f"{agent.name}#{index}"


def _replicas(targets: list[tuple[Agent, int | None]]) -> list[Replica]:
    return [r for a, i in targets for r in (a.replicas if i is None else [a.replicas[i]])]


@implements("daemon.info")
async def daemon_info(d: Daemon, p: m.DaemonInfo, c: Connection) -> dict[str, Any]:
    assert d.control is not None
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime": round(time.time() - d.started_at, 3),
        "socket": str(d.control.path),
        "config": str(d.config_path),
        "status": d.status_line(),
        "followers": len(d.hub.followers),
        "event_followers": len(d.sup.events.followers) if d.sup else 0,
        "containment": msgspec.to_builtins(d.sup.containment.info()) if d.sup else None,
    }


@implements("daemon.shutdown")
async def daemon_shutdown(d: Daemon, p: m.DaemonShutdown, c: Connection) -> dict[str, Any]:
    asyncio.get_running_loop().call_soon(d.request_stop)
    return {"stopping": True}


@implements("config.reload")
async def config_reload(d: Daemon, p: m.ConfigReload, c: Connection) -> Any:
    try:
        return await d.reload(_who(c))
    except ConfigError as exc:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"reload rejected, nothing changed: {exc}"
                       ) from None


@implements("agents.status")
async def agents_status(d: Daemon, p: m.AgentsStatus, c: Connection) -> dict[str, Any]:
    assert d.sup is not None
    agents = [d.sup.agent(n) for n in p.names] if p.names else list(d.sup.agents.values())
    stats = d.sup.tasks.stats()["agents"]
    return {
        "agents": [r.status() for a in agents for r in a.replicas],
        "mcp_servers": d.sup.mcp.status(),
        "tasks": {a.name: stats.get(a.name) for a in agents},
    }


@implements("agents.start")
async def agents_start(d: Daemon, p: m.AgentsStart, c: Connection) -> dict[str, Any]:
    targets = _targets(d, p.names, p.all)
    for r in _replicas(targets):
        r.start(by_hand=True)
    return {"started": [_label(a, i) for a, i in targets]}


@implements("agents.stop")
async def agents_stop(d: Daemon, p: m.AgentsStop, c: Connection) -> dict[str, Any]:
    targets = _targets(d, p.names, p.all)
    await asyncio.gather(*(r.stop() for r in _replicas(targets)))
    return {"stopped": [_label(a, i) for a, i in targets]}


@implements("agents.restart")
async def agents_restart(d: Daemon, p: m.AgentsRestart, c: Connection) -> dict[str, Any]:
    targets = _targets(d, p.names, p.all)
    if p.rolling:
        await asyncio.gather(*(a.roll(replicas=None if i is None else [i])
                               for a, i in targets))
    else:
        reps = _replicas(targets)
        await asyncio.gather(*(r.stop("restarting") for r in reps))
        for r in reps:
            r.start(by_hand=True)
    return {"restarted": [_label(a, i) for a, i in targets]}


def _signal_number(name: str) -> int:
    if name.isdigit():
        return int(name)
    key = name.upper()
    key = key if key.startswith("SIG") else "SIG" + key
    try:
        return int(signal.Signals[key])
    except KeyError:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"unknown signal: {name} (use a name like "
                                               "HUP, TERM, USR1, or a number)") from None


@implements("agents.signal")
async def agents_signal(d: Daemon, p: m.AgentsSignal, c: Connection) -> dict[str, Any]:
    sig = _signal_number(p.signal)
    targets = _targets(d, p.names, p.all)
    sent = []
    for r in _replicas(targets):
        if r.process is not None and r.process.alive:
            r.process.signal(sig)
            sent.append({"replica": r.label, "pid": r.pid})
    if not sent:
        raise RpcError(jsonrpc.REFUSED, "no running process to signal among "
                                        + ", ".join(_label(a, i) for a, i in targets))
    return {"signal": signal.Signals(sig).name if sig in _SIGNALS else str(sig),
            "signalled": sent}


_SIGNALS = {int(s) for s in signal.Signals}


@implements("agents.describe")
async def agents_describe(d: Daemon, p: m.AgentsDescribe, c: Connection) -> dict[str, Any]:
    assert d.sup is not None
    agent = d.sup.agent(p.name)
    spec = agent.spec
    fields = msgspec.structs.asdict(spec)
    # values of the environment may be secrets: the keys say what is set
    fields["env"] = sorted(spec.env)
    fields["limits"] = msgspec.structs.asdict(spec.limits)
    return {
        "name": agent.name,
        "origin": f"file {d.config_path}" if agent.name in d.from_config else "runtime",
        "revision": d.revision_of(agent.name),
        "argv": spec.argv(),
        "spec": fields,
        "replicas": [{"replica": r.index, "state": r.state.value, "pid": r.pid}
                     for r in agent.replicas],
    }


async def _record(d: Daemon, writes: list[Write], unchanged: str) -> None:
    """Commit what a command changes that must outlive the daemon, BEFORE it acts
    (decision 61): a database that cannot be written refuses the command, `unchanged`
    saying so, and the operator may simply try again once it can."""
    assert d.store is not None
    try:
        await d.store.commit(writes)
    except StoreError as exc:
        raise RpcError(jsonrpc.REFUSED, f"{exc}: {unchanged}; {what_to_do()}") from None


async def _undo(d: Daemon, writes: list[Write]) -> str:
    """Take back what `_record` committed for a change that then failed; what the
    message must add when that cannot be done either."""
    assert d.store is not None
    try:
        await d.store.commit(writes)
    except StoreError as exc:
        text = (f"; its record could not be taken back ({exc}): the next daemon starts "
                "what was recorded")
        d.hub.daemon(text[2:], priority=3)
        return text
    return ""


def _as_kept_now(d: Daemon, name: str) -> list[Write]:
    """The writes that put back what keeps the agent across daemon restarts as it is
    now (its kept scale, or its runtime table): a change recorded that then fails to
    apply takes its record back with them."""
    assert d.store is not None and d.revisions is not None
    if name in d.from_config:
        was = d.revisions.scaled().get(name)
        return [setting_scaled(name, *was) if was else forgetting_scaled(name)]
    table = d.store.runtime_agents().get(name)
    return [StateStore.saving_runtime_agent(name, table) if table is not None
            else StateStore.forgetting_runtime_agent(name)]


@implements("agents.add")
async def agents_add(d: Daemon, p: m.AgentsAdd, c: Connection) -> dict[str, Any]:
    assert d.sup is not None and d.store is not None
    if not p.agents:
        raise RpcError(jsonrpc.INVALID_PARAMS, "no [agents.NAME] tables to add")
    try:
        specs = parse_agents({"agents": p.agents}, "agents.add")
        for name, spec in specs.items():
            d.fill_cwd(spec)
            why = check_command(spec) if p.check else None
            if why:
                raise ConfigError(f"agents.add: agents.{name}.command: {why} "
                                  "(--no-check to add it anyway)")
    except ConfigError as exc:
        raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
    async with d.changing(specs):
        taken = [n for n in specs if n in d.sup.agents]
        if taken:  # all or nothing
            raise RpcError(jsonrpc.CONFLICT, f"agent {taken[0]} already exists")
        d.sup.check_fleet({n: s.replicas for n, s in specs.items()}, "adding them")
        made: dict[str, list[Revision]] = {n: [] for n in specs}
        await _record(d, [w for n, spec in specs.items() for w in (
            StateStore.saving_runtime_agent(n, p.agents[n]),
            recording(spec, _who(c), None, made[n]))], "nothing was added")
        added: list[str] = []
        try:
            for name, spec in specs.items():
                d._add(spec)
                added.append(name)
        except SupervisorError as exc:  # the fleet grew meanwhile: all or nothing
            await asyncio.gather(*(d.sup.remove(n) for n in added))
            exc.message += await _undo(d, [w for n in specs for w in (
                StateStore.forgetting_runtime_agent(n),
                *(unrecording(n, r.revision) for r in made[n]))])
            raise
    d.told_revisions(r for revs in made.values() for r in revs)
    return {"added": sorted(specs)}


@implements("agents.remove")
async def agents_remove(d: Daemon, p: m.AgentsRemove, c: Connection) -> dict[str, Any]:
    assert d.sup is not None and d.store is not None
    for n in p.names:
        d.sup.agent(n)
    async with d.changing(p.names):
        for n in p.names:  # still there after our turn came
            d.sup.agent(n)
        await _record(d, [w for n in p.names for w in (
            StateStore.forgetting_runtime_agent(n), forgetting_scaled(n))],
            "nothing was removed")
        await asyncio.gather(*(d.sup.remove(n) for n in p.names))
    for n in p.names:
        d.from_config.discard(n)
    return {"removed": p.names}


@implements("agents.scale")
async def agents_scale(d: Daemon, p: m.AgentsScale, c: Connection) -> dict[str, Any]:
    assert d.sup is not None and d.store is not None and d.revisions is not None
    async with d.changing([p.name]):
        agent = d.sup.agent(p.name)
        if p.replicas < 0:
            raise RpcError(jsonrpc.INVALID_PARAMS, "replicas must be >= 0")
        d.sup.check_fleet({p.name: p.replicas}, f"{p.replicas} replicas of {p.name}")
        # kept across daemon restarts: a runtime agent's table, or beside the config's
        # count; recorded before any replica starts or stops
        writes: list[Write] = []
        if p.name in d.from_config:
            writes.append(setting_scaled(p.name, p.replicas,
                                         d.declared_replicas.get(p.name, 1)))
        else:
            table = d.store.runtime_agents().get(p.name)
            if table is not None:
                writes.append(StateStore.saving_runtime_agent(
                    p.name, {**table, "replicas": p.replicas}))
        undo = _as_kept_now(d, p.name)
        made: list[Revision] = []
        writes.append(recording(msgspec.structs.replace(agent.spec, replicas=p.replicas),
                                _who(c), None, made))
        await _record(d, writes, f"{p.name} was not scaled")
        try:
            # refuses when another agent's command grew the fleet past max_replicas
            # while this one recorded (the turn is this agent's, the bound the fleet's)
            await agent.scale(p.replicas)
        except SupervisorError as exc:
            exc.message += await _undo(d, [*undo, *(unrecording(p.name, r.revision)
                                                    for r in made)])
            raise
    d.told_revisions(made)
    return {"name": p.name, "replicas": p.replicas}


def _who(c: Connection) -> str:
    """Who asked, as revisions record it."""
    return f"uid {c.uid} pid {c.pid}"


@implements("agents.history")
async def agents_history(d: Daemon, p: m.AgentsHistory, c: Connection) -> dict[str, Any]:
    assert d.sup is not None and d.revisions is not None
    d.sup.agent(p.name)
    revs = d.revisions.history(p.name, max(0, p.limit))
    return {"name": p.name, "current": d.revision_of(p.name),
            "revisions": [msgspec.to_builtins(r) for r in revs]}


@implements("agents.rollback")
async def agents_rollback(d: Daemon, p: m.AgentsRollback, c: Connection) -> dict[str, Any]:
    assert d.sup is not None and d.store is not None and d.revisions is not None
    async with d.changing([p.name]):
        d.sup.agent(p.name)
        latest = d.revisions.latest(p.name)
        current = latest.revision if latest else 0
        target = p.revision if p.revision is not None else current - 1
        rev = d.revisions.get(p.name, target)
        if rev is None:
            raise RpcError(jsonrpc.NOT_FOUND, f"no revision {target} of {p.name} (its "
                                              f"revisions: 1..{current}; see `corral "
                                              f"history {p.name}`)")
        try:
            spec = parse_agents({"agents": {p.name: rev.spec}}, f"revision {target}")[p.name]
        except ConfigError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
        d.fill_cwd(spec)
        # recorded first, and taken back if the new processes do not become ready
        if p.name in d.from_config:
            # lasts until the config file changes this agent (a reload applies the file)
            writes = [setting_scaled(p.name, spec.replicas,
                                     d.declared_replicas.get(p.name, 1))]
        else:
            writes = [StateStore.saving_runtime_agent(p.name, rev.spec)]
        undo = _as_kept_now(d, p.name)
        made: list[Revision] = []
        writes.append(recording(spec, _who(c), f"rollback to revision {target}", made))
        await _record(d, writes, f"{p.name} was not rolled back")
        try:
            await d.apply_spec(p.name, spec)  # rolling; refuses if a new process is not ready
        except SupervisorError as exc:
            exc.message += await _undo(d, [*undo, *(unrecording(p.name, r.revision)
                                                    for r in made)])
            raise
    d.told_revisions(made)
    return {"name": p.name, "restored": target, "revision": d.revision_of(p.name)}


@implements("audit.list")
async def audit_list(d: Daemon, p: m.AuditList, c: Connection) -> dict[str, Any]:
    assert d.store is not None
    return {"entries": [
        {"time": t, "uid": uid, "pid": pid, "method": method,
         "params": msgspec.json.decode(params), "outcome": outcome}
        for t, uid, pid, method, params, outcome in d.store.audit_log(max(0, p.limit))]}


@implements("logs.tail")
async def logs_tail(d: Daemon, p: m.LogsTail, c: Connection) -> dict[str, Any]:
    sources, keep = _log_sources(d, p.names)
    if keep is None:
        return {"lines": d.hub.tail(sources, p.lines, p.since)}
    # one replica's lines: filtered from its agent's tail, which holds every replica's
    lines = [ln for ln in d.hub.tail(sources, d.hub.tail_lines, p.since) if keep(ln)]
    return {"lines": lines[-p.lines:] if p.lines > 0 else []}


def _log_sources(d: Daemon, names: list[str]
                 ) -> tuple[list[str], Callable[[m.LogLine], bool] | None]:
    """The sources to read for NAME / NAME#N targets, and a filter when a replica is
    named (None: every line of the sources)."""
    assert d.sup is not None
    sources: list[str] = []
    replicas: dict[str, set[int] | None] = {}
    for target in names:
        try:
            n, index = m.parse_target(target)
        except ValueError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
        if n not in d.sup.agents and n != "corral" and n not in d.hub.tails:
            raise jsonrpc.not_found("agent", n)
        if n not in replicas:
            sources.append(n)
            replicas[n] = set()
        wanted = replicas[n]
        if index is None or wanted is None:
            replicas[n] = None
        else:
            wanted.add(index)
    if all(v is None for v in replicas.values()):
        return sources, None

    def keep(line: m.LogLine) -> bool:
        wanted = replicas.get(line.source)
        return wanted is None or line.replica in wanted

    return sources, keep


@implements("logs.follow")
async def logs_follow(d: Daemon, p: m.LogsFollow, c: Connection) -> dict[str, Any]:
    """Streams until the client goes away (the Peer then cancels this task)."""
    sources, keep = _log_sources(d, p.names)
    follower = d.hub.follow(sources)

    def send_some() -> None:
        lines: list[m.LogLine] = []
        while follower.queue and len(lines) < FOLLOW_BATCH:
            lines.extend(follower.pop().materialize())
        if keep is not None:
            lines = [ln for ln in lines if keep(ln)]
        if lines:
            c.notify("logs.lines", {"lines": lines})

    try:
        backlog = (await logs_tail(d, p, c))["lines"]
        if backlog:
            c.notify("logs.lines", {"lines": backlog})
        await drain(c, follower, "logs.missed", send_some)
    finally:
        d.hub.unfollow(follower)


@implements("stats.get")
async def stats_get(d: Daemon, p: m.StatsGet, c: Connection) -> dict[str, Any]:
    assert d.sup is not None
    stats = msgspec.structs.asdict(d.sup.runtime_stats())
    per_agent = {}
    for a in d.sup.agents.values():
        per_agent[a.name] = {
            "replicas": len(a.replicas),
            "serving": sum(1 for r in a.replicas if r.serving),
            "restarts": sum(r.restarts for r in a.replicas),
            "cpu_percent": round(sum(r.sample.cpu_percent for r in a.replicas), 1),
            "rss_bytes": sum(r.sample.rss_bytes for r in a.replicas),
        }
    return {
        "supervisor": {**stats, "uptime": round(time.time() - d.started_at, 3),
                       "log_lines": d.hub.lines_written,
                       "log_lines_dropped": d.hub.lines_dropped,
                       "log_files_failing": d.hub.failing(),
                       "state_writes": (d.store.writer.stats() if d.store is not None
                                        and d.store.writer is not None else None),
                       # why new tasks are refused now (the journal cannot write), or None
                       "task_journal_refusing": (d.task_journal.refusing
                                                 if d.task_journal is not None else None)},
        "agents": per_agent,
        "tasks": d.sup.tasks.stats(),
        "events": d.sup.events.stats(),
        "heartbeat": msgspec.structs.asdict(d.sup.heartbeat_work),
        "gateway": d.gateway_status(),
    }


@implements("tasks.run")
async def tasks_run(d: Daemon, p: m.TasksRun, c: Connection) -> Any:
    assert d.sup is not None
    await d.tasks_recovered.wait()
    journal = d.task_journal
    if journal is not None and journal.refusing is not None:
        # refused before it reaches an agent: a task that cannot be recorded never runs
        raise RpcError(jsonrpc.INTERNAL_ERROR, f"{journal.refusing}; the task was not "
                       "accepted")
    task = d.sup.tasks.submit(p.agent, p.input, timeout=p.timeout, priority=p.priority)

    progress = Latest(c, "task.progress")  # a client that does not read gets the newest

    def watch(kind: str, data: Any) -> None:
        if kind == "progress":
            progress.send({"task_id": task.id, **data})

    if not p.detach:
        task.watch(watch)
    try:
        try:
            await d.sup.tasks.committed()  # in the journal before it is acknowledged
        except TaskJournalError as exc:
            # the failure is known only when the write that held the task fails, and the
            # task may have reached an agent meanwhile: one still queued or running is
            # cancelled and refused; one that has already ended ran, and its outcome is
            # the answer (its row is written when the journal can write again), for a
            # refusal would have the client run it twice
            if task.status not in TERMINAL:
                d.sup.tasks.cancel(task.id)
                raise RpcError(jsonrpc.INTERNAL_ERROR, f"{exc}; the task was not accepted"
                               ) from None
        if p.detach:
            return {"task_id": task.id, "status": task.status}
        # a client that loses the connection (a daemon restart) waits again by this id
        c.notify("task.accepted", {"task_id": task.id})
        # a client that goes away cancels this wait, not the task
        await asyncio.shield(task.done)
    finally:
        task.unwatch(watch)
        progress.close()
    if journal is None or journal.refusing is None:  # else written when it can be
        with contextlib.suppress(TaskJournalError):  # logged by the journal; the outcome stands
            await d.sup.tasks.committed()
    return await d.sup.tasks.outcome(task)


@implements("tasks.get")
async def tasks_get(d: Daemon, p: m.TasksGet, c: Connection) -> Any:
    assert d.sup is not None
    await d.tasks_recovered.wait()
    return await d.sup.tasks.info(p.task_id, wait=p.wait)


@implements("tasks.list")
async def tasks_list(d: Daemon, p: m.TasksList, c: Connection) -> Any:
    assert d.sup is not None
    await d.tasks_recovered.wait()
    if p.agent is not None and d.task_journal is None:
        d.sup.agent(p.agent)
    if p.status is not None and p.status not in STATUSES:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"no such status: {p.status} (one of "
                                               f"{', '.join(sorted(STATUSES))})")
    since = time.time() - p.since if p.since is not None else None
    return {"tasks": await d.sup.tasks.query(agent=p.agent, status=p.status, since=since,
                                             limit=p.limit)}


@implements("tasks.cancel")
async def tasks_cancel(d: Daemon, p: m.TasksCancel, c: Connection) -> Any:
    assert d.sup is not None
    await d.tasks_recovered.wait()
    return d.sup.tasks.cancel(p.task_id).info()


@implements("events.publish")
async def events_publish(d: Daemon, p: m.EventsPublish, c: Connection) -> Any:
    assert d.sup is not None
    return {"delivered": d.sup.events.publish(p.topic, p.data, f"uid {c.uid}")}


@implements("events.follow")
async def events_follow(d: Daemon, p: m.EventsFollow, c: Connection) -> Any:
    assert d.sup is not None
    bus = d.sup.events
    follower = bus.follow(p.pattern)

    def send_some() -> None:
        for _ in range(min(FOLLOW_BATCH, len(follower.queue))):
            c.notify("events.event", follower.pop())  # encoded once by the bus

    try:
        await drain(c, follower, "events.missed", send_some)
    finally:
        bus.unfollow(follower)


def _lister(d: Daemon, agent: str | None) -> dict[str, Any]:
    """Whose view a listing takes: an agent's (its allowlist) or the operator's (all)."""
    assert d.sup is not None
    if agent is None:
        return {"owner": CLI_OWNER}
    a = d.sup.agent(agent)
    return {"owner": f"{a.name}#0", "allow": list(a.spec.tools)}


Listing = Callable[..., Awaitable[list[dict[str, Any]]]]


async def _listing(d: Daemon, who: dict[str, Any], server: str | None,
                   **lists: Listing) -> dict[str, Any]:
    """The pool's listings (by key) in the envelope every listing method answers with: the
    servers that could not answer (`unavailable`: name -> why) and, of those, the ones
    whose every instance has failed (`failed`: the CLI exits 1 for them)."""
    assert d.sup is not None
    unavailable: dict[str, str] = {}
    found = await asyncio.gather(*(list_them(server=server, unavailable=unavailable, **who)
                                   for list_them in lists.values()))
    failed = [n for n in unavailable if (insts := d.sup.mcp.servers[n].all())
              and all(i.state == State.FAILED for i in insts)]
    return {**dict(zip(lists, found, strict=True)), "unavailable": unavailable,
            "failed": failed}


@implements("tools.list")
async def tools_list(d: Daemon, p: m.ToolsList, c: Connection) -> Any:
    assert d.sup is not None
    who = _lister(d, p.agent)
    res = await _listing(d, who, p.server, tools=d.sup.mcp.list_tools)
    if "allow" in who:  # so an empty listing can say why
        res["allow"] = who["allow"]
    return res


@implements("tools.call")
async def tools_call(d: Daemon, p: m.ToolsCall, c: Connection) -> Any:
    assert d.sup is not None
    return await d.sup.mcp.call(p.name, p.arguments, owner=CLI_OWNER)


@implements("mcp.status")
async def mcp_status(d: Daemon, p: m.McpStatus, c: Connection) -> Any:
    assert d.sup is not None
    return {"mcp_servers": d.sup.mcp.status(), "gateway": d.gateway_status()}


async def _each_instance(d: Daemon, name: str, verb: str) -> dict[str, Any]:
    assert d.sup is not None
    entry = d.sup.mcp.server(name)
    insts = entry.all()
    if verb in ("stop", "restart"):
        await asyncio.gather(*(i.stop("stopped" if verb == "stop" else "restarting")
                               for i in insts))
    if verb in ("start", "restart"):
        for i in insts:
            i.start(by_hand=True)
    return {"name": name, "instances": len(insts)}


@implements("mcp.start")
async def mcp_start(d: Daemon, p: m.McpStart, c: Connection) -> Any:
    return await _each_instance(d, p.name, "start")


@implements("mcp.stop")
async def mcp_stop(d: Daemon, p: m.McpStop, c: Connection) -> Any:
    return await _each_instance(d, p.name, "stop")


@implements("mcp.restart")
async def mcp_restart(d: Daemon, p: m.McpRestart, c: Connection) -> Any:
    return await _each_instance(d, p.name, "restart")


@implements("resources.list")
async def resources_list(d: Daemon, p: m.ResourcesList, c: Connection) -> Any:
    assert d.sup is not None
    return await _listing(d, _lister(d, p.agent), p.server,
                          resources=d.sup.mcp.list_resources,
                          resourceTemplates=d.sup.mcp.list_resource_templates)


@implements("resources.read")
async def resources_read(d: Daemon, p: m.ResourcesRead, c: Connection) -> Any:
    assert d.sup is not None
    server = p.server
    if server is None:
        listed = await d.sup.mcp.list_resources(owner=CLI_OWNER)
        having = sorted({r["server"] for r in listed if r.get("uri") == p.uri})
        if len(having) != 1:
            raise RpcError(jsonrpc.NOT_FOUND if not having else jsonrpc.INVALID_PARAMS,
                           f"resource {p.uri}: " + (f"listed by {', '.join(having)}; name "
                           "the server" if having else "no server lists it; name the server"))
        server = having[0]
    return await d.sup.mcp.read_resource(server, p.uri, owner=CLI_OWNER)


@implements("prompts.list")
async def prompts_list(d: Daemon, p: m.PromptsList, c: Connection) -> Any:
    assert d.sup is not None
    return await _listing(d, _lister(d, p.agent), p.server, prompts=d.sup.mcp.list_prompts)


@implements("prompts.get")
async def prompts_get(d: Daemon, p: m.PromptsGet, c: Connection) -> Any:
    assert d.sup is not None
    return await d.sup.mcp.get_prompt(p.name, p.arguments, owner=CLI_OWNER)


@implements("gateway.list")
async def gateway_list(d: Daemon, p: m.GatewayList, c: Connection) -> Any:
    ident = d.gateway.identify(agent=p.agent, token=p.token)
    return {"items": await d.gateway.list_items(ident, p.kind),
            "features": sorted(d.gateway.features())}


@implements("gateway.call")
async def gateway_call(d: Daemon, p: m.GatewayCall, c: Connection) -> Any:
    ident = d.gateway.identify(agent=p.agent, token=p.token)

    def progress(data: dict[str, Any]) -> None:
        # a client that does not read loses progress, never grows our buffer
        if p.progress_id is not None and c.writable.is_set():
            c.notify("gateway.progress", {**data, "progress_id": p.progress_id})

    return await d.gateway.forward(ident, p.method, p.params, progress, who=(c.uid, c.pid))


@implements("gateway.watch")
async def gateway_watch(d: Daemon, p: m.GatewayWatch, c: Connection) -> Any:
    """Streams until the client goes away; changes coalesce while it does not read."""
    pending: set[str] = set()
    wake = asyncio.Event()

    def tell(kinds: list[str]) -> None:
        pending.update(kinds)
        wake.set()

    d.gateway.watchers.add(tell)
    try:
        c.notify("gateway.changed", {"kinds": [], "features": sorted(d.gateway.features())})
        while True:
            await wake.wait()
            await c.writable.wait()
            wake.clear()
            kinds = sorted(pending)
            pending.clear()
            c.notify("gateway.changed", {"kinds": kinds,
                                         "features": sorted(d.gateway.features())})
    finally:
        d.gateway.watchers.discard(tell)


@implements("gateway.status")
async def gateway_status(d: Daemon, p: m.GatewayStatus, c: Connection) -> Any:
    return d.gateway_status()
