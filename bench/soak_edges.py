"""The soak's traffic at corral's edges (issue 88): what a tenant's round does besides its
REST work, on the agent it holds.

- **The boundary**: on a round whose agent runs under `egress = "gateways"`, a task tries
  to connect out (a loopback port and an address off the host): each try refused, and
  recorded (`corral_boundary_refusals_total{agent,kind="connect"}` rises by them, read in
  /metrics by the operator's token).
- **Tools through the gateway, under policy**: three calls of `notes__add` over the MCP
  gateway's HTTP door (the replica's token, its attempt's URL): one the operator's
  `[[policy]]` allows, one it denies (the agent reads the rule's error, a `policy` refusal
  recorded), one it holds for approval, which the tenant grants through its inbox.
- **A2A** at `/a2a/AGENT` on the daemon's [http] listener (JSON-RPC): a blocking
  `SendMessage`; a `SendStreamingMessage` whose stream is abandoned after its first event
  (its task still ends, once); a message sent with `returnImmediately` and a push config
  naming the soak's receiver, then `SubscribeToTask` followed to the end, and the end's
  push received.
- **The tenant's event stream** (`/api/v1/events/stream`), read a second and abandoned.

Every answer read is scanned by the cross-tenant watch (bench/soak_views.py), the pushes
too: a tenant's receiver path is its own, and another's task pushed there is a sighting.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from .soak_views import Ledger, Watch

T = TypeVar("T")
WAIT = 60
TOKEN_HEADER = "X-A2A-Notification-Token"
EVENTS_READ = 1.0  # seconds an event stream is read before it is abandoned
FINAL = ("TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED",
         "TASK_STATE_REJECTED")
# the operator's rules the soak's config holds: notes titled so are denied or held
DENIED, HELD = "secret", "ask-first"
POLICY = f"""
[[policy]]
name = "soak-deny"
match = {{ tool = "notes__add" }}
when = {{ "arguments.title" = {{ in = ["{DENIED}"] }} }}
effect = "deny"

[[policy]]
name = "soak-approve"
match = {{ tool = "notes__add" }}
when = {{ "arguments.title" = {{ in = ["{HELD}"] }} }}
effect = "approve"
"""


@dataclass
class EdgeWork:
    """What a tenant's rounds did at the edges."""

    escapes: int = 0  # tasks whose every way out was refused
    refusals: int = 0  # the refusals /metrics counted for them
    tools: int = 0  # tool calls the policy allowed, answered through the gateway
    denials: int = 0  # tool calls the policy denied, the rule named
    approvals: int = 0  # tool calls held and approved
    a2a_sends: int = 0
    abandoned: int = 0  # streams dropped after their first event, their task ended
    subscribes: int = 0  # SubscribeToTask followed to the end
    pushes: int = 0  # ends pushed to the receiver
    events: int = 0  # the tenant's event streams opened, read a moment and abandoned


class Round(Protocol):
    """What of a tenant's thread (bench/soak.py's Tenant) the edges use."""

    ledger: Ledger
    watch: Watch
    halt: threading.Event
    edges: EdgeWork

    def ask(self, verb: str, path: str, body: Any = None) -> tuple[int, Any]: ...

    def failed(self, what: str, why: str) -> None: ...

    def until(self, look: Callable[[], T | None]) -> T | None: ...

    def ended(self, tid: str) -> dict[str, Any] | None: ...


# -- the push receiver -----------------------------------------------------------------------
class Receiver:
    """The tenants' push receiver on a loopback port: `/hook/TENANT` takes TENANT's
    pushes (checked against its token), each body scanned as that tenant's view; the
    states each task was pushed."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.tokens = {t: secrets.token_hex(8) for t in watch.ledgers}
        self.states: dict[str, list[str]] = {}
        self.bad: list[str] = []
        self.cond = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="soak-receiver")

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, tenant: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{tenant}"

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(204)
                self.end_headers()
                receiver.took(self.path.rpartition("/")[2],
                              self.headers.get(TOKEN_HEADER), body)

            def log_message(self, *_: Any) -> None:
                pass

        return Hook

    def took(self, tenant: str, token: str | None, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            self.bad.append(f"not JSON: {raw[:80]!r}")
            return
        if self.tokens.get(tenant) != token:
            self.bad.append(f"a push to {tenant}'s hook without its token")
        self.watch.scan(tenant, "push", body)
        update = body.get("statusUpdate") or {}
        task = update.get("taskId") or (body.get("task") or {}).get("id")
        state = (update.get("status") or (body.get("task") or {}).get("status") or {}
                 ).get("state")
        if task and state:
            with self.cond:
                self.states.setdefault(task, []).append(state)
                self.cond.notify_all()

    def ended(self, task: str, within: float = WAIT) -> list[str] | None:
        """The states pushed of `task` once its end was (None: not within)."""
        with self.cond:
            if self.cond.wait_for(lambda: any(s in FINAL for s in self.states.get(task, ())),
                                  within):
                return self.states.pop(task)
            return None


# -- the operator's /metrics ----------------------------------------------------------------
_SERIES = re.compile(r'^corral_boundary_refusals_total\{([^}]*)\} ([0-9.e+]+)$', re.M)


class Metrics:
    """The operator's reading of /metrics (a token with metrics:read)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.lock = threading.Lock()

    def refusals(self, agent: str, kind: str) -> int:
        with self.lock:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", "/metrics", headers={
                    "Authorization": f"Bearer {self.token}", "Accept": "text/plain"})
                text = conn.getresponse().read().decode()
            finally:
                conn.close()
        want = {"agent": agent, "kind": kind}
        for labels, value in _SERIES.findall(text):
            if dict(re.findall(r'(\w+)="([^"]*)"', labels)) == want:
                return int(float(value))
        return 0


# -- A2A, as JSON-RPC ------------------------------------------------------------------------
class A2a:
    """A tenant's A2A calls at /a2a/AGENT, as its token; each answer scanned."""

    def __init__(self, port: int, token: str, tenant: str, watch: Watch) -> None:
        self.port = port
        self.token = token
        self.tenant = tenant
        self.watch = watch

    def _open(self, agent: str, method: str, params: dict[str, Any]
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT + 30)
        conn.request("POST", f"/a2a/{agent}", json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(),
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
             "A2A-Version": "1.0"})
        return conn, conn.getresponse()

    def call(self, agent: str, method: str, params: dict[str, Any]) -> Any:
        conn, r = self._open(agent, method, params)
        try:
            body = json.loads(r.read())
        finally:
            conn.close()
        self.watch.scan(self.tenant, f"A2A {method}", body)
        return body

    def stream(self, agent: str, method: str, params: dict[str, Any],
               first_only: bool = False) -> list[Any]:
        """A stream's events, to its end (or its first alone: the rest abandoned, the
        connection closed under it)."""
        conn, r = self._open(agent, method, params)
        events: list[Any] = []
        try:
            if not r.headers.get("Content-Type", "").startswith("text/event-stream"):
                events.append(json.loads(r.read()))  # a refusal, as JSON-RPC
            else:
                for line in r:
                    if not line.startswith(b"data:"):
                        continue
                    events.append(json.loads(line[5:]))
                    if first_only or _final(events[-1]):
                        break
        finally:
            conn.close()
        for e in events:
            self.watch.scan(self.tenant, f"A2A {method}", e)
        return events


def _final(event: Any) -> bool:
    result = event.get("result") or {}
    status = (result.get("statusUpdate") or result.get("task") or {}).get("status") or {}
    return status.get("state") in FINAL or "error" in event


def message(mark: str, task_input: dict[str, Any]) -> dict[str, Any]:
    return {"messageId": f"m-{secrets.token_hex(6)}", "role": "ROLE_USER",
            "parts": [{"data": task_input | {"mark": mark}}]}


# -- a round's edges -----------------------------------------------------------------------
class Edges:
    """A tenant's traffic at the edges, on the agent it holds this round."""

    def __init__(self, tenant: Round, a2a: A2a, metrics: Metrics, receiver: Receiver,
                 closed_port: int) -> None:
        self.t = tenant
        self.a2a = a2a
        self.metrics = metrics
        self.receiver = receiver
        self.closed_port = closed_port  # a loopback port the escape tries

    def run(self, name: str, sandboxed: bool) -> None:
        if sandboxed:
            self.escape(name)
        self.tools(name)
        self.send(name)
        self.abandon(name)
        self.subscribe(name)
        self.events()

    def task(self, name: str, task_input: dict[str, Any]) -> dict[str, Any] | None:
        """A task over REST, waited for; its output if it succeeded."""
        mark = self.t.ledger.mark
        status, out = self.t.ask("POST", f"/tasks?wait={WAIT}",
                                 {"agent": name, "input": task_input | {"mark": mark}})
        if isinstance(out, dict) and "task_id" in out:
            self.t.ledger.keep("task", [out["task_id"]])
        if status != 200 or not isinstance(out, dict) or out.get("status") != "succeeded":
            self.t.failed(f"task {task_input['do']}", f"{status} {str(out)[:300]}")
            return None
        return out.get("output")  # type: ignore[no-any-return]

    def escape(self, name: str) -> None:
        before = self.metrics.refusals(name, "connect")
        out = self.task(name, {"do": "escape", "port": self.closed_port})
        if out is None:
            return
        if "connected" in (out["tcp"], out["tcp_out"]):
            self.t.failed("escape", f"a way out was open: {out}")
            return
        got = self.t.until(lambda: n if (n := self.metrics.refusals(name, "connect"))
                           >= before + 2 else None)
        if got is None:
            self.t.failed("escape", f"its refusals were not counted: {before} before, "
                          f"{self.metrics.refusals(name, 'connect')} after ({out})")
            return
        self.t.edges.escapes += 1
        self.t.edges.refusals += got - before

    def tools(self, name: str) -> None:
        mark = self.t.ledger.mark
        own = f"{self.t.ledger.tenant}-note"  # one title each: the notes server stays small
        out = self.task(name, {"do": "tool", "title": own})
        if out is not None:
            if out["tool"] != {"ok": f"stored {own}"}:
                self.t.failed("tool", str(out)[:300])
            else:
                self.t.edges.tools += 1
        before = self.metrics.refusals(name, "policy")
        out = self.task(name, {"do": "tool", "title": DENIED})
        if out is not None:
            if "soak-deny" not in out["tool"].get("error", ""):
                self.t.failed("tool denied", str(out)[:300])
            elif self.t.until(lambda: True if self.metrics.refusals(name, "policy") > before
                              else None) is None:
                self.t.failed("tool denied", "its policy refusal was not counted")
            else:
                self.t.edges.denials += 1
        # held: the tenant approves it through its inbox
        status, sent = self.t.ask("POST", "/tasks", {"agent": name, "input": {
            "do": "tool", "title": HELD, "mark": mark}})
        if not isinstance(sent, dict) or "task_id" not in sent:
            self.t.failed("tool held", f"{status} {str(sent)[:300]}")
            return
        tid = str(sent["task_id"])
        self.t.ledger.keep("task", [tid])
        asked = self.t.until(lambda: next((a["id"] for a in self.t.ask("GET", "/approvals")[1]
                                           .get("asks", []) if a["task_id"] == tid), None))
        if asked is None:
            if not self.t.halt.is_set():
                self.t.failed("tool held", f"task {tid} asked nothing within {WAIT} s")
            return
        self.t.ledger.keep("ask", [asked])
        status, body = self.t.ask("POST", f"/approvals/{asked}/resolve",
                                  {"decision": "approved"})
        if status != 200:
            self.t.failed("tool approve", f"{status} {str(body)[:300]}")
            return
        done = self.t.ended(tid)
        if done is None and self.t.halt.is_set():
            return
        if done is None or done.get("status") != "succeeded" or \
                (done.get("output") or {}).get("tool") != {"ok": f"stored {HELD}"}:
            self.t.failed("tool held", str(done)[:300])
            return
        self.t.edges.approvals += 1

    def send(self, name: str) -> None:
        mark = self.t.ledger.mark
        out = self.a2a.call(name, "SendMessage", {"message": message(mark, {"do": "hello"})})
        task = (out.get("result") or {}).get("task") or {}
        if task.get("id"):
            self.t.ledger.keep("task", [task["id"]])
        if (task.get("status") or {}).get("state") != "TASK_STATE_COMPLETED" or \
                mark not in json.dumps(task.get("artifacts")):
            self.t.failed("a2a send", str(out)[:300])
            return
        self.t.edges.a2a_sends += 1

    def abandon(self, name: str) -> None:
        """A stream dropped after its first event: its task still ends, succeeded."""
        mark = self.t.ledger.mark
        events = self.a2a.stream(name, "SendStreamingMessage", {"message": message(
            mark, {"do": "chunks", "n": 4, "every": 0.25})}, first_only=True)
        first = (events[0].get("result") or {}) if events else {}
        tid = (first.get("task") or {}).get("id") or (first.get("statusUpdate") or {}
                                                      ).get("taskId")
        if not tid:
            self.t.failed("a2a stream", str(events)[:300])
            return
        self.t.ledger.keep("task", [tid])
        done = self.t.ended(tid)
        if done is None and self.t.halt.is_set():
            return
        if done is None or done.get("status") != "succeeded":
            self.t.failed("a2a stream abandoned", f"{tid}: {str(done)[:300]}")
            return
        self.t.edges.abandoned += 1

    def events(self) -> None:
        """The tenant's event stream (`/api/v1/events/stream`), read for a moment and
        abandoned: what it carried scanned."""
        conn = http.client.HTTPConnection("127.0.0.1", self.a2a.port, timeout=EVENTS_READ)
        got = b""
        try:
            conn.request("GET", "/api/v1/events/stream", headers={
                "Authorization": f"Bearer {self.a2a.token}", "Accept": "text/event-stream"})
            r = conn.getresponse()
            if r.status != 200:
                self.t.failed("events stream", f"{r.status} {r.read()[:300]!r}")
                return
            with contextlib.suppress(TimeoutError, OSError):
                got = r.read1(65536)  # type: ignore[attr-defined]
        finally:
            conn.close()
        for line in got.splitlines():
            if line.startswith(b"data:"):
                with contextlib.suppress(ValueError):
                    self.t.watch.scan(self.t.ledger.tenant, "GET /events/stream",
                                      json.loads(line[5:]))
        self.t.edges.events += 1

    def subscribe(self, name: str) -> None:
        """Sent with a push config, answered at once; followed by SubscribeToTask to its
        end; its end pushed."""
        mark = self.t.ledger.mark
        tenant = self.t.ledger.tenant
        out = self.a2a.call(name, "SendMessage", {
            "message": message(mark, {"do": "chunks", "n": 3, "every": 0.2}),
            "configuration": {"returnImmediately": True, "taskPushNotificationConfig": {
                "url": self.receiver.url(tenant), "token": self.receiver.tokens[tenant]}}})
        tid = ((out.get("result") or {}).get("task") or {}).get("id")
        if not tid:
            self.t.failed("a2a push", str(out)[:300])
            return
        self.t.ledger.keep("task", [tid])
        events = self.a2a.stream(name, "SubscribeToTask", {"id": tid})
        last = events[-1] if events else {}
        # a task that ended before the subscription is not subscribed to: said so
        unsupported = (last.get("error") or {}).get("code") == -32004
        if not unsupported and ("error" in last or not _final(last)):
            self.t.failed("a2a subscribe", f"{tid}: {str(events[-3:])[:300]}")
            return
        if not unsupported:
            self.t.edges.subscribes += 1
        states = self.receiver.ended(tid)
        if states is None:
            if not self.t.halt.is_set():
                self.t.failed("a2a push", f"{tid}: its end was not pushed within {WAIT} s")
            return
        # delivered at least once (a receiver dedupes): one end, however often told
        if {s for s in states if s in FINAL} != {"TASK_STATE_COMPLETED"}:
            self.t.failed("a2a push", f"{tid}: pushed {states}")
            return
        self.t.edges.pushes += 1

