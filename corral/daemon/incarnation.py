"""This daemon's incarnation in the state database: what an earlier one that did not shut
down cleanly left running is stopped first (`reclaim`), then every process this one
starts is recorded until it ends (`ProcessRecords`), so that the next one finds them."""

from __future__ import annotations

import os

from ..supervisor.containment import Containment, ProcessEnded, ProcessStarted, read_stat
from ..text import plural
from .logs import LogHub
from .store import StateStore
from .storewriter import StoreWriter


async def reclaim(containment: Containment, store: StateStore, hub: LogHub) -> None:
    """Stop the processes of earlier incarnations that did not shut down cleanly (a
    crash, SIGKILL, the OOM killer, a watchdog kill), found by their records."""
    crashed = []
    for owner, pid, start_time in store.incarnations():
        if pid == os.getpid():  # this process, before an exec (corral upgrade)
            continue
        st = read_stat(pid)
        if st is not None and st.start_time == start_time:
            hub.daemon(f"the state directory is in use by a running daemon (pid "
                       f"{pid}); its processes are left alone")
            continue
        crashed.append(owner)
    if not crashed:
        return
    report = await containment.reclaim(store.process_records(crashed), crashed)
    hub.daemon(
        f"the previous daemon did not shut down cleanly: {report.found} of its processes "
        f"{'was' if report.found == 1 else 'were'} still running ({report.terminated} "
        f"ended by SIGTERM, {report.killed} by SIGKILL), "
        f"{plural(report.cgroups, 'cgroup')} removed")
    store.end_incarnations(crashed)


class ProcessRecords:
    """Keeps the store's records of running processes in step with containment, through
    the store's writer thread (StoreWriter: one transaction per batch, off the loop). The
    incarnation row is committed first, on the loop, before anything is spawned, so even a
    process whose record is not committed yet when the daemon dies is found (by its spawn
    token, process group and session: decision 30)."""

    def __init__(self, store: StateStore, writer: StoreWriter,
                 containment: Containment) -> None:
        self.writer = writer
        self.owner = containment.owner
        me = read_stat(os.getpid())
        store.begin_incarnation(self.owner, os.getpid(), me.start_time if me else 0)
        containment.stream.subscribe(self._on_started, ProcessStarted)
        containment.stream.subscribe(self._on_ended, ProcessEnded)

    def _on_started(self, e: ProcessStarted) -> None:
        self.writer.submit(StateStore.write_processes([e.record], []), "process record")

    def _on_ended(self, e: ProcessEnded) -> None:
        self.writer.submit(StateStore.write_processes([], [e.record.token]), "process record")

    async def close(self) -> None:
        """A clean shutdown: every process is gone, so is this incarnation."""
        self.writer.submit(StateStore.ending_incarnations([self.owner]), "process record")
        await self.writer.committed()
