"""Which tool a file is for, and its reader."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from ..supervisor.config import ConfigError
from .model import Conversion, How, config_text, json_data, link, unique

# each tool's reader, by its module, imported for the files that need it: an MCP client's
# reader brings the config's whole loader and PM2's its sandbox, which a Procfile's import
# (a fresh interpreter each time) has no use for
READERS = {"supervisord": "supervisord", "pm2": "pm2", "procfile": "procfile",
           "systemd": "systemd", "mcp": "mcpjson"}


def reader(kind: str) -> Callable[[Path, How], Conversion]:
    read: Callable[[Path, How], Conversion] = import_module(
        f"{__package__}.{READERS[kind]}").read
    return read


def kind_of(path: Path) -> str:
    """The tool `path` is for, by its name, else by what it holds."""
    name = path.name.lower()
    if name.endswith((".service", ".service.in")):
        return "systemd"
    if name.startswith("procfile"):
        return "procfile"
    if name.endswith((".js", ".cjs", ".mjs")):
        return "pm2"
    text = config_text(path)
    if name.endswith((".json", ".json5")):
        # an MCP client's file holds servers (mcpServers, VS Code's servers), a PM2
        # file apps: what it holds says which (pm2's reader names what is wrong)
        try:
            data = json_data(path, text)
        except ConfigError:
            return "pm2"
        from . import mcpjson

        return "mcp" if mcpjson.servers_of(data) and not (
            isinstance(data, dict) and "apps" in data) else "pm2"
    head = text[:65536]
    if re.search(r"(?m)^\s*\[(program|group|supervisord|include|eventlistener):?", head):
        return "supervisord"
    if re.search(r"(?m)^\s*\[(Service|Unit)\]", head):
        return "systemd"
    if re.search(r"(?m)^[A-Za-z0-9_-]+:\s*\S", head):
        return "procfile"
    raise ConfigError(f"{path}: not a file corral import knows (a supervisord .conf, a "
                      "PM2 ecosystem file, a Procfile or a systemd .service unit): give "
                      "--from")


def read_all(paths: list[Path], how: How, kind: str | None = None) -> list[Conversion]:
    """The files, each read, and the order between them linked (model.link)."""
    imports = [reader(kind or kind_of(p))(p, how) for p in paths]
    unique(imports)
    link(imports)
    return imports
