"""What a caller limited to some agents sees of each method (visibility rules): a token
limited by an agent glob (Caller.agents), a tenant's caller to its tenant's agents and
servers. Others' agents answer as if they did not exist. Each method's declaration
(corral.methods) names its rule here; a method that names none (`seen=None`) is refused to
such a caller, so a new method stays closed to it until someone says how it names agents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..methods import REGISTRY, parse_target
from ..supervisor.core import NoSuchAgent
from ..supervisor.names import RESERVED
from ..supervisor.tasks.counters import totals
from . import records
from .caller import Caller, Channel
from .records import sees_task


def _glob_refusal(caller: Caller, what: str) -> RpcError:
    if caller.agents is None:
        return RpcError(jsonrpc.FORBIDDEN, f"forbidden: {caller.who} is a caller of tenant "
                                           f"{caller.tenant}: {what}")
    return RpcError(jsonrpc.FORBIDDEN, f"forbidden: {caller.who} is limited to agents "
                                       f"matching {caller.agents}: {what}")


class AgentRule(msgspec.Struct, frozen=True):
    check: Callable[[Any, Caller], None]
    # what the answer holds of agents the caller does not see, taken out
    filter: Callable[[Any, Caller], Any] | None = None
    # a stream's notifications, filtered the same way
    channel: Callable[[Channel, Caller], Channel] | None = None
    # the record the params name (a task, a team, a workflow, a run, a schedule): looked
    # up before the handler runs, it must be the caller's (records.py)
    record: records.Record | None = None
    # what the answer tells of a tenant sums every agent of it (a tenant's use): closed
    # to a caller limited to an agent glob, which sees some of them only
    whole_tenants: bool = False


def _nothing(params: Any, caller: Caller) -> None:
    pass


def _one(field: str) -> Callable[[Any, Caller], None]:
    def check(params: Any, caller: Caller) -> None:
        name = getattr(params, field)
        if name is not None and not caller.sees(name):
            raise NoSuchAgent(name, None)  # worded for the caller: Dispatcher._as_seen

    return check


def _targets(field: str, *, all_field: bool = False) -> Callable[[Any, Caller], None]:
    def check(params: Any, caller: Caller) -> None:
        if all_field and params.all:
            raise _glob_refusal(caller, "name the agents rather than all")
        for target in getattr(params, field):
            try:
                name, _ = parse_target(target)
            except ValueError:
                continue  # the handler says what is wrong with it
            if not caller.sees(name):
                raise NoSuchAgent(name, None)

    return check


def _adding(params: Any, caller: Caller) -> None:
    if params.for_cluster:  # (a rule is asked of limited callers only)
        # the cluster's agents run on every node, past any one node's tenant quotas
        named = [n for n, t in params.agents.items()
                 if isinstance(t, dict) and t.get("placement") == "cluster"]
        raise _glob_refusal(caller, "may not add cluster agents" + (
            f' (agents.{named[0]}.placement: "cluster")' if named and not params.cluster
            else ""))
    for name, table in params.agents.items():
        if caller.agents is not None and (name == RESERVED
                                          or not fnmatchcase(name, caller.agents)):
            raise _glob_refusal(caller, f"may not add {name}")
        if caller.tenant is not None:
            # a tenant's caller adds agents of its tenant: the table says so, or is made to
            wanted = table.get("tenant", caller.tenant) if isinstance(table, dict) else None
            if wanted != caller.tenant:
                raise _glob_refusal(caller, f"may not add {name} to tenant {wanted}")
            if isinstance(table, dict):
                table["tenant"] = caller.tenant


def _server(field: str) -> Callable[[Any, Caller], None]:
    """An MCP server named by a param: one the caller does not see is as absent as one
    that does not exist (the pool's own words)."""
    def check(params: Any, caller: Caller) -> None:
        name = getattr(params, field)
        if name is not None and not caller.sees_server(name):
            raise jsonrpc.not_found("MCP server", name)

    return check


def _tool(what: str) -> Callable[[Any, Caller], None]:
    """A SERVER__NAME param: the pool's words for a server there is not."""
    def check(params: Any, caller: Caller) -> None:
        server, sep, _ = params.name.partition("__")
        if sep and not caller.sees_server(server):
            raise RpcError(jsonrpc.NOT_FOUND, f"no such {what}: {params.name} (no MCP server "
                                              f"{server})")

    return check


def _reading(params: Any, caller: Caller) -> None:
    if params.server is None and caller.tenant is not None:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"resource {params.uri}: name the server")
    _server("server")(params, caller)


def _named(field: str, what: str) -> Callable[[Any, Caller], None]:
    """What a limited caller must name (a whole-fleet view sums agents it does not see)."""
    def check(params: Any, caller: Caller) -> None:
        if getattr(params, field) is None:
            raise _glob_refusal(caller, f"name {what}")

    return check


def _own_tenant(params: Any, caller: Caller) -> None:
    """A tenant's caller is in its own tenant's part of the event bus: another tenant
    answers as one that does not exist."""
    if caller.tenant is not None and params.tenant not in (None, caller.tenant):
        raise jsonrpc.not_found("tenant", params.tenant)


def _both(*checks: Callable[[Any, Caller], None]) -> Callable[[Any, Caller], None]:
    def check(params: Any, caller: Caller) -> None:
        for one in checks:
            one(params, caller)

    return check


def _servers_filter(*lists: str) -> Callable[[Any, Caller], Any]:
    """Listings of the pool: items, `unavailable` and `failed` of servers the caller does
    not see taken out (`mcp_servers` rows by their name)."""
    def seen(result: Any, caller: Caller) -> Any:
        if caller.tenant is None:
            return result
        fields: dict[str, Any] = {}
        for key in lists:
            rows = _get(result, key)
            # a pool's item names its `server`; an instance's status row is the server's
            fields[key] = [r for r in rows if caller.sees_server(
                r.get("server", r.get("name")) if isinstance(r, Mapping) else r.name)]
        for key in ("unavailable", "failed"):
            if _has(result, key):
                value = _get(result, key)
                fields[key] = ({k: v for k, v in value.items() if caller.sees_server(k)}
                               if isinstance(value, Mapping)
                               else [n for n in value if caller.sees_server(n)])
        return _replace(result, **fields)

    return seen


def _has(obj: Any, key: str) -> bool:
    return key in obj if isinstance(obj, Mapping) else hasattr(obj, key)


def _replace(result: Any, **fields: Any) -> Any:
    if isinstance(result, msgspec.Struct):
        return msgspec.structs.replace(result, **fields)
    return {**result, **fields}


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def _seen_keys(table: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
    return {k: v for k, v in table.items() if caller.sees(k)}


def _status_filter(result: Any, caller: Caller) -> Any:
    return _servers_filter("mcp_servers")(_replace(
        result, agents=[a for a in result.agents if caller.sees(a.name)],
        tasks=_seen_keys(result.tasks, caller), elastic=_seen_keys(result.elastic, caller),
        cluster_slots=_seen_keys(result.cluster_slots, caller),
        cluster_replicas=_seen_keys(result.cluster_replicas, caller)), caller)


def _stats_filter(result: Any, caller: Caller) -> Any:
    tasks = result.tasks
    # the gateway's clients and tools, and log files, name agents it does not see
    fields: dict[str, Any] = {
        "gateway": _gateway_filter(result.gateway, caller),
        "supervisor": _replace(result.supervisor, log_files_failing={})}
    if caller.tenant is not None:
        # the bus's followers: another tenant's say what it follows
        fields["events"] = {**result.events, "followers": [
            f for f in result.events["followers"] if f.get("tenant") == caller.tenant]}
    if isinstance(result.cluster, Mapping):
        fields["cluster"] = _cluster_filter(result.cluster, caller)
    seen = _seen_keys(_get(tasks, "agents"), caller)
    # the total of its agents' tasks, not every tenant's (the dashboard's fleet chart)
    return _replace(result, agents=_seen_keys(result.agents, caller),
                    tasks=_replace(tasks, agents=seen, total=totals(seen.values())),
                    **fields)


def _cluster_filter(cluster: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
    """A cluster node's figures (ClusterNode.status): the cluster agents placed here and
    those whose file table differs from the cluster's are named, the rest are this
    node's counters, left as the supervisor's are."""
    placement = cluster["agents"]
    return {**cluster, "agents": {**placement, **{
        key: _seen_keys(placement[key], caller) for key in ("placed", "differs")}}}


def _gateway_filter(stats: Any, caller: Caller) -> Any:
    """Gateway figures a tenant's caller may see: its agents' clients (`agent:NAME`, a
    replica's `NAME#N`) and the tools of servers it sees."""
    if not caller.limited:
        return stats

    def client_seen(name: str) -> bool:
        agent = name.removeprefix("agent:") if name.startswith("agent:") else (
            name.partition("#")[0] if "#" in name else None)
        return agent is not None and caller.sees(agent)

    clients = _get(stats, "clients")
    seen = _replace(stats, clients={k: v for k, v in clients.items() if client_seen(k)})
    if caller.tenant is None:
        return seen  # limited to an agent glob: every server is there for it
    tools = _get(stats, "tools")
    return _replace(seen, tools={k: v for k, v in tools.items()
                                 if caller.sees_server(k.partition("__")[0])},
                    http=None)


def _list_filter(field: str, sees: Callable[[Caller, Any], bool]
                 ) -> Callable[[Any, Caller], Any]:
    """A listing's `field` without the rows `sees` refuses the caller."""
    def seen(result: Any, caller: Caller) -> Any:
        return _replace(result, **{field: [r for r in _get(result, field) if sees(caller, r)]})

    return seen


def _owned(caller: Caller, row: Any) -> bool:
    return caller.owns(row.agents, row.tenant)


_lines_filter = _list_filter("lines", lambda caller, line: caller.sees(line.source))


def _new_lines(params: Any, caller: Caller) -> Any:
    seen = _lines_filter(params, caller)
    return seen if _get(seen, "lines") else None


class _CallerChannel:
    """A stream's channel that passes on only what the caller sees: each notification of
    a method in `filters` through its filter (None: not sent at all)."""

    def __init__(self, inner: Channel, caller: Caller,
                 filters: Mapping[str, Callable[[Any, Caller], Any]]) -> None:
        self.inner = inner
        self.caller = caller
        self.filters = filters

    @property
    def writable(self) -> asyncio.Event:
        return self.inner.writable

    def notify(self, method: str, params: Any) -> None:
        seen = self.filters.get(method)
        if seen is not None:
            params = seen(params, self.caller)
            if params is None:
                return
        self.inner.notify(method, params)


def _seen(filters: Mapping[str, Callable[[Any, Caller], Any]]
          ) -> Callable[[Channel, Caller], Channel]:
    return lambda inner, caller: _CallerChannel(inner, caller, filters)


def _of_agent(params: Any, caller: Caller) -> Any:
    return params if caller.sees(params.agent) else None


def _rows_filter(field: str) -> Callable[[Any, Caller], Any]:
    return _list_filter("replicas", lambda caller, r: caller.sees(getattr(r, field)))


_AGENT_PARAM = _one("agent")
# each rule by the name the methods' declarations give (corral.methods: `seen`)
RULES: dict[str, AgentRule] = {
    # the params name no agent: the answer is the caller's as it is (daemon.info, a
    # dashboard link for the caller's own scopes)
    "unnamed": AgentRule(_nothing),
    "fleet": AgentRule(_targets("names"), filter=_status_filter),
    "targets": AgentRule(_targets("names", all_field=True)),
    "agent_name": AgentRule(_one("name")),
    "adding": AgentRule(_adding),
    "names": AgentRule(_targets("names")),
    "log_lines": AgentRule(_targets("names"), filter=_lines_filter),
    "log_stream": AgentRule(_targets("names"), channel=_seen({"logs.lines": _new_lines})),
    "stats": AgentRule(_nothing, filter=_stats_filter),
    "agent_metrics": AgentRule(_both(_named("agent", "an agent"), _AGENT_PARAM)),
    "stats_stream": AgentRule(_nothing, channel=_seen({"stats.sample": _stats_filter})),
    "fleet_stream": AgentRule(_targets("names"), channel=_seen({
        "agents.snapshot": _rows_filter("name"), "agents.sample": _rows_filter("agent"),
        "agents.transition": _of_agent, "agents.roster": _of_agent,
        "agents.health": _of_agent})),
    # a task's agent may be a team's name (its calls are tasks of it)
    # (a task submitted: the session it names too)
    "agent": AgentRule(_AGENT_PARAM, record=records.submitted("agent")),
    "task": AgentRule(_nothing, record=records.task("task_id")),
    "tasks": AgentRule(_AGENT_PARAM, filter=_list_filter("tasks", sees_task),
                       record=records.task_agent("agent")),
    # an ask of the inbox is its task's: its tenant's and its agent's (docs/approvals.md)
    "asks": AgentRule(_nothing, filter=_list_filter("asks", sees_task)),
    "ask": AgentRule(_nothing, record=records.ask("id")),
    "ask_stream": AgentRule(_nothing, channel=_seen({
        "approvals.ask": lambda ask, caller: ask if sees_task(caller, ask) else None})),
    # a record the params name (records.py): a workflow, a team, a schedule and their
    # runs are a limited caller's when all their agents are; a session when it is the
    # caller's record
    "workflows": AgentRule(_nothing, filter=_list_filter("workflows", _owned)),
    "workflow": AgentRule(_nothing, record=records.workflow("name")),
    "workflow_names": AgentRule(_nothing, record=records.workflow("names")),
    "workflow_past": AgentRule(_nothing, record=records.workflow_past),
    "run": AgentRule(_nothing, record=records.run),
    "schedule": AgentRule(_nothing, record=records.schedule),
    "team": AgentRule(_nothing, record=records.team("name")),
    "team_names": AgentRule(_nothing, record=records.team("names")),
    "team_past": AgentRule(_nothing, record=records.team_past),
    "call": AgentRule(_nothing, record=records.call),
    "session": AgentRule(_nothing, record=records.session),
    "runs": AgentRule(_nothing, filter=_list_filter("runs", _owned)),
    "schedules": AgentRule(_nothing, filter=_list_filter("schedules", _owned)),
    "teams": AgentRule(_nothing, filter=_list_filter("teams", _owned)),
    # whose a session is, is whose its agent was when it began
    "sessions": AgentRule(_nothing, filter=_list_filter(
        "sessions", lambda caller, row: caller.sees_record(row.agent, row.tenant))),
    "own_tenant": AgentRule(_own_tenant),
    # the bus sends a follower its tenant's events, and a glob's caller its agents' alone
    # (supervisor.events.seen_by): what an event reached is counted where it is sent
    "event_stream": AgentRule(_own_tenant),
    "tools": AgentRule(_both(_AGENT_PARAM, _server("server")),
                       filter=_servers_filter("tools")),
    "tool": AgentRule(_tool("tool")),
    "tool_pins": AgentRule(_nothing, filter=_servers_filter("pins")),
    "mcp_status": AgentRule(_nothing, filter=lambda r, c: _replace(
        _servers_filter("mcp_servers")(r, c), gateway=_gateway_filter(
            _get(r, "gateway"), c))),
    "server": AgentRule(_server("name")),
    "resources": AgentRule(_both(_AGENT_PARAM, _server("server")),
                           filter=_servers_filter("resources", "resource_templates")),
    "resource": AgentRule(_reading),
    "prompts": AgentRule(_both(_AGENT_PARAM, _server("server")),
                         filter=_servers_filter("prompts")),
    "prompt": AgentRule(_tool("prompt")),
    # a tenant's own view (its callers' only tenants method); the only limited callers
    # let through whole_tenants are a tenant's
    "tenant_use": AgentRule(_nothing, filter=lambda r, c: _replace(
        r, tenants=[t for t in r.tenants if t.name == c.tenant]), whole_tenants=True),
    "gateway_stats": AgentRule(_nothing, filter=_gateway_filter),
}


def agent_rule(name: str, caller: Caller) -> AgentRule:
    spec = REGISTRY.get(name)
    rule = RULES[spec.seen] if spec is not None and spec.seen is not None else None
    if rule is None:
        raise _glob_refusal(caller, f"{name} is for callers that see every agent")
    if rule.whole_tenants and caller.agents is not None:
        raise _glob_refusal(caller, f"{name} is for callers that see whole tenants (a "
                                    f"tenant's use counts agents outside {caller.agents})")
    return rule


def open_to(caller: Caller, name: str) -> bool:
    """Whether a method may be called by this caller at all (some params may still be
    refused): what a dashboard session is offered."""
    if not caller.limited:
        return True
    try:
        agent_rule(name, caller)
    except RpcError:
        return False
    return True
