"""How a control method is declared: once, by one decorator on its Params Struct, with
everything a front end needs of it: its name, params and result, scope, visibility rule
(daemon/visibility.py), REST routes, CLI command and whether the dashboard calls it.
Every transport is derived from it; nothing else spells the method's name
(tests/test_declarations.py holds that). Imported by every CLI command: it must not pull
in the engine."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

# REGISTRY is not among them: corral.methods' REGISTRY is this one once every domain's
# methods are declared (corral/methods/__init__.py)
__all__ = ["CANCEL", "GOING_AWAY", "ONE", "SCOPES", "Method", "Params", "Resource",
           "method", "named", "rest"]

# what a caller may do (DESIGN section 7); "admin" holds every other
SCOPES = frozenset({"agents:read", "agents:write", "tasks:run", "tasks:read", "logs:read",
                    "events", "mcp:call", "metrics:read", "audit:read", "approvals",
                    "admin"})

# the notification that cancels a request in flight on the control socket
CANCEL = "request.cancel"
# the notification a daemon sends on each control connection before it closes it for
# `corral upgrade`'s exec: {"last_id": the last request it read, or null, "reason"};
# every request it read is answered before it, so one unanswered was not read
GOING_AWAY = "daemon.going_away"


# a Struct, not a dataclass, as Method below
class Resource(msgspec.Struct, frozen=True):
    """One REST route of a method: an HTTP method and path, and where its params come
    from (daemon/http/rest.py serves it, openapi.py describes it)."""

    verb: str
    path: str  # under the API's prefix; {var} parts are params
    summary: str
    # path variable -> the param it fills; "names" takes it as a one-name list
    path_params: dict[str, str] = msgspec.field(default_factory=dict)
    query: tuple[str, ...] = ()  # params the query string may give
    body: tuple[str, ...] = ()  # params the JSON body may give
    idempotent: bool = False  # takes an Idempotency-Key
    stream: str | None = None  # an SSE stream of this notification
    # a paged listing: the query param the answer's `next` is given back in (the
    # response's `Link: <...>; rel="next"`)
    cursor: str | None = None
    # the resource the answer is (or made): a path with {field}s of the answer, sent as
    # the response's Location
    location: str | None = None
    # a field the answer carries only once the work is done: 202 Accepted without it
    # (the work runs on), 200 with it
    done_when: str | None = None
    tag: str = ""
    method: str = ""  # the control method: its declaration's name, given by `method`


ONE = {"name": "names"}  # an agent named by the path, where the method takes a list


def rest(verb: str, path: str, summary: str, **kw: Any) -> Resource:
    """A REST route; each `{var}` in the path fills the param `var` unless said else."""
    kw.setdefault("path_params", {part[1:-1]: part[1:-1] for part in path.split("/")
                                  if part.startswith("{")})
    return Resource(verb, path, summary, tag=path.split("/")[1], **kw)


# a Struct, not a dataclass: every CLI command imports this module, and a dataclass is
# made by generating and compiling its methods
class Method(msgspec.Struct, frozen=True):
    name: str
    params: type[Params]
    mutating: bool
    scope: str
    streaming: bool = False
    endless: bool = False  # streams until the client goes (a follow)
    # what it answers: a Struct, or None for a follow (it never answers), or an open
    # payload (an MCP server's result) as dict[str, Any]
    result: Any = None
    # a param that, when given (not None), needs another method's scope too: param ->
    # that method (what the call then does is what that method does)
    needs: tuple[tuple[str, str], ...] = ()
    # how a caller limited to some agents sees it: a rule of daemon/visibility.py by
    # name; None: only callers that see every agent may call it
    seen: str | None = None
    routes: tuple[Resource, ...] = ()
    cli: str | None = None  # the CLI command that is its front ("submit", "tenant add")
    dashboard: bool = False  # the dashboard's page calls it (or follows it)

    @property
    def doc(self) -> str:
        return (self.params.__doc__ or "").strip()


REGISTRY: dict[str, Method] = {}


def method(name: str, *, scope: str, result: Any, seen: str | None,
           mutating: bool = False, streaming: bool = False, endless: bool = False,
           needs: dict[str, type[Params]] | None = None, routes: tuple[Resource, ...] = (),
           cli: str | None = None, dashboard: bool = False) -> Any:
    """Declare the control method `name` on its Params Struct (a class decorator)."""
    if scope not in SCOPES:  # pragma: no cover - a programming error
        raise RuntimeError(f"method {name}: unknown scope {scope}")

    def register(cls: type[Params]) -> type[Params]:
        if name in REGISTRY:  # pragma: no cover - a programming error
            raise RuntimeError(f"method {name} defined twice")
        declared = Method(
            name, cls, mutating, scope, streaming or endless, endless, result,
            tuple((param, other.declared.name) for param, other in (needs or {}).items()),
            seen, tuple(msgspec.structs.replace(r, method=name) for r in routes), cli, dashboard)
        REGISTRY[name] = declared
        cls.declared = declared
        return cls

    return register


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # the method this Struct is the params of (set by `method`; a base Params has none)
    declared: ClassVar[Method]
    # a `mutating` call answered is a line of the daemon log beside its audit row (not a
    # workflow run's: a submission, as a task's is a row alone; decision 1810)
    logged: ClassVar[bool] = True

    def changes(self) -> bool:
        """Whether this call of a `mutating` method changes state (it is audited then); a
        method whose params can ask for a reading alone says when."""
        return True


def named(request: str | Params, params: Any = None) -> tuple[str, Any]:
    """(the method, its params) of a call: a method's params Struct says which method it
    is of (its declaration)."""
    if isinstance(request, str):
        return request, params
    return type(request).declared.name, request
