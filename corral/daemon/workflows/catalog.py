"""The workflows there are: the config file's, and those added at runtime, kept with
revisions as every such kind is (defcatalog.py). A run keeps the definition it started on,
so a change or a removal is the next runs' (docs/workflows.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ... import jsonrpc
from ...supervisor.workflows import Workflow, WorkflowError, WorkflowSpec, compile_workflow
from ..defcatalog import MAX_RUNTIME, Check, RuntimeCatalog, table_of
from ..definitions import one_tenant
from ..store import StateStore

__all__ = ["MAX_RUNTIME", "Catalog", "against", "table_of"]
KIND = "workflow"
# an agent's tenant, None when there is no such agent (or the caller does not see it)
TenantOf = Callable[[str], str | None]


def against(tenant_of: TenantOf, known: Mapping[str, WorkflowSpec]) -> Check[WorkflowSpec]:
    """A workflow checked against the agents and workflows the caller sees, and those
    added with it; whose it is: the tenant all its agents are of (nested ones' too)."""
    def check(name: str, spec: WorkflowSpec, others: Mapping[str, WorkflowSpec]
              ) -> str | None:
        wf = compile_workflow(name, spec, lambda a: tenant_of(a) is not None,
                              {**known, **others})
        return one_tenant(wf.agents, tenant_of)
    return check


class Catalog(RuntimeCatalog[WorkflowSpec]):
    def __init__(self, store: StateStore) -> None:
        super().__init__(store, KIND, "workflows", WorkflowSpec)
        # each workflow compiled with the others, while `specs()` is the one they were
        # compiled with (a change makes it anew): every run's start asks, and a run never
        # changes its Workflow
        self._made: dict[str, Workflow | None] = {}
        self._made_of: Mapping[str, WorkflowSpec] | None = None

    def whole(self, name: str) -> Workflow | None:
        """`name` compiled with the workflows there are, checked whole but for its
        agents; None where that fails (or there is no such workflow)."""
        specs = self.specs()
        if specs is not self._made_of:
            self._made, self._made_of = {}, specs
        if name not in self._made:
            spec = specs.get(name)
            try:
                self._made[name] = (compile_workflow(name, spec, None, specs)
                                    if spec is not None else None)
            except WorkflowError:
                self._made[name] = None
        return self._made[name]

    def workflow(self, name: str) -> Workflow:
        spec = self.specs().get(name)
        if spec is None:
            raise jsonrpc.not_found("workflow", name)
        wf = self.whole(name)
        # a nested one gone by a reload: said when it is run
        return wf if wf is not None else compile_workflow(name, spec)

    def tenant(self, name: str, tenant_of: TenantOf) -> str | None:
        """Whose a workflow is: a runtime one's, its revision's; the config file's, the
        tenant all its agents are of now (they are the operator's to move)."""
        rev = self.revision_of(name)
        if rev is not None:
            return rev.tenant
        return one_tenant(self.workflow(name).agents, tenant_of)

    def in_use(self, name: str, removed: list[str]) -> str | None:
        users = sorted(n for n, s in self.specs().items() if n != name and n not in removed
                       and any(st.workflow == name for st in s.steps))
        return (f"workflow {name} is a step of workflow {users[0]}: change or remove "
                f"{users[0]} first") if users else None
