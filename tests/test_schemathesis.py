"""schemathesis against the REST API: the OpenAPI document a real daemon serves at
`/api/v1/openapi.json`, every operation (but the endless streams), positive and negative
examples, every check schemathesis has, with an admin token made by `corral token
create`. A server error, a status or header the document does not name, a body that does
not match its schema, a bad request accepted: each is a defect of the API or of the
generated document."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest

if TYPE_CHECKING:
    import schemathesis

from corral.methods import REGISTRY

from .conftest import ROOT
from .daemon_harness import hello, in_process

# minutes of this file: a parallel run starts it first (tests/conftest.py longest_first)
pytestmark = pytest.mark.long

EXAMPLES = 12  # per operation and mode: bounded, so the run takes well under a minute

# A follow never ends: a request for one would hold the run until its timeout (and a
# run held past the test's own ends the whole suite's process). Taken from the methods'
# declarations, so that a follow added later is left out too; the streams are tested in
# tests/test_http_api.py (ids, Last-Event-ID, bounds).
ENDLESS = {"/api/v1" + route.path for declared in REGISTRY.values() if declared.endless
           for route in declared.routes}

# Checks that cannot pass for an operation, and why: each depends on the host, never on
# the request's shape (the agent and tenant tables are closed schemas from the config's
# Structs, their patches too, with what their checks refuse beyond types: openapi._tables).
# POST /agents: whether a table is accepted depends on the host, not on its shape (the
# command must be an executable on PATH or a file), which no schema can say; the shape
# of the request is still checked (negative cases, the answers).
# POST /packages: whether a path is a package depends on the host's files, not on the
# request's shape.
EXCLUDED = {("POST", "/api/v1/agents"): {"positive_data_acceptance"},
            ("POST", "/api/v1/packages"): {"positive_data_acceptance"}}
# Narrower: refusals excused for an operation only when their message says why, each a
# rule of the host or one between two keys that JSON Schema cannot state (it compares no
# two values); any other refusal of a schema-valid request still fails the run.
# POST /tenants: a tenant's `user` must exist on this host; its memory_high_mb must be at
# most its max_memory_mb.
# POST /tasks: a `not_before` at most MAX_DELAY past this host's clock (the document says
# the bound in words: a static one cannot say now).
# PATCH /agents/{name}: the patched agent's command must be an executable on this host's
# PATH or a file (the run adds agents with check=false, whose commands are not; a patch
# of any key checks the table it makes whole).
# POST /agents/{name}/scale: the fleet's replicas at most this host's max_replicas (a
# [supervisor] setting: the run's daemon has FLEET_MAX).
# POST /workflows: rules between two values (a step's agent, or nested workflow, that
# there is not is a 404, which the document names): a step name used once, a reference
# or join naming an earlier step of the workflow, no cycle. What a step is by itself (its
# kind, a signal's name, a map's or a condition's reference, map or join) the document
# says (openapi._step_rules): its refusal fails the run.
# POST /teams: a team's members, router and leader none a team (one there is not: a
# 404), of one tenant, and the team's name no agent's nor server's; and between two
# values: none the team itself, a rule's member and the default among the members, the
# leader not. What a team is by itself (a member named once, its mode's keys, a rule's
# ref) the document says (openapi._team_rules).
EXCUSED = {("POST", "/api/v1/tenants"): ("user: no such user: ",
                                         "is above max_memory_mb"),
           ("POST", "/api/v1/tasks"): ("days from now",),
           ("PATCH", "/api/v1/agents/{name}"): ("(--no-check to update it anyway)",),
           ("POST", "/api/v1/agents/{name}/scale"): ("(a [supervisor] setting)",),
           ("POST", "/api/v1/workflows"): (": two steps named ", " names no step ",
                                           "which comes after it", ": a cycle of ",
                                           ": join names step "),
           ("POST", "/api/v1/teams"): ("is a team (", "an agent has its name",
                                       "an MCP server has its name",
                                       "(a team's agents are its tenant's)",
                                       "its agents are of more than one tenant",
                                       "is the team itself", "is not a member (members: ",
                                       "is also a member")}
# Path parameters the run gives, not generated: an operation on an agent of a random
# name is a 404 whatever its body, and its body's rules would go untested. The daemon's
# one agent is scaled, within a fleet of FLEET_MAX replicas (few processes to start).
NAMED = {("POST", "/api/v1/agents/{name}/scale"): {"name": "hello"}}
FLEET_MAX = 3
# Mended, not excluded (decision 273): an Idempotency-Key sent again with another request
# is a 409, a conflict with the key's state (schemathesis sends the keys it made again,
# with other bodies); a whole number spelled `2.0` is taken for an integer, as JSON
# Schema reads it (bodies.whole); the run's token is the credentials of the document's
# `bearer` scheme, so ignored_auth probes every operation without it and with a wrong one.
# Not excluded, and said here since no schema states it: PATCH /tenants/{name} and
# PATCH /agents/{name} name a tenant or runtime agent the run has not (404), or one it
# may not change (409: the default tenant undeclared, an agent of the config file).


def excusing(check: Any, why: tuple[str, ...]) -> Any:
    """`check`, but passing a 400 whose detail says one of `why`."""

    def excused(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
        try:
            result: bool | None = check(ctx, response, case)
        except Exception:
            detail = response.json().get("detail", "") if response.status_code == 400 else ""
            if any(w in detail for w in why):
                return None
            raise
        return result

    excused.__name__ = check.__name__
    return excused


async def cli(sock: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral", "--socket", str(sock), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def run(url: str, token: str) -> list[str]:
    """Every operation through schemathesis; what failed, one entry per operation and
    mode. schemathesis is imported here, not at collection (which every pytest-xdist
    worker makes: its import was a third of a collection's CPU; pyproject's addopts
    keep its pytest plugin, which this file does not use, from loading it too)."""
    import schemathesis
    from schemathesis.checks import CHECKS, load_all_checks
    from schemathesis.config._auth import AuthConfig

    load_all_checks()
    checks: list[Any] = list(CHECKS.get_all())
    schema = schemathesis.openapi.from_url(url + "/api/v1/openapi.json")
    # the token as the credentials of the document's `bearer` scheme (not a header of
    # each call, nor a configured header): schemathesis then knows the run's auth is
    # given, not generated, and its ignored_auth check sends each operation once without
    # it and once with a wrong one, expecting 401
    schema.config.auth = AuthConfig(openapi={"bearer": {"bearer": token}})
    failures: list[str] = []
    ops = [op.ok() for op in schema.get_all_operations()]
    assert len(ops) > 30
    for op in ops:
        if op.path in ENDLESS:
            continue
        skip = EXCLUDED.get((op.method.upper(), op.path), set())
        these = [c for c in checks if c.__name__ not in skip]
        why = EXCUSED.get((op.method.upper(), op.path))
        named = NAMED.get((op.method.upper(), op.path), {})
        if why:
            these = [excusing(c, why) if c.__name__ == "positive_data_acceptance" else c
                     for c in these]
        for mode in (schemathesis.GenerationMode.POSITIVE,
                     schemathesis.GenerationMode.NEGATIVE):

            @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                                 derandomize=True,
                                 suppress_health_check=list(hypothesis.HealthCheck),
                                 phases=[hypothesis.Phase.explicit,
                                         hypothesis.Phase.generate])
            @hypothesis.given(case=op.as_strategy(generation_mode=mode))
            def test(case: Any) -> None:  # a schemathesis.Case
                case.path_parameters = {**(case.path_parameters or {}), **named}  # noqa: B023
                case.call_and_validate(base_url=url, checks=these, timeout=30)  # noqa: B023

            try:
                test()
            except hypothesis.errors.Unsatisfiable:
                # nothing of this operation can be made invalid (no params, or only
                # path params whose every string is valid): no negative case exists
                pass
            except (Exception, BaseExceptionGroup) as exc:  # every operation's, at once
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {exc}")
    return failures


# a hang's bound, not the run's pace: its work is bounded (EXAMPLES), and it took 144 s
# alone at load 20 (42 s of CPU, most of it hypothesis drawing the cases), so 300 s was
# within reach beside four other workers at load 30+
@pytest.mark.deadline(600)
@pytest.mark.timeout(600)
async def test_schemathesis_finds_nothing_wrong_with_the_api(tmp_path: Path) -> None:
    async with in_process(tmp_path, hello("hello"),
                          '\n[http]\nlisten = "127.0.0.1:0"\nrate_per_minute = 0\n',
                          supervisor=f"max_replicas = {FLEET_MAX}") as d:
        rc, out, err = await cli(d.services.socket_path, "token", "create",
                                 "schemathesis", "--scope", "admin")
        assert rc == 0, err
        failures = await asyncio.to_thread(run, d.http_server.url, out.strip())
    assert not failures, "\n\n".join(failures)
