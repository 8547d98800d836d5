"""Every handler module's Commands, gathered into the one table the Dispatcher takes:
each declared method (corral.methods) implemented once, in the module of its domain."""

from __future__ import annotations

from . import (
    accesshandlers,
    agenthandlers,
    approvalhandlers,
    daemonhandlers,
    eventhandlers,
    gatewayhandlers,
    loghandlers,
    mcphandlers,
    nodehandlers,
    packagehandlers,
    schedulehandlers,
    sessionhandlers,
    stathandlers,
    taskhandlers,
    tenanthandlers,
)
from .api import Handlers
from .services import Services
from .teams import handlers as teamhandlers
from .workflows import handlers as workflowhandlers

HANDLERS: Handlers[Services] = Handlers(
    daemonhandlers.COMMANDS, agenthandlers.COMMANDS, stathandlers.COMMANDS,
    taskhandlers.COMMANDS, sessionhandlers.COMMANDS,
    eventhandlers.COMMANDS, mcphandlers.COMMANDS, nodehandlers.COMMANDS,
    tenanthandlers.COMMANDS, loghandlers.COMMANDS, packagehandlers.COMMANDS,
    accesshandlers.COMMANDS, gatewayhandlers.COMMANDS, schedulehandlers.COMMANDS,
    teamhandlers.COMMANDS, workflowhandlers.COMMANDS, approvalhandlers.COMMANDS)
