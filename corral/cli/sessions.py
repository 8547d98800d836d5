"""`corral sessions`: the live sessions (of an agent), one session's history of tasks
(`show`), and the end of one (`end`)."""

from __future__ import annotations

import time

import click

from .. import methods as m
from .app import Ctx, command, doc, json_option
from .render import human_bytes, human_time, stamp, table

USAGE = "[AGENT] | show AGENT SESSION | end AGENT SESSION"


def _ago(t: float) -> str:
    return f"{human_time(max(0.0, time.time() - t))} ago"


def _state(n: int) -> str:
    return human_bytes(n) if n else "-"


def _now(s: m.SessionView) -> str:
    if s.running is None:
        return "idle"
    return f"{s.running}" + (f" (+{s.waiting} waiting)" if s.waiting else "")


@command(m.SessionsList, more="\n\n`corral sessions show AGENT SESSION`: "
         + doc(m.SessionsGet) + "\n\n`corral sessions end AGENT SESSION`: "
         + doc(m.SessionsEnd))
@click.argument("words", nargs=-1, metavar=USAGE)
@json_option
def sessions(obj: Ctx, words: tuple[str, ...], as_json: bool) -> None:
    if words and words[0] in ("show", "end"):
        if len(words) != 3:
            raise click.UsageError(f"usage: corral sessions {words[0]} AGENT SESSION")
        agent, session = words[1], words[2]
        if words[0] == "end":
            ended: m.SessionView = obj.call_json(
                m.SessionsEnd(agent=agent, session=session), as_json)
            click.echo(f"session {ended.session} of {ended.agent} ended: its state "
                       f"({_state(ended.state_bytes)}) and the history of its "
                       f"{ended.tasks} tasks dropped")
            return
        info: m.SessionInfo = obj.call_json(m.SessionsGet(agent=agent, session=session), as_json)
        s = info.session
        click.echo(f"session {s.session} of {s.agent}: {s.tasks} tasks, state "
                   f"{_state(s.state_bytes)}, held by {s.holder or '-'}, last used "
                   f"{_ago(s.last_used)}, now {_now(s)}"
                   + (f", expires {stamp(s.expires)}" if s.expires is not None else ""))
        table([[t.task_id, t.status or "(pruned)", stamp(t.created) if t.created else "-"]
               for t in info.history], ["TASK", "STATUS", "CREATED"])
        return
    if len(words) > 1:
        raise click.UsageError(f"usage: corral sessions {USAGE}")
    res: m.SessionList = obj.call_json(m.SessionsList(agent=words[0] if words else None), as_json)
    # whose each is (the tenant its agent was of when it began)
    table([[s.tenant, s.agent, s.session, str(s.tasks), _ago(s.last_used), s.holder or "-",
            _state(s.state_bytes), _now(s)] for s in res.sessions],
          ["TENANT", "AGENT", "SESSION", "TASKS", "LAST USE", "HOLDER", "STATE", "NOW"])
