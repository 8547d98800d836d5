"""The schedule methods' handlers (corral/methods.py), put in the daemon's table by
commands.py: a limited caller sees, pauses and resumes only the schedules whose agents it
all sees (visibility.py filters the listing)."""

from __future__ import annotations

from .. import jsonrpc
from .. import methods as m
from .caller import Caller, Channel
from .services import Handler, Services


async def schedules_list(d: Services, p: m.SchedulesList, caller: Caller, c: Channel
                         ) -> m.ScheduleList:
    return m.ScheduleList(schedules=d.schedules.entries())


async def _pause(d: Services, name: str, caller: Caller, paused: bool) -> m.ScheduleEntry:
    entry = d.schedules.entry(d.schedules.get(name))
    # whose it is, is whose its agents were in the file, not who holds their names now
    if caller.limited and not (entry.agents and all(
            caller.sees_record(a, entry.tenant) for a in entry.agents)):
        raise jsonrpc.not_found("schedule", name)
    return d.schedules.entry(await d.schedules.pause(name, paused))


async def schedules_pause(d: Services, p: m.SchedulesPause, caller: Caller, c: Channel
                          ) -> m.ScheduleEntry:
    return await _pause(d, p.name, caller, True)


async def schedules_resume(d: Services, p: m.SchedulesResume, caller: Caller, c: Channel
                           ) -> m.ScheduleEntry:
    return await _pause(d, p.name, caller, False)


TABLE: dict[str, Handler] = {
    "schedules.list": schedules_list,
    "schedules.pause": schedules_pause,
    "schedules.resume": schedules_resume,
}
