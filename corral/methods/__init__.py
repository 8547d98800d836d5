# ruff: noqa: F403, F405 - the package's names are its modules' (and corral.results')
"""The control methods, each declared once (declaration.py): name, typed params, typed
result, scope, how a limited caller sees it, its REST routes, its CLI command, its help
(the params' docstring). The daemon implements them and the CLI calls them, both
importing this package (so a method cannot drift between the two), which therefore must
not pull in the engine; tests/test_methods.py holds the daemon's answers to these types.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..results import *
from .declaration import *

if TYPE_CHECKING:
    from .access import *
    from .agents import *
    from .approvals import *
    from .calls import *
    from .cluster import *
    from .daemon import *
    from .declaration import REGISTRY as REGISTRY
    from .definitions import *
    from .events import *
    from .logs import *
    from .mcp import *
    from .packages import *
    from .stats import *
    from .tasks import *
    from .tenants import *

# Each domain's module and the names it defines, in the order the methods are declared
# (REGISTRY's): a domain's module is imported when one of its names is first asked for
# (`m.AgentsStatus`), so a CLI command declares the methods it calls, not all ~100 (their
# Structs were a tenth of its start). REGISTRY, asked for, imports every domain.
# tests/test_imports.py holds the table to what the modules define.
DOMAINS: dict[str, tuple[str, ...]] = {
    "access": ("TokenCreated", "TokensCreate", "TokensList", "TokensRevoke", "UiLogin"),
    "agents": ("AgentsAdd", "AgentsDescribe", "AgentsHistory", "AgentsPause", "AgentsRemove",
               "AgentsRestart", "AgentsResume", "AgentsRollback", "AgentsScale", "AgentsSignal",
               "AgentsStart", "AgentsStatus", "AgentsStop", "AgentsUpdate", "AgentsWatch",
               "AuditList", "Selection", "parse_target"),
    "approvals": ("ApprovalsGet", "ApprovalsList", "ApprovalsResolve", "ApprovalsWatch"),
    "tasks": ("MAX_WAIT", "SessionsEnd", "SessionsGet", "SessionsList", "TaskParams", "TasksCancel",
              "TasksGet", "TasksList", "TasksRun", "TasksStream", "TasksSubmit", "TracesGet"),
    "calls": ("CallsCancel", "CallsGet", "CallsList", "TeamsCall"),
    "cluster": ("NodesDrain", "NodesList"),
    "daemon": ("ConfigReload", "DaemonClock", "DaemonInfo", "DaemonShutdown", "DaemonUpgrade"),
    "definitions": ("DefinitionHistory", "DefinitionNamed", "DefinitionRollback",
                    "DefinitionUpdate", "DefinitionsRemove", "MAX_RUN_ROWS", "RunsCancel",
                    "RunsGet", "RunsList", "RunsSignal", "SchedulesList", "SchedulesPause",
                    "SchedulesResume", "TeamsAdd", "TeamsDescribe", "TeamsHistory", "TeamsList",
                    "TeamsRemove", "TeamsRollback", "TeamsUpdate", "WorkflowsAdd",
                    "WorkflowsDescribe", "WorkflowsHistory", "WorkflowsList", "WorkflowsPlan",
                    "WorkflowsRemove", "WorkflowsRollback", "WorkflowsRun", "WorkflowsUpdate"),
    "events": ("EventsFollow", "EventsPublish"),
    "logs": ("LogsFollow", "LogsRotate", "LogsTail"),
    "mcp": ("GatewayStatus", "McpAdd", "McpRemove", "McpRestart", "McpSelection", "McpStart",
            "McpStatus", "McpStop", "PromptsGet", "PromptsList", "ResourcesList",
            "ResourcesRead", "ToolsCall", "ToolsList", "ToolsPins"),
    "packages": ("PackagesDeploy", "PackagesReleases"),
    "stats": ("StatsGet", "StatsHistory", "StatsSample", "StatsWatch"),
    "tenants": ("TenantsAdd", "TenantsList", "TenantsRemove", "TenantsSet"),
}
_DOMAIN_OF = {name: domain for domain, names in DOMAINS.items() for name in names}


def _domain(domain: str) -> None:
    module = import_module(f"{__name__}.{domain}")
    for name in DOMAINS[domain]:
        globals()[name] = getattr(module, name)


def _registry() -> dict[str, Method]:
    """Every method's declaration, by name, in the order of DOMAINS whichever domain was
    imported first (the REST routes, the OpenAPI document and the dashboard list them
    in it)."""
    from .declaration import REGISTRY as declared

    for domain in DOMAINS:
        _domain(domain)
    rank = {f"{__name__}.{domain}": i for i, domain in enumerate(DOMAINS)}
    ordered = sorted(declared.items(), key=lambda item: rank[item[1].params.__module__])
    declared.clear()
    declared.update(ordered)
    globals()["REGISTRY"] = declared
    return declared


if not TYPE_CHECKING:  # for mypy each name is the module's own (the imports above)
    def __getattr__(name: str) -> Any:
        if name == "REGISTRY":
            return _registry()
        domain = _DOMAIN_OF.get(name)
        if domain is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        _domain(domain)
        return globals()[name]
