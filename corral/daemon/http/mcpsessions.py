"""The HTTP gateway's sessions and their bounds, per client, per tenant and per gateway
(docs/gateway.md, docs/config.md `[gateway] max_sessions`): at a bound the least recently
used idle session under it makes room; an evicted session's id is told why at its next
request, for the newest KEEP_EVICTED.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol, TypeVar

from ...text import plural

if TYPE_CHECKING:
    from ..gatewayaccess import Identity

KEEP_EVICTED = 1024  # evicted sessions whose id is still told why


class SessionEntry(Protocol):
    ident: Identity
    last_seen: float

    @property
    def busy(self) -> bool: ...


class SessionsFull(Exception):
    """Every session under a bound is busy: the message names the bound."""


S = TypeVar("S", bound=SessionEntry)


class SessionTable(dict[str, S]):
    def __init__(self) -> None:
        super().__init__()
        self._evicted: OrderedDict[str, str] = OrderedDict()  # id -> why
        self.evictions = 0

    def why_gone(self, sid: str) -> str | None:
        return self._evicted.get(sid)

    def make_room(self, ident: Identity, tenant_most: int, most: int) -> list[str]:
        """The sessions to end so that `ident` may open one more under its own bound, its
        tenant's (`tenant_most`, 0: none) and the gateway's (`most`), or SessionsFull.
        Each bound's sessions hold the narrower's: one ended under the narrowest bound
        reached makes room under every wider one."""
        scopes: list[tuple[str, str, int, list[tuple[str, S]]]] = [
            (f"gateway client {ident.name}", "max_sessions_per_client", ident.max_sessions,
             [(sid, s) for sid, s in self.items() if s.ident.name == ident.name])]
        if ident.tenant is not None and tenant_most:
            scopes.append((f"tenant {ident.tenant}", "max_gateway_sessions", tenant_most,
                           [(sid, s) for sid, s in self.items()
                            if s.ident.tenant == ident.tenant]))
        scopes.append(("the gateway", "max_sessions", most, list(self.items())))
        for who, key, bound, held in scopes:
            if len(held) >= bound:
                return self._evict(held, who, key, bound)
        return []

    def _evict(self, held: list[tuple[str, S]], who: str, key: str, bound: int
               ) -> list[str]:
        idle = [(s.last_seen, sid) for sid, s in held if not s.busy]
        if not idle:
            raise SessionsFull(f"{who} has {plural(len(held), 'session')}, every one busy (a "
                               f"call in flight or a stream open): {key} {bound}; end one "
                               "(DELETE) or try again later")
        _, sid = min(idle)
        # one copy of each reason, however many of the ids kept it is told to
        self._evicted[sid] = sys.intern(f"session evicted: {who} was at {key} {bound} and it "
                                        "was the least recently used idle one: initialize again")
        while len(self._evicted) > KEEP_EVICTED:
            self._evicted.popitem(last=False)
        self.evictions += 1
        return [sid]
