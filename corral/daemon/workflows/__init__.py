"""Workflow runs in the daemon (docs/workflows.md): kept, driven, resumed, cancelled and
shown."""

from .service import WorkflowService

__all__ = ["WorkflowService"]
