"""An attacker's third pass, over the surfaces added with the upgrade's compiled check
(decision 351), a reload's lists of definitions (decision 383) and `stats`' restarts of
removed agents (decision 384): what a less trusted party may make the daemon run, read,
write or show. Against the real daemon, in this process, and the real check, run as
`corral upgrade` runs it; each line of security.md that names a test here is held by it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.daemon.upgrade import IMPORT_VARIABLE, PREFLIGHT

from .conftest import ROOT
from .daemon_harness import hello, in_process

OPERATOR = Caller(via="socket")


@pytest.mark.deadline(120)
async def test_a_tenants_caller_is_refused_the_reload_and_sees_only_its_agents_restarts(
        tmp_path: Path) -> None:
    """A reload's answer lists every workflow, team and schedule of the file, each
    tenant's: a tenant's caller is refused `config.reload` (over the socket as a tenant
    group's peer, over HTTP with a tenant's token holding every scope a tenant may
    hold), while the operator is answered the lists. `stats.get` shows a tenant's caller
    its own agents' rows only; `restarts_removed` is the daemon's, as its other counters
    are (decision 384), and names no agent."""
    import aiohttp

    from .test_http_api import Api

    flows = "".join(f'[workflows.{n}]\n[[workflows.{n}.steps]]\nname = "s"\nagent = "{a}"\n'
                    for n, a in (("aflow", "a-web"), ("bflow", "b-web")))
    agents = hello("a-web", extra='tenant = "a"\n') + hello("b-web", extra='tenant = "b"\n')
    toml = '[tenants.a]\n[tenants.b]\n' + flows + '\n[http]\nlisten = "127.0.0.1:0"\n'
    async with in_process(tmp_path, agents, toml) as d, aiohttp.ClientSession() as session:
        a = Caller(via="socket", uid=4242, tenant="a")
        with pytest.raises(jsonrpc.RpcError) as refused:
            await d.dispatcher.call(a, "config.reload", {})
        assert (refused.value.code, refused.value.message) == (
            jsonrpc.FORBIDDEN, "forbidden: uid 4242 pid -1 is a caller of tenant a: "
                               "config.reload is for callers that see every agent")
        api = Api(d, session)
        made = await d.dispatcher.call(OPERATOR, "tokens.create", {
            "name": "ta", "scopes": ["agents:read", "metrics:read"], "tenant": "a"})
        api.tokens["ta"] = made.token
        status, body, _ = await api.ask("POST", "/config/reload", "ta", {})
        assert (status, body["detail"]) == (
            403, "forbidden: config.reload needs the admin scope, which token ta does not "
                 "hold"), body
        reloaded = await d.dispatcher.call(OPERATOR, "config.reload", {})
        assert sorted(reloaded.workflows["unchanged"]) == ["aflow", "bflow"]
        status, body, _ = await api.ask("GET", "/stats", "ta")
        assert status == 200, body
        assert sorted(body["agents"]) == ["a-web"]
        assert "b-web" not in json.dumps(body) and "bflow" not in json.dumps(body)
        assert body["supervisor"]["restarts_removed"] == 0


MARK = "import pathlib; pathlib.Path({where!r}).write_text('ran')\n"


@pytest.mark.deadline(120)
def test_the_upgrade_check_compiles_no_file_outside_the_install_and_runs_none(
        tmp_path: Path) -> None:
    """The new install's check (`corral upgrade`'s, run as the daemon's user: root)
    compiles the install's byte-code (decision 351). A directory a tenant owns, linked
    into the install as a package, is not entered: nothing is written in it and none of
    its code runs; a module linked to a tenant's file is compiled, never run, and its
    byte-code written in the install's own `__pycache__`. The check answers as before."""
    install = tmp_path / "install"
    shutil.copytree(Path(ROOT) / "corral", install / "corral",
                    ignore=shutil.ignore_patterns("__pycache__"))
    tenant = tmp_path / "tenant"
    tenant.mkdir()
    ran = tmp_path / "ran"
    for name in ("__init__.py", "mod.py"):
        (tenant / name).write_text(MARK.format(where=str(ran)))
    (install / "corral" / "tenantpkg").symlink_to(tenant, target_is_directory=True)
    (install / "corral" / "linked.py").symlink_to(tenant / "mod.py")
    config = tmp_path / "corral.toml"
    config.write_text(hello("web"))
    env = {**os.environ, IMPORT_VARIABLE: str(install)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", PREFLIGHT, str(config)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["compiled"] is True, said
    assert sorted(p.name for p in tenant.iterdir()) == ["__init__.py", "mod.py"]
    assert not ran.exists()
    tag = sys.implementation.cache_tag
    assert (install / "corral" / "__pycache__" / f"linked.{tag}.pyc").is_file()
    assert (install / "corral" / "daemon" / "__pycache__" / f"boot.{tag}.pyc").is_file()


def test_a_tool_calls_span_from_a_template_carries_its_task_id_whole() -> None:
    """A tool call's span is made from a template kept per shape, the task id's length
    among it (branch `ctx`, daemon/otlprecords.py): a task id of the same length in
    characters but not in bytes (a cluster task's id is what its Redis stream entry
    names) is exported whole, as the span made field by field says it, never cut to the
    template's bytes (a cut UTF-8 character is a request every collector refuses)."""
    otlprecords = pytest.importorskip("corral.daemon.otlprecords")
    from corral.daemon.otlp import span
    from corral.supervisor.tracerecords import TOOL, expand

    def record(task_id: str) -> tuple[object, ...]:
        return (TOOL, 0x1234, 0x5678, 77, 88, "search", task_id, 1, "stdio", 5, 1000.0,
                1001.0, None)

    plain = "0192f0c4-aaaa-7bbb-8ccc-dddddddddddd"
    wide = plain[:-1] + "é"  # as many characters, one byte more
    for task_id in (plain, wide):
        r = record(task_id)
        body, spans = otlprecords.encode([(r, True)], "svc", "node")
        s = expand(r, True)[0]
        assert spans == 1 and span(*s[:10]) in body, task_id
        assert task_id.encode() in body, task_id


def test_a_tasks_spans_from_a_template_carry_its_task_id_whole() -> None:
    """A one-attempt task's three spans are made from a template kept per shape, the task
    id's length among it (daemon/otlprecords.py): a task id of the same length in
    characters but not in bytes (a cluster task's id is what its Redis stream entry
    names) is exported whole, byte for byte as otlp.py writes its spans one by one."""
    import time

    import msgspec

    otlprecords = pytest.importorskip("corral.daemon.otlprecords")
    from corral.daemon.traceexport import _RAWS
    from corral.supervisor.tasks import Task, TaskStatus
    from corral.supervisor.tracerecords import TEXT_MAX, expand
    from corral.supervisor.tracing import Tracer
    from corral.taskviews import Attempt
    from corral.tracecontext import TaskTrace, new_trace_id

    from .test_tracing import otlp_request

    def made(task_id: str) -> Task:
        t = Task("echo", msgspec.Raw(b"{}"), 0, 60.0, 0, 0)
        now = time.time()
        t.attempts = (Attempt(0, 4242, now, now + 0.001, "succeeded", None),)
        t.started, t.finished, t.status = now, now + 1, TaskStatus.SUCCEEDED
        t.trace = TaskTrace(new_trace_id(), 0, True, None)
        t.id = task_id
        return t

    plain = "0192f0c4-aaaa-7bbb-8ccc-dddddddddddd"
    wide = plain[:-1] + "é"  # as many characters, one byte more
    tracer = Tracer(capacity=10)
    for t in (made(plain), made(wide)):
        tracer.finished(t)
    ((_, _, frame),) = tracer.take()
    records = msgspec.msgpack.decode(frame)
    batch = [(r, n <= TEXT_MAX)
             for r, n in zip(records, map(len, _RAWS.decode(frame)), strict=True)]
    body, _ = otlprecords.encode(batch, "svc", "host", "1")
    assert body == otlp_request([s for r, short in batch for s in expand(r, short)],
                                "svc", "host", "1")
    assert wide.encode() in body
