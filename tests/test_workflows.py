"""Workflows as data (docs/workflows.md): definitions checked on load with exact messages,
runs of a real daemon's agents fed forward, fanned out and joined, skipped by a condition,
cancelled, and resumed after a SIGKILL with no step's task submitted twice."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config
from corral.supervisor.workflows import WorkflowSpec, compile_workflow, plan_text

from .conftest import ROOT
from .daemon_harness import PY, Daemon, corral_run
from .forkserver import interpreter_settings

# a CLI with no daemon's variables, but with this interpreter's own settings: forked from
# the fork server (tests/forkserver.py), not started and its modules imported anew
BARE = {**interpreter_settings(os.environ), "PYTHONPATH": str(ROOT)}

# minutes of this file: a parallel run starts it first (tests/conftest.py longest_first)
pytestmark = pytest.mark.long

# a worker for every test here: what it does is in its input (`op`); with `mark`, it
# leaves a file named for the step and its task id once its work is done
AGENT = '''
import os, time, uuid
from pathlib import Path
from corral.worker import run

def handle(inp, ctx):
    if not isinstance(inp, dict):
        return inp
    if inp.get("sleep"):
        time.sleep(inp["sleep"])
    op = inp.get("op")
    if op == "crash-once" and not Path(inp["flag"]).exists():
        Path(inp["flag"]).write_text(ctx.task_id)
        os._exit(3)  # the worker dies mid-task, once
    if op == "items":
        out = {"items": list(range(inp["n"]))}
    elif op == "square":
        out = inp["x"] * inp["x"]
    elif op == "sum":
        out = sum(inp["xs"])
    else:
        out = inp
    if "mark" in inp:
        (Path(inp["dir"]) / f"{inp['mark']}.{ctx.task_id}.{uuid.uuid4().hex}").write_text("")
    return out

run(handle)
'''


def agent_toml(directory: Path, name: str = "wf", replicas: int = 2, retries: int = 3) -> str:
    script = directory / "wfagent.py"
    script.write_text(AGENT)
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = {replicas}
        retries = {retries}
        backoff_initial = 0.05
        stop_timeout = 10.0
    """)


PIPE = """
[workflows.pipe]
description = "three steps, each fed the one before"
[[workflows.pipe.steps]]
name = "fetch"
agent = "wf"
input = { op = "items", n = "$input.n" }
[[workflows.pipe.steps]]
name = "total"
agent = "wf"
input = { op = "sum", xs = "$steps.fetch.output.items" }
[[workflows.pipe.steps]]
name = "say"
agent = "wf"
input = { op = "echo", text = "total {$steps.total.output} for {$input.who}" }
"""

FAN = """
[workflows.fan]
[[workflows.fan.steps]]
name = "list"
agent = "wf"
input = { op = "items", n = "$input.n" }
[[workflows.fan.steps]]
name = "square"
agent = "wf"
map = "$steps.list.output.items"
concurrency = 4
input = { op = "square", x = "$item" }
[[workflows.fan.steps]]
name = "sum"
agent = "wf"
join = "square"
input = { op = "sum", xs = "$steps.square.output" }
"""

COND = """
[workflows.cond]
[[workflows.cond.steps]]
name = "check"
agent = "wf"
input = { op = "echo", kind = "$input.kind" }
[[workflows.cond.steps]]
name = "long"
agent = "wf"
when = { ref = "$steps.check.output.kind", op = "==", value = "long" }
input = { op = "echo", text = "a long one" }
[[workflows.cond.steps]]
name = "after"
agent = "wf"
input = { op = "echo", long = "$steps.long.output" }
"""


# -- definitions -------------------------------------------------------------------------------
def _load(tmp_path: Path, workflows: str, agents: str = "wf") -> Any:
    body = "".join(f'[agents.{a}]\ncommand = ["true"]\n' for a in agents.split())
    path = tmp_path / "corral.toml"
    path.write_text(body + textwrap.dedent(workflows))
    return load_config(path), str(path)


def _problem(tmp_path: Path, workflows: str) -> str:
    path = tmp_path / "corral.toml"
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, workflows)
    return str(exc.value).replace(str(path), "FILE")


def test_a_definition_is_loaded_and_its_plan_printed(tmp_path: Path) -> None:
    cfg, _ = _load(tmp_path, PIPE + FAN + COND)
    assert set(cfg.workflows) == {"pipe", "fan", "cond"}
    wf = compile_workflow("fan", cfg.workflows["fan"])
    assert [sorted(s.deps) for s in wf.steps] == [[], ["list"], ["square"]]
    assert plan_text(wf) == textwrap.dedent("""\
        workflow fan: 3 steps
        1. list: agent wf, after the start
             input {"op":"items","n":"$input.n"}
        2. square: agent wf, after list
             map over $steps.list.output.items, 4 at a time
             input {"op":"square","x":"$item"}
        3. sum: agent wf, after square
             join of square's outputs
             input {"op":"sum","xs":"$steps.square.output"}""")


def test_the_plan_of_a_file_without_a_daemon(tmp_path: Path) -> None:

    _, path = _load(tmp_path, PIPE)
    r = corral_run(["workflows", "plan", "pipe", "--file", path], env=BARE)
    assert (r.returncode, r.stdout.splitlines()[:3]) == (0, [
        "workflow pipe: 3 steps", "  three steps, each fed the one before",
        "1. fetch: agent wf, after the start"]), r.stderr
    r = corral_run(["workflows", "plan", "nope", "--file", path], env=BARE)
    assert (r.returncode, r.stderr) == (
        1, f"corral: no such workflow: nope in {path} (workflows: pipe)\n")
    (tmp_path / "bad.toml").write_text(_steps('name = "a"\nagent = "nope"'))
    r = corral_run(["workflows", "plan", "w", "--file", str(tmp_path / "bad.toml")],
                   env=BARE)
    assert (r.returncode, r.stderr) == (1, f"corral: invalid config: {tmp_path}/bad.toml: "
                                           "workflow w, step a: no such agent: nope\n")


def _steps(*steps: str, extra: str = "") -> str:
    out = f"[workflows.w]\n{extra}\n"
    for s in steps:
        out += f"[[workflows.w.steps]]\n{s}\n"
    return out


@pytest.mark.parametrize(("workflow", "message"), [
    (_steps('name = "a"\nagent = "nope"'),
     "FILE: workflow w, step a: no such agent: nope"),
    (_steps('name = "a"\nagent = "wf"\ninput = "$steps.b.output"',
            'name = "b"\nagent = "wf"\ninput = "$steps.a.output"'),
     "FILE: workflow w: a cycle of steps: a -> b -> a"),
    (_steps('name = "a"\nagent = "wf"\ninput = "$steps.a.output.x"'),
     "FILE: workflow w: a cycle of steps: a -> a"),
    (_steps('name = "a"\nagent = "wf"\ninput = { x = "$steps.b.output" }',
            'name = "b"\nagent = "wf"\ninput = 1'),
     "FILE: workflow w, step a: $steps.b.output refers to step b, which comes after it "
     "(a step may use the steps before it only)"),
    (_steps('name = "a"\nagent = "wf"\ninput = "$input..x"'),
     "FILE: workflow w, step a: bad reference in input: $input..x (a reference is $input, "
     "$steps.NAME.output, $item or $index, followed by .key or [N] parts)"),
    (_steps('name = "a"\nagent = "wf"\ninput = "hi {$nothing}"'),
     "FILE: workflow w, step a: bad reference in input: $nothing (a reference is $input, "
     "$steps.NAME.output, $item or $index, followed by .key or [N] parts)"),
    (_steps('name = "a"\nagent = "wf"\ninput = "$steps.zz.output"'),
     "FILE: workflow w, step a: $steps.zz.output names no step zz"),
    (_steps('name = "a"\nagent = "wf"\ninput = "$item"'),
     "FILE: workflow w, step a: $item in input is for the input of a step with map"),
    (_steps('name = "a"\nagent = "wf"', 'name = "b"\nagent = "wf"\njoin = "a"'),
     "FILE: workflow w, step b: join names step a, which has no map"),
    (_steps('name = "a"\nagent = "wf"', 'name = "b"\nagent = "wf"\njoin = "c"'),
     "FILE: workflow w, step b: join names no step c"),
    (_steps('name = "a"\nagent = "wf"', 'name = "a"\nagent = "wf"'),
     "FILE: workflow w: two steps named a"),
    (_steps('name = "a"\nagent = "wf"\nwhen = { ref = "$input.x", op = "<" }'),
     "FILE: workflows.w.steps[0].when.op: Invalid enum value '<'"),
    (_steps('name = "a"\nagent = "wf"\nconcurrency = 0\nmap = "$input"'),
     "FILE: workflows.w.steps[0].concurrency: Expected `int` >= 1"),
    (_steps('name = "a"\nagnt = "wf"'),
     "FILE: workflows.w.steps[0]: Object contains unknown field `agnt`"),
    ("[workflows.w]\nsteps = []\n",
     "FILE: workflows.w.steps: Expected `array` of length >= 1"),
])
def test_every_validation_error_is_said_exactly(tmp_path: Path, workflow: str,
                                                message: str) -> None:
    assert _problem(tmp_path, workflow) == message


def test_every_bad_workflow_is_said_at_once(tmp_path: Path) -> None:
    text = (_steps('name = "a"\nagent = "nope"')
            + _steps('name = "a"\nagent = "wf"', 'name = "a"\nagent = "wf"')
            .replace("workflows.w", "workflows.v"))
    assert _problem(tmp_path, text).splitlines() == [
        "FILE: workflow w, step a: no such agent: nope",
        "FILE: workflow v: two steps named a"]


def test_a_definition_decoded_from_json_checks_the_same() -> None:
    import msgspec
    spec = msgspec.json.decode(json.dumps({"steps": [
        {"name": "a", "agent": "x", "input": "$steps.b.output"},
        {"name": "b", "agent": "x"}]}), type=WorkflowSpec)
    with pytest.raises(ValueError, match=r"^workflow j: a cycle of steps: a -> b -> a$"):
        compile_workflow("j", spec)


# -- runs on a real daemon ------------------------------------------------------------------
@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with workflow_daemon(tmp_path, PIPE + FAN + COND, replicas=4) as d:
        yield d


@contextlib.contextmanager
def workflow_daemon(tmp_path: Path, workflows: str, **agent: Any) -> Iterator[Daemon]:
    """A started daemon of agent `wf` (`agent_toml`'s keywords) and these workflows."""
    d = Daemon(tmp_path, agent_toml(tmp_path, **agent) + workflows)
    try:
        d.start()
        yield d
    finally:
        d.close()


def run(d: Daemon, name: str, inp: Any, wait: float = 60, status: str = "succeeded"
        ) -> dict[str, Any]:
    """A run of `name` waited for, asserted to have ended as `status`; its view."""
    r = d.cli("workflows", "run", name, "--input", json.dumps(inp), "--wait", str(wait),
              "--json", timeout=wait + 30)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    assert out["status"] == status, out
    return out


def ended(d: Daemon, run_id: str, wait: float = 60, status: str = "succeeded"
          ) -> dict[str, Any]:
    """A run started earlier, waited for and asserted to have ended as `status`."""
    view: dict[str, Any] = d.json("run-status", run_id, "--wait", str(wait))
    assert view["status"] == status, view
    return view


def by_item(view: dict[str, Any]) -> dict[tuple[str, int | None], dict[str, Any]]:
    """A run's step rows by (step, map item or None for the step as a whole)."""
    return {(s["step"], s["item"]): s for s in view["steps"]}


def settled(d: Daemon, run_id: str) -> dict[str, Any]:
    """The run once it has ended (waited for by the daemon, a while per call)."""
    while True:
        view: dict[str, Any] = d.json("run-status", run_id, "--wait", "20")
        if view["status"] != "running":
            return view


def whole(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in view["steps"] if s["item"] is None}


def test_a_three_step_pipeline_feeds_each_output_forward(daemon: Daemon) -> None:
    view = run(daemon, "pipe", {"n": 5, "who": "bob"})
    steps = whole(view)
    assert [s["step"] for s in view["steps"]] == ["fetch", "total", "say"]
    assert steps["fetch"]["output"] == {"items": [0, 1, 2, 3, 4]}
    assert steps["total"]["output"] == 10
    assert view["output"] == {"op": "echo", "text": "total 10 for bob"}
    # each step an ordinary task of its agent
    for s in steps.values():
        task = daemon.json("task", s["task_id"])
        assert (task["agent"], task["status"]) == ("wf", "succeeded")
    # shown as a tree, listed
    tree = daemon.cli("run-status", view["run_id"])
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    assert lines[0].startswith(f"run {view['run_id']}  workflow pipe  succeeded")
    assert [ln.split()[:3] for ln in lines[1:4]] == [
        ["├─", "fetch", "succeeded"], ["├─", "total", "succeeded"],
        ["└─", "say", "succeeded"]]
    listed = daemon.json("runs", "--workflow", "pipe")["runs"]
    assert [(r["run_id"], r["status"]) for r in listed] == [(view["run_id"], "succeeded")]
    assert daemon.json("workflows", "list")["workflows"][1] == {
        "name": "fan", "description": "", "steps": ["list", "square", "sum"],
        "agents": ["wf"], "timeout": None, "revision": None,
        "tenant": "default"}


def _most_at_once(rows: list[dict[str, Any]]) -> int:
    edges = sorted(itertools.chain.from_iterable(
        [(r["started"], 1), (r["ended"], -1)] for r in rows), key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def test_a_map_over_a_thousand_items_with_its_bound_then_a_join(daemon: Daemon) -> None:
    n = 1000
    view = run(daemon, "fan", {"n": n}, wait=120)
    # the step's rows, a page at a time (runs.get pages them: decision 444)
    rows: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = daemon.json("run-status", view["run_id"], "--step", "square", "--offset",
                           str(offset))
        assert [g["items"] for g in page["graph"] if g["step"] == "square"] == [
            {"succeeded": n}]
        rows += page["steps"]
        offset = page.get("steps_next")
    assert len(rows) == n + 1 and len(view["steps"]) == 1000  # 1,003 rows in all
    items = [s for s in rows if s["item"] is not None]
    assert [s["item"] for s in items] == list(range(n))
    assert [s["output"] for s in items] == [i * i for i in range(n)]
    assert len({s["task_id"] for s in items}) == n
    assert 1 < _most_at_once(items) <= 4  # concurrency = 4
    assert view["output"] == sum(i * i for i in range(n))
    tree = daemon.cli("run-status", view["run_id"]).stdout.splitlines()
    assert tree[2].split()[:3] == ["├─", "square", "succeeded"]
    assert tree[2].endswith(f"[{n} succeeded]")


TIMED = """
[workflows.timed]
timeout = 0.5
[[workflows.timed.steps]]
name = "slow"
agent = "wf"
input = { sleep = 30 }
"""


def test_a_run_past_its_timeout_ends_timed_out_with_its_steps(tmp_path: Path) -> None:
    with workflow_daemon(tmp_path, TIMED) as d:
        view = run(d, "timed", None, status="timed_out")
        assert view["error"] == "the run's timeout (0.5s) passed"
        step = whole(view)["slow"]
        assert (step["status"], step["error"]) == ("timed_out",
                                                   "the run's timeout (0.5s) passed")
        assert d.json("task", step["task_id"])["status"] == "cancelled"


def test_a_condition_skips_a_step(daemon: Daemon) -> None:
    short = run(daemon, "cond", {"kind": "short"})
    steps = whole(short)
    assert (steps["long"]["status"], steps["long"]["task_id"]) == ("skipped", None)
    assert short["output"] == {"op": "echo", "long": None}
    long = run(daemon, "cond", {"kind": "long"})
    assert whole(long)["long"]["status"] == "succeeded"
    assert long["output"] == {"op": "echo", "long": {"op": "echo", "text": "a long one"}}


def test_a_missing_reference_fails_the_run_with_its_step(daemon: Daemon) -> None:
    view = run(daemon, "pipe", {"who": "bob"}, status="failed")
    assert view["error"] == "step fetch: $input.n: no key n"
    assert whole(view)["fetch"]["status"] == "failed"
    assert [s["step"] for s in view["steps"]] == ["fetch"]


def test_unknown_workflow_and_run_are_refused(daemon: Daemon) -> None:
    r = daemon.cli("workflows", "run", "nope")
    assert r.returncode != 0 and "no such workflow: nope" in r.stderr
    r = daemon.cli("run-status", "0190aaaa-0000-7000-8000-000000000000")
    assert r.returncode != 0
    assert "no such run: 0190aaaa-0000-7000-8000-000000000000" in r.stderr


SLOW = """
[workflows.slow]
timeout = 600
[[workflows.slow.steps]]
name = "first"
agent = "wf"
input = { op = "items", n = 6, mark = "first", dir = "$input.dir", sleep = 0.2 }
[[workflows.slow.steps]]
name = "each"
agent = "wf"
map = "$steps.first.output.items"
concurrency = 2
input = { op = "square", x = "$item", mark = "each{$index}", dir = "$input.dir", sleep = 0.4 }
[[workflows.slow.steps]]
name = "last"
agent = "wf"
join = "each"
input = { op = "sum", xs = "$steps.each.output", mark = "last", dir = "$input.dir" }
"""


def _marks(directory: Path) -> dict[str, set[str]]:
    """Per step (or map item): the task ids that did its work."""
    out: dict[str, set[str]] = {}
    for f in directory.iterdir():
        key, task_id, _ = f.name.split(".")
        out.setdefault(key, set()).add(task_id)
    return out


def test_a_run_resumes_after_a_sigkill_and_no_step_is_submitted_twice(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with workflow_daemon(tmp_path, SLOW) as d:
        started = d.json("workflows", "run", "slow", "--input",
                         json.dumps({"dir": str(marks)}))
        run_id = started["run_id"]
        # killed while the map is under way: some items done, some running
        while True:
            # (`corral run-status RUN --wait 0.1`, on the socket: a CLI's start each look)
            view = d.ask("runs.get", {"run_id": run_id, "wait": 0.1})
            done = [s for s in view["steps"] if s["step"] == "each"
                    and s["item"] is not None and s["status"] == "succeeded"]
            if len(done) >= 2:
                break
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait()  # type: ignore[union-attr]
        d.start()
        view = ended(d, run_id, wait=120)
        log = (d.state / "logs" / "corral.log").read_text()
        assert "workflows: 1 unfinished run resumed" in log
        assert view["output"] == sum(i * i for i in range(6))
        rows = by_item(view)
        # every step, and every item, one task: the one recorded before it was submitted
        marked = _marks(marks)
        for key, task_ids in marked.items():
            step, item = ("each", int(key[4:])) if key.startswith("each") else (key, None)
            assert task_ids == {rows[(step, item)]["task_id"]}, (key, task_ids)
        assert set(marked) == {"first", "last", *(f"each{i}" for i in range(6))}
        for s in view["steps"]:
            if s["task_id"] is not None:
                assert d.json("task", s["task_id"])["status"] == "succeeded"


def test_cancel_a_run_cancels_its_running_steps(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with workflow_daemon(tmp_path, SLOW.replace("sleep = 0.4", "sleep = 60")) as d:
        run_id = d.json("workflows", "run", "slow", "--input",
                        json.dumps({"dir": str(marks)}))["run_id"]
        while True:
            # (`corral run-status RUN --wait 0.1`, on the socket: a CLI's start each look)
            view = d.ask("runs.get", {"run_id": run_id, "wait": 0.1})
            running = [s for s in view["steps"] if s["step"] == "each"
                       and s["item"] is not None and s["status"] == "running"]
            if len(running) == 2:
                break
        r = d.cli("run-cancel", run_id)
        assert (r.returncode, r.stdout) == (0, f"{run_id}: cancelled\n"), r.stderr
        view = d.json("run-status", run_id)
        assert (view["status"], view["error"]) == ("cancelled", "cancelled")
        rows = by_item(view)
        assert rows[("each", None)]["status"] == "cancelled"
        for s in running:
            assert d.json("task", s["task_id"])["status"] == "cancelled"
            assert rows[("each", s["item"])]["status"] == "cancelled"
        assert {s["step"] for s in view["steps"]} == {"first", "each"}  # last never began
        r = d.cli("run-cancel", run_id)
        assert r.returncode != 0 and f"run {run_id} already ended (cancelled)" in r.stderr


# -- over HTTP, and who sees what ------------------------------------------------------------
MIXED = """
[workflows.webflow]
[[workflows.webflow.steps]]
name = "hi"
agent = "web-1"

[workflows.mixed]
[[workflows.mixed.steps]]
name = "hi"
agent = "web-1"
[[workflows.mixed.steps]]
name = "there"
agent = "db"
"""


@pytest.mark.deadline(120)
async def test_runs_over_http_and_a_limited_caller_sees_only_its_own(tmp_path: Path) -> None:
    from .daemon_harness import hello
    from .test_http_api import SOCKET, serving

    async with serving(tmp_path, hello("web-1") + hello("db") + MIXED) as api:
        await api.token("web", "tasks:run", "tasks:read", agents="web-*")
        await api.token("all", "tasks:run", "tasks:read")
        status, body, _ = await api.ask("GET", "/workflows", "web")
        assert (status, [w["name"] for w in body["workflows"]]) == (200, ["webflow"])
        status, body, r = await api.ask("POST", "/workflows/webflow/runs?wait=30", "web",
                                        body={"input": {"name": "h"}})
        assert (status, body["status"], body["output"]["greeting"]) == (
            200, "succeeded", "hello, h"), body
        assert r.headers["Location"] == f"/api/v1/runs/{body['run_id']}"
        mine = body["run_id"]
        status, body, _ = await api.ask("GET", f"/runs/{mine}", "web")
        assert (status, [s["step"] for s in body["steps"]]) == (200, ["hi"])
        # a workflow with an agent it does not see does not exist for it
        status, body, _ = await api.ask("POST", "/workflows/mixed/runs", "web", body={})
        assert (status, body["detail"]) == (404, "no such workflow: mixed")
        status, body, _ = await api.ask("POST", "/workflows/mixed/runs?wait=30", "all",
                                        body={})
        assert body["status"] == "succeeded", body
        theirs = body["run_id"]
        for verb, path in (("GET", f"/runs/{theirs}"), ("POST", f"/runs/{theirs}/cancel")):
            status, body, _ = await api.ask(verb, path, "web")
            assert (status, body["detail"]) == (404, f"no such run: {theirs}"), path
        status, body, _ = await api.ask("GET", "/runs", "web")
        assert [x["run_id"] for x in body["runs"]] == [mine]
        status, body, _ = await api.ask("GET", "/runs", "all")
        assert [x["run_id"] for x in body["runs"]] == [theirs, mine]
        ran = await api.d.dispatcher.call(SOCKET, "runs.get", {"run_id": theirs})
        assert ran.agents == ["db", "web-1"]


# -- chaos: SIGKILLs at random moments -----------------------------------------------------
def _chain(last: int = 6) -> str:
    out = "[workflows.chain]\n"
    step = ('[[workflows.chain.steps]]\nname = "{n}"\nagent = "wf"\n'
            'input = {{ op = "echo", mark = "{{$input.tag}}-{n}", dir = "$input.dir", '
            'sleep = 0.15 }}\n')
    out += step.format(n="s1")
    out += ('[[workflows.chain.steps]]\nname = "each"\nagent = "wf"\nmap = "$input.items"\n'
            'concurrency = 2\ninput = { op = "square", x = "$item", '
            'mark = "{$input.tag}-each{$index}", dir = "$input.dir", sleep = 0.15 }\n')
    out += ('[[workflows.chain.steps]]\nname = "s3"\nagent = "wf"\njoin = "each"\n'
            'input = { op = "sum", xs = "$steps.each.output", mark = "{$input.tag}-s3", '
            'dir = "$input.dir" }\n')
    for i in range(4, last + 1):
        out += step.format(n=f"s{i}")
    return out


def test_random_sigkills_lose_no_run_and_no_step_is_submitted_twice(tmp_path: Path) -> None:
    import random
    import time

    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"seed {seed}")
    marks = tmp_path / "marks"
    marks.mkdir()
    # CORRAL_WF_CHAOS="RUNS,KILLS,STEPS" for a longer one (issue 40's: "50,50,20")
    runs_n, kills, last = (int(x) for x in os.environ.get("CORRAL_WF_CHAOS",
                                                          "6,8,6").split(","))
    with workflow_daemon(tmp_path, _chain(last), replicas=3, retries=500) as d:
        run_ids = [d.json("workflows", "run", "chain", "--input", json.dumps(
            {"dir": str(marks), "tag": f"r{i}", "items": [1, 2, 3, 4, 5, 6]}))["run_id"]
            for i in range(runs_n)]
        for _ in range(kills):
            # a random moment: what is running then is what the kill interrupts
            time.sleep(rng.uniform(0.05, 0.5))
            d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            d.proc.wait()  # type: ignore[union-attr]
            d.start()
        views = [settled(d, r) for r in run_ids]
        assert [v["status"] for v in views] == ["succeeded"] * runs_n, [
            (v["run_id"], v["status"], v["error"]) for v in views]
        marked = _marks(marks)
        for i, v in enumerate(views):
            assert v["output"] == {"op": "echo", "mark": f"r{i}-s{last}", "dir": str(marks),
                                   "sleep": 0.15}
            for s in v["steps"]:
                key = f"r{i}-{s['step']}" + (f"{s['item']}" if s["item"] is not None else "")
                if s["task_id"] is None:
                    continue  # the map step's own row
                # one task per step: the one the run recorded before submitting it
                assert marked[key] == {s["task_id"]}, (seed, key, marked[key], s)
        assert len(marked) == runs_n * (last - 1 + 6)
        # the kills fell mid-run (the daemon's log says what each start resumed)
        log = (d.state / "logs" / "corral.log").read_text()
        assert "unfinished run" in log and "resumed" in log, log[-2000:]
        print(*[ln for ln in log.splitlines() if "workflows:" in ln], sep="\n")


# -- a run's definition, and the window between its two commits ------------------------------
GATED = """
[workflows.gated]
[[workflows.gated.steps]]
name = "hold"
agent = "wf"
input = { op = "echo", sleep = 1.5, v = "old" }
[[workflows.gated.steps]]
name = "after"
agent = "wf"
input = { op = "echo", v = "old" }
"""


def test_a_run_keeps_the_definition_it_started_on_across_a_reload(tmp_path: Path) -> None:
    with workflow_daemon(tmp_path, GATED) as d:
        run_id = d.json("workflows", "run", "gated", "--input", "null")["run_id"]
        d.config.write_text(d.config.read_text().replace('"old"', '"new"'))
        r = d.cli("reload")
        assert r.returncode == 0, r.stderr
        view = ended(d, run_id)
        assert view["output"] == {"op": "echo", "v": "old"}
        # the next run is the new definition's
        assert run(d, "gated", None)["output"] == {"op": "echo", "v": "new"}


def test_a_step_recorded_but_never_submitted_is_submitted_under_its_recorded_id(
        tmp_path: Path) -> None:
    """The daemon died after the step's row was committed and before its task reached
    the task journal: the next daemon submits it, once, with the id the run holds."""
    import sqlite3
    import time

    import msgspec

    with workflow_daemon(tmp_path, PIPE) as d:
        assert d.stop() == 0
        cfg = load_config(d.config)
        task_id = "01a20000-0000-7000-8000-00000000abcd"
        run_id = "01a20000-0000-7000-8000-00000000beef"
        db = sqlite3.connect(d.state / "corral.db")
        with db:
            db.execute("INSERT INTO calls (call_id, kind, name, definition, input, status, "
                       "created) VALUES (?,?,?,?,?,?,?)", (
                run_id, "workflow", "pipe", msgspec.json.encode(cfg.workflows["pipe"]),
                b'{"n": 3, "who": "al"}', "running", time.time()))
            db.execute("INSERT INTO call_steps VALUES (?,?,?,?,?,?,?,?,?)", (
                run_id, "fetch", -1, task_id, "running", time.time(), None, None, None))
        db.close()
        d.start()
        view = ended(d, run_id)
        assert whole(view)["fetch"]["task_id"] == task_id
        assert d.json("task", task_id)["status"] == "succeeded"
        assert view["output"] == {"op": "echo", "text": "total 3 for al"}
        assert [t["task_id"] for t in d.json("tasks")["tasks"]].count(task_id) == 1


BADMAP = """
[workflows.badmap]
[[workflows.badmap.steps]]
name = "each"
agent = "wf"
map = "$input.xs"
concurrency = 1
retries = 0
input = { op = "square", x = "$item" }
[[workflows.badmap.steps]]
name = "never"
agent = "wf"
join = "each"
"""


def test_a_failed_map_item_fails_its_step_and_the_run(tmp_path: Path) -> None:
    with workflow_daemon(tmp_path, BADMAP) as d:
        # item 1 is not a number: the agent's `x * x` raises, its task fails
        view = run(d, "badmap", {"xs": [1, "two", 3]}, status="failed")
        rows = by_item(view)
        failed = rows[("each", 1)]
        assert failed["status"] == "failed"
        assert view["error"].startswith(f"step each[1]: task {failed['task_id']} failed: ")
        assert rows[("each", None)]["status"] == "failed"
        assert rows[("each", 0)]["status"] == "succeeded"
        assert ("each", 2) not in rows and ("never", None) not in rows  # one at a time


CRASHY = """
[workflows.crashy]
[[workflows.crashy.steps]]
name = "first"
agent = "wf"
input = { op = "echo", v = 1 }
[[workflows.crashy.steps]]
name = "dies"
agent = "wf"
input = { op = "crash-once", flag = "$input.flag", mark = "dies", dir = "$input.dir" }
[[workflows.crashy.steps]]
name = "last"
agent = "wf"
input = { op = "echo", after = "$steps.dies.output.op" }
"""


def test_a_worker_that_dies_mid_step_is_retried_within_the_steps_one_task(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with workflow_daemon(tmp_path, CRASHY, replicas=1) as d:
        view = run(d, "crashy", {"flag": str(tmp_path / "flag"), "dir": str(marks)})
        dies = whole(view)["dies"]
        assert (tmp_path / "flag").read_text() == dies["task_id"]
        task = d.json("task", dies["task_id"])
        assert [a["outcome"] for a in task["attempts"]] == ["lost", "succeeded"], task
        assert _marks(marks) == {"dies": {dies["task_id"]}}
        assert view["output"] == {"op": "echo", "after": "crash-once"}
