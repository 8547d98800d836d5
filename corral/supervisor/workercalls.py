"""The handlers of what workers send, each given its method's params decoded into the
method's Struct (workerproto.py). Params that do not fit are refused in the protocol's
words: a request with `-32602`, a notification with a line in the replica's log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .. import jsonrpc
from ..workerproto import FROM_WORKER, METHOD_OF, METHODS, BadParams, WorkerParams, params_of

if TYPE_CHECKING:
    from .replica import Replica

P = TypeVar("P", bound=WorkerParams)


def _method(cls: type[WorkerParams], notification: bool) -> str:
    method = METHOD_OF[cls]
    if method not in FROM_WORKER or METHODS[method].notification != notification:
        kind = "notification" if notification else "request"
        raise ValueError(f"{method} is not a worker's {kind}")
    return method


def on_request(table: dict[str, Callable[[Replica, Any], Any]], cls: type[P],
               handler: Callable[[Replica, P], Any]) -> None:
    """Answer the worker request whose params are `cls` with `handler`."""
    method = _method(cls, notification=False)

    def handle(r: Replica, params: Any) -> Any:
        try:  # (not jsonrpc.invalid_params: each worker request is here, ~1 us a `with`)
            p = params_of(method, cls, params)
        except BadParams as exc:
            raise jsonrpc.RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
        return handler(r, p)

    table[method] = handle


def on_notification(table: dict[str, Callable[[Replica, Any], None]], cls: type[P],
                    handler: Callable[[Replica, P], None],
                    refused: Callable[[Replica, BadParams], None] | None = None) -> None:
    """Hear the worker notification whose params are `cls` with `handler`; params that
    do not fit are noted in the replica's log (and told to `refused`, to count them)."""
    method = _method(cls, notification=True)

    def handle(r: Replica, params: Any) -> None:
        try:
            p = params_of(method, cls, params)
        except BadParams as exc:
            r.note(f"ignored {exc}")
            if refused is not None:
                refused(r, exc)
            return
        handler(r, p)

    table[method] = handle
