"""`corral approvals`: the pending asks (approvals, questions) the caller may decide;
`show ID`, and `approve ID [--args JSON]`, `deny ID [--reason TEXT]`, `answer ID --data
JSON`, each a decision of one ask (approvals.resolve; docs/approvals.md)."""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec

from .. import methods as m
from ..askviews import Ask, what_it_asks
from ..text import one_line, plural
from .app import Ctx, cli, command, doc, json_option, pass_ctx, shows
from .render import dumps, json_value, stamp, table


@shows(m.ApprovalsList, group=True)
def approvals(res: m.AskList) -> None:
    # an agent's words (a prompt, arguments) one line each: a newline in them never
    # draws a row of its own, nor does a control character act on the terminal
    table([[a.id, a.kind, one_line(a.task_id), one_line(a.agent), a.tenant or "-",
            stamp(a.created), stamp(a.deadline) if a.deadline is not None else "-",
            one_line(what_it_asks(a))]
           for a in res.asks],
          ["ASK", "KIND", "TASK", "AGENT", "TENANT", "CREATED", "DEADLINE", "ASKS"])


@shows(m.ApprovalsGet)
@click.argument("id", metavar="ASK_ID")
def _shown(ask: Ask) -> None:
    click.echo(one_line(f"ask {ask.id}: {ask.kind} of task {ask.task_id} ({ask.agent}): "
                        f"{what_it_asks(ask)}"))
    pin = ask.subject.get("pin")
    if isinstance(pin, dict) and isinstance(pin.get("diff"), str):
        # what changed, line by line, as the person is to judge it (the server's words
        # made visible, never acting on the terminal)
        for line in pin["diff"].splitlines():
            click.echo(one_line(line))
    if ask.end is None:
        click.echo("pending" + (f" until {stamp(ask.deadline)}" if ask.deadline else ""))
        return
    said = f"{ask.end} by {ask.by} at {stamp(ask.ended or 0)}"
    click.echo(one_line(said + (f": {dumps(ask.data)}" if ask.data is not None else "")))


group = cli.commands["approvals"]
assert isinstance(group, click.Group)  # (for the type of its commands below)


@group.command("approve", help=doc(m.ApprovalsResolve),
               short_help="Approve a held call: it runs (with --args, with those).")
@click.argument("ask_id")
@click.option("--args", "arguments", metavar="JSON",
              help="The arguments the call runs with, in place of those it asked with.")
@json_option
@pass_ctx
def approvals_approve(obj: Ctx, ask_id: str, arguments: str | None, as_json: bool) -> None:
    edited = json_value(arguments, "--args") if arguments is not None else None
    if edited is not None and not isinstance(edited, dict):
        raise click.UsageError("--args: the arguments are a JSON object")
    _shown(obj.call_json(m.ApprovalsResolve(id=ask_id, decision="approved", arguments=edited),
                         as_json))


@group.command("deny", help=doc(m.ApprovalsResolve),
               short_help="Deny an ask: its call refused, or its question declined.")
@click.argument("ask_id")
@click.option("--reason", help="Why: the agent is told it with the tool's error.")
@json_option
@pass_ctx
def approvals_deny(obj: Ctx, ask_id: str, reason: str | None, as_json: bool) -> None:
    _shown(obj.call_json(m.ApprovalsResolve(id=ask_id, decision="denied", reason=reason), as_json))


@group.command("answer", help=doc(m.ApprovalsResolve),
               short_help="Answer a question with JSON valid by its schema.")
@click.argument("ask_id")
@click.option("--data", "data", metavar="JSON", required=True,
              help="The answer, valid by the question's schema.")
@json_option
@pass_ctx
def approvals_answer(obj: Ctx, ask_id: str, data: str, as_json: bool) -> None:
    _shown(obj.call_json(m.ApprovalsResolve(id=ask_id, decision="answered",
                                            answer=json_value(data, "--data")), as_json))


@command(m.ApprovalsWatch, more="\n\nOne line each: the ask, then `pending` or how it "
         "ended; with --json, each ask as a JSON object.")
@json_option
def approvals_watch(obj: Ctx, as_json: bool) -> None:
    def on_note(method: str, params: Any) -> None:
        if method == "approvals.ask":
            ask = msgspec.convert(params, Ask)
            click.echo(dumps(params) if as_json else one_line(
                       f"{ask.id} {ask.kind} of task {ask.task_id} ({ask.agent}): "
                       f"{what_it_asks(ask)}: "
                       + ("pending" if ask.end is None else f"{ask.end} by {ask.by}")))
        elif method == "approvals.missed":
            click.echo(f"corral: missed {plural(params['count'], 'ask')}", err=True)
        sys.stdout.flush()

    obj.call(m.ApprovalsWatch(), on_notification=on_note)
