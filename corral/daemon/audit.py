"""A command's audit row, whatever front end it came by (the Dispatcher's, the gateway's):
a line of the daemon log, and a row of the state database's audit table."""

from __future__ import annotations

from typing import Any

import msgspec

from .. import redact
from ..supervisor.policy import PolicyVerdict
from .caller import Caller
from .logs import LogHub
from .store import StateStore

HELD = 1000  # rows kept for the table while the database opens (a tenant's refusals)


class Audit:
    """The control socket answers before the state database is open (a tenant's refused
    calls are audited then): their rows are held and written once it is (`to`)."""

    def __init__(self, hub: LogHub) -> None:
        self.hub = hub
        self._store: StateStore | None = None
        self._held: list[tuple[Caller, str, Any, str]] = []

    def to(self, store: StateStore) -> None:
        """The table opened: the rows held go to it, and every row from now on."""
        self._store = store
        held, self._held = self._held, []
        for caller, method, shown, outcome in held:
            self._row(store, caller, method, shown, outcome)

    def __call__(self, caller: Caller, method: str, params: Any, outcome: str) -> None:
        """Written through the store's writer, so a row that cannot be written never
        changes the command's answer (it is kept and written when the database can be:
        StoreWriter). Params that carry specs are written by the one rule (redact.py):
        neither the table nor the log holds a secret value."""
        shown = redact.params(method, params)
        text = f"{caller.who}: {method} {msgspec.json.encode(shown).decode()} -> {outcome}"
        self.hub.daemon(text, "audit")
        if self._store is not None:
            self._row(self._store, caller, method, shown, outcome)
        elif len(self._held) < HELD:
            self._held.append((caller, method, shown, outcome))

    def policy(self, d: PolicyVerdict) -> None:
        """A policy decision that denied or held an agent's call (supervisor/policy.py),
        as the agent's replica's row: its facts by shape, never their values."""
        self(Caller(via="policy", name=f"agent {d.replica}", tenant=d.tenant), "policy",
             {"call": d.kind, "name": d.name, "owner": d.owner, "rule": d.rule,
              "shape": d.shape}, d.effect)

    @staticmethod
    def _row(store: StateStore, caller: Caller, method: str, shown: Any,
             outcome: str) -> None:
        store.audit(caller.uid, caller.pid, method, shown, outcome,
                    None if caller.peer else caller.who, caller.tenant)
