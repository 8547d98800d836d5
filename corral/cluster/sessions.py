"""Sessions on a cluster (docs/durable.md#sessions-on-a-cluster, decisions 339-343): a
cluster task may name a session; Redis keeps its turns in order (sessionscripts.py: the
one task of it in the agent's stream, the later ones in its line, each end moving the
next one in), so they run one at a time in submission order on whichever nodes take
them, and each is given the session's state as the last turn checkpointed it.

The state is a field of the session's hash, written by the CHECKPOINT script under the
claim's fence (a node whose turn was taken over cannot write over its successor's),
carrying a MAC made with the cluster key (trust.SESSION, over the agent, the session and
the state): one that does not verify is refused as every forged record is (said,
counted), and the turn starts without a state. The CLAIM of a turn reads it
(sessionscripts.claimed); this node's engine gives it to the worker (`task/run`'s
`session_state`) through `supervisor.tasks.sessions.Sessions.elsewhere`.

Not built: stickiness (a turn runs on whichever node has room, not preferably on the one
that ran the last), and `corral sessions` of the cluster's sessions.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.exceptions import RedisError

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.tasks import Task
from ..supervisor.tasks.host import TaskHost
from ..text import plural
from . import sessionscripts
from .keys import Keys
from .queue import ClusterTask
from .scripts import Scripts, submit_script
from .trust import SESSION, Trust

SUBMIT = submit_script(sessionscripts.SUBMIT_FIRST, sessionscripts.ENTRY,
                       sessionscripts.SUBMIT_THEN)


class ClusterSessions:
    """The cluster's side of sessions: the submit of a turn, its state at its start, its
    checkpoints."""

    def __init__(self, redis: Any, scripts: Scripts, keys: Keys, trust: Trust,
                 host: TaskHost) -> None:
        self.scripts = scripts
        self.keys = keys
        self.trust = trust
        self.host = host
        self.submit = redis.register_script(SUBMIT)
        self.checkpoint_script = redis.register_script(sessionscripts.CHECKPOINT)
        self.refused = 0  # turns and checkpoints refused for a bound

    # -- submit ----------------------------------------------------------------------------
    def submit_args(self, agent: str, session: str) -> list[Any]:
        """What SUBMIT takes after the plain submit's arguments: the session and the
        bounds of its agent as this node knows them (none, when it does not run it)."""
        local = self.host.agents.get(agent)
        if local is None:
            return [session, 0, 0]
        spec = local.spec
        return [session, spec.session_ttl, spec.max_sessions]

    def refusal(self, agent: str, got: Any) -> RpcError | None:
        if got != -2:
            return None
        self.refused += 1
        local = self.host.agents.get(agent)
        most = local.spec.max_sessions if local is not None else 0
        return RpcError(jsonrpc.REFUSED, f"sessions full: agent {agent} has "
                                         f"{plural(most, 'live session')} in cluster "
                                         f"(max_sessions {most}); wait for one to expire "
                                         "(session_ttl)")

    # -- Sessions.elsewhere ------------------------------------------------------------------
    def started(self, task: Task) -> msgspec.Raw | None:
        """The state the CLAIM of this turn read, if its MAC verifies."""
        if not isinstance(task, ClusterTask) or task.session_kept is None:
            return None
        assert task.session is not None
        mac, _, body = task.session_kept.partition(b" ")
        if not self.trust.valid(mac, SESSION, task.agent, task.session, body):
            self.trust.refuse(SESSION, f"{task.session} of agent {task.agent}", mac,
                              "the turn starts without it")
            return None
        return msgspec.Raw(body)

    async def checkpoint(self, task: Task, state: Any) -> dict[str, Any]:
        """session/checkpoint of a turn this node claimed: kept in Redis under the
        claim's fence before it is answered."""
        if not isinstance(task, ClusterTask) or task.session is None:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"session/checkpoint: task {task.id} "
                                                   "has no session")
        body = msgspec.json.encode(state)
        mac = self.trust.sign(SESSION, task.agent, task.session, body)
        local = self.host.agents.get(task.agent)
        most = local.spec.max_session_bytes if local is not None else 0
        try:
            got = await self.checkpoint_script(keys=[self.keys.task(task.id)],
                                               args=[task.token, mac.encode() + b" " + body,
                                                     len(body), most])
        except (RedisError, OSError) as exc:
            raise RpcError(jsonrpc.UNAVAILABLE, f"session/checkpoint: not kept: the "
                                                f"cluster's Redis did not take it ({exc})"
                           ) from None
        if got == 1:
            task.session_kept = mac.encode() + b" " + body
            return {}
        if got == 0:
            raise RpcError(jsonrpc.CONFLICT, f"session/checkpoint: task {task.id} is no "
                                             f"longer this node's claim (fence {task.token})")
        self.refused += 1
        raise RpcError(jsonrpc.REFUSED, f"session/checkpoint: session state too large: "
                                        f"agent {task.agent}'s live sessions would hold "
                                        f"{plural(int(got[1]), 'byte')} of state "
                                        f"(max_session_bytes {most}); the session keeps its "
                                        "last state")
