"""`corral mcp add` and `corral mcp remove`: a stdio server written into, or taken out of,
the JSON file [supervisor] mcp_servers_file names, then the config reloaded. One added to
the running daemon alone would be dropped by the next reload; the operator's own config
file is never rewritten (its comments and layout are theirs)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..statefiles import replace_file
from ..supervisor.config import Config, ConfigError
from ..supervisor.configload import load_config
from ..supervisor.names import name_problem
from .mcpregistry import resolve

Reload = Callable[[], Awaitable[m.ReloadResult]]


async def add(config_path: Path, p: m.McpAdd, reload: Reload) -> m.ReloadResult:
    cfg, path = _named_file(config_path, "add")
    if p.registry is not None:
        p = await _from_registry(cfg, config_path, p)
    problem = name_problem(p.name, server=True)
    if problem:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"mcp add: MCP server {p.name}: {problem}")
    if not p.command or not p.command[0]:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"mcp add: MCP server {p.name}: give the "
                                               "command that starts it")
    before, doc = _read(path)
    entries = doc["mcpServers"]
    if p.name in cfg.mcp_servers or p.name in entries:
        where = path if p.name in entries else config_path
        raise RpcError(jsonrpc.CONFLICT, f"mcp add: MCP server {p.name} exists already "
                                         f"(in {where})")
    entries[p.name] = {"command": p.command[0], "args": p.command[1:],
                       **({"env": p.env} if p.env else {})}
    return await _written(path, before, doc, reload, "add")


async def remove(config_path: Path, p: m.McpRemove, reload: Reload) -> m.ReloadResult:
    cfg, path = _named_file(config_path, "remove")
    before, doc = _read(path)
    entries = doc["mcpServers"]
    if p.name not in entries:
        if p.name in cfg.mcp_servers:
            raise RpcError(jsonrpc.CONFLICT, f"mcp remove: MCP server {p.name} is declared "
                                             f"in {config_path}, not in {path}: remove it "
                                             "there, then `corral reload`")
        raise RpcError(jsonrpc.NOT_FOUND, f"mcp remove: no MCP server {p.name} in {path}")
    del entries[p.name]
    return await _written(path, before, doc, reload, "remove")


async def _from_registry(cfg: Config, config_path: Path, p: m.McpAdd) -> m.McpAdd:
    """The server `p.registry` names, as its pinned package's command (mcpregistry.py)."""
    registry, ident = cfg.supervisor.mcp_registry, p.registry or ""
    if not registry:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"mcp add --registry {p.registry}: "
                                               f"{config_path} names no [supervisor] "
                                               "mcp_registry, the registry's URL")
    if p.command:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"mcp add --registry {p.registry}: the "
                                               "registry gives the command: give none")
    found = await resolve(registry, ident, p.env)
    return m.McpAdd(name=p.name or found.name, command=found.command, env=found.env)


def _named_file(config_path: Path, verb: str) -> tuple[Config, Path]:
    """The config as its file says now, and the servers file it names."""
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"mcp {verb} rejected, nothing changed: "
                                               f"{exc}") from None
    named = cfg.supervisor.mcp_servers_file
    if not named:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"mcp {verb}: {config_path} names no "
                                               "[supervisor] mcp_servers_file, the JSON file "
                                               "servers are added to and removed from")
    return cfg, config_path.parent / named  # (an absolute one is kept by the join)


def _read(path: Path) -> tuple[bytes | None, dict[str, Any]]:
    """The file's bytes as they are (None: no file yet) and its document."""
    try:
        before = path.read_bytes()
    except FileNotFoundError:
        return None, {"mcpServers": {}}
    return before, json.loads(before)  # (load_config just read it: an object of servers)


async def _written(path: Path, before: bytes | None, doc: dict[str, Any], reload: Reload,
                   verb: str) -> m.ReloadResult:
    """`doc` written (whole, by a rename: a reader never sees half of it), then the
    config reloaded; a reload that fails puts the file back as it was."""
    replace_file(path, json.dumps(doc, indent=2).encode() + b"\n", _secret(doc))
    try:
        return await reload()
    except ConfigError as exc:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            replace_file(path, before, _secret(json.loads(before)))
        raise RpcError(jsonrpc.INVALID_PARAMS, f"mcp {verb} rejected, nothing changed: "
                                               f"{exc}") from None


def _secret(doc: dict[str, Any]) -> bool:
    """Whether a server of the file is given an env value."""
    return any(isinstance(e, dict) and e.get("env")
               for e in (doc.get("mcpServers") or {}).values())
