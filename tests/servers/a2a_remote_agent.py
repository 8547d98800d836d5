"""A remote A2A agent on the official `a2a-sdk`'s server (Starlette, uvicorn): what the
gateway's `a2a__NAME` tools call in tests/test_a2a_tools.py.

usage: a2a_remote_agent.py PORT LOG [TOKEN]. Every message it receives is a line of LOG
(its messageId, then its text), so a test counts what was sent. By the message's text:
`echo: X` completes with the artifact `echoed X`; `hold: X` works until a message
`release: X` comes (a call in flight for as long as a test needs); `ask` asks for input;
`fail` fails. With TOKEN, a request without `Authorization: Bearer TOKEN` is a 401.
"""
from __future__ import annotations

from tests.quietimports import collector_off

with collector_off(freeze=True):
    import asyncio
    import sys

    import uvicorn
    from a2a.server.agent_execution.agent_executor import AgentExecutor
    from a2a.server.agent_execution.context import RequestContext
    from a2a.server.events.event_queue import EventQueue

    # the handler the TCK's own agent runs on (its executor enqueues no Task of its own)
    from a2a.server.request_handlers.default_request_handler import LegacyRequestHandler
    from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
    from a2a.server.tasks.inmemory_task_store import InMemoryTaskStore
    from a2a.server.tasks.task_updater import TaskUpdater
    from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Part
    from starlette.applications import Starlette
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

PORT, LOG = int(sys.argv[1]), sys.argv[2]
TOKEN = sys.argv[3] if len(sys.argv) > 3 else None
held: dict[str, asyncio.Event] = {}


class Remote(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id and context.message
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        text = " ".join(p.text for p in context.message.parts if p.text)
        with open(LOG, "a") as f:
            f.write(f"{context.message.message_id} {text}\n")
        await updater.start_work()
        verb, _, arg = text.partition(": ")
        if verb == "echo":
            await updater.add_artifact(parts=[Part(text=f"echoed {arg}")])
            await updater.complete()
        elif verb == "hold":
            await held.setdefault(arg, asyncio.Event()).wait()
            await updater.add_artifact(parts=[Part(text=f"released {arg}")])
            await updater.complete()
        elif verb == "release":
            held.setdefault(arg, asyncio.Event()).set()
            await updater.complete()
        elif verb == "ask":
            await updater.requires_input(updater.new_agent_message([Part(text="which one?")]))
        else:
            await updater.failed(updater.new_agent_message([Part(text=f"cannot {text!r}")]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


class Bearer(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: object) -> Response:
        if TOKEN and request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return await call_next(request)  # type: ignore[operator, no-any-return]


def main() -> None:
    url = f"http://127.0.0.1:{PORT}"
    card = AgentCard(
        name="remote", description="a remote agent that echoes", version="1.0.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC",
                                             protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=False, push_notifications=False),
        default_input_modes=["text"], default_output_modes=["text"],
        skills=[AgentSkill(id="echo", name="echo", description="echoes", tags=["echo"])])
    handler = LegacyRequestHandler(agent_executor=Remote(), task_store=InMemoryTaskStore(),
                                   agent_card=card)
    app = Starlette(routes=[*create_agent_card_routes(card),
                            *create_jsonrpc_routes(handler, rpc_url="/")])
    app.add_middleware(Bearer)
    # a keep-alive past any test's pause: uvicorn's 5 s close of an idle connection races
    # a client that reuses it on busy cores ("Server disconnected without sending a
    # response", a CI run at load 9)
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning",
                timeout_keep_alive=300)


if __name__ == "__main__":
    main()
