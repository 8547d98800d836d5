"""A definition's life over HTTP and the CLI, shared by the kinds the daemon keeps revisions
of (workflows, teams: daemon/defcatalog.py serves both): tenants' tokens, what a caller may
not see, rollback and removal, the operator's change, the config file's own, the audit, and
a full disk's refusals. Each helper asserts what the kind's own test asserted, word for word
but for the kind's name."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from .daemon_harness import Daemon
from .test_http_api import SOCKET, Api

SCOPES = ["agents:write", "tasks:run", "tasks:read"]


class Ask(Protocol):
    def __call__(self, verb: str, path: str, token: str, body: Any = None
                 ) -> Awaitable[tuple[int, Any]]: ...


async def tenant_tokens(api: Api) -> Ask:
    """Tokens `ta` and `tb` of tenants a and b, `op` the operator's; and a way to ask."""
    for name, tenant in (("ta", "a"), ("tb", "b")):
        made = await api.d.dispatcher.call(SOCKET, "tokens.create", {
            "name": name, "scopes": SCOPES, "tenant": tenant})
        api.tokens[name] = made.token
    await api.token("op", "admin")

    async def ask(verb: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        status, value, _ = await api.ask(verb, path, token, body=body)
        return status, value
    return ask


def per_name(kind: str, name: str, change: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Every call naming one definition: (verb, path, body)."""
    base = f"/{kind}s/{name}"
    return [("GET", base, None), ("PATCH", base, {"set": change}), ("DELETE", base, None),
            ("GET", f"{base}/history", None), ("POST", f"{base}/rollback", {})]


async def unseen(ask: Ask, kind: str, name: str, token: str, change: dict[str, Any],
                 more: Iterable[tuple[str, str, Any]] = ()) -> None:
    """Every call naming it answers as if there were no such definition."""
    for verb, path, payload in [*per_name(kind, name, change), *more]:
        status, body = await ask(verb, path, token, payload)
        assert (status, body["detail"]) == (404, f"no such {kind}: {name}"), (verb, path)


async def rolled_back_removed_restored(ask: Ask, kind: str, name: str, token: str,
                                       change: str, described: tuple[Any, ...],
                                       while_removed: Callable[[], Awaitable[None]] | None
                                       = None) -> None:
    """At revision 2 (`change` from 1): rolled back to 1 (revision 3, `described` as
    (source, revision, tenant, agents, definition)), removed (4; `while_removed` checks
    more then), refused a rollback to the removal or to a revision there is not, rolled
    back to 3 (revision 5)."""
    status, body = await ask("POST", f"/{kind}s/{name}/rollback", token, {})
    assert (status, body) == (200, {"name": name, "restored": 1, "revision": 3,
                                    "change": change})
    status, body = await ask("GET", f"/{kind}s/{name}", token)
    assert (body["source"], body["revision"], body["tenant"], body["agents"],
            body["definition"]) == described
    assert await ask("DELETE", f"/{kind}s/{name}", token) == (200, {"removed": [name]})
    for path in (f"/{kind}s/{name}", f"/{kind}s/{name}/history?limit=0"):
        status, body = await ask("GET", path, token)
        assert (status, body["detail"]) == (404, f"no such {kind}: {name}"), path
    if while_removed is not None:
        await while_removed()
    status, body = await ask("GET", f"/{kind}s/{name}/history", token)
    assert body["current"] is None
    assert [(r["revision"], r["who"], r["change"]) for r in body["revisions"]] == [
        (1, f"token {token}", "created"), (2, f"token {token}", change),
        (3, f"token {token}", f"rollback to revision 1: {change}"),
        (4, f"token {token}", "removed")]
    assert body["revisions"][3]["definition"] is None
    status, body = await ask("POST", f"/{kind}s/{name}/rollback", token, {"revision": 4})
    assert (status, body["detail"]) == (400, f"revision 4 of {kind} {name} removed it: "
                                             "name a revision that defines it")
    status, body = await ask("POST", f"/{kind}s/{name}/rollback", token, {"revision": 9})
    assert (status, body["detail"]) == (404, f"no revision 9 of {kind} {name} (its "
                                             f"revisions kept: 1..4; see `corral {kind}s "
                                             f"history {name}`)")
    status, body = await ask("POST", f"/{kind}s/{name}/rollback", token, {})
    assert (status, body["restored"], body["revision"]) == (200, 3, 5)


async def operators_change_rolled_back(ask: Ask, kind: str, name: str, token: str) -> None:
    """At revision 5: the operator's change of a tenant's definition is in the tenant's
    history (6), and the tenant's to roll back (7)."""
    status, body = await ask("PATCH", f"/{kind}s/{name}", "op",
                             {"set": {"description": "by op"}})
    assert (status, body["revision"], body["change"]) == (
        200, 6, 'description null -> "by op"')
    status, body = await ask("GET", f"/{kind}s/{name}/history?limit=2", token)
    assert [(r["revision"], r["who"]) for r in body["revisions"]] == [
        (5, f"token {token}"), (6, "token op")], body
    status, body = await ask("POST", f"/{kind}s/{name}/rollback", token, {})
    assert (status, body["restored"], body["revision"], body["change"]) == (
        200, 5, 7, 'description "by op" -> null')


async def the_files_own(ask: Ask, kind: str, name: str, change: dict[str, Any]) -> None:
    """A definition of the config file is changed there, not over the API."""
    base = f"/{kind}s/{name}"
    for verb, path, payload, doing in (
            ("PATCH", base, {"set": change}, "change"), ("DELETE", base, None, "remove"),
            ("POST", f"{base}/rollback", {}, "change")):
        status, body = await ask(verb, path, "op", payload)
        assert (status, body["detail"]) == (409, f"{kind} {name} is declared in the config "
                                                 f"file: {doing} it there and `corral "
                                                 "reload`"), path
    status, body = await ask("GET", f"{base}/history", "op")
    assert (status, body["detail"]) == (409, f"{kind} {name} is declared in the config "
                                             "file: its history is the file's")


async def audited(api: Api, kind: str, rows: int) -> list[tuple[str, str | None]]:
    """The changes made, as (method, caller's tenant), oldest first; runs are no change.
    Once `rows` of them are in the table, or 10 s passed: the store's writer thread
    commits a row when it comes to it, which may be after the change was answered (a
    loaded parallel run read the table before the last rollback's row was in it)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        audit = await api.d.dispatcher.call(SOCKET, "audit.list", {"limit": 200})
        changes = [(e.method, e.tenant) for e in audit.entries
                   if e.method.startswith(f"{kind}s.") and e.method != f"{kind}s.run"
                   and e.outcome == "ok"]
        if len(changes) >= rows or asyncio.get_running_loop().time() > deadline:
            return changes
        await asyncio.sleep(0.05)


def lifes_changes(kind: str) -> list[tuple[str, str | None]]:
    """What `audited` holds after tenant a's add, update, then the helpers above."""
    return [(f"{kind}s.{verb}", tenant) for verb, tenant in (
        ("add", "a"), ("update", "a"), ("rollback", "a"), ("remove", "a"),
        ("rollback", "a"), ("update", None), ("rollback", "a"))]


def cli_added_once(d: Daemon, kind: str, path: Path, name: str) -> None:
    r = d.cli(f"{kind}s", "add", str(path))
    assert (r.returncode, r.stdout) == (0, f"added: {name}\n"), r.stderr
    r = d.cli(f"{kind}s", "add", str(path))
    assert (r.returncode, r.stderr.strip()) == (1, f"corral: {kind} {name} already exists")


def cli_history_of_three(d: Daemon, kind: str, name: str) -> None:
    """Revisions 1 and 2, and the current one (3) marked."""
    hist = d.cli(f"{kind}s", "history", name).stdout.splitlines()
    assert [line.split()[0] for line in hist[1:]] == ["1", "2", "*"], hist
    assert hist[3].split()[1] == "3"


def refused_on_a_full_disk(d: Daemon, kind: str, other: Path, name: str,
                           change: str) -> None:
    """Each change refused before it takes effect, with what was not done."""
    from .test_store_faults import disk_full

    db = d.state / "corral.db"
    with disk_full(d):
        for argv, unchanged in (
                (["add", str(other)], "nothing was added"),
                (["update", name, "--set", change], f"{name} was not changed"),
                (["rollback", name], f"{name} was not rolled back"),
                (["remove", name], "nothing was removed")):
            r = d.cli(f"{kind}s", *argv)
            assert (r.returncode, r.stdout, r.stderr) == (1, "", (
                f"corral: state database {db} cannot be written (disk I/O error): "
                f"{unchanged}; free space on its file system, or make it and its "
                f"directory writable by uid {os.geteuid()}\n")), argv
