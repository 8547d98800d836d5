"""The names of everything a cluster keeps in Redis, in one place.

Every key of a cluster starts with `corral:{NAME}:` (a hash tag: were the keys ever spread
over Redis Cluster slots, a cluster's would share one, so its Lua scripts may touch
several). Several clusters may share one Redis.
"""

from __future__ import annotations

from ..supervisor.tasks.sessions import SessionKey

GROUP = "corral"  # the one consumer group of every task stream
OUTCOMES_KEPT = 10_000  # the outcomes stream is capped near this (MAXLEN ~)
CLAIMED = "claimed"  # a route's stream of the tasks claimed at submission (Keys.claimed)


def consumer(node: str, incarnation: int) -> str:
    """A node incarnation's name as a stream consumer, and in its liveness key."""
    return f"{node}/{incarnation}"


def split_consumer(name: str) -> tuple[str, int]:
    node, _, inc = name.rpartition("/")
    return node, int(inc)


def route(tenant: str, agent: str) -> str:
    """A tenant's agent as a member of Keys.agents (as the submit scripts write it)."""
    return f"{tenant}:{agent}"


def split_route(member: str) -> tuple[str, str]:
    tenant, _, agent = member.partition(":")
    return tenant, agent


CHECKPOINT_FIELD = "cp"  # a task's checkpoint in its steps' hash (Keys.steps)


class Keys:
    __slots__ = ("prefix",)

    def __init__(self, cluster: str) -> None:
        self.prefix = f"corral:{{{cluster}}}:"

    # -- membership ---------------------------------------------------------------------
    def alive(self, consumer_name: str) -> str:
        """A node incarnation's liveness key: it is alive exactly while this exists (set
        with PX, renewed with XX); its value is the node's beat (JSON)."""
        return f"{self.prefix}alive:{consumer_name}"

    @property
    def nodes(self) -> str:
        """Hash: node -> its last beat (JSON), kept after it dies, for `corral nodes`."""
        return f"{self.prefix}nodes"

    def incarnations(self, node: str) -> str:
        """Counter: a node's incarnations (INCR at each join)."""
        return f"{self.prefix}inc:{node}"

    # -- tasks: queued by route (tenant and agent name: no ':' in either), so that another
    # tenant's agent of the name has streams of its own -------------------------------
    def stream(self, tenant: str, agent: str, priority: int) -> str:
        return f"{self.prefix}q:{tenant}:{agent}:{priority}"

    def claimed(self, tenant: str, agent: str) -> str:
        """Stream: the tasks claimed by a node as it submitted them, pending with their
        claimer (where the reaper looks) and read by no puller."""
        return f"{self.prefix}q:{tenant}:{agent}:{CLAIMED}"

    def priorities(self, tenant: str, agent: str) -> str:
        """Sorted set: the priorities a tenant's agent's streams exist for."""
        return f"{self.prefix}prio:{tenant}:{agent}"

    @property
    def agents(self) -> str:
        """Set: the routes that have task streams (what a reaper looks through)."""
        return f"{self.prefix}agents"

    @property
    def due(self) -> str:
        """Sorted set (scored by the wall time each may start): the queued tasks held out
        of their streams until then (due.py)."""
        return f"{self.prefix}due"

    def task(self, task_id: str) -> str:
        """Hash: a cluster task's record (input, status, outcome, fence, owner)."""
        return f"{self.prefix}task:{task_id}"

    def attempts(self, task_id: str) -> str:
        """List: a cluster task's attempts (JSON each), oldest first."""
        return f"{self.prefix}att:{task_id}"

    def steps(self, task_id: str) -> str:
        """Hash: a running cluster task's steps, deleted at its end."""
        return f"{self.prefix}steps:{task_id}"

    def spawns(self, task_id: str) -> str:
        """Hash: a running cluster task's spawns, each spawn's key -> its child's id
        (signed), deleted at its end."""
        return f"{self.prefix}spawn:{task_id}"

    # -- asks of a person (clusterasks.py) -----------------------------------------------
    def ask(self, ask_id: str) -> str:
        """Hash: an ask of a cluster task: its signed record (`rec`, `mac`) and, once it
        ended, its signed end (`end`, `emac`)."""
        return f"{self.prefix}ask:{ask_id}"

    def task_asks(self, task_id: str) -> str:
        """Hash: a cluster task's asks, each call's key -> its ask's id."""
        return f"{self.prefix}asks:{task_id}"

    def asks_pending(self, tenant: str | None = None) -> str:
        """Sorted set (scored by when asked): the pending asks of every cluster task, or
        of one tenant's tasks (what the bounds count)."""
        return f"{self.prefix}askq" + ("" if tenant is None else f":{tenant}")

    def asks_done(self, tenant: str) -> str:
        """Sorted set (scored by when their task ended, in ms): the asks of a tenant's
        ended tasks, whose records are trimmed to the newest ASKS_KEPT."""
        return f"{self.prefix}askdone:{tenant}"

    @property
    def ask_deadlines(self) -> str:
        """Sorted set (scored by deadline): the pending asks that have one."""
        return f"{self.prefix}askdue"

    @property
    def asks_ended(self) -> str:
        """Pub/sub channel: the id of each ask as it ends."""
        return f"{self.prefix}askend"

    # -- durable calls (a workflow's run, a team's call: clustercalls.py) --------------
    def call(self, call_id: str) -> str:
        """Hash: a durable call's signed record (`rec`), its status, the node incarnation
        whose lease it is under (`holder`) and that lease's fence token."""
        return f"{self.prefix}call:{call_id}"

    def call_steps(self, call_id: str) -> str:
        """Hash: a durable call's step rows (signed, their outputs with them)."""
        return f"{self.prefix}csteps:{call_id}"

    @property
    def calls_running(self) -> str:
        """Sorted set (every score 0: by id, which is by time): the running calls."""
        return f"{self.prefix}crun"

    def calls(self, kind: str) -> str:
        """Sorted set, as `calls_running`: a kind's calls, running or ended."""
        return f"{self.prefix}calls:{kind}"

    # -- sessions, each under its owner (the tenant its agent was of at its submit) -----
    def session(self, key: SessionKey) -> str:
        """Hash: a cluster session (its signed state, its current task, ttl, last use,
        tasks); it expires session_ttl after its last task."""
        return f"{self.prefix}sess:{key.tenant}:{key.agent}:{key.name}"

    def session_line(self, key: SessionKey) -> str:
        """List: the session's tasks waiting for its current one to end, in order."""
        return f"{self.prefix}sline:{key.tenant}:{key.agent}:{key.name}"

    def session_tasks(self, key: SessionKey) -> str:
        """List: the ids of the session's tasks, in the order submitted (its last ones)."""
        return f"{self.prefix}shist:{key.tenant}:{key.agent}:{key.name}"

    def sessions(self, tenant: str, agent: str) -> str:
        """Sorted set: a tenant's agent's live sessions, scored by when each expires (inf
        while a task of it is unfinished): what max_sessions counts."""
        return f"{self.prefix}sessions:{tenant}:{agent}"

    def session_bytes(self, tenant: str, agent: str) -> str:
        """Hash: session -> its state's bytes: what max_session_bytes counts."""
        return f"{self.prefix}sbytes:{tenant}:{agent}"

    def sticky(self, tenant: str, agent: str, consumer_name: str) -> str:
        """List: the turns of sessions given to a node incarnation (`entry task` each),
        which its next read claims first."""
        return f"{self.prefix}stk:{tenant}:{agent}:{consumer_name}"

    @property
    def fence(self) -> str:
        """Counter: fence tokens, one per claim, increasing across the cluster."""
        return f"{self.prefix}fence"

    @property
    def acks(self) -> str:
        """Counter: written before each WAIT that acknowledges a write (replicas.py)."""
        return f"{self.prefix}acks"

    @property
    def live(self) -> str:
        """Sorted set (every score 0: by id, which is by time): the tasks queued or
        running."""
        return f"{self.prefix}live"

    @property
    def done(self) -> str:
        """Sorted set, as `live`: the finished tasks whose records are kept."""
        return f"{self.prefix}done"

    @property
    def listed(self) -> list[str]:
        """The two, as the scripts that end a task take them (KEYS, last)."""
        return [self.live, self.done]

    @property
    def outcomes(self) -> str:
        """Stream: `task_id` of each task as it finishes (capped), and the progress of
        tasks a client waits for."""
        return f"{self.prefix}outcomes"

    # -- cluster agents (placement.py) --------------------------------------------------
    @property
    def cluster_agents(self) -> str:
        """Hash: agent -> its [agents.NAME] table (JSON)."""
        return f"{self.prefix}cagents"

    @property
    def agent_macs(self) -> str:
        """Hash: agent -> the MAC of its table in `cluster_agents`."""
        return f"{self.prefix}cagents:mac"

    @property
    def placement(self) -> str:
        """Hash: agent -> {"epoch": N, "slots": [consumer, ...]} (JSON): which node
        incarnation runs each of its replicas."""
        return f"{self.prefix}place"

    def history(self, agent: str) -> str:
        """List: a cluster agent's revisions (JSON each), oldest first."""
        return f"{self.prefix}hist:{agent}"

    def declared(self, node: str) -> str:
        """Hash: agent -> the table (JSON) the node's config file last declared for a
        cluster agent (declared.py)."""
        return f"{self.prefix}decl:{node}"

    def declared_macs(self, node: str) -> str:
        """Hash: agent -> the MAC of the table in `declared(node)` (trust.py)."""
        return f"{self.prefix}declmac:{node}"

    def state(self, agent: str) -> str:
        """Hash: replica slot -> [time, state] (JSON): a cluster agent's checkpoints,
        written only by the incarnation the slot is placed on."""
        return f"{self.prefix}state:{agent}"

    @property
    def draining(self) -> str:
        """Hash: node -> the incarnation asked to drain (a node restarted since is not
        asked)."""
        return f"{self.prefix}draining"

    @property
    def events(self) -> str:
        """Stream: the events published on every node (capped)."""
        return f"{self.prefix}events"
