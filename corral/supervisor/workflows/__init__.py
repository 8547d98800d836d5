"""Workflows as data (docs/workflows.md): a definition's Structs, its references, its
validation and its evaluation, with no I/O; the daemon runs them (daemon/workflows/)."""

from .definition import Condition, StepSpec, WorkflowError, WorkflowSpec
from .plan import PlanStep, Workflow, compile_workflow, plan_text

__all__ = ["Condition", "PlanStep", "StepSpec", "Workflow", "WorkflowError", "WorkflowSpec",
           "compile_workflow", "plan_text"]
