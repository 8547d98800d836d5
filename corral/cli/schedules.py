"""`corral schedules`: the schedules with their clocks, last and next fires; pause and
resume one (docs/workflows.md#schedules)."""

from __future__ import annotations

import click

from .. import methods as m
from .app import shows
from .render import stamp, table


@shows(m.SchedulesList, group=True)
def schedules(res: m.ScheduleList) -> None:
    table([[s.name, f"agent {s.agent}" if s.agent else f"workflow {s.workflow}",
            f"every {s.every}" if s.every else f"cron {s.cron}", s.missed,
            "paused" if s.paused else "running", str(s.fires),
            stamp(s.last_fire), stamp(s.next_fire) if s.next_fire is not None else "-",
            s.last_started or "-"] for s in res.schedules],
          ["NAME", "STARTS", "WHEN", "MISSED", "STATE", "FIRES", "LAST", "NEXT",
           "LAST STARTED"])


def _verb(declared: type[m.SchedulesPause | m.SchedulesResume]) -> None:
    @shows(declared)
    @click.argument("name")
    def verb(s: m.ScheduleEntry) -> None:
        state = "paused" if s.paused else f"running; next fire {stamp(s.next_fire)}" if \
            s.next_fire is not None else "running"
        click.echo(f"schedule {s.name}: {state}")


for _declared in (m.SchedulesPause, m.SchedulesResume):
    _verb(_declared)
