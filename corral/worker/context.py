"""What a handler gets besides its input: `ctx`, its task's id, attempt and deadline, and
the calls it makes through corral (tools, resources, steps, checkpoints)."""

from __future__ import annotations

import os
import time

from .codec import given
from .errors import TaskCancelled
from .spawning import Spawning

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~2 ms to import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    class WorkerSide(Protocol):
        """What a Context uses of its Worker (corral.worker's, which imports this)."""

        agent: str
        replica: int
        config: dict[str, Any]
        state: Any

        def notify(self, method: str, params: Any = None) -> None: ...
        def request(self, method: str, params: Any = None,
                    timeout: float | None = None) -> Any: ...
        def request_async(self, method: str, params: Any = None) -> Any: ...


def from_task_id(task_id: str, bit: int) -> dict[str, str] | None:
    """The trace context of a task traced from its id (`task/run`'s `trace`,
    docs/protocol.md#trace-context): the trace id is the id's 32 hex digits, the
    attempt's span id their last 16, the flags the bit."""
    digits = task_id.replace("-", "")
    if len(digits) != 32:
        return None
    return {"traceparent": f"00-{digits}-{digits[16:]}-0{bit}"}


class Context(Spawning):
    """What a handler gets besides its input (and `spawn`, `wait`, `map`: spawning.py)."""

    def __init__(
        self,
        worker: WorkerSide,
        task_id: str,
        deadline: float | None,
        is_async: bool,
        attempt: int = 1,
        trace: dict[str, Any] | None = None,
        resumed: bool = False,
        task_state: Any = None,
        session: str | None = None,
        session_state: Any = None,
    ) -> None:
        self._worker = worker
        self.task_id = task_id
        # the attempt's W3C trace context (None: untraced), for your spans; tool calls send it
        self.traceparent: str | None = None
        self.tracestate: str | None = None
        if trace:
            tp, ts = trace.get("traceparent"), trace.get("tracestate")
            self.traceparent = tp if isinstance(tp, str) else None
            self.tracestate = ts if isinstance(ts, str) else None
        # 1, more on a retry (on any node): (task_id, attempt) names this run's side effects
        self.attempt = attempt
        # a retry of a task that checkpointed (checkpoint_task): its last state
        self.resumed = resumed
        self.task_state = task_state
        # its session's name and last checkpoint_session (None: new; docs/durable.md)
        self.session = session
        self.session_state = session_state
        self.deadline = deadline
        self._async = is_async
        # not a threading.Event: nothing waits on it, and one cost more than a tiny task's start
        self._cancelled = False
        self._asked = 0  # questions asked (`ask`): the next one's default key
        self.agent = worker.agent
        self.replica = worker.replica
        self.config = worker.config

    @property
    def state(self) -> Any:
        """The agent state last checkpointed (given back by corral after a restart)."""
        return self._worker.state

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check_cancelled(self) -> None:
        if self._cancelled:
            raise TaskCancelled(f"task {self.task_id} cancelled")

    def remaining(self) -> float | None:
        """Seconds left before the task's deadline, or None for no deadline."""
        return None if self.deadline is None else self.deadline - time.time()

    def progress(self, progress: float, total: float | None = None, message: str | None = None
                 ) -> None:
        self._worker.notify("task/progress", {"task_id": self.task_id, "progress": progress,
                                              **given(total=total, message=message)})

    def emit(self, data: str) -> None:
        """A chunk of this task's live output (`task/output`): kept by corral for whoever
        follows the task (`corral run --stream`), so it waits for no reader."""
        if not isinstance(data, str):
            raise TypeError(f"emit: data must be a string, not {type(data).__name__}")
        self._worker.notify("task/output", {"task_id": self.task_id, "data": data})

    def report_usage(self, input_tokens: int = 0, output_tokens: int = 0,
                     cost_usd: float = 0.0, model: str | None = None) -> None:
        """Tell corral what this task spent on a model (a `usage/report` notification):
        counted for the task, the agent and the model, against the agent's token and cost
        budgets. Call it after each model call; it does not wait."""
        self._worker.notify("usage/report", {
            "task_id": self.task_id, "input_tokens": input_tokens,
            "output_tokens": output_tokens, "cost_usd": cost_usd, **given(model=model)})

    def _call(self, method: str, params: Any) -> Any:
        if self._async:
            return self._worker.request_async(method, params)
        return self._worker.request(method, params)

    def list_tools(self) -> Any:
        """The tools this agent may call; awaitable in coroutine handlers."""
        return self._call("tools/list", {})

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Call `SERVER__TOOL` through the supervisor; awaitable in coroutine handlers."""
        return self._call("tools/call", {"name": name, "arguments": arguments or {},
                                         "task_id": self.task_id,
                                         **given(_meta=self.trace_meta() or None)})

    @property
    def mcp_url(self) -> str | None:
        """This attempt's address at corral's MCP gateway (None: corral gives the agent
        no gateway): a call made there, with the replica's CORRAL_MCP_TOKEN, is a step of
        this task, journaled and replayed on a retry as `call_tool`'s are, whatever MCP
        client makes it. A process started for the task takes it as its CORRAL_MCP_URL."""
        url = os.environ.get("CORRAL_MCP_URL")
        if not url:
            return None
        return f"{url}{'&' if '?' in url else '?'}task={self.task_id}&attempt={self.attempt}"

    @property
    def mcp_headers(self) -> dict[str, str]:
        """The gateway's credential as an MCP client's HTTP headers (the replica's token)."""
        token = os.environ.get("CORRAL_MCP_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def trace_meta(self) -> dict[str, str]:
        """The trace context as `_meta` entries (empty when corral does not trace): for a
        request of your own to an MCP server or another service."""
        if self.traceparent is None:
            return {}
        return {"traceparent": self.traceparent, **given(tracestate=self.tracestate)}

    def list_resources(self, server: str | None = None) -> Any:
        """{"resources": [...]}: the MCP resources this agent may read, each with its
        "server"."""
        return self._call("resources/list", {} if server is None else {"server": server})

    def read_resource(self, server: str, uri: str) -> Any:
        """resources/read of one server's resource: {"contents": [...]}."""
        return self._call("resources/read", {"server": server, "uri": uri})

    def subscribe_resource(self, server: str, uri: str) -> Any:
        """Updates arrive as `on_resource_updated(server, uri)` (see `run`)."""
        return self._call("resources/subscribe", {"server": server, "uri": uri})

    def list_prompts(self, server: str | None = None) -> Any:
        """{"prompts": [...]}: the MCP prompts this agent may get, named SERVER__PROMPT."""
        return self._call("prompts/list", {} if server is None else {"server": server})

    def get_prompt(self, name: str, arguments: dict[str, str] | None = None) -> Any:
        """prompts/get of `SERVER__PROMPT`: {"messages": [...]}."""
        return self._call("prompts/get", {"name": name, "arguments": arguments or {}})

    def publish(self, topic: str, data: Any = None) -> None:
        self._worker.notify("events/publish", {"topic": topic, "data": data})

    def subscribe(self, topic: str) -> Any:
        return self._call("events/subscribe", {"topic": topic})

    def checkpoint(self, state: Any) -> None:
        """Persist agent state; given back in `initialize` after a restart."""
        self._worker.state = state
        self._worker.notify("state/checkpoint", {"state": state})

    def checkpoint_task(self, state: Any) -> Any:
        """Keep this task's state (JSON): a retried attempt starts with it as
        `ctx.task_state` (and `ctx.resumed`). Returns once it is durable; awaitable in
        coroutine handlers."""
        return self._call("task/checkpoint", {"task_id": self.task_id, "state": state})

    def checkpoint_session(self, state: Any) -> Any:
        """Keep the session's state (JSON): the session's next task starts with it as
        `ctx.session_state`, on whichever replica. Returns once it is durable; awaitable
        in coroutine handlers."""
        self.session_state = state
        return self._call("session/checkpoint", {"task_id": self.task_id, "state": state})

    def ask(self, prompt: str, schema: dict[str, Any] | None = None, *,
            key: str | None = None, timeout: float | None = None) -> Any:
        """Ask a person (`task/ask`): the task waits until the question is answered in
        corral's inbox (`corral approvals`), and the answer, valid by `schema` (a JSON
        Schema; None: any JSON), is returned. A step of the task under `key` (default:
        this question's place among the task's), so a retried or resumed attempt gets
        the answer back without asking again. Declined, or past `timeout` seconds:
        RequestError (REFUSED, REQUEST_TIMEOUT). Awaitable in coroutine handlers."""
        self._asked += 1
        return self._call_for("task/ask", {
            "task_id": self.task_id, "prompt": prompt,
            "key": key if key is not None else str(self._asked),
            **given(schema=schema, timeout=timeout)}, "answer")

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """`fn()`'s result, journaled under `name` (unique within the task): a retried
        attempt gets the journaled result back without calling `fn` (a model call is then
        not paid twice; docs/durable.md). In a coroutine handler, await it (`fn` may be a
        coroutine function)."""
        if self._async:
            return self._step_async(name, fn)
        if self.attempt > 1:  # nothing is journaled before a task's first attempt
            got = self._worker.request("step/get", {"task_id": self.task_id, "name": name})
            if got.get("found"):
                return got.get("result")
        value = fn()
        self._worker.request("step/put", {"task_id": self.task_id, "name": name,
                                          "result": value})
        return value

    async def _step_async(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.attempt > 1:
            got = await self._worker.request_async(
                "step/get", {"task_id": self.task_id, "name": name})
            if got.get("found"):
                return got.get("result")
        value = fn()
        if hasattr(value, "__await__"):
            value = await value
        await self._worker.request_async("step/put", {"task_id": self.task_id,
                                                      "name": name, "result": value})
        return value
