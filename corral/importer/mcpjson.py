"""MCP clients' server files: Claude Desktop's and Cursor's (and Windsurf's,
Cline's) `{"mcpServers": {NAME: {...}}}`, VS Code's `{"servers": {...}, "inputs": [...]}`
(or its settings' `{"mcp": {"servers": ...}}`), each server as `[mcp_servers.NAME]`: a
command with its args, env and cwd, or a url with its headers; each key or value corral
cannot carry named, with why. Read as JSON5 (VS Code's files hold comments), never run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..supervisor.config import VARIABLE, ConfigError
from ..supervisor.configload import CLIENT_KEYS
from . import json5
from .model import Conversion, How, agent_name, config_text

TRANSPORTS = {"stdio": "stdio", "http": "http", "streamable-http": "http",
              "streamableHttp": "http", "sse": "sse"}
CARRIED = {"command", "args", "env", "cwd", "url", "serverUrl", "headers", "type",
           "transport", "disabled", "envFile"}
# what the clients write that is theirs, and why corral has no place for it (the same
# that `mcp_servers_file`'s reader passes over)
NOT_CARRIED = CLIENT_KEYS
# a value VS Code fills in as it starts a server: corral knows none of them
_CLIENT_VARIABLE = re.compile(r"\$\{(input|env|workspaceFolder|userHome|pathSeparator|"
                              r"workspaceFolderBasename|cwd)[^}]*\}")


def servers_of(data: Any) -> tuple[str, dict[str, Any]] | None:
    """The object of servers a client's file holds, and the key it is under."""
    if not isinstance(data, dict):
        return None
    for key, inner in (("mcpServers", data), ("servers", data),
                       ("mcp.servers", data.get("mcp"))):
        if isinstance(inner, dict) and isinstance(inner.get(key.split(".")[-1]), dict):
            return key, inner[key.split(".")[-1]]
    return None


def read(path: Path, how: How) -> Conversion:
    text = config_text(path)
    try:
        data = json5.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON (nor JSON5): {exc}") from None
    found = servers_of(data)
    if found is None:
        raise ConfigError(f"{path}: no mcpServers (nor VS Code's servers): not an MCP "
                          "client's server file")
    key, entries = found
    imp = Conversion(str(path), "mcp")
    for other in sorted(set(data) - {key.split(".")[0]}):
        why = ("VS Code's prompts for ${input:...} values: corral asks for none (set the "
               "values in env or headers)" if other == "inputs" else
               "not a key of an MCP client's server file")
        imp.note(other, "(top level)", f"not carried: {why}")
    for name, entry in entries.items():
        where = f"{key}.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {where}: expected an object")
        try:
            _server(name, entry, where, imp)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return imp


def _server(name: str, entry: dict[str, Any], where: str, imp: Conversion) -> None:
    if entry.get("disabled") is True:
        imp.note(where, "disabled", "true: not imported (the client does not start it)")
        return
    table: dict[str, Any] = {}
    url = entry.get("url") or entry.get("serverUrl")
    command = entry.get("command")
    kind = entry.get("type") or entry.get("transport")
    if (command is None) == (url is None):
        raise ConfigError(f"{where}: give either command (a local server) or url (a "
                          "remote one)")
    if kind is not None:
        if kind not in TRANSPORTS:
            raise ConfigError(f"{where}: type: {json.dumps(kind)} is not one of "
                              f"{', '.join(TRANSPORTS)}")
        if TRANSPORTS[kind] != "stdio":
            table["transport"] = TRANSPORTS[kind]
    if command is not None:
        # a list: a command string would be split at its spaces (a path may hold one)
        table["command"] = [_text(command, where, "command")]
        args = entry.get("args", [])
        if not isinstance(args, list):
            raise ConfigError(f"{where}: args: expected a list")
        table["args"] = [_text(a, where, "args") for a in args]
        if isinstance(entry.get("cwd"), str):
            table["cwd"] = entry["cwd"]
        env = _pairs(entry.get("env", {}), where, "env")
        if env:
            table["env"] = env
        if isinstance(entry.get("envFile"), str):
            table["env_file"] = [entry["envFile"]]
            # (what it holds is read at each start, unseen by the import: said)
            imp.note(where, "envFile", f"{json.dumps(entry['envFile'])}: carried as "
                                       "env_file: the server is given every variable that "
                                       "file holds when it starts, as the daemon reads it")
    else:
        table["url"] = _text(url, where, "url")
        headers = _pairs(entry.get("headers", {}), where, "headers")
        if headers:
            table["headers"] = headers
        for header, value in headers.items():
            for variable in sorted({m[1] for m in VARIABLE.finditer(value)}):
                imp.note(where, f"headers.{header}", f"${{{variable}}}: the daemon's "
                         f"environment variable {variable} is sent to {table['url']} in it "
                         "(not set, the server is not reached, the daemon saying so)")
    for k, v in entry.items():
        if k in CARRIED:
            continue
        why = NOT_CARRIED.get(k, "not a key corral import knows of an MCP server")
        if why is not None:
            imp.note(where, k, f"{json.dumps(v)}: not carried: {why}")
    _client_variables(table, where, imp)
    # a valid agent's name without `__`, which parts a server's name from its tools'
    wanted = agent_name(re.sub(r"_{2,}", "_", name), imp.servers)
    if wanted != name:
        imp.note(where, "name", f"{name!r} is server {wanted} (corral's server names: "
                                "1-64 of [A-Za-z0-9_-], starting with a letter or digit, "
                                "no `__`, unique)")
    imp.servers[wanted] = table


def _client_variables(table: dict[str, Any], where: str, imp: Conversion) -> None:
    """A `${input:ID}`, `${env:X}`, `${workspaceFolder}`, filled in by VS Code as it
    starts a server, is not by corral: each said, and taken as written."""
    values = [*table.get("command", []), *table.get("args", []), table.get("url"),
              table.get("cwd"), *table.get("env", {}).values(),
              *table.get("headers", {}).values()]
    seen = sorted({m[0] for v in values if isinstance(v, str)
                   for m in _CLIENT_VARIABLE.finditer(v)})
    for variable in seen:
        hint = (" (a header's ${VAR} is read from corral's environment: write it so)"
                if variable.startswith("${env:") else "")
        imp.note(where, variable, f"not carried: the client fills it in as it starts the "
                                  f"server; taken as written{hint}")


def _text(v: Any, where: str, key: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ConfigError(f"{where}: {key}: {json.dumps(v)} is not a text")
    return v if isinstance(v, str) else json.dumps(v)


def _pairs(v: Any, where: str, key: str) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: {key}: expected an object of names and texts")
    return {str(k): _text(x, where, f"{key}.{k}") for k, x in v.items()}
