"""The names of everything a cluster keeps in Redis, in one place.

Every key of a cluster starts with `corral:{NAME}:` (a hash tag: were the keys ever spread
over Redis Cluster slots, a cluster's would share one, so its Lua scripts may touch
several). Several clusters may share one Redis. What each key holds: docs/cluster.md#the-keys.
"""

from __future__ import annotations

from ..supervisor.tasks.sessions import SessionKey

GROUP = "corral"  # the one consumer group of every task stream
KEEP_OUTCOMES = 10_000  # the outcomes stream is capped near this (MAXLEN ~)
CLAIMED = "claimed"  # a route's stream of the tasks claimed at submission (Keys.claimed)
TURNS_ENDED = "tended"  # the ended turns whose sessions have yet to move (Keys.turns_ended)


def consumer(node: str, incarnation: int) -> str:
    """A node incarnation's name as a stream consumer, and in its liveness key."""
    return f"{node}/{incarnation}"


def route(tenant: str, agent: str) -> str:
    """A tenant's agent as a member of Keys.agents (as the submit scripts write it)."""
    return f"{tenant}:{agent}"


def split_route(member: str) -> tuple[str, str]:
    tenant, _, agent = member.partition(":")
    return tenant, agent


def priority_numbers(members: list[bytes]) -> list[int]:
    """The priorities in an agent's set of them (Keys.priorities): a member that is no
    number, a Redis writer's, names no stream (else the beat that reads it fails, every
    beat)."""
    return [int(m) for m in members if m.removeprefix(b"-").isdigit()]


CHECKPOINT_FIELD = "cp"  # a task's checkpoint in its steps' hash (Keys.steps)


class Keys:
    def __init__(self, cluster: str) -> None:
        prefix = self.prefix = f"corral:{{{cluster}}}:"
        # the keys of which a cluster has one (the rest, one of each task, ask, call...)
        self.nodes = f"{prefix}nodes"
        self.agents = f"{prefix}agents"
        self.due = f"{prefix}due"
        self.live = f"{prefix}live"
        self.done = f"{prefix}done"
        self.outcomes = f"{prefix}outcomes"
        self.ask_deadlines = f"{prefix}askdue"
        self.asks_ended = f"{prefix}askend"
        self.calls_running = f"{prefix}crun"
        self.fence = f"{prefix}fence"
        self.acks = f"{prefix}acks"
        self.cluster_agents = f"{prefix}cagents"
        self.agent_macs = f"{prefix}cagents:mac"
        self.placement = f"{prefix}place"
        self.draining = f"{prefix}draining"
        self.events = f"{prefix}events"
        self.tool_pins = f"{prefix}pins"  # the tools' pins (toolpins.py), by server and tool
        self.pushed = f"{prefix}pushed"  # the tasks with push configs (clusterpush.py)
        self.turns_ended = f"{prefix}{TURNS_ENDED}"  # (sessionscripts.ended)

    @property
    def listed(self) -> list[str]:
        """The live and done sets, as the scripts that end a task take them (KEYS, last)."""
        return [self.live, self.done]

    # -- membership ---------------------------------------------------------------------
    def alive(self, consumer_name: str) -> str:
        return f"{self.prefix}alive:{consumer_name}"

    def incarnations(self, node: str) -> str:
        return f"{self.prefix}inc:{node}"

    def running_calls(self, consumer_name: str) -> str:
        """An incarnation's running cluster attempts' tool calls (runningcalls.py)."""
        return f"{self.prefix}tcalls:{consumer_name}"

    # -- tasks: queued by route (tenant and agent name: no ':' in either), so that another
    # tenant's agent of the name has streams of its own -------------------------------
    def stream(self, tenant: str, agent: str, priority: int) -> str:
        return f"{self.prefix}q:{tenant}:{agent}:{priority}"

    def claimed(self, tenant: str, agent: str) -> str:
        return f"{self.prefix}q:{tenant}:{agent}:{CLAIMED}"

    def route_of(self, stream: str) -> str:
        """The route a task stream (a priority's, or the claimed one) is of."""
        return stream[len(self.prefix) + 2:].rpartition(":")[0]

    def priorities(self, tenant: str, agent: str) -> str:
        return f"{self.prefix}prio:{tenant}:{agent}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def attempts(self, task_id: str) -> str:
        return f"{self.prefix}att:{task_id}"

    def steps(self, task_id: str) -> str:
        return f"{self.prefix}steps:{task_id}"

    def spawns(self, task_id: str) -> str:
        return f"{self.prefix}spawn:{task_id}"

    def labels(self, key: str) -> str:
        """A task's or a session's labels (clusterlabels.py)."""
        return f"{self.prefix}labels:{key}"

    def output(self, task_id: str) -> str:
        """A task's live output, a stream of its chunks by position (clusteroutput.py)."""
        return f"{self.prefix}output:{task_id}"

    def push(self, task_id: str) -> str:
        """A task's push configs, by id (clusterpush.py)."""
        return f"{self.prefix}push:{task_id}"

    def push_lead(self, task_id: str) -> str:
        """The node delivering a task's events to its push configs (clusterpush.py)."""
        return f"{self.prefix}pushlead:{task_id}"

    # -- asks of a person (clusterasks.py) -----------------------------------------------
    def ask(self, ask_id: str) -> str:
        return f"{self.prefix}ask:{ask_id}"

    def task_asks(self, task_id: str) -> str:
        return f"{self.prefix}asks:{task_id}"

    def asks_pending(self, tenant: str | None = None) -> str:
        return f"{self.prefix}askq" + ("" if tenant is None else f":{tenant}")

    def asks_done(self, tenant: str) -> str:
        return f"{self.prefix}askdone:{tenant}"

    # -- durable calls (a workflow's run, a team's call: clustercalls.py) --------------
    def call(self, call_id: str) -> str:
        return f"{self.prefix}call:{call_id}"

    def call_steps(self, call_id: str) -> str:
        return f"{self.prefix}csteps:{call_id}"

    def calls(self, kind: str) -> str:
        return f"{self.prefix}calls:{kind}"

    # -- sessions, each under its owner (the tenant its agent was of at its submit) -----
    def session(self, key: SessionKey) -> str:
        return f"{self.prefix}sess:{key.tenant}:{key.agent}:{key.name}"

    def session_line(self, key: SessionKey) -> str:
        return f"{self.prefix}sline:{key.tenant}:{key.agent}:{key.name}"

    def session_tasks(self, key: SessionKey) -> str:
        return f"{self.prefix}shist:{key.tenant}:{key.agent}:{key.name}"

    def sessions(self, tenant: str, agent: str) -> str:
        return f"{self.prefix}sessions:{tenant}:{agent}"

    def session_bytes(self, tenant: str, agent: str) -> str:
        return f"{self.prefix}sbytes:{tenant}:{agent}"

    def sticky(self, tenant: str, agent: str, consumer_name: str) -> str:
        return f"{self.prefix}stk:{tenant}:{agent}:{consumer_name}"

    # -- cluster agents (placement.py) --------------------------------------------------
    def history(self, agent: str) -> str:
        return f"{self.prefix}hist:{agent}"

    def declared(self, node: str) -> str:
        return f"{self.prefix}decl:{node}"

    def declared_macs(self, node: str) -> str:
        return f"{self.prefix}declmac:{node}"

    def state(self, agent: str) -> str:
        return f"{self.prefix}state:{agent}"

