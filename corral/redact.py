"""What of a spec may leave the daemon: the one rule applied wherever an agent's or an MCP
server's table, or a call's params that carry one, is shown, logged or written for people
to read (docs/security.md says the rule). The stores keep the real values: a rollback, a
restart and a node placing an agent need them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from .methods import AgentsAdd, AgentsUpdate, ApprovalsResolve, McpAdd, RunsSignal, WorkflowsRun

MASK = "***"  # what a hidden value reads as

# tables whose every value is hidden (their keys are shown)
VALUES_HIDDEN = frozenset({"env", "headers"})
# single keys whose value is hidden
KEYS_HIDDEN = frozenset({"oauth_client_secret"})
# tables whose keys a revision's change names without their values
NAMED_ONLY = frozenset({"env", "config", "headers"})

# a config key holding one of these, in any case, is a secret's: api_key, apiKey,
# DB_PASSWORD, auth, bearer_token, client_secret, private_key, session_cookie, dsn ...
# Meant to hide too much rather than too little (`monkey` is hidden as well) ...
SECRET_NAME = re.compile(
    r"token|secret|passw|passphrase|pwd|key|auth|credential|cookie|session|signature|"
    r"private|dsn|salt", re.IGNORECASE)
# ... but not the settings nearly every model's worker has, which are taken out of the
# name before it is looked at: max_tokens, tokens_per_minute, tokenizer, keywords, author
# (api_tokens and max_tokens_key are still hidden)
NOT_SECRET = re.compile(
    r"(max|min|num|total|input|output|context)_?tokens|tokens_?(per|limit)|tokeniz|"
    r"keyword|author", re.IGNORECASE)

# the methods whose params carry [agents.NAME] tables: the key holding them, and whether
# it holds them by name (agents.add) or is one table (agents.update's merge patch)
SPEC_PARAMS = {AgentsAdd.declared.name: ("agents", True),
               AgentsUpdate.declared.name: ("set", False)}
# the methods whose params are themselves one [mcp_servers.NAME] table (its env hidden)
TABLE_PARAMS = frozenset({McpAdd.declared.name})
# a caller's data, as a task's input (which no audit row holds): its row and log line say
# its size, so a run's input of megabytes is not a log line of megabytes, nor read with
# audit:read by who may not read tasks (a person's answer to a task's question and the
# arguments an approval edits are the task's data too: the row says the decision)
SIZED_PARAMS = {WorkflowsRun.declared.name: ("input",),
                ApprovalsResolve.declared.name: ("arguments", "answer"),
                RunsSignal.declared.name: ("data",)}
# a `config` deeper than this is shown as hidden below it: a hostile table must not make
# the redaction recurse past the interpreter's bound (agent tables are refused deeper
# than this at admission: fleet.py)
MAX_DEPTH = 32


def url(text: str) -> str:
    """The URL with its password hidden (`redis://:***@host:6379/0`); unchanged when it
    has none."""
    try:
        parts = urlsplit(text)
        password = parts.password
        port = parts.port
    except ValueError:  # not a URL a client could use: hidden if it may hold credentials
        return MASK if "@" in text else text
    if password is None:
        return text
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:{MASK}@{host}" + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def secret_name(key: object) -> bool:
    return isinstance(key, str) and SECRET_NAME.search(NOT_SECRET.sub("", key)) is not None


def config(value: Any, depth: int = 0) -> Any:
    """A `config` value (and anything below it) as it may be shown; below MAX_DEPTH,
    nothing."""
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_DEPTH:
        return MASK
    if isinstance(value, Mapping):
        return {k: MASK if secret_name(k) and v is not None else config(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [config(v, depth + 1) for v in value]
    if isinstance(value, str):
        return url(value)
    return value


def deeper_than(value: Any, limit: int) -> bool:
    """Whether tables and lists nest in `value` more than `limit` deep (looked at
    without recursion: the value may be a hostile one)."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, Mapping | list | tuple):
            if d > limit:
                return True
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, Mapping) else v))
    return False


def _all_hidden(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict.fromkeys(value, MASK)
    return value if value is None else MASK


def table(spec: Any) -> Any:
    """An [agents.NAME] or [mcp_servers.NAME] table (a dict, as the config writes it or
    `msgspec.structs.asdict` gives it) as it may be shown: a copy; the keys it does not
    hide are the same objects. Anything but a mapping is returned as it is (a call's
    params are shown whatever their shape, and a malformed one hides nothing)."""
    if not isinstance(spec, Mapping):
        return spec
    out = dict(spec)
    for key, value in spec.items():
        if key in VALUES_HIDDEN:
            out[key] = _all_hidden(value)
        elif key in KEYS_HIDDEN and value is not None:
            out[key] = MASK
        elif key == "config":
            out[key] = config(value) if isinstance(value, Mapping) else _all_hidden(value)
        elif key == "url" and isinstance(value, str):
            out[key] = url(value)
    return out


def audited(spec: Any) -> Any:
    """An [agents.NAME] table (or an update's patch of one) as an audit row and its log
    line show it: as `table` does, and every value of its `config` hidden, the keys
    shown."""
    if not isinstance(spec, Mapping) or spec.get("config") is None:
        return table(spec)
    return {**table(spec), "config": _all_hidden(spec["config"])}


def params(method: str, given: Any) -> Any:
    """A call's params as its audit row and log line show them: the tables of a call
    that carries specs through `audited`; any other call's as they are."""
    sized, spec = SIZED_PARAMS.get(method), SPEC_PARAMS.get(method)
    if given is None or (sized is None and spec is None and method not in TABLE_PARAMS):
        return given
    if not isinstance(given, Mapping):  # the method's params Struct, as decoded
        given = msgspec.to_builtins(given)
        if not isinstance(given, Mapping):
            return given
    if sized is not None:
        return {**given, **{field: f"({len(msgspec.json.encode(given[field]))} bytes)"
                            for field in sized if given.get(field) is not None}}
    if spec is None:  # its params are one table
        return table(given)
    field, by_name = spec
    tables = given.get(field)
    if not isinstance(tables, Mapping):
        return given
    if not by_name:
        return {**given, field: audited(tables)}
    return {**given, field: {name: audited(t) for name, t in tables.items()}}
