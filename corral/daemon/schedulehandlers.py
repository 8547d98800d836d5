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
    live = d.schedules.get(name)
    if caller.limited and not all(caller.sees(a) for a in d.schedules.entry(live).agents):
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
