"""What grows with use besides tasks, bounded (docs/operations.md#retention): an agent's
spec revisions past `keep_revisions` or `keep_revisions_mb`, and what a removed agent left
once `removed_retention` has passed. A removed agent's records go only if it is still no
agent of that tenant then. One timer waits for the earliest removal due, not one each: the
sweep it brings finds the next due in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..supervisor.tasks.sessions import SessionsEnding
from ..timeouts import kept
from .logs import log_file_name
from .revisions import RevisionBound, kept_of, prune
from .sqlwrites import Write, each
from .tenantdirs import TENANTS

if TYPE_CHECKING:
    from ..supervisor.agents import Agents
    from ..supervisor.config import SupervisorSettings
    from ..supervisor.stream import Stream
    from .logs import LogHub
    from .store import StateStore

SWEEP_EVERY = 600.0
# the first sweep after start-up (the agents are back: the fleet added them, an upgrade's
# image too before it adopts their processes); a second after, not to add to the start
FIRST_SWEEP = 1.0
# past a removal's due: libuv counts whole milliseconds, and a timer a little early would
# find nothing due and wait again for what is due at once
DUE_SLACK = 0.01


class RetentionBounds(NamedTuple):
    revisions: RevisionBound  # of each agent
    removed_after: float  # seconds a removed agent's records are kept


def sweep(db: sqlite3.Connection, bounds: RetentionBounds, live: set[tuple[str, str]],
          now: float, out: list[tuple[str, str]]) -> None:
    """One sweep, in the writer's transaction: the revisions past their bounds (a bound
    lowered since included) and the removed agents' records past their retention deleted;
    (agent, tenant) of those put in `out`."""
    out.clear()  # (a batch tried again runs its writes again)
    prune(db, bounds.revisions)
    kept = set(db.execute("SELECT DISTINCT agent, tenant FROM revisions"))
    marked = dict(((a, t), when) for a, t, when in db.execute(
        "SELECT agent, tenant, removed FROM removed_agents"))
    back = [k for k in marked if k in live]
    db.executemany("DELETE FROM removed_agents WHERE agent = ? AND tenant = ?", back)
    gone = [k for k in kept - live if k not in marked]
    db.executemany("INSERT INTO removed_agents (agent, tenant, removed) VALUES (?, ?, ?)",
                   [(a, t, now) for a, t in gone])
    due = [k for k, when in marked.items() if k not in live and when + bounds.removed_after
           <= now]
    for table, agent in (("revisions", "agent"), ("agent_state", "name"),
                         ("scaled", "agent"), ("removed_agents", "agent")):
        db.executemany(f"DELETE FROM {table} WHERE {agent} = ? AND tenant = ?", due)
    out.extend(due)


def removing(agents: dict[str, str], when: float) -> Write:
    """The write of agents' removal (name -> its tenant) heard at `when`."""
    return each("INSERT OR REPLACE INTO removed_agents (agent, tenant, removed) "
                "VALUES (?, ?, ?)", ((a, t, when) for a, t in agents.items()))


def log_files(log_dir: Path, agent: str, tenant: str) -> list[Path]:
    """The log files of an agent of this name and tenant in their places (LOG_DIR, its
    tenant's directory), its rotated copies too: NAME.log, NAME.log.N, NAME.log.N.gz."""
    copies = re.compile(re.escape(log_file_name(agent)) + r"(\.\d+(\.gz)?)?")
    found: list[Path] = []
    for place in (log_dir, log_dir / TENANTS / tenant):
        with contextlib.suppress(OSError):
            found += [p for p in place.iterdir() if copies.fullmatch(p.name) and p.is_file()]
    return found


class RetentionSweeps:

    def __init__(self, agents: Agents, store: StateStore, hub: LogHub,
                 bounds: RetentionBounds, stream: Stream) -> None:
        self.agents = agents
        self.store = store
        self.hub = hub
        self.bounds = bounds
        self._sweep: asyncio.TimerHandle | None = None  # the next periodic one
        # the one timer for the earliest removal due (wall time), and when it is due
        self._removal: tuple[asyncio.TimerHandle, float] | None = None
        self._deleting: set[asyncio.Task[None]] = set()
        stream.subscribe(self._removed, SessionsEnding)

    def start(self, seconds: float = FIRST_SWEEP) -> None:
        """A sweep in `seconds`, and then every SWEEP_EVERY."""
        def due() -> None:
            self.start(SWEEP_EVERY)
            self.run()

        self._sweep = asyncio.get_running_loop().call_later(seconds, due)

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        if self._removal is not None:
            self._removal[0].cancel()
            self._removal = None
        for job in list(self._deleting):
            with contextlib.suppress(Exception):
                await job

    def _removed(self, e: SessionsEnding) -> None:
        writer = self.store.writer
        if writer is None or not e.owners:
            return
        now = time.time()
        writer.submit(removing(dict(e.owners), now), "removed agent")
        self._removal_due(now + self.bounds.removed_after)

    def _removal_due(self, when: float) -> None:
        """A sweep at `when` (wall time), unless one waits for an earlier removal: its
        sweep finds this one next."""
        if self._removal is not None:
            if self._removal[1] <= when:
                return
            self._removal[0].cancel()

        def due() -> None:
            self._removal = None
            self.run(chained=True)

        delay = max(0.0, when - time.time()) + DUE_SLACK
        self._removal = (asyncio.get_running_loop().call_later(delay, due), when)

    def run(self, chained: bool = False) -> None:
        """A sweep: submitted to the writer; the log files of the removed agents whose
        records it deleted are deleted once it is committed. `chained`: the sweep of a
        removal due, which then waits for the next removal the store holds."""
        writer = self.store.writer
        if writer is None:
            return
        live = {(a.name, a.spec.tenant) for a in self.agents.values()}
        out: list[tuple[str, str]] = []
        after: list[float] = []  # the removal the store holds next, when chained
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            sweep(db, self.bounds, live, now, out)
            if chained:
                after[:] = [when for (when,) in db.execute(
                    "SELECT min(removed) FROM removed_agents") if when is not None]

        writer.submit(write, "retention sweep", lambda: self._swept(out, after))

    def _swept(self, due: list[tuple[str, str]], after: list[float]) -> None:
        if after:
            self._removal_due(after[0] + self.bounds.removed_after)
        log_dir = self.hub.log_dir
        for agent, tenant in due:
            self.hub.daemon(f"{agent} (tenant {tenant}): removed over "
                            f"{self.bounds.removed_after:g} s ago; its revisions and log "
                            "files deleted")
        # a name an agent (any tenant's) or a server writes to again keeps its files
        names = [(a, t) for a, t in due if a not in self.agents and a not in self.hub.files]
        if log_dir is None or not names:
            return
        kept(self._deleting, asyncio.get_running_loop().create_task(
            asyncio.to_thread(_delete, log_dir, names)))


def _delete(log_dir: Path, names: list[tuple[str, str]]) -> None:
    for agent, tenant in names:
        for p in log_files(log_dir, agent, tenant):
            with contextlib.suppress(OSError):  # (one that cannot go stays, as it was)
                p.unlink()


@contextlib.asynccontextmanager
async def retaining(agents: Agents, store: StateStore, hub: LogHub,
                    sc: SupervisorSettings, stream: Stream) -> AsyncIterator[RetentionSweeps]:
    """The sweeps, from once the agents are added until the daemon stops."""
    retention = RetentionSweeps(agents, store, hub,
                                RetentionBounds(kept_of(sc), sc.removed_retention), stream)
    retention.start()
    try:
        yield retention
    finally:
        await retention.close()
