"""A server's request for input (`input_required`, SEP-2322) passed on to the client a
call was made for: a call that carries an `InputRelay` (the client's capabilities and its
answers to the last round) gets the server's `input_required` back unanswered when the
client declared every capability it needs; else corral answers it as without a relay.
"""

from __future__ import annotations

from typing import Any

import msgspec

INPUT_REQUIRED = "input_required"
# the client capability each kind of input request a caller may answer needs. Not
# roots/list: a server's roots are the operator's, and a gateway client's answer would
# widen what a filesystem server lets it reach; unless the operator says the server's
# callers' roots are theirs (`relay_roots`)
NEEDS = {"elicitation/create": "elicitation", "sampling/createMessage": "sampling"}
ROOTS = {"roots/list": "roots"}


class InputRelay(msgspec.Struct, frozen=True):
    """Who answers a call's input requests: the caller, with these capabilities; and
    its answers to the last round with the server's state (none on the first round)."""

    capabilities: dict[str, Any] = {}
    input_responses: dict[str, Any] | None = None
    request_state: str | None = None
    roots: bool = False  # the server's `relay_roots`: the caller answers roots/list too

    def _needs(self) -> dict[str, str]:
        return {**NEEDS, **ROOTS} if self.roots else NEEDS

    def answers(self, asked: Any) -> bool:
        """Whether the caller can answer every one of a server's `inputRequests` (a round
        asking roots is corral's to answer whole, but of a server that relays them)."""
        if not isinstance(asked, dict) or not asked:
            return False
        needs = self._needs()
        for req in asked.values():
            method = req.get("method") if isinstance(req, dict) else None
            need = needs.get(method) if isinstance(method, str) else None
            if need is None or not isinstance(self.capabilities.get(need), dict):
                return False
        return True

    def offered(self) -> dict[str, Any]:
        return {c: self.capabilities[c] for c in self._needs().values()
                if isinstance(self.capabilities.get(c), dict)}

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in params.items()
               if k not in ("inputResponses", "requestState")}
        if self.input_responses is not None:
            out["inputResponses"] = self.input_responses
        if self.request_state is not None:
            out["requestState"] = self.request_state
        return out


def asks_input(result: Any) -> bool:
    return isinstance(result, dict) and result.get("resultType") == INPUT_REQUIRED
