"""The schedule methods' handlers (corral/methods.py), put in the daemon's table by
commands.py: a limited caller sees, pauses and resumes only the schedules whose agents it
all sees (visibility.py filters the listing)."""

from __future__ import annotations

from .. import jsonrpc
from .. import methods as m
from .api import Commands, whole
from .caller import Caller, Channel
from .services import Services

COMMANDS: Commands[Services, Services] = Commands(whole)
implements = COMMANDS.implements


@implements(m.SchedulesList)
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


@implements(m.SchedulesPause)
async def schedules_pause(d: Services, p: m.SchedulesPause, caller: Caller, c: Channel
                          ) -> m.ScheduleEntry:
    return await _pause(d, p.name, caller, True)


@implements(m.SchedulesResume)
async def schedules_resume(d: Services, p: m.SchedulesResume, caller: Caller, c: Channel
                           ) -> m.ScheduleEntry:
    return await _pause(d, p.name, caller, False)

