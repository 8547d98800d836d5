"""`/metrics` (daemon/http/metrics.py) on a real daemon's HTTP server: the exposition
checked by Debian's promtool and scraped by a real Prometheus, the series and their
labels, a removed agent's series gone, OpenMetrics by negotiation, who may scrape."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from corral import __version__, jsonrpc
from corral.daemon.caller import Caller
from corral.daemon.daemon import Daemon
from corral.daemon.http.auth import BAD_TOKEN
from corral.daemon.tokens import tokens_of
from corral.supervisor import State
from corral.supervisor.addresses import local_listen

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, free_port, hello, in_process

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool: scripts/prometheus.sh")

TOKENS = {"scraper": frozenset({"metrics:read"}), "reader": frozenset({"agents:read"})}
LABELS = {"agent", "tenant", "state", "cause", "outcome", "server", "route", "code", "le",
          "attribution",
          "version", "python"}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, agents: str, http: str = "") -> AsyncIterator[Daemon]:
    async with in_process(tmp_path, agents,
                          f'\n[http]\nlisten = "127.0.0.1:0"\n{http}') as d:
        # real tokens of the state database, as `corral token create` makes them
        tokens = tokens_of(d.services.store)
        d.secrets = {name: (await tokens.create(name, sorted(scopes), None, None))[0]
                     for name, scopes in TOKENS.items()}
        yield d


async def scrape(d: Daemon, token: str | None = "scraper", accept: str | None = None
                 ) -> tuple[int, str, str]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {d.secrets[token]}"  # type: ignore[attr-defined]
    if accept is not None:
        headers["Accept"] = accept
    async with aiohttp.ClientSession() as http, http.get(
            f"{d.http_server.url}/metrics", headers=headers) as r:
        return r.status, r.headers["Content-Type"], await r.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def value(series: dict[Any, float], name: str, **labels: str) -> float | None:
    if "agent" in labels and name.startswith(("corral_agent_", "corral_tasks")):
        labels.setdefault("tenant", "default")  # every agent family's series has one
    return series.get((name, tuple(sorted(labels.items()))))


async def promtool(text: str) -> tuple[int, str]:
    assert PROMTOOL is not None
    proc = await asyncio.create_subprocess_exec(
        PROMTOOL, "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate(text.encode())
    return proc.returncode or 0, out.decode()


@needs_promtool
@pytest.mark.deadline(120)
async def test_the_exposition_passes_promtool_with_the_series_and_no_ids(
        tmp_path: Path) -> None:
    async with running(tmp_path, hello("a", replicas=2) + hello("b")) as d:
        sup = d.sup
        for name, n in (("a", 2), ("b", 1)):
            for i in range(n):
                await sup.wait_state(name, State.READY, replica=i, timeout=20)
        task = sup.tasks.submit("a", {"name": "m"})
        await task.done
        status, kind, text = await scrape(d)
        assert (status, kind) == (200, "text/plain; version=0.0.4; charset=utf-8")
        rc, said = await promtool(text)
        assert (rc, said) == (0, "")
        series = samples(text)
        assert sum(value(series, "corral_agent_replicas", agent="a", state=s) or 0
                   for s in ("ready", "busy", "idle")) == 2
        # the states and outcomes an agent has, no zeros for the others
        assert value(series, "corral_agent_replicas", agent="a", state="failed") is None
        assert value(series, "corral_agent_replicas", agent="b", state="ready") == 1
        assert value(series, "corral_tasks_total", agent="a", outcome="succeeded") == 1
        assert value(series, "corral_tasks_total", agent="b", outcome="succeeded") is None
        assert value(series, "corral_tasks_queued", agent="a") == 0
        assert value(series, "corral_tasks_queued", agent="b") == 0
        # the fleet's task times (per agent, the history has them)
        assert value(series, "corral_task_duration_seconds_count") == 1
        assert value(series, "corral_task_queue_wait_seconds_count") == 1
        assert value(series, "corral_task_duration_seconds_bucket", le="+Inf") == 1
        assert value(series, "corral_agent_resident_memory_bytes", agent="a") is not None
        assert value(series, "corral_agent_cpu_seconds_total", agent="b") is not None
        assert value(series, "corral_build_info", version=__version__,
                     python=platform.python_version()) == 1
        assert value(series, "process_resident_memory_bytes") is not None
        # every label is a name: no task, request or session id
        assert {k for _, labels in series for k, _ in labels} <= LABELS
        assert task.id not in text

        # the requests counted by route pattern, the scrape before this one included
        status, _, text = await scrape(d)
        assert value(samples(text), "corral_http_requests_total", route="/metrics",
                     code="200") == 1

        # a removed agent's series are gone
        await d.dispatcher.call(Caller(via="socket"), "agents.remove", {"names": ["b"]})
        _, _, text = await scrape(d)
        assert not [k for k in samples(text) if dict(k[1]).get("agent") == "b"]
        assert value(samples(text), "corral_tasks_total", agent="a",
                     outcome="succeeded") == 1


@pytest.mark.deadline(60)
async def test_restarts_are_counted_per_agent_by_cause(tmp_path: Path) -> None:
    async with running(tmp_path, hello("a") + hello("b")) as d:
        sup = d.sup
        r = await sup.wait_state("a", State.READY, timeout=20)
        await sup.wait_state("b", State.READY, timeout=20)
        assert r.pid is not None
        os.kill(r.pid, signal.SIGKILL)
        await sup.wait_state("a", State.STARTING, timeout=20)
        await sup.wait_state("a", State.READY, timeout=20)
        _, _, text = await scrape(d)
        series = samples(text)
        assert value(series, "corral_agent_restarts_total", agent="a", cause="crash") == 1
        assert not [k for k in series if k[0] == "corral_agent_restarts_total"
                    and dict(k[1])["agent"] == "b"]


def test_the_per_agent_lines_are_what_prometheus_client_makes_of_the_same_figures(
) -> None:
    """metrics.render writes the per-agent families itself (its encoder costs six times
    as much a line): byte for byte what prometheus_client writes from the same figures,
    in either format, with values its float formatting changes (exponents, counts past a
    million, fractions) and label values it escapes."""
    from prometheus_client.exposition import choose_encoder

    from corral.daemon.http.metrics import (
        OUTCOMES,
        PER_AGENT,
        AgentFigures,
        encode,
        heads,
        render,
    )

    agents = [
        AgentFigures("web-1", {"ready": 2, "busy": 1}, {"crash": 3, "unhealthy": 1},
                     12.25, 123_456_789, dict.fromkeys(OUTCOMES, 0) | {"succeeded": 7,
                                                                       "failed": 2}, 4),
        AgentFigures('odd"\\name\n', {"backoff": 1}, {}, 0.0, 0, None, 0),
        AgentFigures("big", {"ready": 1_000_000}, {"oom": 2_500_000}, 1e-7, 999_999,
                     dict.fromkeys(OUTCOMES, 1_000_001), 1_234_567),
        AgentFigures("none", {}, {}, 3.0, 10**15, dict.fromkeys(OUTCOMES, 0), 0,
                     'acme"\\x\n'),
    ]
    for accept in ("", "application/openmetrics-text; version=1.0.0; charset=utf-8"):
        encoder, content_type = choose_encoder(accept)
        ours = [head + "".join(render(a)[i] for a in agents).encode()
                for i, head in enumerate(heads(content_type))]
        families = [f.empty() for f in PER_AGENT]
        replicas, restarts, cpu, rss, tasks, queued = families
        for a in agents:
            for state, n in a.states.items():
                replicas.add_metric([a.name, a.tenant, state], n)
            for cause, n in a.restarts.items():
                restarts.add_metric([a.name, a.tenant, cause], n)
            cpu.add_metric([a.name, a.tenant], a.cpu_seconds)
            rss.add_metric([a.name, a.tenant], a.rss_bytes)
            for outcome in OUTCOMES:
                if a.counts is not None and a.counts[outcome]:
                    tasks.add_metric([a.name, a.tenant, outcome], a.counts[outcome])
            queued.add_metric([a.name, a.tenant], a.queued)
        theirs = [encode(encoder, [f]) for f in families]
        assert ours == theirs, accept
        assert b"1e+06" in theirs[0] and b"1.000001e+06" in theirs[4]  # (exercised)


@pytest.mark.deadline(60)
async def test_openmetrics_when_the_scraper_asks(tmp_path: Path) -> None:
    async with running(tmp_path, "") as d:
        status, kind, text = await scrape(
            d, accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
        assert status == 200
        assert kind == ("application/openmetrics-text; version=1.0.0; charset=utf-8; "
                        "escaping=underscores")
        assert text.endswith("# EOF\n") and "corral_build_info{" in text
        # promtool reads the text format only; the OpenMetrics parser is strict (and a
        # real Prometheus asks for OpenMetrics first: test_a_real_prometheus_scrapes_it)
        names = {f.name for f in openmetrics_families(text)}
        assert {"corral_build", "corral_http_requests", "process_cpu_seconds"} <= names


@pytest.mark.deadline(60)
async def test_who_may_scrape(tmp_path: Path) -> None:
    async with running(tmp_path, "") as d:
        async with aiohttp.ClientSession() as http:
            url = f"{d.http_server.url}/metrics"
            async with http.get(url) as r:
                body = msgspec.json.decode(await r.read())
                assert (r.status, r.content_type, r.headers["WWW-Authenticate"]) == (
                    401, "application/problem+json", 'Bearer realm="corral"')
                assert body == {"type": "about:blank", "title": "unauthorized",
                                "status": 401, "code": jsonrpc.UNAUTHORIZED,
                                "detail": "unauthorized: /metrics needs a bearer token "
                                          "with the metrics:read scope"}
            async with http.get(url, headers={"Authorization": "Bearer nope"}) as r:
                body = msgspec.json.decode(await r.read())
                assert (r.status, body["detail"], body["code"]) == (401, BAD_TOKEN,
                                                                    jsonrpc.UNAUTHORIZED)
                # a token that is not valid is told how to authenticate, as none is
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="corral"'
            reader = {"Authorization": f"Bearer {d.secrets['reader']}"}  # type: ignore[attr-defined]
            async with http.get(url, headers=reader) as r:
                body = msgspec.json.decode(await r.read())
                assert (r.status, r.content_type) == (403, "application/problem+json")
                assert body == {"type": "about:blank", "title": "forbidden",
                                "status": 403, "code": jsonrpc.FORBIDDEN,
                                "detail": "forbidden: /metrics needs the metrics:read "
                                          "scope, which token reader does not hold"}
        # refusals are counted like any request, by the route's pattern
        _, _, text = await scrape(d)
        series = samples(text)
        assert value(series, "corral_http_requests_total", route="/metrics",
                     code="401") == 2
        assert value(series, "corral_http_requests_total", route="/metrics",
                     code="403") == 1


@pytest.mark.deadline(60)
async def test_metrics_public_on_loopback_needs_no_token(tmp_path: Path) -> None:
    async with running(tmp_path, "", http="metrics_public = true\n") as d:
        status, _, text = await scrape(d, token=None)
        assert status == 200 and "corral_build_info" in text
        # the rest of the server is not made public by it
        async with aiohttp.ClientSession() as http, http.get(
                f"{d.http_server.url}/nothing-here") as r:
            assert r.status == 404
        _, _, text = await scrape(d, token=None)
        assert value(samples(text), "corral_http_requests_total", route="unmatched",
                     code="404") == 1


def test_metrics_public_is_for_loopback_addresses_only() -> None:
    assert local_listen("127.0.0.1:7070") and local_listen("[::1]:7070")
    assert local_listen("localhost:7070") and local_listen("unix:/run/corral/http.sock")
    assert not local_listen("0.0.0.0:7070") and not local_listen("192.0.2.1:7070")
    assert not local_listen("[::]:7070") and not local_listen("example.org:7070")
    assert not local_listen(None)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus: scripts/prometheus.sh")
@pytest.mark.deadline(120)
async def test_a_real_prometheus_scrapes_it(tmp_path: Path) -> None:
    async with running(tmp_path, hello("a")) as d:
        await d.sup.wait_state("a", State.READY, timeout=20)
        target = d.http_server.url.removeprefix("http://")
        secret = d.secrets["scraper"]  # type: ignore[attr-defined]
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: corral
    authorization:
      credentials: {secret}
    static_configs:
      - targets: ["{target}"]
""")
        assert PROMETHEUS is not None
        proc = await asyncio.create_subprocess_exec(
            PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            async with aiohttp.ClientSession() as http:
                result: list[Any] = []
                give_up = asyncio.get_running_loop().time() + 30
                while not result:
                    assert proc.returncode is None, "prometheus exited"
                    if asyncio.get_running_loop().time() > give_up:
                        async with http.get(f"{api}/targets") as r:
                            raise AssertionError(f"no sample scraped within 30 s: "
                                                 f"{await r.text()}")
                    # the server answers once it is up, and the query once it scraped
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{api}/query", params={
                                "query": 'corral_agent_replicas{state="ready"}'}) as r:
                            if r.status == 200:
                                result = (await r.json())["data"]["result"]
                    if not result:
                        await asyncio.sleep(0.2)
                assert result[0]["metric"]["agent"] == "a"
                assert result[0]["value"][1] == "1"
                async with http.get(f"{api}/targets") as r:
                    (t,) = (await r.json())["data"]["activeTargets"]
                assert (t["health"], t["lastError"]) == ("up", "")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.mark.deadline(60)
async def test_a_removed_agents_tasks_stay_counted_and_count_on_when_it_is_back(
        tmp_path: Path) -> None:
    """Counters never go backwards (issue 78: an hour's soak's totals lost exactly its
    runtime agents' tasks): a removed agent's tasks stay in `stats`' total and in
    corral_tasks_total, and the agent added again under its name counts on from them."""
    async with running(tmp_path, hello("a")) as d:
        op = Caller(via="socket")
        spec = {"command": [PY, f"{EXAMPLES}/hello.py"], "env": {"PYTHONPATH": str(ROOT)},
                "backoff_initial": 0.05}
        await d.dispatcher.call(op, "agents.add", {"agents": {"b": spec}, "check": False})
        for _ in range(2):
            await d.sup.tasks.submit("b", {"name": "m"}).done
        await d.dispatcher.call(op, "agents.remove", {"names": ["b"]})
        stats = await d.dispatcher.call(op, "stats.get", {})
        assert "b" not in msgspec.to_builtins(stats)["tasks"]["agents"]
        assert msgspec.to_builtins(stats)["tasks"]["total"]["succeeded"] == 2
        _, _, text = await scrape(d)
        assert value(samples(text), "corral_tasks_total", agent="b",
                     outcome="succeeded") == 2
        await d.dispatcher.call(op, "agents.add", {"agents": {"b": spec}, "check": False})
        await d.sup.tasks.submit("b", {"name": "m"}).done
        _, _, text = await scrape(d)
        assert value(samples(text), "corral_tasks_total", agent="b",
                     outcome="succeeded") == 3
        stats = msgspec.to_builtins(await d.dispatcher.call(op, "stats.get", {}))
        assert stats["tasks"]["agents"]["b"]["succeeded"] == 3
        assert stats["tasks"]["total"]["succeeded"] == 3
