"""The model gateway (docs/models.md): OpenAI's Chat Completions and Responses and
Anthropic's Messages served beside the MCP gateway, each request passed to the upstream of
the model it names with the provider's key, which the agent never holds. A call of a task's
attempt is a step of the task: journaled with its answer, answered from the journal on a
retry, its usage counted once (usage.py), whichever end it has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractContextManager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec
from aiohttp import web

from ... import jsonrpc
from ...askviews import Ask, AskEnd, AskKind, AskRequest
from ...jsonrpc import RpcError
from ...ratelimit import TokenBucket
from ...supervisor.config import ModelSpec
from ...supervisor.policy import PolicyGuard
from ...supervisor.replica import Replica
from ...supervisor.tasks.approvals import not_approved
from ...supervisor.tasks.budget import Reservation
from ...supervisor.tasks.model import TaskFinished
from ...supervisor.tasks.replicacalls import ReplicaAsk
from ...supervisor.tasks.steps import MODEL_STEP, CallOrdinals
from ...taskviews import TaskFailure
from ...text import iso_time
from ..attribution import Attribution, mark_of
from ..http.route import MAX_BODY
from . import answers
from . import request as requests
from .answers import AnswerRecord, Exchange, Relay, StreamCut, Whole
from .holds import ModelPolicy, model_policy_of, most_cost, subject, why_held
from .http1 import UpstreamFailed
from .keys import hidden, hidden_headers, read_keys
from .request import BadBody, ModelRequest
from .upstream import Upstream, UpstreamDown
from .usage import CallUsage
from .wire import ENDPOINTS, PASSED_ON, Endpoint, credential, upstream_auth

if TYPE_CHECKING:
    from ...supervisor.agents import Agents
    from ...supervisor.tasks.manager import TaskManager
    from ...supervisor.tasks.model import Task
    from ...supervisor.tracing import Tracer
    from ..gatewayaccess import Identity

_record = msgspec.json.Decoder(AnswerRecord)
MAX_ROUTES = 4096  # routes kept (an agent, a model, an endpoint); past it, made again


class ModelRefusal(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param  # (OpenAI's error names the request's member at fault)
        self.code = code


class UpstreamError(Exception):
    """The upstream's answer that was not a success, passed on as it came."""

    def __init__(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        super().__init__(status)
        self.record = AnswerRecord(status, ctype, body.decode(errors="replace"))
        self.headers = headers


class Route(NamedTuple):
    """What an agent's calls of a model at an endpoint take that depends on those alone,
    its use checked (`_usable`): made once, and again when [models] (and its keys) or
    the agent's spec is another object."""

    models: Mapping[str, ModelSpec]  # the gateway's `models` it was made of
    agent: object  # the replica's spec it was made of
    spec: ModelSpec
    counter: ModelCounter
    url: str  # the upstream's
    headers: dict[str, str]  # the upstream's: the content type and the model's key


class ModelCall(NamedTuple):
    """One admitted request: whose, of which model, to which endpoint, and its body
    (held once, as it goes upstream: request.py)."""

    endpoint: Endpoint
    name: str
    spec: ModelSpec
    replica: Replica
    task: Task | None
    request: ModelRequest
    reservation: Reservation  # its estimate, held against its budgets until its end
    route: Route


class ModelClients(Protocol):
    """Who a request is (the MCP gateway's: its per-replica tokens) and its slots."""

    def replica_client(self, token: str) -> Identity | None: ...

    def slot(self, ident: Identity) -> AbstractContextManager[None]: ...


class ModelCounter:
    __slots__ = ("calls", "cut", "errors", "input_tokens", "output_tokens", "refused",
                 "replayed")

    def __init__(self) -> None:
        self.calls = self.replayed = self.errors = self.cut = self.refused = 0
        self.input_tokens = self.output_tokens = 0


class ModelGateway:
    def __init__(self, tasks: TaskManager, agents: Agents, clients: ModelClients,
                 attribution: Attribution, tracer: Tracer | None = None,
                 guard: PolicyGuard | None = None) -> None:
        self.tasks = tasks  # their steps and budgets
        self.guard = guard  # the policy rules and taint (supervisor/policy.py)
        self.agents = agents
        self.clients = clients  # a token -> the replica it was given to; its slots
        self.attribution = attribution  # a call's task attempt, as the MCP gateway's
        self.tracer = tracer  # with [tracing]: a call's span under its attempt
        self.models: dict[str, ModelSpec] = {}
        self.keys: dict[str, str | None] = {}
        self.taken: dict[str, str] = {}  # key_env variables taken out of the environment
        self.upstream = Upstream()
        self.rates: dict[tuple[str, str], TokenBucket] = {}  # (model, tenant)
        self.counters: dict[str, ModelCounter] = {}
        self._routes: dict[tuple[str, str, str], Route] = {}  # (agent, model, endpoint)
        self.unknown = 0  # requests refused before a model was known (token, body)
        self.unattributed = 0  # calls of no task attempt (none running, or several)
        self.lean = 0  # requests lean.py took (the rest: aiohttp's)
        # a held call's ask key: its place among its attempt's same calls (approvals.py's)
        self._ordinals = CallOrdinals()
        self.stream = tasks.stream
        # told of a task's end while a task's held calls are counted here
        self._ends = tasks.stream.subscribe(self._finished, TaskFinished, listening=False)

    def _finished(self, e: TaskFinished) -> None:
        self._ordinals.forget(e.task.id)
        if not self._ordinals:
            self.stream.listen(self._ends, False)

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
        self.rates.clear()
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
                          request)
            made = await self.admit(ex, endpoint)
            if made is not None:  # (aiohttp cancels a handler whose agent hung up)
                await asyncio.shield(asyncio.get_running_loop().create_task(made))
            return answers.WrittenResponse(request, ex.status)
        return handle

    # -- a call ---------------------------------------------------------------------------
    async def admit(self, ex: Exchange, endpoint: Endpoint
                    ) -> Coroutine[Any, Any, None] | None:
        """The request's call, admitted, to make; None when it was refused (answered).
        An admitted call goes on to its end when the agent hangs up: the upstream bills it
        whole, so its usage is counted and the agent's slot held until then (else an
        agent that hangs up before a stream's usage would spend unseen)."""
        try:
            found, slot = self._client(ex)
            try:
                call = await self._admit(ex, endpoint, found)
            except BaseException:
                slot.__exit__(None, None, None)
                raise
        except ModelRefusal as exc:
            answers.refused(ex, endpoint.format, exc.status, exc.message, exc.param,
                            exc.code)
            return None
        return self._made(ex, call, slot)  # (the slot the call's own to its end)

    async def _made(self, ex: Exchange, call: ModelCall,
                    slot: AbstractContextManager[None]) -> None:
        try:
            await self._answer(ex, call)
        finally:
            call.reservation.release()  # (a call refused or replayed: never settled)
            slot.__exit__(None, None, None)  # (entered by _client)

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

    async def _admit(self, ex: Exchange, endpoint: Endpoint, found: Replica) -> ModelCall:
        """The request checked: which model, whether the agent of `found` may use it
        now (its estimate then held against its budgets until the call's end)."""
        raw = await ex.body()
        if raw is None:
            self.unknown += 1
            raise ModelRefusal(413, f"the request's body is over MAX_BODY ({MAX_BODY} "
                                    "bytes)")
        try:
            read = requests.read(raw, endpoint, self._upstream_name)
        except BadBody as exc:
            self.unknown += 1
            raise ModelRefusal(400, exc.message, exc.param, exc.code) from None
        del raw  # (`read.sent` is it, or holds it changed: the body is held once)
        if read is None:
            self.unknown += 1
            raise ModelRefusal(400, f"{endpoint.path} takes a JSON object naming its model")
        route = self._routes.get((found.name, read.model, endpoint.path))
        if route is None or route.models is not self.models or route.agent is not found.spec:
            route = self._usable(found, read.model, endpoint)
        spec = route.spec
        task = self._attempt(found, ex)
        self._rate(found, read.model, spec)
        kept = Reservation(read.input_estimate + read.output_estimate, read.cost_estimate(
            spec.input_usd_per_mtok, spec.output_usd_per_mtok))
        call = ModelCall(endpoint, read.model, spec, found, task, read, kept, route)
        self._reserve(call)
        return call

    def _upstream_name(self, name: str) -> str | None:
        spec = self.models.get(name)
        return spec.model if spec is not None else None

    def _usable(self, replica: Replica, name: str, endpoint: Endpoint) -> Route:
        """The model the agent of `replica` named, if it is one it may use at this
        endpoint (its route, kept); another tenant's is not found, as one that does not
        exist."""
        spec = self.models.get(name)
        tenant = replica.spec.tenant
        if spec is None or not (spec.shared or spec.tenant == tenant):
            self.unknown += 1
            mine = sorted(n for n, s in self.models.items() if s.shared or s.tenant == tenant)
            raise ModelRefusal(404, f"model {name!r:.80} is not served by corral to agent "
                                    f"{replica.name} (its models: {', '.join(mine) or 'none'})")
        counter = self._counter(name)
        if spec.format != endpoint.format:
            counter.refused += 1
            raise ModelRefusal(400, f"model {name} speaks the {spec.format} format, not that "
                                    f"of {endpoint.path}")
        # an agent's name is its tenant's caller's to choose: a glob naming agents (not
        # `*`) names the model's own tenant's, so that a tenant's agent named to fit a
        # shared model's `ops-*` uses it no more than an unnamed one
        if not any(glob == "*" or (tenant == spec.tenant and fnmatchcase(replica.name, glob))
                   for glob in spec.agents):
            counter.refused += 1
            raise ModelRefusal(403, f"model {name} is not for agent {replica.name} "
                                    f"(models.{name}.agents: {', '.join(spec.agents)})")
        key = self.keys.get(name)
        headers = {"content-type": "application/json"}
        if key is not None:
            headers.update(upstream_auth(spec.format, key))
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        route = self._routes[(replica.name, name, endpoint.path)] = Route(
            self.models, replica.spec, spec, counter, spec.url.rstrip("/") + endpoint.upstream,
            headers)
        return route

    def _rate(self, replica: Replica, name: str, spec: ModelSpec) -> None:
        tenant = replica.spec.tenant
        if spec.rate_per_minute:
            bucket = self.rates.get((name, tenant))
            if bucket is None:
                bucket = self.rates[(name, tenant)] = TokenBucket(spec.rate_per_minute)
            if not bucket.take():
                self._counter(name).refused += 1
                raise ModelRefusal(429, f"rate limited: tenant {tenant} is over model "
                                        f"{name}'s rate_per_minute ({spec.rate_per_minute:g})")

    def _reserve(self, call: ModelCall) -> None:
        """The call's estimate held against the agent's and its tenant's budgets, unless
        what was used and what calls in flight hold already reach one."""
        replica = call.replica
        agent = self.agents.get(replica.name)
        if agent is None:
            return
        kept = self.tasks.budgets.reserve(agent, call.reservation)
        if kept is None:
            return
        self._counter(call.name).refused += 1
        if kept.reserved:
            raise ModelRefusal(429, f"budget exceeded: agent {replica.name}'s "
                                    f"{kept.budget} is {kept.limit:g}, {kept.used:g} used "
                                    f"and {kept.reserved:g} held by its calls in flight "
                                    "(each its estimate until it ends); room again as "
                                    "they end")
        raise ModelRefusal(429, f"budget exceeded: agent {replica.name}'s "
                                f"{kept.budget} is {kept.limit:g}, {kept.used:g} used; "
                                f"room again at {iso_time(kept.until)}")

    def _attempt(self, replica: Replica, ex: Exchange) -> Task | None:
        """The task attempt a call of `replica` is for, as the MCP gateway's are told
        (attribution.py); none is counted."""
        try:
            task = self.attribution.task_of(replica, mark_of(ex.query))
        except ValueError as exc:
            raise ModelRefusal(400, str(exc)) from None
        except RpcError as exc:
            raise ModelRefusal(404, exc.message) from None
        if task is None:
            self.unattributed += 1
        return task

    async def _answer(self, ex: Exchange, call: ModelCall) -> None:
        """The call made (or, on a retry, answered from the task's steps) and its answer
        written back; a live call of a traced task is a span of its attempt."""
        counter = call.route.counter
        counter.calls += 1
        made: list[Relay | Whole] = []  # what `live` made, when it ran
        usage, start = CallUsage(), time.time()

        async def live(idempotency: str | None = None) -> Any:  # (its key: steps.py)
            task, guard = call.task, self.guard
            if task is not None and guard is not None and guard.reads_labels(task):
                await guard.labels.load(task, call.replica)  # (a turn's first call: labels.py)
            asking = self._approval(call)
            if asking is not None:
                await self._approved(ex, call, *asking)
            try:
                made.append(await self._live(ex, call, usage, idempotency))
                kept = made[-1]
                if isinstance(kept, Whole):  # (decoded for a task's journal alone)
                    return kept.record() if call.task is not None else None
                try:
                    return await kept.run()
                finally:
                    kept.answer.release()
            finally:  # every end: whole, cut, timed out, failed, cancelled (usage.py)
                self._count(call, counter, usage)

        error: str | None = None
        try:
            if call.task is None:
                await live()
            else:
                # a retry's same call is known by its endpoint and its body's hash
                same = {"endpoint": call.endpoint.path, "body": call.request.digest}
                kept = await self.tasks.steps.tool_call(
                    call.task, call.replica, MODEL_STEP + call.name, same, live)
                if not made:  # (its span is the step's replay: tracing.py)
                    counter.replayed += 1
                    return await answers.replayed(ex, _record.decode(kept))
        except ModelRefusal as exc:
            counter.errors += exc.status == 502
            error = exc.message
            return answers.refused(ex, call.endpoint.format, exc.status, exc.message,
                                   exc.param, exc.code)
        except RpcError as exc:  # the task's step budget (max_step_bytes), said as a 429
            counter.refused += 1
            error = exc.message
            return answers.refused(ex, call.endpoint.format, _status(exc), exc.message)
        except UpstreamError as exc:
            counter.errors += 1
            error = f"upstream {exc.record.status}"
            return answers.whole(ex, exc.record, exc.headers)
        except StreamCut as exc:
            counter.cut += 1
            error = str(exc)
            return self._cut(call, ex, error)
        finally:
            if made or error is not None:
                self._span(call, start, usage, error)
        result = made[-1]
        if isinstance(result, Relay):
            return await result.finish()
        return answers.whole(ex, result)

    def _approval(self, call: ModelCall) -> tuple[ModelPolicy, str] | None:
        """Whether a live call waits for a person (holds.py): its policy and why, or None
        (most calls: judged here, without a coroutine); ModelRefusal when a rule denies it."""
        task = call.task
        tenant = task.tenant if task is not None and task.tenant is not None \
            else getattr(call.replica.spec, "tenant", None)
        rule = ""
        if self.guard is not None:
            owner = task.id if task is not None else \
                self.tasks.replica_calls.owner_of(call.replica)
            verdict = self.guard.judge(owner, call.replica, tenant, "model", call.name,
                                       {"max_tokens": call.request.bound}, task)
            if verdict.effect == "deny":
                raise ModelRefusal(403, verdict.said(f"model call {call.name}"))
            rule = verdict.rule if verdict.effect == "approve" else ""
        policy = model_policy_of(call.replica, tenant, bool(rule))
        if policy is None:
            return None
        why = rule or why_held(policy, call.name, most_cost(call.request, call.spec))
        return None if why is None else (policy, why)

    async def _approved(self, ex: Exchange, call: ModelCall, policy: ModelPolicy,
                        why: str) -> None:
        """A call the policy holds waits for a person; ModelRefusal when it was not
        approved, or cannot be asked (a cluster's)."""
        task = call.task
        asked = subject(call.name, call.endpoint.path, most_cost(call.request, call.spec),
                        why)
        call.reservation.release()  # (a call waiting for a person holds none of its budgets)
        ask: Ask
        if task is None:
            # the replica's: its incarnation asks, the call waiting meanwhile
            try:
                ask = await self.tasks.replica_calls.ask(call.replica, ReplicaAsk(
                    AskKind.APPROVAL, "model", asked, policy.timeout))
            except RpcError as exc:  # a bound of the inbox's
                raise ModelRefusal(429, exc.message) from None
        else:
            key = "model:" + self._ordinals.key(task, call.name, call.request.digest)
            self.stream.listen(self._ends)
            ask = await self.tasks.person.ask_person(AskRequest(
                AskKind.APPROVAL, task.tenant, task.id, task.attempt, task.agent, key,
                asked, policy.timeout))
        if ask.end is AskEnd.APPROVED:
            if ex.gone():
                raise ModelRefusal(409, f"model call {call.name} was approved after its "
                                        f"agent hung up: not made (ask {ask.id})")
            return self._reserve(call)  # (judged again, at once: no await between)
        words = not_approved(ask, f"model call {call.name}", policy.timeout)
        if ask.end is not AskEnd.WITHDRAWN and self.guard is not None:
            self.guard.not_approved(call.replica, task, task.tenant if task is not None
                                    else getattr(call.replica.spec, "tenant", None),
                                    call.name, why, ask.end is AskEnd.TIMED_OUT)
        how = policy.on_timeout if ask.end is AskEnd.TIMED_OUT else policy.on_deny
        if how == "fail" and ask.end is not AskEnd.WITHDRAWN and task is not None:
            self.tasks.person.fail_task(task, TaskFailure(jsonrpc.TASK_FAILED, words))
        raise ModelRefusal(403, words)

    def _cut(self, call: ModelCall, ex: Exchange, why: str) -> None:
        call.replica.note(f"model {call.name}: {why}; the agent's stream was cut too, and "
                          "nothing of it journaled")
        ex.cut()

    def _span(self, call: ModelCall, start: float, usage: CallUsage,
              error: str | None) -> None:
        """By the GenAI conventions."""
        if self.tracer is None or call.task is None:
            return
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": call.spec.format,
            "gen_ai.request.model": call.name, "corral.model.stream": call.request.stream,
            "gen_ai.usage.input_tokens": usage.input,
            "gen_ai.usage.output_tokens": usage.output}
        if usage.model is not None:
            attrs["gen_ai.response.model"] = usage.model
        self.tracer.model_call(call.task, f"chat {call.name}", start, error, attrs)

    async def _live(self, ex: Exchange, call: ModelCall, usage: CallUsage,
                    idempotency: str | None = None) -> Relay | Whole:
        """A whole answer read (its usage in `usage`), or a stream's relay, not yet run.
        `idempotency`: a task's call's key, the same on every attempt, sent upstream."""
        spec, key, route = call.spec, self.keys.get(call.name), call.route
        headers = route.headers.copy()
        for h in PASSED_ON:
            if (v := ex.headers.get(h)) is not None:
                headers[h] = v
        if idempotency is not None:
            headers["idempotency-key"] = idempotency
        try:
            answer = await self.upstream.send(spec, route.url, call.request.sent, headers)
        except UpstreamDown as exc:
            usage.unanswered = exc.unanswered
            raise ModelRefusal(502, f"model {call.name}: {exc}") from None
        usage.unanswered = answer.unanswered
        ctype = answer.headers.get("content-type", "application/json")
        usage.answered = answer.status < 300
        if call.request.stream and usage.answered and ctype.startswith(answers.SSE):
            return Relay(ex, call.endpoint.format, answer, usage, self._output_of(call),
                         key, record=call.task is not None)
        try:
            body = hidden(await answer.read(), key)
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
        return Whole(answer.status, ctype, body)

    def _output_of(self, call: ModelCall) -> Callable[[str], None] | None:
        """A live streamed answer's text, into its task's live output as it passes."""
        task = call.task
        if task is None:
            return None
        outputs = self.tasks.outputs

        def told(text: str) -> None:
            if task.running and task.replica is call.replica:
                outputs.put(task, call.replica, text)

        return told

    def _count(self, call: ModelCall, counter: ModelCounter, usage: CallUsage) -> None:
        """A live call's usage, settled against its budgets, its estimate's hold let go
        at the same instant (a replayed one's was counted when it was made)."""
        call.reservation.release()
        usage.settle(call.request.input_estimate, call.request.output_estimate)
        if not usage.billed:
            return  # no answer, or an error's: nothing billed that corral knows of
        counter.input_tokens += usage.input
        counter.output_tokens += usage.output
        spec = call.spec
        cost = (usage.input * spec.input_usd_per_mtok +
                usage.output * spec.output_usd_per_mtok) / 1e6
        model, now = usage.model or call.name, time.time()
        budgets = self.tasks.budgets
        if call.task is not None:
            budgets.count(call.task, usage.input, usage.output, cost, model, now)
        else:
            budgets.count_agent(call.replica.name, usage.input, usage.output, cost, model,
                                now)

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
