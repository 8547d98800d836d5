"""The REST API's resources: each a row saying which control method an HTTP method and
path call, and where its params come from. rest.py serves the rows, openapi.py
describes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...taskoptions import FILTER_NAMES, OPTION_NAMES

PREFIX = "/api/v1"


@dataclass(frozen=True)
class Resource:
    verb: str
    path: str  # under PREFIX; {var} parts are params
    method: str  # the control method
    summary: str
    # path variable -> the param it fills; "names" takes it as a one-name list
    path_params: dict[str, str] = field(default_factory=dict)
    query: tuple[str, ...] = ()  # params the query string may give
    body: tuple[str, ...] = ()  # params the JSON body may give
    idempotent: bool = False  # takes an Idempotency-Key
    stream: str | None = None  # an SSE stream of this notification
    # a paged listing: the query param the answer's `next` is given back in (the
    # response's `Link: <...>; rel="next"`)
    cursor: str | None = None
    # the resource the answer is (or made): a path under PREFIX with {field}s of the
    # answer, sent as the response's Location
    location: str | None = None
    # a field the answer carries only once the work is done: 202 Accepted without it
    # (the work runs on), 200 with it
    done_when: str | None = None
    tag: str = ""


def _r(verb: str, path: str, method: str, summary: str, **kw: Any) -> Resource:
    if "{name}" in path and "path_params" not in kw:
        kw["path_params"] = {"name": "name"}
    return Resource(verb, path, method, summary, tag=path.split("/")[1], **kw)


ONE = {"name": "names"}  # an agent named by the path, where the method takes a list
REPLICA = {"name": "name", "replica": "replica"}  # one replica of an agent
RESOURCES: list[Resource] = [
    _r("GET", "/agents", "agents.status", "Agents' replicas: state, pid, restarts, "
       "CPU, memory, tasks", query=("names", "tenant")),
    _r("POST", "/agents", "agents.add", "Add agents from [agents.NAME] tables",
       body=("agents", "check", "cluster"), idempotent=True),
    _r("GET", "/agents/{name}", "agents.describe", "One agent's effective spec"),
    _r("DELETE", "/agents/{name}", "agents.remove", "Stop and remove an agent",
       path_params=ONE),
    _r("PATCH", "/agents/{name}", "agents.update", "Change an agent added at runtime in "
       "place: `set` merged into its table (a JSON merge patch), rolled out",
       body=("set", "check")),
    _r("GET", "/agents/{name}/replicas", "agents.status", "One agent's replicas",
       path_params=ONE),
    _r("POST", "/agents/{name}/start", "agents.start", "Start an agent", path_params=ONE),
    _r("POST", "/agents/{name}/stop", "agents.stop", "Stop an agent", path_params=ONE),
    _r("POST", "/agents/{name}/restart", "agents.restart",
       "Restart an agent (rolling: one replica at a time)", path_params=ONE,
       body=("rolling",)),
    _r("POST", "/agents/{name}/signal", "agents.signal", "Signal an agent's processes",
       path_params=ONE, body=("signal",)),
    _r("POST", "/agents/{name}/scale", "agents.scale", "Set an agent's replicas",
       body=("replicas",)),
    _r("POST", "/agents/{name}/pause", "agents.pause",
       "Pause an agent: freeze its replicas, memory kept"),
    _r("POST", "/agents/{name}/resume", "agents.resume", "Resume an agent's paused replicas"),
    _r("POST", "/agents/{name}/replicas/{replica}/pause", "agents.pause",
       "Pause one replica", path_params=REPLICA),
    _r("POST", "/agents/{name}/replicas/{replica}/resume", "agents.resume",
       "Resume one paused replica", path_params=REPLICA),
    _r("GET", "/agents/{name}/history", "agents.history", "An agent's spec revisions",
       query=("limit",)),
    _r("POST", "/agents/{name}/rollback", "agents.rollback",
       "Go back to an earlier spec revision", body=("revision",)),
    _r("GET", "/agents/{name}/logs", "logs.tail", "An agent's last log lines",
       path_params=ONE, query=("lines", "since")),
    _r("GET", "/agents/{name}/logs/stream", "logs.follow",
       "An agent's log lines as they come (SSE)", path_params=ONE,
       query=("lines", "since"), stream="logs.lines"),
    _r("GET", "/logs", "logs.tail", "The last log lines of agents (and the daemon)",
       query=("names", "lines", "since")),
    _r("GET", "/logs/stream", "logs.follow", "Log lines as they come (SSE)",
       query=("names", "lines", "since"), stream="logs.lines"),
    _r("POST", "/tasks", "tasks.submit", "Submit a task: 202 and its Location at once; "
       "with `wait`, its outcome (as `corral run --json` prints it) if it ends within that "
       "many seconds, else 202", query=("wait",),
       body=("agent", "input", "local", *OPTION_NAMES), idempotent=True,
       location="/tasks/{task_id}", done_when="attempts"),
    _r("GET", "/workflows", "workflows.list", "The workflows: the config's and those "
       "added at runtime"),
    _r("POST", "/workflows", "workflows.add", "Add workflows from [workflows.NAME] tables",
       body=("workflows",), idempotent=True),
    _r("GET", "/workflows/{name}", "workflows.describe", "A workflow's definition and "
       "revision"),
    _r("PATCH", "/workflows/{name}", "workflows.update", "Change a runtime workflow: `set` "
       "merged into its table (a JSON merge patch)", body=("set",)),
    _r("DELETE", "/workflows/{name}", "workflows.remove", "Remove a runtime workflow",
       path_params=ONE),
    _r("GET", "/workflows/{name}/history", "workflows.history", "A runtime workflow's "
       "revisions", query=("limit",)),
    _r("POST", "/workflows/{name}/rollback", "workflows.rollback", "Go back to an earlier "
       "revision of a runtime workflow", body=("revision",)),
    _r("GET", "/workflows/{name}/plan", "workflows.plan", "A workflow's plan (nothing run)"),
    _r("POST", "/workflows/{name}/runs", "workflows.run", "Start a run of a workflow: the "
       "run at once; with `wait`, as it is when it ends or the wait is over",
       query=("wait",), body=("input", "wait"), location="/runs/{run_id}"),
    _r("GET", "/runs", "runs.list", "Recent runs, newest first, a page at a time",
       query=("workflow", "status", "since", "limit", "before"), cursor="before"),
    _r("GET", "/runs/{run_id}", "runs.get", "One run, its graph, and a page of its "
       "steps' rows (with `outputs`, each with its output)",
       path_params={"run_id": "run_id"},
       query=("wait", "step", "outputs", "offset", "limit")),
    _r("POST", "/runs/{run_id}/cancel", "runs.cancel", "Cancel a run and its running steps",
       path_params={"run_id": "run_id"}),
    _r("GET", "/schedules", "schedules.list", "The schedules: each clock, last and next fire"),
    _r("POST", "/schedules/{name}/pause", "schedules.pause", "Pause a schedule"),
    _r("POST", "/schedules/{name}/resume", "schedules.resume", "Resume a paused schedule"),
    _r("GET", "/teams", "teams.list", "The teams: the config's and those added at runtime"),
    _r("POST", "/teams", "teams.add", "Add teams from [teams.NAME] tables",
       body=("teams",), idempotent=True),
    _r("GET", "/teams/{name}", "teams.describe", "A team's definition and revision"),
    _r("PATCH", "/teams/{name}", "teams.update", "Change a runtime team: `set` merged into "
       "its table (a JSON merge patch)", body=("set",)),
    _r("DELETE", "/teams/{name}", "teams.remove", "Remove a runtime team", path_params=ONE),
    _r("GET", "/teams/{name}/history", "teams.history", "A runtime team's revisions",
       query=("limit",)),
    _r("POST", "/teams/{name}/rollback", "teams.rollback", "Go back to an earlier revision "
       "of a runtime team", body=("revision",)),
    _r("GET", "/tasks", "tasks.list", "Recent tasks, newest last, a page at a time",
       query=("agent", "status", "since", "limit", "before", "local", *FILTER_NAMES),
       cursor="before"),
    _r("GET", "/tasks/{task_id}", "tasks.get", "One task (with ?input=true, its input)",
       path_params={"task_id": "task_id"}, query=("input",)),
    _r("POST", "/tasks/{task_id}/cancel", "tasks.cancel", "Cancel a task",
       path_params={"task_id": "task_id"}),
    _r("GET", "/tasks/{task_id}/trace", "traces.get", "A task's trace: its spans from the "
       "local store (with [tracing])", path_params={"task_id": "task_id"}),
    _r("GET", "/sessions", "sessions.list", "The live sessions (of an agent)",
       query=("agent",)),
    _r("GET", "/agents/{name}/sessions/{session}", "sessions.get",
       "One session and the history of its tasks",
       path_params={"name": "agent", "session": "session"}),
    _r("POST", "/agents/{name}/sessions/{session}/end", "sessions.end",
       "End a session: its state and history dropped",
       path_params={"name": "agent", "session": "session"}),
    _r("POST", "/events", "events.publish", "Publish an event",
       body=("topic", "data", "tenant")),
    _r("GET", "/events/stream", "events.follow", "Events matching a pattern (SSE)",
       query=("pattern", "tenant"), stream="events.event"),
    _r("GET", "/mcp/servers", "mcp.status", "The MCP servers' instances"),
    _r("POST", "/mcp/servers/{name}/start", "mcp.start", "Start an MCP server"),
    _r("POST", "/mcp/servers/{name}/stop", "mcp.stop", "Stop an MCP server"),
    _r("POST", "/mcp/servers/{name}/restart", "mcp.restart", "Restart an MCP server"),
    _r("GET", "/tools", "tools.list", "The MCP servers' tools", query=("agent", "server")),
    _r("POST", "/tools/{name}/call", "tools.call", "Call a tool", body=("arguments",)),
    _r("GET", "/resources", "resources.list", "The MCP servers' resources",
       query=("server", "agent")),
    _r("GET", "/prompts", "prompts.list", "The MCP servers' prompts",
       query=("server", "agent")),
    _r("GET", "/stats", "stats.get", "Runtime statistics"),
    _r("GET", "/metrics/history", "stats.history", "The metrics history of the fleet or "
       "of one agent: a sample every history_interval, or per minute or hour",
       query=("since", "agent", "resolution")),
    _r("GET", "/stats/stream", "stats.watch", "Runtime statistics every interval (SSE)",
       query=("interval",), stream="stats.sample"),
    _r("GET", "/replicas/stream", "agents.watch", "The fleet's replicas, then each state "
       "change as it happens (SSE)", query=("names", "interval"),
       stream="agents.transition"),
    _r("GET", "/nodes", "nodes.list", "The nodes of the cluster (with [cluster])"),
    _r("POST", "/nodes/{node}/drain", "nodes.drain", "Drain a node of the cluster: no new "
       "tasks, what it runs finishes, its cluster agents move, then it leaves",
       path_params={"node": "node"}),
    _r("GET", "/audit", "audit.list", "The audit log", query=("limit",)),
    _r("POST", "/config/reload", "config.reload", "Reload the config file"),
    _r("GET", "/daemon", "daemon.info", "The daemon: version, pid, uptime"),
    _r("GET", "/tokens", "tokens.list", "The API's tokens"),
    _r("POST", "/tokens", "tokens.create", "Create a token (its secret shown once)",
       body=("name", "scopes", "agents", "expires_in")),
    _r("DELETE", "/tokens/{name}", "tokens.revoke", "Revoke a token"),
    # tenants (docs/tenants.md)
    _r("GET", "/tenants", "tenants.list", "The tenants: quotas beside use"),
    _r("POST", "/ui/login", "ui.login", "A one-time link that logs a browser in to the "
       "dashboard as this token (its tenant, agents and scopes)"),
    _r("POST", "/tenants", "tenants.add", "Add tenants from [tenants.NAME] tables",
       body=("tenants",), idempotent=True),
    _r("PATCH", "/tenants/{name}", "tenants.set", "Set keys of a tenant's table",
       body=("set",)),
    _r("DELETE", "/tenants/{name}", "tenants.remove", "Remove a runtime tenant",
       path_params=ONE),
    # agent packages (docs/packages.md)
    _r("POST", "/packages", "packages.deploy", "Deploy an agent package: build its release "
       "(a path on the daemon's host) and switch the agent to it", body=("path", "name")),
    _r("GET", "/agents/{name}/releases", "packages.releases",
       "An agent package's kept releases"),
]

