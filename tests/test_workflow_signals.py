"""A workflow step that waits for a signal (docs/workflows.md#signals): `corral runs signal
RUN NAME --data JSON` and `POST /api/v1/runs/{id}/signals/{name}`; a signal sent before
its step waits is kept for it; a daemon SIGKILLed while a step waits, or just after a
signal was answered, loses no signal and applies none twice; a second signal of a name
is refused, a resend under its key answered as the first; timeouts fail or skip the step
as it says; another tenant's token finds no such run; every refusal says why exactly."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.workflows.signals import MAX_SIGNAL_BYTES, MAX_SIGNAL_KEY

from .daemon_harness import Daemon
from .deflife import tenant_tokens
from .test_http_api import serving
from .test_workflow_defs import tenant_agent
from .test_workflows import _marks, _problem, _steps, ended, workflow_daemon

FLOWS = """
[workflows.gate]
[[workflows.gate.steps]]
name = "draft"
agent = "wf"
input = { op = "echo", text = "$input.text", mark = "draft", dir = "$input.dir" }
[[workflows.gate.steps]]
name = "approve"
signal = "approve"
[[workflows.gate.steps]]
name = "publish"
agent = "wf"
input = { op = "echo", approval = "$steps.approve.output", mark = "publish", dir = "$input.dir" }

[workflows.two]
[[workflows.two.steps]]
name = "first"
signal = "a"
[[workflows.two.steps]]
name = "second"
signal = "b"
[[workflows.two.steps]]
name = "done"
agent = "wf"
input = { op = "echo", a = "$steps.first.output", b = "$steps.second.output" }

[workflows.brief]
[[workflows.brief.steps]]
name = "wait"
signal = "go"
timeout = 0.5
on_timeout = "skip"
[[workflows.brief.steps]]
name = "after"
agent = "wf"
input = { op = "echo", got = "$steps.wait.output" }

[workflows.strict]
[[workflows.strict.steps]]
name = "wait"
signal = "go"
timeout = 0.5
"""


def waiting(d: Daemon, run_id: str, step: str) -> dict[str, Any]:
    """The run once `step` has begun to wait (its row running)."""
    while True:
        view: dict[str, Any] = d.json("run-status", run_id, "--wait", "0.1")
        rows = {s["step"]: s for s in view["steps"] if s["item"] is None}
        if step in rows and rows[step]["status"] == "running":
            return view


def send(d: Daemon, run_id: str, name: str, *more: str, stdin: str | None = None
         ) -> tuple[int, str, str]:
    r = d.cli("runs", "signal", run_id, name, *more, input=stdin)
    return r.returncode, r.stdout, r.stderr


def refused(d: Daemon, run_id: str, name: str, *more: str, stdin: str | None = None) -> str:
    code, out, err = send(d, run_id, name, *more, stdin=stdin)
    assert (code, out) == (1, ""), (code, out, err)
    return err.strip()


@pytest.mark.parametrize(("steps", "message"), [
    (('name = "a"\nagent = "wf"\nsignal = "go"',),
     "FILE: workflow w, step a: a step runs an agent or a workflow, or waits for a signal "
     "(one of agent =, workflow = and signal =)"),
    (('name = "a"\nsignal = "go"\nmap = "$input"',),
     "FILE: workflow w, step a: a step that waits for a signal takes one signal; map is "
     "for a step that runs a task"),
    (('name = "a"\nsignal = "go"\nretries = 2',),
     "FILE: workflow w, step a: a step that waits for a signal takes one signal; retries "
     "is for a step that runs a task"),
    (('name = "a"\nagent = "wf"\non_timeout = "skip"',),
     "FILE: workflow w, step a: on_timeout is for a step that waits for a signal (a "
     "task's timeout fails it)"),
    (('name = "a"\nsignal = "9 lives"',),
     "FILE: workflow w, step a: signal name '9 lives' is not a name (letters, digits, _ "
     "and -, not starting with a digit or -)"),
    (('name = "a"\nsignal = "go"\non_timeout = "wait"',),
     "FILE: workflows.w.steps[0].on_timeout: Invalid enum value 'wait'"),
])
def test_a_signal_step_is_checked_on_load(tmp_path: Path, steps: tuple[str, ...],
                                          message: str) -> None:
    assert _problem(tmp_path, _steps(*steps)) == message


def test_a_sigkill_while_a_step_waits_or_just_after_a_signal_loses_none_and_doubles_none(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with workflow_daemon(tmp_path, FLOWS) as d:
        inp = json.dumps({"text": "hello", "dir": str(marks)})
        late = d.json("workflows", "run", "gate", "--input", inp)["run_id"]
        early = d.json("workflows", "run", "gate", "--input", inp)["run_id"]
        waiting(d, late, "approve")
        waiting(d, early, "approve")
        # acknowledged, then the daemon killed before (or as) its step takes it
        assert send(d, early, "approve", "--data", '{"by": "ann"}', "--key", "k1") == (
            0, f"{early}: signal approve kept (#1)\n", "")
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait()  # type: ignore[union-attr]
        d.start()
        # the other was waiting when the daemon died: it waits again, and is answered
        waiting(d, late, "approve")
        assert send(d, late, "approve", "--data", '{"by": "bob"}') == (
            0, f"{late}: signal approve kept (#1)\n", "")
        for run_id, by in ((early, "ann"), (late, "bob")):
            view = ended(d, run_id)
            assert view["output"]["approval"] == {"by": by}, view
            rows = {s["step"]: s for s in view["steps"]}
            assert (rows["approve"]["status"], rows["approve"]["output"],
                    rows["approve"]["task_id"]) == ("succeeded", {"by": by}, None)
            assert [g["runs"] for g in view["graph"]] == [
                "agent wf", "signal approve", "agent wf"]
        # each run's steps ran once each: the signal applied once
        marked = _marks(marks)
        assert {k: len(v) for k, v in marked.items()} == {"draft": 2, "publish": 2}
        # sent again under its key: the first, even after the run ended
        assert send(d, early, "approve", "--key", "k1", "--data", '{"by": "ann"}') == (
            0, f"{early}: signal approve kept (#1), sent before under this key\n", "")
        assert refused(d, early, "approve") == (
            f"corral: run {early} already ended (succeeded): no step waits for a signal")


def test_a_signal_sent_before_its_step_waits_is_kept_for_it_and_one_more_is_refused(
        tmp_path: Path) -> None:
    with workflow_daemon(tmp_path, FLOWS) as d:
        run_id = d.json("workflows", "run", "two")["run_id"]
        waiting(d, run_id, "first")
        assert send(d, run_id, "b", "--data", '"bee"') == (
            0, f"{run_id}: signal b kept (#1)\n", "")
        assert refused(d, run_id, "b", "--data", '"again"') == (
            f"corral: run {run_id} has had its signal b: 1 step (second) waits for it and 1 "
            "was sent; a signal is applied once (send it with the key of the first to "
            "repeat that one)")
        view = d.json("run-status", run_id)
        assert {s["step"]: s["status"] for s in view["steps"]} == {"first": "running"}
        assert send(d, run_id, "a", "--data", '"ay"')[0] == 0
        view = ended(d, run_id)
        assert view["output"] == {"op": "echo", "a": "ay", "b": "bee"}


def test_a_signal_steps_timeout_skips_it_or_fails_the_run_as_it_says(tmp_path: Path) -> None:
    with workflow_daemon(tmp_path, FLOWS) as d:
        skipped = d.json("workflows", "run", "brief")["run_id"]
        failed = d.json("workflows", "run", "strict")["run_id"]
        view = ended(d, skipped)
        rows = {s["step"]: s for s in view["steps"]}
        assert (rows["wait"]["status"], rows["wait"]["error"], view["output"]) == (
            "skipped", "no signal go came within 0.5s", {"op": "echo", "got": None})
        view = ended(d, failed, status="failed")
        assert view["error"] == "step wait: timed_out: no signal go came within 0.5s"
        assert refused(d, failed, "go") == (
            f"corral: run {failed} already ended (failed): no step waits for a signal")


def test_every_refused_signal_says_why(tmp_path: Path) -> None:
    with workflow_daemon(tmp_path, FLOWS) as d:
        run_id = d.json("workflows", "run", "two")["run_id"]
        assert refused(d, "nope", "a") == "corral: no such run: nope"
        assert refused(d, run_id, "zz") == (
            f"corral: run {run_id} (workflow two) has no step that waits for signal zz "
            "(its signals: a, b)")
        big = json.dumps("x" * MAX_SIGNAL_BYTES)
        assert refused(d, run_id, "a", "--data", "-", stdin=big) == (
            f"corral: the signal's data is {MAX_SIGNAL_BYTES + 2} bytes of JSON, more than "
            f"MAX_SIGNAL_BYTES ({MAX_SIGNAL_BYTES})")
        key = "k" * (MAX_SIGNAL_KEY + 1)
        assert refused(d, run_id, "a", "--key", key) == (
            f"corral: the signal's key is {MAX_SIGNAL_KEY + 1} characters, more than "
            f"MAX_SIGNAL_KEY ({MAX_SIGNAL_KEY})")
        code, _, err = send(d, run_id, "a", "--data", "{nope")
        assert (code, err.splitlines()[-1]) == (2, "Error: Invalid value for --data: not JSON: "
                                                "JSON is malformed: expected '\"' (byte 1)"), err
        # nothing of those was kept: the run's signal a is still to come
        assert send(d, run_id, "a")[0] == 0
        assert send(d, run_id, "b")[0] == 0
        assert ended(d, run_id)["output"] == {"op": "echo", "a": None, "b": None}


TENANT_FLOW = """
[workflows.held]
[[workflows.held.steps]]
name = "wait"
signal = "go"
[[workflows.held.steps]]
name = "after"
agent = "wa"
input = { op = "echo", got = "$steps.wait.output" }
"""


@pytest.mark.deadline(120)
async def test_over_http_a_run_is_signalled_by_its_tenant_alone(tmp_path: Path) -> None:
    fleet = (tenant_agent(tmp_path, "wa", "a") + tenant_agent(tmp_path, "wb", "b")
             + "[tenants.a]\n[tenants.b]\n" + TENANT_FLOW)
    async with serving(tmp_path, fleet) as api:
        ask = await tenant_tokens(api)
        status, run = await ask("POST", "/workflows/held/runs", "ta", {})
        assert status == 200, run
        path = f"/runs/{run['run_id']}/signals/go"
        status, body = await ask("POST", path, "tb", {"data": {"x": 1}})
        assert (status, body["detail"]) == (404, f"no such run: {run['run_id']}")
        status, body = await ask("POST", path, "ta", {"data": {"x": 1}, "key": "once"})
        assert (status, body) == (200, {"run_id": run["run_id"], "name": "go", "seq": 1,
                                        "duplicate": False})
        status, body = await ask("POST", path, "ta", {"data": {"x": 1}, "key": "once"})
        assert (status, body["seq"], body["duplicate"]) == (200, 1, True)
        status, ran = await ask("GET", f"/runs/{run['run_id']}?wait=60", "ta")
        assert (ran["status"], ran["output"]["got"]) == ("succeeded", {"x": 1}), ran
