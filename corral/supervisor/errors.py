"""The engine's refusals: an operation that failed, an agent that is not there."""

from __future__ import annotations

from collections.abc import Iterable

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..text import closest, listing


class MissingReferent(ValueError):
    """A definition (a workflow, a team) names an agent or a workflow there is not: refused
    as NOT_FOUND (an HTTP 404), where its other faults are INVALID_PARAMS (400)."""


def refused_definition(exc: ValueError, where: str = "") -> RpcError:
    """A definition's fault as a call's error: NOT_FOUND for a referent there is not,
    INVALID_PARAMS for the rest."""
    code = jsonrpc.NOT_FOUND if isinstance(exc, MissingReferent) else jsonrpc.INVALID_PARAMS
    return RpcError(code, f"{where}{exc}")


class SupervisorError(RpcError):
    """An operation on the supervisor failed; `code` is a jsonrpc error code."""


class NoSuchAgent(SupervisorError):
    """`no such agent: NAME`, and what there is instead (`known`; None: nothing said).
    Every refusal of an unknown agent is one, so that a caller limited to some agents is
    told of those alone (daemon.api words it again for such a caller)."""

    def __init__(self, name: str, known: Iterable[str] | None, note: str | None = None
                 ) -> None:
        self.name = name
        self.note = note  # said first in the parentheses: "and no history of one"
        said = [note] if note else []
        if known is not None:
            names = sorted(known)
            near = closest(name, names)
            agent, sep, index = name.partition("#")  # a replica's label, as status prints it
            said.append(f"{name} is a replica of `{agent}`: name the agent"
                        if sep and index.isdecimal() and agent in names else
                        f"did you mean `{near}`?" if near is not None
                        else f"agents: {listing(names)}" if names else "there are no agents")
        super().__init__(jsonrpc.NOT_FOUND, f"no such agent: {jsonrpc.visible(name)}"
                                            + (f" ({'; '.join(said)})" if said else ""))


class UnreadyKept(SupervisorError):
    """A rollout of a failed agent whose new process did not become ready: there was no
    old process to keep serving, so the agent keeps the new spec, and a change that
    records it keeps the record."""
