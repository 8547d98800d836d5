"""The soak in the suite (issue 52, item 5): bench/soak.py's own run, three minutes of
two tenants' churn against one real daemon (agents added and removed under
names both reuse, tasks, session turns, named steps, spawn trees, workflow runs, team
calls, schedules, traces, a reload, a restart and an upgrade), run as a program as an
operator runs it, and its report held to the soak's invariants: nothing of one tenant
ever seen by the other, and the daemon's gauges flat within bounds loose enough for a
busy 2-core machine (below, SUITE_BOUNDS says why each is what it is).

The gauges' fit and the cross-tenant watch are also checked alone, on data whose answer
is known: each would fail on the leak it is there to find.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.soak_fit import GAUGES, Sample, fit
from bench.soak_views import Ledger, Watch

from .conftest import ROOT

# three minutes of one process: in a parallel run it starts first, beside everything else
pytestmark = pytest.mark.long

GAUGE = {g.key: g for g in GAUGES}

# Bounds per hour of the 3-minute soak's slopes: a gauge of the process fitted over the
# last 40 s of each of its three lives (a 20 s warm-up each), a store over the 160 s past
# the first warm-up. Measured on this machine (2 cores, load 10-20 from other work) in
# five runs of this shape and near it: RSS +327 to +612 MiB/h (a daemon's first minute,
# its bounded caches filling), fds -337 to +97 with a 2-se of 200-410 (each agent added
# or removed moves them by 6), threads +66 to +112 (the default executor's threads made
# as they are first needed), the state database +80 to +160 (of which the audit table
# +69 to +118: below), the trace store -4 to +3 (pruned once a minute: a sawtooth). Each
# bound sits at about twice the worst seen, and under the leak it is there to catch: a
# round of churn (an agent added, its work, removed) comes about 6,000 times an hour,
# so an fd or a thread kept per round is 6,000/h, and 1,500 MiB/h is 250 KiB kept per
# round (a run or a removed agent's state held whole). What grows slower than that is
# the 20-minute soak's to find (bench/RESULTS.md): its fit is ten times as long.
SUITE_BOUNDS = {"rss_mib": 1500.0, "fds": 1500.0, "threads": 600.0, "state_db_mib": 40.0,
                "trace_store_mib": 30.0}
# the state database's bound is held apart (below): it grows today
PROCESS_AND_TRACES = ("rss_mib", "fds", "threads", "trace_store_mib")


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    """One run of the soak for the module: (exit status, its JSON report, its table)."""
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    bounds = [a for k, v in SUITE_BOUNDS.items() for a in ("--max-slope", f"{k}={v}")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.soak", "--minutes", "3", "--warmup", "20",
         "--interval", "1", "--restarts", "1", "--upgrades", "1", "--reload-every", "45",
         "--kept", "100", *bounds, "--json", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the soak stops its daemon, which stops its agents
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
    print(stdout, stderr, sep="\n")
    assert out.exists(), stderr
    return proc.returncode, json.loads(out.read_text()), stdout


@pytest.mark.timeout(700)
def test_the_soak_did_its_churn(soaked: tuple[int, dict[str, Any], str]) -> None:
    """The run is what it says: every kind of work done by both tenants, names taken
    from the other tenant, a reload, a restart and an upgrade, and its tasks succeeded."""
    rc, rep, _ = soaked
    # a stop past bench/soak.py's STOP_WAIT: its stack dump is in the soak's stderr, above
    assert rep["stopped"], "the daemon did not stop within STOP_WAIT of SIGTERM"
    assert rc != 2, rep["work"]
    kinds = [e["kind"] for e in rep["events"]]
    assert kinds == ["reload", "restart", "reload", "upgrade", "reload"], rep["events"]
    for tenant, w in rep["work"].items():
        for key in ("rounds", "agents_added", "tasks", "turns", "runs", "team_calls",
                    "spawns"):
            assert w[key] >= 5, (tenant, key, w)
        assert w["failures"] == 0, (tenant, w["first_failures"])
    assert rep["names_taken_from_the_other_tenant"] >= 5
    assert rep["cross_tenant"]["probes"] > 0 and rep["cross_tenant"]["views"] > 0


@pytest.mark.timeout(700)
def test_no_record_of_one_tenant_is_seen_by_the_other(
        soaked: tuple[int, dict[str, Any], str]) -> None:
    _, rep, _ = soaked
    x = rep["cross_tenant"]
    assert x["sightings"] == 0, (x["groups"], x["examples"][:10])


@pytest.mark.timeout(700)
def test_the_daemons_gauges_stay_flat(soaked: tuple[int, dict[str, Any], str]) -> None:
    _, rep, table = soaked
    for key in PROCESS_AND_TRACES:
        g = rep["gauges"][key]
        assert g["samples"] >= 30, (key, g)
        assert g["slope_per_hour"] <= SUITE_BOUNDS[key], (key, g, table)


@pytest.mark.timeout(700)
def test_the_state_database_stays_flat(soaked: tuple[int, dict[str, Any], str]) -> None:
    _, rep, _ = soaked
    g = rep["gauges"]["state_db_mib"]
    assert g["samples"] >= 30, g
    assert g["slope_per_hour"] <= SUITE_BOUNDS["state_db_mib"], (g, rep["state_tables"][:5])


# -- the soak's instruments alone ----------------------------------------------------------
def test_a_fit_takes_the_growth_within_each_life_and_not_a_restarts_drop() -> None:
    """RSS that grows 1 MiB a minute within each life of the daemon and drops at each
    restart has a slope of 60 MiB/h, the drops notwithstanding; the warm-up's samples
    of each life (a steep rise) are left out; a flat one fits 0."""
    samples = []
    for life in range(3):
        for i in range(120):
            t = life * 120.0 + i
            since = float(i)
            rss = (500.0 if since < 20 else 100.0) + since / 60
            samples.append(Sample(t, life, since, {"rss_mib": rss, "fds": 40.0}))
    grows = fit(samples, GAUGE["rss_mib"], warmup=20)
    assert grows is not None and grows.per_hour == pytest.approx(60.0)
    assert grows.samples == 3 * 100
    flat = fit(samples, GAUGE["fds"], warmup=20)
    assert flat is not None and flat.per_hour == pytest.approx(0.0)
    assert fit(samples[:2], GAUGE["fds"], warmup=0) is None  # too few to fit


def test_a_file_gauge_is_fitted_across_lives() -> None:
    """A file outlives the daemon: its growth across restarts is growth."""
    samples = [Sample(float(t), t // 60, float(t % 60), {"state_db_mib": t / 60})
               for t in range(240)]
    slope = fit(samples, GAUGE["state_db_mib"], warmup=30)
    assert slope is not None and slope.per_hour == pytest.approx(60.0)


def test_the_watch_sees_the_other_tenants_ids_mark_and_name_and_an_answered_probe(
        ) -> None:
    acme, globex = Ledger("acme", "acme-1234"), Ledger("globex", "globex-5678")
    tid = "01a2100d-042f-74de-a869-745e5cd7b192"
    acme.keep("task", [tid])
    w = Watch({"acme": acme, "globex": globex})
    w.scan("globex", "GET /tasks", {"tasks": [{"task_id": "01a2100e-0000-0000-0000-"
                                                          "000000000000"}]})
    w.scan("acme", "GET /tasks", {"tasks": [{"task_id": tid}]})  # its own
    assert w.sightings == 0 and w.views == 2
    w.scan("globex", "GET /tasks?agent=chat0", {"tasks": [{"task_id": tid}]})
    w.scan("globex", f"GET /tasks/{tid}/trace", {"trace_id": tid.replace("-", "")})
    w.scan("globex", "POST /tasks", {"output": {"turns": ["acme-1234", "globex-5678"]}})
    w.scan("globex", "GET /agents/chat0/history", {"change": "tenant 'acme' -> 'globex'"})
    w.probed("globex", f"/tasks/{tid}", 404)
    w.probed("globex", f"/tasks/{tid}", 200)
    assert w.sightings == 5 and w.probes == 2
    assert sorted(w.groups) == [
        ("globex", "/tasks/ID", "probe"), ("globex", "GET /agents/chat0/history", "tenant"),
        ("globex", "GET /tasks/ID/trace", "id"), ("globex", "GET /tasks?agent=chat0", "id"),
        ("globex", "POST /tasks", "mark")]
    assert acme.sample("task", 3, random.Random(0)) == [tid]
    assert Path(ROOT / "bench" / "soak_agent.py").exists()
