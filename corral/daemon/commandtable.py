"""Every handler module's Commands, in the one table the Dispatcher takes: each declared
method implemented once, in the module of its domain, which is imported the first time
one of its methods is called."""

from __future__ import annotations

from .api import Handlers
from .services import Services

# a method name's first part -> the module (in corral.daemon) whose COMMANDS implement it
DOMAINS = {
    "audit": "daemonhandlers", "config": "daemonhandlers", "daemon": "daemonhandlers",
    "agents": "agenthandlers",
    "stats": "stathandlers",
    "tasks": "taskhandlers", "traces": "taskhandlers",
    "sessions": "sessionhandlers",
    "events": "eventhandlers",
    "mcp": "mcphandlers", "prompts": "mcphandlers", "resources": "mcphandlers",
    "tools": "mcphandlers", "gateway": "mcphandlers",
    "nodes": "nodehandlers",
    "tenants": "tenanthandlers",
    "logs": "loghandlers",
    "packages": "packagehandlers",
    "tokens": "accesshandlers", "ui": "accesshandlers",
    "schedules": "schedulehandlers",
    "calls": "teams.handlers", "teams": "teams.handlers",
    "runs": "workflows.handlers", "workflows": "workflows.handlers",
    "approvals": "approvalhandlers",
}

HANDLERS: Handlers[Services] = Handlers(__package__, DOMAINS)
