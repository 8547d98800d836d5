"""The model gateway (docs/models.md): OpenAI's Chat Completions and Responses and
Anthropic's Messages served beside the MCP gateway, each request passed to the upstream of
the model it names with the provider's key, which the agent never holds. A door of the one
chain (DESIGN section 28): it reads a request into a `Call` (its `model` the request read,
supervisor/tasks/modelcall.py) and writes the outcome back; the chain's links judge it
(the model's view, the journal, its span, policy rules, labels and approval, its budget)
and end in this door's dispatch, the upstream's answer. A call of a task's attempt is a
step of the task: journaled with its answer, answered from the journal on a retry, its
usage counted once (usage.py), whichever end it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec
from aiohttp import HttpVersion11, web

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...supervisor.config import ModelSpec
from ...supervisor.replica import Replica
from ...supervisor.tasks.budget import Reservation
from ...supervisor.tasks.call import MODELS, Call, DoorWire
from ...supervisor.tasks.modelcall import ModelCall, ModelCounter, ModelRefusal
from ..attribution import Attribution, mark_of
from ..http.route import MAX_BODY
from . import answers
from . import request as requests
from .answers import AnswerRecord, Exchange, Relay, StreamCut, Whole
from .http1 import UpstreamFailed, fields
from .keys import hidden, hidden_headers, read_keys
from .request import BadBody, ModelRequest
from .upstream import Upstream, UpstreamDown
from .usage import CallUsage
from .wire import ENDPOINTS, PASSED_ON, Endpoint, credential, upstream_auth

if TYPE_CHECKING:
    from ...supervisor.tasks.manager import TaskManager
    from ...supervisor.tasks.model import Task
    from ..gatewayaccess import Identity

_record = msgspec.json.Decoder(AnswerRecord)
_NO_ARGUMENTS: dict[str, Any] = {}  # a model call of no task's (read by no link)
MAX_ROUTES = 4096  # routes kept (a model, an endpoint); past it, made again
_PASSED_ON = frozenset(PASSED_ON)


class UpstreamError(Exception):
    """The upstream's answer that was not a success, passed on as it came."""

    def __init__(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        super().__init__(f"upstream {status}")  # (its span's error: modelspan.py)
        self.record = AnswerRecord(status, ctype, body.decode(errors="replace"))
        self.headers = headers


class Route(NamedTuple):
    """What calls of a model at an endpoint take that depends on those alone: made once,
    and again when [models] (and its keys) is another object."""

    models: Mapping[str, ModelSpec]  # the gateway's `models` it was made of
    spec: ModelSpec
    counter: ModelCounter
    url: str  # the upstream's
    headers: dict[str, str]  # the upstream's: the content type and the model's key
    sent: bytes | dict[str, str]  # them encoded once (a key that cannot be: on each call)
    key: str | None  # the model's key (hidden in what comes back), the one `sent` holds


class _Request(msgspec.Struct):
    """A request read: whose (its replica, its task attempt or none), its model call (the
    Call's `model`), the request itself and its model's route (None: a model corral does
    not serve)."""

    replica: Replica
    task: Task | None
    model: ModelCall
    request: ModelRequest
    route: Route | None
    endpoint: Endpoint


class ModelClients(Protocol):
    """Who a request is (the MCP gateway's: its per-replica tokens) and its slots."""

    def replica_client(self, token: str) -> Identity | None: ...

    def slot(self, ident: Identity) -> AbstractContextManager[None]: ...


class ModelGateway:
    def __init__(self, tasks: TaskManager, clients: ModelClients,
                 attribution: Attribution) -> None:
        self.tasks = tasks  # their outputs
        self.chain = tasks.worker.chain  # every call passes it
        self.clients = clients  # a token -> the replica it was given to; its slots
        self.attribution = attribution  # a call's task attempt, as the MCP gateway's
        self.models: dict[str, ModelSpec] = {}
        self.keys: dict[str, str | None] = {}
        self.taken: dict[str, str] = {}  # key_env variables taken out of the environment
        self.upstream = Upstream()
        self.counters: dict[str, ModelCounter] = {}
        self._routes: dict[tuple[str, str], Route] = {}  # (model, endpoint)
        self.unknown = 0  # requests refused before a model was known (token, body)
        self.unattributed = 0  # calls of no task attempt (none running, or several)
        self.lean = 0  # requests lean.py took (the rest: aiohttp's)

    # -- configuration --------------------------------------------------------------------
    def configure(self, models: Mapping[str, ModelSpec], base: Path) -> list[str]:
        """Apply [models] (at start and on reload): every key read first, so that a key
        that cannot be read changes nothing (ConfigError). What changed, in words."""
        keys = read_keys(models, base, self.taken)
        said = [f"model {n} added" for n in sorted(set(models) - set(self.models))]
        said += [f"model {n} removed" for n in sorted(set(self.models) - set(models))]
        said += [f"model {n} changed" for n in sorted(set(models) & set(self.models))
                 if models[n] != self.models[n] or keys[n] != self.keys.get(n)]
        self.models, self.keys = dict(models), keys
        return said

    @staticmethod
    def environment(mcp: Mapping[str, str]) -> dict[str, str]:
        """The OpenAI and Anthropic SDKs' base URLs and keys, from the MCP gateway's URL and
        token; none over a unix socket (those SDKs reach TCP addresses alone)."""
        url, token = mcp.get("CORRAL_MCP_URL"), mcp.get("CORRAL_MCP_TOKEN")
        if not url or not token or "CORRAL_MCP_SOCKET" in mcp:
            return {}
        base = url.rpartition("/mcp")[0]
        return {"OPENAI_BASE_URL": f"{base}/v1", "OPENAI_API_KEY": token,
                "ANTHROPIC_BASE_URL": base, "ANTHROPIC_API_KEY": token}

    def mount(self, app: web.Application) -> None:
        for endpoint in ENDPOINTS:
            app.router.add_route("POST", endpoint.path, self._handler(endpoint))

    def _handler(self, endpoint: Endpoint) -> Callable[[web.Request], Any]:
        """aiohttp's handler of `endpoint` (lean.py serves the common shape without it):
        the answer written as lean.py's are, aiohttp given it WrittenResponse."""
        async def handle(request: web.Request) -> web.StreamResponse:
            transport = request.transport
            if transport is None:  # the agent is gone already
                return answers.WrittenResponse(request, 200)
            ex = Exchange(request.protocol, transport, request.headers, request.query, b"",
                          request, request.version >= HttpVersion11)
            made = await self.admit(ex, endpoint)
            if made is not None:  # (aiohttp cancels a handler whose agent hung up)
                call = asyncio.get_running_loop().create_task(made)
                try:
                    await asyncio.shield(call)
                except asyncio.CancelledError:
                    if ex.cancels:  # (not dispatched yet: as lean.py's connection_lost)
                        call.cancel()
                    raise
            return answers.WrittenResponse(request, ex.status)
        return handle

    # -- a call ---------------------------------------------------------------------------
    async def admit(self, ex: Exchange, endpoint: Endpoint
                    ) -> Coroutine[Any, Any, None] | None:
        """aiohttp's request, its body read once its caller is known: as `admit_read`."""
        try:
            found, slot = self._client(ex)
        except ModelRefusal as exc:
            return self._refused(ex, endpoint, exc)
        try:
            raw = await ex.body()
        except BaseException:
            slot.__exit__(None, None, None)
            raise
        return self._admitted(ex, endpoint, found, slot, raw)

    def admit_read(self, ex: Exchange, endpoint: Endpoint
                   ) -> Coroutine[Any, Any, None] | None:
        """The request's call, read, to make; None when it was refused (answered). lean.py's
        request, its body read with its head (judged here without a coroutine of its own).
        A call dispatched goes on to its end when the agent hangs up: the upstream bills
        it whole, so its usage is counted and the agent's slot held until then (else an
        agent that hangs up before a stream's usage would spend unseen)."""
        try:
            found, slot = self._client(ex)
        except ModelRefusal as exc:
            return self._refused(ex, endpoint, exc)
        return self._admitted(ex, endpoint, found, slot, ex.take())

    def _admitted(self, ex: Exchange, endpoint: Endpoint, found: Replica,
                  slot: AbstractContextManager[None], raw: bytes | None
                  ) -> Coroutine[Any, Any, None] | None:
        """The call of the request read, to make, the slot its own to its end (None:
        refused, answered, the slot let go)."""
        try:
            return self._made(ex, self._read(ex, endpoint, found, raw), slot)
        except BaseException as exc:  # (`_made` only makes its coroutine: a refusal is _read's)
            slot.__exit__(None, None, None)
            if isinstance(exc, ModelRefusal):
                return self._refused(ex, endpoint, exc)
            raise

    def _read(self, ex: Exchange, endpoint: Endpoint, found: Replica, raw: bytes | None
              ) -> _Request:
        """The request read (`raw` its body, None: over MAX_BODY): which model it names,
        whose task attempt it is of."""
        if raw is None:
            self.unknown += 1
            raise ModelRefusal(413, f"the request's body is over MAX_BODY ({MAX_BODY} bytes)")
        try:
            read = requests.read(raw, endpoint, self.models)
        except BadBody as exc:
            self.unknown += 1
            raise ModelRefusal(400, exc.message, exc.param, exc.code) from None
        if read is None:
            self.unknown += 1
            raise ModelRefusal(400, f"{endpoint.path} takes a JSON object naming its model")
        route = self._routes.get((read.model, endpoint.path))
        if route is None or route.models is not self.models:
            route = self._route(read.model, endpoint)
        try:  # its task attempt, as the MCP gateway's are told (attribution.py)
            task = self.attribution.task_of(found, mark_of(ex.query))
        except ValueError as exc:
            raise ModelRefusal(400, str(exc)) from None
        except RpcError as exc:
            raise ModelRefusal(404, exc.message) from None
        if task is None:
            self.unattributed += 1
        else:  # (what a retry's same call is known by: a task's alone)
            read = msgspec.structs.replace(read, digest=requests.digest(raw))
        del raw  # (`read.sent` is it, or holds it changed: the body is held once)
        spec = route.spec if route is not None else None
        cost = (read.input_estimate * spec.input_usd_per_mtok + read.output_estimate
                * spec.output_usd_per_mtok) / 1e6 if spec else 0.0  # (its estimate)
        return _Request(found, task, ModelCall(
            endpoint.path, endpoint.format, spec, self.models, read,
            Reservation(read.input_estimate + read.output_estimate, cost), CallUsage(),
            route.counter if route is not None else ModelCounter(), ex.gone),
            read, route, endpoint)

    @staticmethod
    def _refused(ex: Exchange, endpoint: Endpoint, exc: ModelRefusal) -> None:
        answers.refused(ex, endpoint.format, exc.status, exc.message, exc.param, exc.code)

    def _client(self, ex: Exchange) -> tuple[Replica, AbstractContextManager[None]]:
        """Whose the request is (its token), and one of its client's slots, entered."""
        token = credential(ex.headers.get("authorization"), ex.headers.get("x-api-key"))
        client = self.clients.replica_client(token) if token else None
        if client is None or not isinstance(client.replica, Replica):
            self.unknown += 1
            raise ModelRefusal(401, "unauthorized: not a corral model token (corral gives "
                                    "each agent replica its own, as OPENAI_API_KEY and "
                                    "ANTHROPIC_API_KEY)")
        slot = self.clients.slot(client)
        try:
            slot.__enter__()
        except RpcError as exc:
            self.unknown += 1
            raise ModelRefusal(429, f"rate limited: {exc.message}") from None
        return client.replica, slot

    def _route(self, name: str, endpoint: Endpoint) -> Route | None:
        """The upstream of model `name` at this endpoint (kept), None when corral serves
        no such model (whose it is to use: modelview.py)."""
        spec = self.models.get(name)
        if spec is None:
            return None
        key = self.keys.get(name)
        headers = {"content-type": "application/json"}
        if key is not None:
            headers.update(upstream_auth(spec.format, key))
        try:
            sent: bytes | dict[str, str] = fields(headers)
        except UpstreamFailed:  # (its call fails naming the header, as every call does)
            sent = headers
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        route = self._routes[(name, endpoint.path)] = Route(
            self.models, spec, self._counter(name), spec.url.rstrip("/") + endpoint.upstream,
            headers, sent, key)
        return route

    async def _made(self, ex: Exchange, read: _Request,
                    slot: AbstractContextManager[None]) -> None:
        """The call through the chain (on a retry, answered from the task's steps) and its
        answer written back; the call's slot let go at its end."""
        model, counter = read.model, read.model.counter
        made: list[Relay | Whole] = []  # what the dispatch made, when it ran
        task = read.task
        # a call of no task whose agent hangs up before its dispatch is not made (a task's
        # call goes on: its ask, one across the task's retries, outlives its connection)
        ex.cancels = task is None
        said = ex.headers.get("traceparent")  # (a call of no task's span's parent)
        # its arguments, a task's alone: what a retry's same call is known by in its journal
        call = Call(read.replica, read.request.model, _NO_ARGUMENTS if task is None else {
            "endpoint": read.endpoint.path, "body": read.request.digest}, task, meta=None
            if said is None else {"traceparent": said,
                                  "tracestate": ex.headers.get("tracestate")},
            door=MODELS, wire=DoorWire(made=partial(self._forward, ex, read, made)),
            model=model)
        try:
            kept = await self.chain.enter(call)
            if call.task is not None and not made:  # (its span is the step's replay)
                counter.calls += 1
                counter.replayed += 1
                return await answers.replayed(ex, _record.decode(kept))
        except ModelRefusal as exc:
            self.unknown += model.spec is None
            counter.errors += exc.status == 502
            return answers.refused(ex, read.endpoint.format, exc.status, exc.message, exc.param,
                                   exc.code)
        except RpcError as exc:  # the task's step budget (max_step_bytes), said as a 429
            counter.refused += 1
            return answers.refused(ex, read.endpoint.format, _status(exc), exc.message)
        except UpstreamError as exc:
            counter.errors += 1
            return answers.whole(ex, exc.record, exc.headers)
        except StreamCut as exc:
            counter.cut += 1
            return self._cut(call, ex, str(exc))
        else:
            result = made[-1]
            if isinstance(result, Relay):
                return result.finish()
            return answers.whole(ex, result)
        finally:
            model.reservation.release()  # (a call refused or replayed: never settled)
            slot.__exit__(None, None, None)  # (entered by _client)

    def _cut(self, call: Call, ex: Exchange, why: str) -> None:
        call.agent.note(f"model {call.name}: {why}; the agent's stream was cut too, and "
                          "nothing of it journaled")
        ex.cut()

    async def _forward(self, ex: Exchange, read: _Request, made: list[Relay | Whole],
                       call: Call) -> Any:
        """The door's dispatch: a whole answer read (its usage in the call's), or a stream
        relayed, what it made put in `made` (written back by `_made`); a task's call's
        outcome its record (a whole one decoded for its journal alone). A task's call's
        key (steps.py's), the same on every attempt, is sent upstream."""
        ex.cancels = False  # (the upstream bills what it was sent: made to its end)
        route, request, usage = read.route, read.request, read.model.usage
        assert route is not None and isinstance(usage, CallUsage)  # (seen: modelview.py)
        key, idempotency, said = route.key, call.key, ex.headers
        extra: dict[str, str] | None = None  # the call's own headers, after the route's
        # (lean's are a dict of lowercase names: most name none of PASSED_ON)
        if type(said) is not dict or not _PASSED_ON.isdisjoint(said):
            extra = {h: v for h in PASSED_ON if (v := said.get(h)) is not None}
        if idempotency is not None:
            extra = {**(extra or {}), "idempotency-key": idempotency}
        try:
            answer = await self.upstream.send(route.spec, route.url, request.sent,
                                              route.sent, extra)
        except UpstreamDown as exc:
            usage.unanswered = exc.unanswered
            raise ModelRefusal(502, f"model {call.name}: {exc}") from None
        usage.unanswered = answer.unanswered
        ctype = answer.headers.get("content-type", "application/json")
        usage.answered = answer.status < 300
        if request.stream and usage.answered and ctype.startswith(answers.SSE):
            relay = Relay(ex, read.endpoint.format, answer, usage, self._output_of(call),
                          key, None if call.task is None else [])
            made.append(relay)
            try:
                return await relay.run()
            finally:
                answer.release()
        try:
            body = answer.ready()  # (a small answer's whole body came with its head)
            if not answer.ended:
                body += await answer.read()
            body = hidden(body, key)
        except UpstreamFailed as exc:
            raise ModelRefusal(502, f"model {call.name}: {exc}") from None
        finally:
            answer.release()
            usage.passed_bytes(answer.received)  # (what a broken answer is counted by)
        if answer.status >= 300:
            raise UpstreamError(answer.status, body, ctype,
                                hidden_headers(answers.passed_back(answer.headers), key))
        usage.read_body(body)
        usage.complete = True
        made.append(whole := Whole(answer.status, ctype, body))
        return whole.record() if call.task is not None else None

    def _output_of(self, call: Call) -> Callable[[str], None] | None:
        """A live streamed answer's text, into its task's live output as it passes."""
        task = call.task
        if task is None:
            return None
        outputs = self.tasks.outputs

        def told(text: str) -> None:
            if task.running and task.replica is call.agent:
                outputs.put(task, call.agent, text)

        return told

    def _counter(self, name: str) -> ModelCounter:
        counter = self.counters.get(name)
        if counter is None:
            counter = self.counters[name] = ModelCounter()
        return counter

    def stats(self) -> dict[str, Any]:
        return {"models": {n: {k: getattr(c, k) for k in ModelCounter.__slots__}
                           for n, c in sorted(self.counters.items())},
                "refused_unknown": self.unknown, "unattributed": self.unattributed,
                "lean": self.lean,
                "retried": self.upstream.retried}

    async def close(self) -> None:
        await self.upstream.close()


def _status(exc: RpcError) -> int:
    return 429 if exc.code in (jsonrpc.STEP_BUDGET_EXCEEDED, jsonrpc.REFUSED) else 400
