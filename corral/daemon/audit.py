"""A command's audit row, whatever front end it came by (the Dispatcher's, the gateway's):
a line of the daemon log, and a row of the state database's audit table; and the call
chain's audit link (`AuditLink`): a tool call's row, whatever door it came by."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .. import jsonrpc, redact
from ..jsonrpc import RpcError
from ..supervisor.policy import SHOWN_DEPTH, PolicyVerdict
from ..supervisor.refusals import TOPIC as REFUSED_TOPIC
from ..supervisor.refusals import BoundaryRefused
from ..supervisor.tasks.call import WORKER, Call
from ..supervisor.tasks.interceptors import TaskInterceptor
from ..supervisor.tasks.modelcall import ModelRefusal
from ..text import plural
from .caller import Caller
from .gatewaylimits import RefusalRows
from .logs import LogHub
from .store import TOOL_CALLS, StateStore

HELD = 1000  # rows kept for the table while the database opens (a tenant's refusals)
# a call's row: a tool call by a gateway client (the gateway's doors) or a worker (its
# link), a model call (the model gateway's door), a task submitted (submitted.py)
GATEWAY_CALL, WORKER_CALL, MODEL_CALL, SUBMITTED = TOOL_CALLS
# texts a caller chose cut past TEXT_CUT characters, params past PARAMS_CUT bytes shown by
# size alone: audit_max_rows bounds the table's bytes too (a 2 MB tool name made 6 MB rows)
TEXT_CUT = 1024
PARAMS_CUT = 64 * 1024
# a replica's calls the view link refuses at the worker link, which has no rate: rows
# written a minute, the others counted and said in the next (decision 1743); replicas kept
VIEW_ROWS = 60
REFUSERS = 4096


class Audit:
    """The control socket answers before the state database is open (a tenant's refused
    calls are audited then): their rows are held and written once it is (`to`)."""

    def __init__(self, hub: LogHub) -> None:
        self.hub = hub
        self._store: StateStore | None = None
        self._held: list[tuple[Caller, str, Any, str]] = []

    def call_row(self, via: str, method: str, params: dict[str, str], who: str,
                 tenant: str | None) -> None:
        """An agent's answered call's row (the store's `call_row`: cheap on the loop), its
        params the link's own (no secret; no text past TEXT_CUT: a served model's name,
        an allowed tool's cut)."""
        if self._store is None:
            return self(Caller(via=via, name=who, tenant=tenant), method, params, "ok",
                        line=False)
        return self._store.call_row(method, params, "ok", who, tenant)

    def to(self, store: StateStore) -> None:
        """The table opened: the rows held go to it, and every row from now on."""
        self._store = store
        held, self._held = self._held, []
        for caller, method, shown, outcome in held:
            self._row(store, caller, method, shown, outcome)

    def __call__(self, caller: Caller, method: str, params: Any, outcome: str,
                 line: bool = True) -> None:
        """Written through the store's writer, so a row that cannot be written never changes
        the command's answer; redacted: neither table nor log holds a secret. `line`: a
        line of the daemon log too (not a worker's tool call's: see AuditLink)."""
        encoded = _bounded(redact.params(method, params))
        outcome = _cut(outcome)
        if line:
            self.hub.daemon(f"{caller.who}: {method} {encoded.decode()} -> {outcome}",
                            "audit")
        shown = msgspec.Raw(encoded)  # the row's params as the line's: encoded once
        if self._store is not None:
            self._row(self._store, caller, method, shown, outcome)
        elif len(self._held) < HELD:
            self._held.append((caller, method, shown, outcome))

    def policy(self, d: PolicyVerdict) -> None:
        """A policy decision that denied or held an agent's call: facts by shape, not value."""
        self(Caller(via="policy", name=f"agent {d.replica}", tenant=d.tenant), "policy",
             {"call": d.kind, "name": d.name, "owner": d.owner, "rule": d.rule,
              "shape": d.shape}, d.effect)

    def refusal(self, e: BoundaryRefused, tenant: str | None) -> None:
        """The boundary refused agent `e.agent` (of `tenant`) something: a row of the
        tenant's, so that an agent refused in a loop pushes out its tenant's rows alone."""
        self(Caller(via="boundary", name=f"agent {e.agent}", tenant=tenant), REFUSED_TOPIC,
             {"agent": e.agent, "task": e.task, "kind": e.kind, "target": e.target,
              "unsaid": e.unsaid}, "refused")

    @staticmethod
    def _row(store: StateStore, caller: Caller, method: str, shown: Any,
             outcome: str) -> None:
        store.audit(caller.uid, caller.pid, method, shown, outcome,
                    None if caller.peer else caller.who, caller.tenant)


def call_params(client: str, tool: str, task: str | None) -> dict[str, str]:
    """A tool call's row's params: its client, its tool and its task (if any)."""
    params = {"client": client, "tool": tool}
    if task is not None:
        params["task"] = task
    return params


def outcome_of(result: Any) -> str:
    """A tool call's answer as its row says it."""
    return "isError" if isinstance(result, dict) and result.get("isError") else "ok"


def failure_of(exc: BaseException) -> str:
    """A call's failure as its row says it: a refusal's words (an RpcError's, a model
    call's ModelRefusal's), else what failed."""
    if isinstance(exc, (RpcError, ModelRefusal)):
        return f"error: {exc.message}"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return f"error: {type(exc).__name__}"


class AuditLink(TaskInterceptor):
    """The chain's audit link (tasks/chain.py), around every other link: each tool call
    one row when it is answered, at every door (the worker link's `worker.call` by `agent
    LABEL`, a gateway door's `gateway.call` by `gateway client LABEL`, the model gateway's
    `model.call` by `agent LABEL`; a skill read `gateway.call` naming its skill and method,
    decision 1691), a call some link refused among them. An answered call
    is the store's cheaper `call_row` at every door, and no line of the daemon log (its two
    writes on the loop were two thirds of a worker's row's cost, and a tenth of an MCP
    call's: decision 1630); a refused or failed one is `Audit.__call__`'s row, in its
    words, with its log line at a gateway door. Either goes through the store's writer,
    group-committed off the loop."""

    def __init__(self, audit: Audit) -> None:
        self.audit = audit
        self._refused: dict[str, RefusalRows] = {}  # by replica, at the worker link

    def _failed(self, call: Call, exc: BaseException) -> None:
        """A call that failed or was refused, its row; a replica's refused by the view
        link at the worker link VIEW_ROWS a minute (decision 1743: else an agent writes
        them as fast as its pipe carries them, pushing its tenant's rows out)."""
        outcome = failure_of(exc)
        r = call.replica
        if call.door == WORKER and r is not None and isinstance(exc, RpcError) and \
                exc.code == jsonrpc.TOOL_NOT_ALLOWED:
            rows = self._refused.get(r.label)
            if rows is None:
                if len(self._refused) >= REFUSERS:
                    self._refused.clear()
                rows = self._refused[r.label] = RefusalRows(burst=VIEW_ROWS)
            unwritten = rows.refusal_row(time.monotonic())
            if unwritten is None:
                return
            if unwritten:
                outcome += f" ({plural(unwritten, 'refusal')} by its view before it not written)"
        self.row(call, outcome)

    def intercept_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        if call.model is not None:
            return self._model_call(call, next)
        try:
            answer = next(call)
        except BaseException as exc:
            self._failed(call, exc)
            raise
        if inspect.isawaitable(answer):
            return self._answered(call, answer)
        self.row(call, outcome_of(answer))
        return answer

    async def _model_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        """A model call's row: one answered written as the store's `call_row` (its row
        as `audit` writes it cost 17 us of a whole call's 68, against issue 90's 80)."""
        try:
            answer = await next(call)
        except BaseException as exc:
            self._failed(call, exc)
            raise
        r = call.replica
        assert r is not None  # (a model call's: its agent's)
        label: str = r.label
        params = {"client": label, "model": call.name}
        if call.task is not None:
            params["task"] = call.task.id
        self.audit.call_row("models", MODEL_CALL, params, f"agent {label}", r.spec.tenant)
        return answer

    async def _answered(self, call: Call, answer: Awaitable[Any]) -> Any:
        try:
            result = await answer
        except BaseException as exc:
            self._failed(call, exc)
            raise
        self.row(call, outcome_of(result))
        return result

    def row(self, call: Call, outcome: str) -> None:
        r = call.replica
        who = NO_PEER
        tenant: str | None
        if r is not None:
            label: str = r.label
            tenant = r.spec.tenant
        else:  # a gateway client's, no agent's: its process too, where its socket says
            client = call.client
            assert client is not None
            label, tenant, who = client.name, client.tenant, client.who
        if call.skill is not None:  # a skill read: its skill's SERVER__SKILL, its method
            self.audit(Caller(via="gateway", uid=who[0], pid=who[1], tenant=tenant,
                              name=f"gateway client {label}"), GATEWAY_CALL,
                       {"client": label, "skill": _cut(call.name), "read": call.skill},
                       outcome, line=outcome != "ok")
            return None
        task = call.task.id if call.task is not None else None
        worker, name = call.door == WORKER, call.name
        if outcome == "ok" and who == NO_PEER:  # answered: every door's hot path, cheaper
            params = {"client": label, "tool": name if len(name) <= TEXT_CUT else _cut(name)}
            if task is not None:
                params["task"] = task
            if worker:
                return self.audit.call_row("worker", WORKER_CALL, params, f"agent {label}",
                                           tenant)
            return self.audit.call_row("gateway", GATEWAY_CALL, params,
                                       f"gateway client {label}", tenant)
        params = call_params(label, name, task)
        if worker:
            self.audit(Caller(via="worker", name=f"agent {label}", tenant=tenant),
                       WORKER_CALL, params, outcome, line=False)
        elif call.model is not None:  # the model gateway's: its model, not a tool
            params["model"] = params.pop("tool")
            self.audit(Caller(via="models", name=f"agent {label}", tenant=tenant),
                       MODEL_CALL, params, outcome, line=False)
        else:
            gateway_call(self.audit, label, tenant, name, task, outcome, who)


NO_PEER = (-1, -1)  # a caller whose process its socket does not say


def gateway_call(audit: Callable[..., None], client: str, tenant: str | None, tool: str,
                 task: str | None, outcome: str, who: tuple[int, int] = NO_PEER) -> None:
    """A gateway client's tool call's row: the audit link's of a call that passed the
    chain and was refused or failed, or was answered to a client whose process is known
    (the local socket's: its uid and pid kept, decision 1580), and the gateway's own of a
    refusal at its door (its limits) that never enters the chain; `who`: the client
    process's uid and pid, if known. A line of the daemon log too, unless it was
    answered (as no answered call at any door is: decision 1630)."""
    audit(Caller(via="gateway", uid=who[0], pid=who[1], tenant=tenant,
                 name=f"gateway client {client}"), GATEWAY_CALL,
          call_params(client, tool, task), outcome, line=outcome != "ok")


def _cut(text: str) -> str:
    if len(text) <= TEXT_CUT:
        return text
    return f"{text[:TEXT_CUT]}… (cut: {len(text)} characters)"


def _bounded(shown: Any) -> bytes:
    """`shown`'s JSON, each text in it cut (keys too), and past PARAMS_CUT bytes its size
    alone (encoded once: a row is written at every gateway call); below SHOWN_DEPTH,
    "..."."""
    raw = msgspec.json.encode(shown)
    if len(raw) <= TEXT_CUT:  # (most rows: nothing in them to cut)
        return raw
    raw = msgspec.json.encode(_cut_deep(msgspec.json.decode(raw), 0))
    return raw if len(raw) <= PARAMS_CUT else \
        msgspec.json.encode({"cut": f"params of {len(raw)} bytes"})


def _cut_deep(v: Any, depth: int) -> Any:
    """(Of the module: nested in _bounded, it held itself through its closure, a cycle
    made at every row and left to the collector.)"""
    if isinstance(v, str):
        return _cut(v)
    if isinstance(v, dict):
        return {_cut(str(k)): _cut_deep(x, depth + 1) for k, x in v.items()} \
            if depth < SHOWN_DEPTH else "..."
    if isinstance(v, (list, tuple)):
        return [_cut_deep(x, depth + 1) for x in v] if depth < SHOWN_DEPTH else "..."
    return v
