"""The workflows there are: the config file's, and those added at runtime (`workflows
add`, `POST /api/v1/workflows`, `WorkflowService.add_workflow`), kept with revisions as
every such kind is (defcatalog.py). A run keeps the definition it started on, so a change
or a removal is the next runs' (docs/workflows.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ... import jsonrpc
from ...supervisor.workflows import Workflow, WorkflowError, WorkflowSpec, compile_workflow
from ..defcatalog import MAX_RUNTIME, Check, RuntimeCatalog, table_of
from ..definitions import DefRevision
from ..store import StateStore

__all__ = ["MAX_RUNTIME", "Catalog", "table_of"]
KIND = "workflow"
Known = Callable[[str], bool]


def _against(known_agent: Known, known: Mapping[str, WorkflowSpec]) -> Check[WorkflowSpec]:
    """A workflow checked against the agents and workflows the caller sees, and those
    added with it."""
    def check(name: str, spec: WorkflowSpec, others: Mapping[str, WorkflowSpec]) -> None:
        compile_workflow(name, spec, known_agent, {**known, **others})
    return check


class Catalog(RuntimeCatalog[WorkflowSpec]):
    def __init__(self, store: StateStore) -> None:
        super().__init__(store, KIND, "workflows", WorkflowSpec)

    def workflow(self, name: str) -> Workflow:
        """A workflow compiled with the others (its nested ones' agents), or NOT_FOUND."""
        specs = self.specs()
        spec = specs.get(name)
        if spec is None:
            raise jsonrpc.not_found("workflow", name)
        try:
            return compile_workflow(name, spec, None, specs)
        except WorkflowError:  # a nested one gone by a reload: said when it is run
            return compile_workflow(name, spec)

    def users_of(self, name: str) -> list[str]:
        return sorted(n for n, s in self.specs().items()
                      if any(st.workflow == name for st in s.steps) and n != name)

    def in_use(self, name: str, removed: list[str]) -> str | None:
        users = [u for u in self.users_of(name) if u not in removed]
        return (f"workflow {name} is a step of workflow {users[0]}: change or remove "
                f"{users[0]} first") if users else None

    async def add(self, tables: dict[str, Any], who: str, tenant: str | None,
                  known_agent: Known, known: Mapping[str, WorkflowSpec]) -> list[str]:
        """Workflows from [workflows.NAME] tables, all or nothing, each checked whole
        against the agents and workflows the caller sees (`known_agent`, `known`)."""
        return await self.add_checked(tables, who, tenant, _against(known_agent, known))

    async def update(self, name: str, changes: dict[str, Any], who: str,
                     tenant: str | None, known_agent: Known,
                     known: Mapping[str, WorkflowSpec]) -> DefRevision | None:
        return await self.update_checked(name, changes, who, tenant,
                                         _against(known_agent, known))

    async def rollback(self, name: str, revision: int | None, who: str,
                       tenant: str | None, known_agent: Known,
                       known: Mapping[str, WorkflowSpec]) -> tuple[int, DefRevision | None]:
        return await self.rollback_checked(name, revision, who, tenant,
                                      _against(known_agent, known))

    def last_defined(self, name: str) -> Workflow | None:
        """A runtime workflow as it is, or as its newest revision defined it (removed
        since): what decides who may see its history."""
        if name in self.runtime:
            return self.workflow(name)
        spec = self.last_spec(name)
        if spec is None:
            return None
        try:
            return compile_workflow(name, spec)
        except WorkflowError:
            return None
