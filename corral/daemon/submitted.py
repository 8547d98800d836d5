"""The audit link of a task submitted (DESIGN 28, decision 1250): a submission accepted
is one audit row, whatever door it came by (REST, the A2A door, `/mcp/corral`, the
control socket), written where every door's submission passes (the Dispatcher's
`tasks.submit`, taskhandlers.py) and, as the call chain's rows (audit.py's AuditLink),
through the store's writer alone, no daemon log line. A refused submission is the
Dispatcher's row (a tenant's) and the accepted task its journal row."""

from __future__ import annotations

from .audit import SUBMITTED, Audit
from .caller import A2A_VIA, Caller

# the door a submission came by, by its caller's transport (caller.py's `via`)
DOORS = {"socket": "control socket", "http": "REST", A2A_VIA: "A2A",
         "gateway": "/mcp/corral", "ui": "dashboard"}


def door_of(caller: Caller) -> str:
    return DOORS.get(caller.via, caller.via)


def submitted(audit: Audit, caller: Caller, agent: str, task_id: str) -> None:
    """The row of a submission accepted: who, its door, its agent and its task (names and
    an id: nothing to redact or cut). A caller known by its token or name alone is an
    answered call's cheaper row (`call_row`, the same share of the bound); one with a uid
    and pid (a socket peer, the dashboard's) is a row that says them."""
    params = {"door": door_of(caller), "agent": agent, "task": task_id}
    if caller.uid == -1 and not caller.peer:
        audit.call_row(caller.via, SUBMITTED, params, caller.who, caller.tenant)
    else:
        audit(caller, SUBMITTED, params, "ok", line=False)
