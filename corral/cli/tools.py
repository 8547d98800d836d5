"""What the MCP servers offer: tools (list, describe, call), resources and prompts."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import click

from .. import methods as m
from ..text import did_you_mean
from .app import Ctx, cli, command, command_group, complete_agents, json_option, pass_ctx
from .client import EXIT_FAILED
from .render import dumps, json_value, print_json, table


@command_group(m.ToolsList)
@click.option("--agent", default=None, shell_complete=complete_agents)
@json_option
def tools(obj: Ctx, agent: str | None, as_json: bool) -> None:
    res: m.ToolList = obj.call(m.ToolsList(agent=agent))
    allow = res.allow if isinstance(res.allow, list) else []
    empty = None if agent is None else (
        f"no tools match agent {agent}'s allowlist: {', '.join(allow)}" if allow
        else f"no tools: agent {agent} has an empty allowlist (its `tools` key)")
    _show_listing(res, as_json, ["TOOL", "ARGUMENTS", "DESCRIPTION"],
                  [[t["name"], ", ".join(f"{name}{'' if required else '?'}"
                                         + (f": {kind}" if kind else "")
                                         for name, kind, required, _ in _arguments(t)),
                    _first_line(t.get("description"))] for t in res.tools],
                  empty=empty)


@command(m.ToolsPins)
@json_option
def tools_pins(obj: Ctx, as_json: bool) -> None:
    res: m.ToolPins = obj.call(m.ToolsPins())
    if as_json:
        print_json(res.pins)
        return
    table([[f"{p['server']}__{p['tool']}", p["digest"][:12],
            f"changed to {p['drifted'][:12]}: waits for approval" if p.get("drifted")
            else "pinned"] for p in res.pins], ["TOOL", "DIGEST", "STATE"])


@tools.command("describe")
@click.argument("name", metavar="SERVER__TOOL")
@json_option
@pass_ctx
def tools_describe(obj: Ctx, name: str, as_json: bool) -> None:
    """One tool: its whole description and each argument (from its input schema): type,
    whether it is required, what it is for."""
    server = name.split("__", 1)[0] if "__" in name else None
    if server is None:
        raise click.BadParameter("tools are named SERVER__TOOL", param_hint="SERVER__TOOL")
    res: m.ToolList = obj.call(m.ToolsList(server=server))
    tool = next((t for t in res.tools if t["name"] == name), None)
    if tool is None:
        for why in res.unavailable.values():
            click.echo(f"corral: MCP server {server} is not serving: {why}", err=True)
        if not res.unavailable:
            click.echo(f"corral: no such tool: {name}"
                       + did_you_mean(name, [t["name"] for t in res.tools]), err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        print_json(tool)
        return
    click.echo(f"{name} (MCP server {tool.get('server', server)})")
    description = tool.get("description")
    if isinstance(description, str) and description.strip():
        click.echo(inspect.cleandoc(description))
    rows = [[arg, kind or "-", "yes" if required else "no", about]
            for arg, kind, required, about in _arguments(tool)]
    click.echo()
    if rows:
        table(rows, ["ARGUMENT", "TYPE", "REQUIRED", "DESCRIPTION"])
    else:
        click.echo("no arguments")


def _arguments(tool: dict[str, Any]) -> list[tuple[str, str, bool, str]]:
    """A tool's arguments from its input schema (a JSON Schema object): name, type,
    required, and what the schema says of it (description, default, allowed values)."""
    schema = tool.get("inputSchema")
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return []
    required = schema.get("required") if isinstance(schema, dict) else None
    needed = set(required) if isinstance(required, list) else set()
    out = []
    for arg, prop in props.items():
        prop = prop if isinstance(prop, dict) else {}
        text = prop.get("description")
        about = [" ".join(text.split())] if isinstance(text, str) and text.strip() else []
        if "default" in prop:
            about.append(f"default: {dumps(prop['default'])}")
        if isinstance(prop.get("enum"), list):
            about.append("one of: " + ", ".join(dumps(v) for v in prop["enum"]))
        out.append((str(arg), _schema_type(prop), arg in needed, "; ".join(about)))
    return out


def _schema_type(prop: dict[str, Any]) -> str:
    """A JSON Schema's type as a person reads it: string, integer|null, string[]."""
    kind = prop.get("type")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if kind == "array" and isinstance(prop.get("items"), dict):
        inner = _schema_type(prop["items"])
        return f"{inner}[]" if inner and "|" not in inner else "array"
    if isinstance(kind, str):
        return kind
    for key in ("anyOf", "oneOf"):
        if isinstance(prop.get(key), list):
            kinds = [_schema_type(p) for p in prop[key] if isinstance(p, dict)]
            return "|".join(k for k in kinds if k)
    return ""


def _first_line(text: Any) -> str:
    return text.strip().splitlines()[0][:70] if isinstance(text, str) and text.strip() else ""


def _show_listing(res: m.ToolList | m.ResourceList | m.PromptList, as_json: bool,
                  headers: list[str],
                  rows: list[list[str]], empty: str | None = None) -> None:
    """A listing of the MCP servers' (tools, resources, prompts): as JSON or a table (or
    `empty` when there are no rows); then the servers that could not answer, named on
    stderr, and exit 1 when one of them has failed."""
    if as_json:
        print_json(res)
    elif not rows and empty is not None:
        click.echo(empty)
    else:
        table(rows, headers)
    for name, reason in sorted(res.unavailable.items()):
        click.echo(f"corral: MCP server {name} is not serving: {reason}", err=True)
    if res.failed:
        sys.exit(EXIT_FAILED)


def _print_content(items: list[dict[str, Any]]) -> None:
    for item in items:
        if isinstance(item.get("text"), str):
            click.echo(item["text"])
        elif isinstance(item.get("content"), dict):  # a prompt message
            click.echo(f"[{item.get('role', '')}] ", nl=False)
            _print_content([item["content"]])
        else:
            click.echo(dumps(item))


@cli.command("resources", context_settings={"ignore_unknown_options": False})
@click.argument("words", nargs=-1, metavar="[SERVER] | [SERVER] read URI")
@click.option("--agent", default=None, shell_complete=complete_agents,
              help="List what this agent's allowlist admits.")
@json_option
@pass_ctx
def resources(obj: Ctx, words: tuple[str, ...], agent: str | None, as_json: bool) -> None:
    """The MCP servers' resources and templates, or of one SERVER; `read URI` reads one."""
    server, rest = _split_words(words, "read")
    if rest:
        if len(rest) != 1:
            raise click.UsageError("usage: corral resources [SERVER] read URI")
        res = obj.call_json(m.ResourcesRead(uri=rest[0], server=server), as_json)
        _print_content(res.get("contents") or [])
        return
    listed: m.ResourceList = obj.call(m.ResourcesList(server=server, agent=agent))
    rows = [[r["server"], r.get("uri", ""), r.get("name", ""), r.get("mimeType", "")]
            for r in listed.resources]
    rows += [[t["server"], t.get("uriTemplate", ""), t.get("name", ""), "(template)"]
             for t in listed.resource_templates]
    _show_listing(listed, as_json, ["SERVER", "URI", "NAME", "TYPE"], rows)


def _split_words(words: tuple[str, ...], verb: str) -> tuple[str | None, list[str] | None]:
    """[SERVER] or [SERVER] VERB ARGS...: (server, args after the verb or None)."""
    if verb in words:
        i = words.index(verb)
        if i > 1:
            raise click.UsageError(f"one SERVER at most before {verb}")
        return (words[0] if i == 1 else None), list(words[i + 1:])
    if len(words) > 1:
        raise click.UsageError(f"one SERVER at most (or {verb} ...)")
    return (words[0] if words else None), None


@cli.command("prompts")
@click.argument("words", nargs=-1, metavar="[SERVER] | get SERVER__PROMPT")
@click.option("--args", "args", default="{}", metavar="JSON",
              help="The prompt's arguments, a JSON object of strings.")
@click.option("--agent", default=None, shell_complete=complete_agents,
              help="List what this agent's allowlist admits.")
@json_option
@pass_ctx
def prompts(obj: Ctx, words: tuple[str, ...], args: str, agent: str | None,
            as_json: bool) -> None:
    """The MCP servers' prompts (SERVER__PROMPT), or of one SERVER; `get NAME` gets one."""
    server, rest = _split_words(words, "get")
    if rest is not None:
        if len(rest) != 1:
            raise click.UsageError("usage: corral prompts get SERVER__PROMPT [--args JSON]")
        arguments = _json_object(args, "--args")
        name = rest[0] if server is None or "__" in rest[0] else f"{server}__{rest[0]}"
        res = obj.call_json(m.PromptsGet(name=name, arguments=arguments), as_json)
        _print_content(res.get("messages") or [])
        return
    listed: m.PromptList = obj.call(m.PromptsList(server=server, agent=agent))
    rows = [[p["name"], ", ".join(a.get("name", "") + ("" if a.get("required") else "?")
                                  for a in p.get("arguments") or []),
             _first_line(p.get("description"))] for p in listed.prompts]
    _show_listing(listed, as_json, ["PROMPT", "ARGUMENTS", "DESCRIPTION"], rows)


def _json_object(text: str, hint: str) -> dict[str, Any]:
    value = json_value(text, hint)
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=hint)
    return value


@command(m.ToolsCall)
@click.argument("name")
@click.option("--args", "args", default="{}", metavar="JSON",
              help="The arguments, a JSON object.")
@json_option
def tools_call(obj: Ctx, name: str, args: str, as_json: bool) -> None:
    def on_note(method: str, params: Any) -> None:
        if method == "tools.progress" and params.get("message"):
            click.echo(f"corral: {name}: {params['message']}", err=True)

    # the daemon bounds the call (its server's `timeout`), not a person's decision (told):
    # Ctrl-C withdraws its ask
    res = obj.call(m.ToolsCall(name=name, arguments=_json_object(args, "--args")),
                   on_notification=on_note, wait_forever=True, cancelled=True)
    if as_json:
        print_json(res)
    else:
        for item in res.get("content") or []:
            click.echo(item.get("text") if item.get("type") == "text" else dumps(item))
    if res.get("isError"):
        sys.exit(EXIT_FAILED)
