"""MCP clients' server files: Claude Desktop's and Cursor's (and Windsurf's,
Cline's) `{"mcpServers": {NAME: {...}}}`, VS Code's `{"servers": {...}, "inputs": [...]}`
(or its settings' `{"mcp": {"servers": ...}}`), each server as `[mcp_servers.NAME]`: a
command with its args, env and cwd, or a url with its headers; each key or value corral
cannot carry named, with why. Read as JSON5 (VS Code's files hold comments), never run;
each server as `[supervisor] mcp_servers_file` is (supervisor/configload.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..supervisor.config import ConfigError
from ..supervisor.configload import client_server
from .model import Conversion, How, agent_name, config_text, json_data

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
    data = json_data(path, text)
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
        try:
            _server(name, entry, where, imp, path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return imp


def _server(name: str, entry: Any, where: str, imp: Conversion, base: Path) -> None:
    """Read as the daemon reads its `mcp_servers_file` (configload.client_server), what is
    not carried said rather than refused, and the name made one of corral's."""
    table = client_server(entry, where, base, lambda key, why: imp.note(where, key, why))
    if table is None:
        return
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
