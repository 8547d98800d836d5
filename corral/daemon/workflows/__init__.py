"""Workflow runs in the daemon (docs/workflows.md): kept in the state database
(runstore.py), driven step by step as tasks of the engine (runner.py), started, resumed,
cancelled and shown by the service (service.py) that the handlers (handlers.py) call."""

from .service import WorkflowService

__all__ = ["WorkflowService"]
