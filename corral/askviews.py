"""What an ask of the inbox looks like from outside the engine (docs/approvals.md): its
record, as the engine keeps it, the state database stores it and the control methods,
the CLI and the HTTP API show it. Plain Structs, nothing of the engine: the CLI imports
this module."""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class AskKind(enum.StrEnum):
    APPROVAL = "approval"
    QUESTION = "question"


class AskEnd(enum.StrEnum):
    """How an ask ended; the values are the wire's and the database's."""

    APPROVED = "approved"
    DENIED = "denied"
    ANSWERED = "answered"
    TIMED_OUT = "timed_out"
    WITHDRAWN = "withdrawn"  # its task ended while it waited


class AskOrigin(msgspec.Struct):
    """Who asks what: the fields an ask's record and the request that makes it share,
    declared once (`Ask`, `AskRequest`)."""

    kind: AskKind
    tenant: str | None
    task_id: str
    attempt: int
    agent: str
    key: str
    subject: dict[str, Any]


class Ask(AskOrigin, kw_only=True):
    """An ask's record, its origin's fields first. `subject` is what it asks: an
    approval's {"tool": NAME, "arguments": {...}} or {"model": NAME, "cost": USD}; a
    question's {"prompt": TEXT, "schema": {...}}. Once ended: `end`, `ended` (wall
    time), `by` (who decided: a token's caller, a socket peer, or "corral") and `data`
    (an approval's edited arguments as {"arguments": {...}}, a denial's {"reason": TEXT},
    a question's answer), the subject's originals kept as they were."""

    id: str
    created: float
    deadline: float | None = None
    end: AskEnd | None = None
    ended: float | None = None
    by: str | None = None
    data: Any = None

    @property
    def pending(self) -> bool:
        return self.end is None


def what_it_asks(ask: Ask) -> str:
    """One line a person reads: `approval of fs__write_file {"path": ...}`."""
    s = ask.subject
    if ask.kind is AskKind.QUESTION:
        return f"question: {s.get('prompt')}"
    if "tool" in s:
        # a policy rule's or taint's hold says which (supervisor/policy.py); a pin's, that
        # the tool is no longer the one pinned (a rug pull is approved by mistake else)
        pin = s.get("pin")
        why = (f" by policy: {s['policy']}" if "policy" in s else
               "" if not isinstance(pin, dict) else
               f": a new tool whose name looks like pinned {pin['shadows']} (it may shadow "
               "it)" if pin.get("shadows") else
               f": definition changed ({', '.join(pin_changes(pin))} differ)")
        return (f"approval of {s['tool']} "
                f"{msgspec.json.encode(s.get('arguments', {})).decode()}{why}")
    cost = s.get("cost")
    most = f"at most ${cost:.4f}" if isinstance(cost, (int, float)) else "no bound on its cost"
    return f"approval of a call to model {s.get('model')} ({most})"


def pin_changes(pin: dict[str, Any]) -> list[str]:
    """The keys of a drifted tool's definition that differ from its pinned one (an ask's
    `subject.pin`: mcp/pins.py's Drift.subject)."""
    was, now = pin.get("was") or {}, pin.get("now") or {}
    return [k for k in sorted({*was, *now}) if was.get(k) != now.get(k)] or ["nothing"]


class AskRequest(AskOrigin):
    """What a waiting call asks (supervisor/tasks/inbox.py, or a cluster's asks):
    `timeout` seconds from now to its deadline (None: no deadline)."""

    timeout: float | None = None

    def made(self, ask_id: str, now: float, tenant: str | None) -> Ask:
        """The pending ask it makes, made at `now`, of `tenant` (the request's, or the
        one a cluster resolved for it)."""
        origin = {name: getattr(self, name) for name in AskOrigin.__struct_fields__}
        return Ask(**origin | {"tenant": tenant}, id=ask_id, created=now,
                   deadline=None if self.timeout is None else now + self.timeout)
