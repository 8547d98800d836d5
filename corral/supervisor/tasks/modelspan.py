"""The trace link of a model call (DESIGN section 28): a task's live call is a client span
of its attempt, named and attributed by OpenTelemetry's GenAI conventions (`chat MODEL`),
its error the refusal's or the upstream's. A call answered from the journal is the step's
replay (tracing.py). A call of no task is a span under the context its caller sent (its
`traceparent` header, `call.meta`), as a tool call of no task is; without one, none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...tracecontext import Parent, parse_or_none
from .call import Call
from .interceptors import TaskInterceptor

if TYPE_CHECKING:
    from ..tracing import Tracer
    from .model import Task


class ModelSpan(TaskInterceptor):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def intercept_model_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        task = call.task
        if task is not None:
            return self._spanned(task, None, call, next)
        said = call.meta
        context = parse_or_none(said.get("traceparent"), said.get("tracestate")) \
            if said else None
        if context is None:
            return next(call)
        return self._spanned(None, context, call, next)

    async def _spanned(self, task: Task | None, context: Parent | None, call: Call,
                       next: Callable[[Call], Any]) -> Any:
        model = call.model
        assert model is not None and model.spec is not None  # (seen: modelview.py)
        start, error = time.time(), None
        try:
            return await next(call)
        except Exception as exc:
            error = getattr(exc, "message", None) or str(exc)
            raise
        finally:
            usage = model.usage
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": model.spec.format,
                "gen_ai.request.model": call.name, "corral.model.stream": model.ask.stream,
                "gen_ai.usage.input_tokens": usage.input,
                "gen_ai.usage.output_tokens": usage.output}
            if usage.model is not None:
                attrs["gen_ai.response.model"] = usage.model
            name = f"chat {call.name}"
            if task is not None:
                self._tracer.model_call(task, name, start, error, attrs)
            else:
                replica = call.replica  # (read past `Call.agent`'s property: no frame)
                assert context is not None and replica is not None  # (a model call's)
                label = attrs["corral.replica"] = replica.label
                self._tracer.caller_span(context, name, f"replica:{label}", start, error,
                                         attrs)
