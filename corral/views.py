"""What corral shows of its parts, one Struct each, shared by the engine that makes
them, the daemon that sends them and the CLI that reads them (no asyncio here): a
replica's status, a spec revision, a cluster node, a tenant's use. (Tasks' are
`corral.taskviews`.)"""

from __future__ import annotations

from typing import Any

import msgspec


class ProcessStatus(msgspec.Struct):
    """What every supervised process shows: an agent's replica and an MCP server's instance
    alike (`state` a lifecycle state's name)."""

    name: str
    state: str
    pid: int | None
    uptime: float | None
    restarts: int
    last_exit: str | None
    reason: str
    cpu_percent: float
    rss_bytes: int
    open_fds: int
    tasks_running: int


class ReplicaStatus(ProcessStatus):
    """One replica in `corral status --json` (a process replica's `status()`)."""

    replica: int
    # an agent with [health]: whether the replica takes new tasks, and why not
    ready: bool | None = None
    health: str | None = None
    # a plain program's last STATUS= on its $NOTIFY_SOCKET (plain.py)
    status_text: str | None = None
    # down after a clean exit (a status of exit_codes, of its own accord) it is not
    # restarted from: a one-shot that did its work, not a failure
    done: bool = False
    # stopped by hand (kept across daemon restarts until started by hand): who, when
    stopped_by: str | None = None
    stopped_at: float | None = None
    # out of dispatch after a scale-down, finishing its running tasks before it stops
    draining: bool = False
    # a sandboxed agent's: the layer its process runs under (docs/sandbox.md#egress)
    boundary: str | None = None


class Revision(msgspec.Struct):
    """One spec revision."""

    agent: str
    revision: int
    time: float
    who: str  # "config file", "uid 0 pid 123: agents.add", "signal SIGHUP", ...
    change: str
    spec: dict[str, Any]  # the [agents.NAME] table, as the config would write it
    release: str | None = None  # an agent package's release (its name), if it runs one
    version: str | None = None  # and the package's version


class NodeInfo(msgspec.Struct):
    """One node of the cluster as `corral nodes` shows it (cluster.membership.NodeView
    adds what the cluster derives from it)."""

    node: str
    alive: bool  # its liveness key exists (it beat within node_ttl)
    incarnation: int  # a new one each time it joins (after a restart or a fence)
    load: int  # tasks running and waiting on it, at its last beat
    agents: list[str]
    last_beat: float  # wall time
    capacity: int = 0  # task slots of its serving replicas, at its last beat
    room: int = 0  # replicas it may still start (max_replicas less those it has)
    placed: list[str] = []  # which of its agents are the cluster's (placement = cluster)
    draining: bool = False  # `corral drain`: it takes nothing new
    pid: int = 0  # its daemon's, at its last beat
    host: str = ""  # its daemon's host name
    # its cluster key's fingerprint: "" when it has no [cluster] key_file (a writer of the
    # cluster's Redis runs commands on it); nodes whose fingerprints differ refuse each
    # other's records
    key: str = ""


class TenantUse(msgspec.Struct, kw_only=True):
    """What a tenant's agents use now."""

    agents: int
    replicas: int
    queued: int
    running: int
    tokens_last_minute: float = 0.0
    oom_kills: int = 0  # in its cgroup (where it has one), since the daemon started
    # step results its unfinished tasks journaled (against max_step_journal_bytes)
    step_journal_bytes: int = 0


# Field order is the wire's (and so `--json`'s). A key the daemon sends only sometimes is
# UNSET when absent, so that it is absent again when printed.
class Result(msgspec.Struct, kw_only=True):
    """The base of every control method's result (corral.results)."""
