"""The schedule methods' handlers: a limited caller sees, pauses and resumes only the
schedules whose agents it all sees (visibility.py, records.py)."""

from __future__ import annotations

from operator import attrgetter

from .. import methods as m
from .api import Commands
from .caller import Caller, Channel
from .schedules import ScheduleService
from .services import Services

COMMANDS: Commands[Services, ScheduleService] = Commands(attrgetter("schedules"))
implements = COMMANDS.implements


@implements(m.SchedulesList)
async def schedules_list(s: ScheduleService, p: m.SchedulesList, caller: Caller, c: Channel
                         ) -> m.ScheduleList:
    return m.ScheduleList(schedules=s.entries())


@implements(m.SchedulesPause)
@implements(m.SchedulesResume)
async def schedules_pause(s: ScheduleService, p: m.SchedulesPause | m.SchedulesResume,
                          caller: Caller, c: Channel) -> m.ScheduleEntry:
    return s.entry(await s.pause(p.name, isinstance(p, m.SchedulesPause)))

