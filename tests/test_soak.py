"""The soak in the suite (issue 52, item 5): bench/soak.py's own run, 84 s of two
tenants' churn against one real daemon (agents added and removed under names both
reuse, tasks, session turns, named steps, spawn trees, workflow runs, team calls,
schedules, traces, three reloads, a restart and an upgrade; issue 88's edges: egress
agents' refused tries out, tool calls through the gateway allowed, denied and approved
by policy, A2A sends, abandoned streams, subscribes and pushes), run as a program as an
operator runs it, and its report held to the soak's invariants: nothing of one tenant
ever seen by the other, nothing left at shutdown, and the daemon's gauges flat within
bounds loose enough for a busy 2-core machine (below, bounds() says why each is what it
is).

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

from bench.soak_fit import GAUGES, Sample, fit, fit_beside
from bench.soak_views import Ledger, Watch

from .conftest import ROOT

# the longest file of the suite: in a parallel run it starts first, beside everything else
pytestmark = pytest.mark.long

GAUGE = {g.key: g for g in GAUGES}

# The run's shape: 84 s, three lives of 28 s (the restart at 28 s, the upgrade at 56),
# each fitted past a 10 s warm-up; a reload in each life. A bounded store is pruned at
# each start of the daemon and once a minute, so a life of a minute or more would show
# the stores growing between two prunes; three short lives keep them fitted across
# prunes, and leave the process's gauges noisier (below: the bounds are wide of that).
SHAPE = ["--minutes", "1.4", "--warmup", "10", "--interval", "0.5", "--restarts", "1",
         "--upgrades", "1", "--reload-every", "14", "--kept", "100"]

# What each gauge of the process is there to catch, kept per round of churn (one
# tenant's agent added, its work done, the agent removed): an fd, a thread, 250 KiB (a
# run or a removed agent's state held whole).
LEAK_PER_ROUND = {"rss_mib": 250 / 1024, "fds": 1.0, "threads": 1.0}
# A bound is this share of the slope its leak makes at the run's own pace (the rounds
# done an hour, both tenants'): a leak kept per round grows as slowly as the rounds come,
# 7,600-8,800 an hour at load 5-14 and 1,900-3,000 beside a busy loop per core and
# load 9-17. Measured in runs of this shape, the slopes (/h) were: RSS +131 to +210
# (2 se 9-50; a young daemon's caches filling), threads 0 to +149 (the default
# executor's threads made as first needed), the fds -950 to +38 with a 2 se of 770-1,400
# fitted alone (each replica alive at a sample holds 6 of them) and +34 (2 se 153)
# fitted beside the agents alive (bench/soak_fit.py's fit_beside). At the slowest pace
# seen, 1,900, the bounds are RSS 280, fds and threads 1,140: above all of that; and
# under each leak: an fd kept per agent added (planted) read +9,800 (2 se 390) at a pace
# of 8,050, and with a thread and 250 KiB kept too, at a pace of 1,900 (load 17), RSS
# +776 and threads +2,455. What grows slower than this is the 20-minute soak's to find.
SHARE = 0.6
# Below a pace, the share of a leak reads less than what a young daemon's 28 s lives grow
# by time alone, whatever its rounds: issue 88's edges made a round ~1.6 times the work,
# and at a pace of 1,009 (load 16, beside a 40-minute soak) RSS read +222 (2 se 23) and
# the fds beside the agents +1,102 (2 se 676). A bound is never below these floors, each
# above that and still below the planted leaks above at a pace of 1,900 or more.
# RSS's floor is above a young daemon's creep in its short lives (its caches and stores
# filling, smoothly, with no step at a life's reload), which a loaded host reads higher
# than a quiet one on a tree with no leak (bench/RESULTS.md, "Soak": fresh clones at
# load read it over the floor it had before), and still below the planted leak above at
# the slowest pace it was read at; a structure kept for each round's names is
# tests/test_churn_forgets.py's census to find, at any pace.
# The threads' floor is above one thread more, made late in a slow run (the default
# executor makes its threads as first needed): a fresh clone's run beside six engineers'
# work, at a pace of 571, read it +429 (2 se 86) against a bound of 343; a thread kept a
# round still reads past it at that pace (about +740, scaled from the planted leak's
# +2,455 at 1,900).
FLOOR = {"rss_mib": 480.0, "fds": 1800.0, "threads": 500.0}
# The stores grow by time more than by round, in a sawtooth: each start of the daemon
# prunes them (0.3-0.5 MiB of the state database in a 28 s life), so their one line
# over the three lives reads what outlives the prunes: the team calls' fixed 10,000 and
# pages not yet reused, the state database +15 to +32 MiB/h, the trace store -1 to +6.
# Fixed bounds, about twice the worst seen, and under the state database's leak, the
# audit table unbounded (+69 to +118 MiB/h beside that, decision 455).
STORES = {"state_db_mib": 60.0, "trace_store_mib": 30.0}
PROCESS_AND_TRACES = ("rss_mib", "fds", "threads", "trace_store_mib")


def past(per_hour: float, stderr: float, bound: float) -> bool:
    """Whether a gauge's slope is above its bound past the fit's noise: less two standard
    errors it is still above. A slow pace leaves the fit few rounds a life, whose phases
    (a replica started, a stream open) sway it: beside a busy loop per core (load 12-22,
    429 rounds an hour) the fds read +2,004/h (2 se 710) and the threads +305 (2 se 143)
    against bounds of 1,800 and 257, on a tree with no leak. A planted leak reads past
    it by far more than its noise (the fds' +9,800, 2 se 390, at a pace of 8,050)."""
    return per_hour - 2 * stderr > bound


def rounds_per_hour(rep: dict[str, Any]) -> float:
    return sum(w["rounds"] for w in rep["work"].values()) / rep["seconds"] * 3600


def bounds(rep: dict[str, Any]) -> dict[str, float]:
    pace = rounds_per_hour(rep)
    return {**{k: max(FLOOR[k], SHARE * leak * pace) for k, leak in LEAK_PER_ROUND.items()},
            **STORES}


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    """One run of the soak for the module: (exit status, its JSON report, its table)."""
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    # the soak's own verdict (its table's) at the pace of a quiet run; the tests' below
    # are at the run's own
    pace = 8000.0
    loose = {**{k: SHARE * leak * pace for k, leak in LEAK_PER_ROUND.items()}, **STORES}
    limits = [a for k, v in loose.items() for a in ("--max-slope", f"{k}={v:g}")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.soak", *SHAPE, *limits, "--json", str(out)],
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
                    "spawns", "asks", "crashes", "caps", "scales"):
            assert w[key] >= 5, (tenant, key, w)
        assert w["failures"] == 0, (tenant, w["first_failures"])
    assert rep["names_taken_from_the_other_tenant"] >= 5
    for tenant, e in rep["edges"].items():
        # every other round's agent is sandboxed; the soak's end may cut a round short
        assert e["escapes"] >= 2 and e["refusals"] >= 2 * e["escapes"], (tenant, e)
        for key in ("tools", "denials", "approvals", "a2a_sends", "abandoned", "subscribes",
                    "pushes", "events"):
            assert e[key] >= 4, (tenant, key, e)


@pytest.mark.timeout(700)
def test_nothing_is_left_at_shutdown(soaked: tuple[int, dict[str, Any], str]) -> None:
    """The daemon answered at the end; no process of its outlived its stop; its state
    and log directories stayed within their bounds; every push was its tenant's."""
    _, rep, _ = soaked
    assert rep["answered_at_end_s"] is not None
    assert rep["processes_below"] > 0 and rep["orphans"] == []
    for key, bound in rep["dir_bounds_mib"].items():
        assert rep["dirs"][key]["max"] <= bound, (key, rep["dirs"], bound)
    assert rep["pushes_refused"] == []
    assert rep["cross_tenant"]["probes"] > 0 and rep["cross_tenant"]["views"] > 0


@pytest.mark.timeout(700)
def test_no_record_of_one_tenant_is_seen_by_the_other(
        soaked: tuple[int, dict[str, Any], str]) -> None:
    _, rep, _ = soaked
    x = rep["cross_tenant"]
    assert x["sightings"] == 0, (x["groups"], x["examples"][:10])
    # each tenant looked right after the restart and the upgrade, before any round
    assert [(e["kind"], e.get("sightings")) for e in rep["events"] if e["kind"] != "reload"
            ] == [("restart", 0), ("upgrade", 0)], rep["events"]


@pytest.mark.timeout(700)
def test_the_daemons_gauges_stay_flat(soaked: tuple[int, dict[str, Any], str]) -> None:
    _, rep, table = soaked
    bound = bounds(rep)
    for key in PROCESS_AND_TRACES:
        g = rep["gauges"][key]
        assert g["samples"] >= 30, (key, g)
        if key == "fds":
            continue  # below, beside the agents alive
        assert not past(g["slope_per_hour"], g["stderr_per_hour"], bound[key]), (
            key, g, bound[key], table)
    samples = [Sample(s["t"], s["life"], s["since_start"], s["values"])
               for s in rep["samples"]]
    fds = fit_beside(samples, GAUGE["fds"], "agents", rep["plan"]["warmup"])
    assert fds is not None and fds.samples >= 30, fds
    assert not past(fds.per_hour, fds.stderr, bound["fds"]), (fds, bound["fds"], table)


@pytest.mark.timeout(700)
def test_the_state_database_stays_flat(soaked: tuple[int, dict[str, Any], str]) -> None:
    _, rep, _ = soaked
    g = rep["gauges"]["state_db_mib"]
    assert g["samples"] >= 30, g
    assert g["slope_per_hour"] <= STORES["state_db_mib"], (g, rep["state_tables"][:5])


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


def test_the_second_half_slope_leaves_the_first_halfs_settling_out() -> None:
    """RSS that rises fast for the first half of an hour's soak (a daemon settling)
    and then 1 MiB a minute fits 60 MiB/h over the second half; each minute's last
    reading is the minute's."""
    from bench.soak import per_minute, second_half

    samples = [Sample(float(t), 0, float(t), {"rss_mib": 100.0 + (
        t / 6 if t < 1800 else 300.0 + (t - 1800) / 60)}) for t in range(0, 3600, 10)]
    half = second_half(samples, 3600.0, warmup=120)
    assert half["from_s"] == 1800 and half["samples"] == 180
    assert half["slope_per_hour"] == pytest.approx(60.0)
    minutes = per_minute(samples, "rss_mib")
    assert len(minutes) == 60 and minutes[0] == round(100 + 50 / 6, 1)
    assert minutes[-1] == round(300.0 + 100 + (3590 - 1800) / 60, 1)


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


def test_the_fds_fitted_beside_the_agents_alive_read_a_leak_and_not_the_agents() -> None:
    """fds that are 40 plus 6 per agent alive at the sample (0 to 2, at random) read flat
    beside the agents however the agents fell, and an fd kept a second reads 3,600/h;
    in each life apart (a restart's drop not growth)."""
    rng = random.Random(7)
    flat, leaking = [], []
    for life in range(3):
        for i in range(60):
            t, since = life * 30.0 + i / 2, i / 2
            agents = float(2 + rng.randrange(3))
            fds = 40.0 + 6 * agents
            flat.append(Sample(t, life, since, {"fds": fds, "agents": agents}))
            leaking.append(Sample(t, life, since, {"fds": fds + since, "agents": agents}))
    still = fit_beside(flat, GAUGE["fds"], "agents", warmup=10)
    assert still is not None and still.per_hour == pytest.approx(0.0, abs=1e-6)
    assert still.samples == 3 * 40
    grows = fit_beside(leaking, GAUGE["fds"], "agents", warmup=10)
    assert grows is not None and grows.per_hour == pytest.approx(3600.0)
    # the agents never moved: the slope alone
    same = [Sample(s.t, s.life, s.since_start, {"fds": 46.0 + s.since_start, "agents": 1.0})
            for s in flat]
    alone = fit_beside(same, GAUGE["fds"], "agents", warmup=10)
    assert alone is not None and alone.per_hour == pytest.approx(3600.0)
    assert fit_beside(flat[:12], GAUGE["fds"], "agents", warmup=10) is None  # too few


def test_a_slope_over_its_bound_by_less_than_its_noise_is_not_past_it() -> None:
    """fds of 40 plus 6 per agent alive, swayed by a few fds at each sample (what is in
    flight then): flat, they can fit a slope over a bound that is within their noise,
    and are not past it; three fds kept a second, swayed alike, are past it."""
    rng = random.Random(12)  # (a fall of the sways that tilts the flat fit over the bound)
    flat, leaking = [], []
    for life in range(3):
        for i in range(60):
            t, since = life * 30.0 + i / 2, i / 2
            agents = float(rng.randrange(3))
            fds = 40.0 + 6 * agents + rng.gauss(0, 10)
            flat.append(Sample(t, life, since, {"fds": fds, "agents": agents}))
            leaking.append(Sample(t, life, since, {"fds": fds + 3 * since, "agents": agents}))
    still = fit_beside(flat, GAUGE["fds"], "agents", warmup=10)
    grows = fit_beside(leaking, GAUGE["fds"], "agents", warmup=10)
    assert still is not None and grows is not None
    bound = FLOOR["fds"]
    assert still.per_hour > bound and not past(still.per_hour, still.stderr, bound), still
    assert past(grows.per_hour, grows.stderr, bound), grows
