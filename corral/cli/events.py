"""The event bus: publish an event, follow the events."""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import methods as m
from ..text import iso_time, plural
from .app import Ctx, cli, command, json_option
from .render import dumps, json_value


@cli.group()
def events() -> None:
    """Publish events and watch the event bus."""


@command(m.EventsPublish)
@click.argument("topic")
@click.argument("data", required=False, default="null")
@click.option("--tenant", default=None, help="Only this tenant's workers and followers.")
def events_publish(obj: Ctx, topic: str, data: str, tenant: str | None) -> None:
    res: m.PublishResult = obj.call(m.EventsPublish(topic=topic, data=json_value(data, "DATA"),
                                                    tenant=tenant))
    click.echo(f"delivered to {plural(res.delivered, 'subscriber')}")


@command(m.EventsFollow, more="\n\nOne line each: the time (ISO 8601, "
                "UTC, as in `corral logs`), the topic, who published it and the data as JSON; "
                "with --json, each event as a JSON object (its time in seconds since the "
                "epoch, as every --json prints times).")
@click.argument("pattern", default="*")
@click.option("--tenant", default=None, help="Only this tenant's events (and every "
              "tenant's).")
@json_option
def events_tail(obj: Ctx, pattern: str, tenant: str | None, as_json: bool) -> None:
    def on_note(method: str, params: Any) -> None:
        if method == "events.event":
            click.echo(dumps(params) if as_json else
                       f"{iso_time(params['time'], ms=True)} {params['topic']} from "
                       f"{params['source']}: {dumps(params['data'])}")
        elif method == "events.missed":
            click.echo(f"corral: missed {plural(params['count'], 'event')}", err=True)
        sys.stdout.flush()

    obj.call(m.EventsFollow(pattern=pattern, tenant=tenant), on_notification=on_note)
