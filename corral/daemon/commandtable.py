"""Every handler module's Commands, gathered into the one table the Dispatcher takes:
each declared method (corral.methods) implemented once, in the module of its domain."""

from __future__ import annotations

from . import commands, gatewayhandlers, schedulehandlers, sessionhandlers, taskhandlers
from .api import Handlers
from .services import Services
from .teams import handlers as teamhandlers
from .workflows import handlers as workflowhandlers

HANDLERS: Handlers[Services] = Handlers(
    commands.COMMANDS, taskhandlers.COMMANDS, sessionhandlers.COMMANDS,
    gatewayhandlers.COMMANDS, schedulehandlers.COMMANDS, teamhandlers.COMMANDS,
    workflowhandlers.COMMANDS)
