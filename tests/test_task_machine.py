"""A task's machine without processes: every row of its table, every pair it refuses,
the retry rule, how an attempt ended, and that nothing else in corral assigns a task's
status."""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor.lifecycle import IllegalTransition
from corral.supervisor.tasks.taskmachine import (
    ANSWERED,
    AT_MOST_ONCE,
    IGNORE,
    LATE,
    LATE_AGAIN,
    RETRY,
    TABLE,
    TERMINAL,
    AttemptOutcome,
    LostBudget,
    TaskCause,
    TaskMachine,
    TaskStatus,
    TaskStep,
    attempt_end,
    cancelled,
    timed_out,
)
from corral.taskviews import Attempt, TaskFailure

from .trees import file_tree, parsed, walked

S, C = TaskStatus, TaskCause


class Policy:
    """A task's retry policy as its manager answers it, and how often it was asked
    (`budget`: its retry_lost and lost attempts; None: no retry for a loss to
    infrastructure but its retries')."""

    def __init__(self, retried_on: Collection[str] | None,
                 budget: LostBudget | None = None) -> None:
        self.on = retried_on
        self.budget = budget
        self.asked = 0

    def retried_on(self, task: TaskMachine) -> Collection[str] | None:
        self.asked += 1
        return self.on

    def lost_budget(self, task: TaskMachine) -> LostBudget | None:
        return self.budget


NEVER = Policy(())


def at(status: TaskStatus, retries: int = 0) -> TaskMachine:
    m = TaskMachine(retries)
    if status is not S.QUEUED:
        m.restored("running")
        if status is not S.RUNNING:
            m.fire({S.SUCCEEDED: C.ANSWERED, S.FAILED: C.FAILED, S.TIMED_OUT: C.TIMED_OUT,
                    S.LOST: C.LOST, S.CANCELLED: C.CANCEL, S.WAITING: C.WAIT,
                    S.SUSPENDED: C.WAIT}[status])
            if status is S.SUSPENDED:
                m.fire(C.SUSPEND)
    assert m.status is status
    return m


# The table as the design says it (the module's docstring): every pair not here refused.
ROWS: dict[tuple[TaskStatus, TaskCause], TaskStep] = {
    (S.QUEUED, C.START): TaskStep(S.RUNNING),
    (S.RUNNING, C.ANSWERED): TaskStep(S.SUCCEEDED, ends=True),
    (S.RUNNING, C.FAILED): TaskStep(S.FAILED, retry=True, ends=True),
    (S.RUNNING, C.TIMED_OUT): TaskStep(S.TIMED_OUT, retry=True, ends=True),
    # lost to infrastructure: retry_lost asked first
    (S.RUNNING, C.LOST): TaskStep(S.LOST, retry=True, ends=True, infra=True),
    # lost of its own doing or to a cap: as retries and retry_on say
    (S.RUNNING, C.CRASHED): TaskStep(S.LOST, retry=True, ends=True),
    (S.QUEUED, C.CANCEL): TaskStep(S.CANCELLED, ends=True),
    (S.RUNNING, C.CANCEL): TaskStep(S.CANCELLED, ends=True),
    (S.QUEUED, C.DROPPED): TaskStep(S.LOST, ends=True),
    (S.RUNNING, C.RELEASED): TaskStep(S.QUEUED),
    # a waiting task's attempt is on its worker: it moves as a running one's, and back
    (S.RUNNING, C.WAIT): TaskStep(S.WAITING),
    (S.WAITING, C.WAIT): IGNORE,
    (S.WAITING, C.RESUME): TaskStep(S.RUNNING),
    (S.WAITING, C.ANSWERED): TaskStep(S.SUCCEEDED, ends=True),
    (S.WAITING, C.FAILED): TaskStep(S.FAILED, retry=True, ends=True),
    (S.WAITING, C.TIMED_OUT): TaskStep(S.TIMED_OUT, retry=True, ends=True),
    (S.WAITING, C.LOST): TaskStep(S.LOST, retry=True, ends=True, infra=True),
    (S.WAITING, C.CRASHED): TaskStep(S.LOST, retry=True, ends=True),
    (S.WAITING, C.CANCEL): TaskStep(S.CANCELLED, ends=True),
    (S.WAITING, C.RELEASED): TaskStep(S.QUEUED),
    # waited past suspend_after: no attempt, no slot, until nothing it asked is pending;
    # then queued, no retry spent (suspension.py)
    (S.WAITING, C.SUSPEND): TaskStep(S.SUSPENDED),
    (S.SUSPENDED, C.RESUME): TaskStep(S.QUEUED),
    (S.SUSPENDED, C.CANCEL): TaskStep(S.CANCELLED, ends=True),
    (S.SUSPENDED, C.DROPPED): TaskStep(S.LOST, ends=True),
    **{(s, c): IGNORE for s in TERMINAL for c in TaskCause if c is not C.START},
}
REFUSED = sorted({(s, c) for s in TaskStatus for c in TaskCause} - set(ROWS))


def test_the_table_is_the_designs() -> None:
    assert TABLE == ROWS
    assert len(REFUSED) == 29


@pytest.mark.parametrize(("status", "cause"), sorted(ROWS))
def test_every_row_moves_a_task_as_it_says(status: TaskStatus, cause: TaskCause) -> None:
    m = at(status, retries=3)
    step = m.fire(cause, NEVER)  # a policy that retries nothing: the row itself
    row = ROWS[status, cause]
    assert step == row
    assert m.status is (row.target or status)
    assert m.retries_left == 3  # only a retry spends one
    assert (m.queued, m.running, m.waiting, m.suspended, m.ended) == (
        m.status is S.QUEUED, m.status in (S.RUNNING, S.WAITING), m.status is S.WAITING,
        m.status is S.SUSPENDED, m.status in TERMINAL)


@pytest.mark.parametrize(("status", "cause"), REFUSED)
def test_every_pair_not_in_the_table_is_refused_and_changes_nothing(
        status: TaskStatus, cause: TaskCause) -> None:
    m = at(status, retries=1)
    with pytest.raises(IllegalTransition) as err:
        m.fire(cause, Policy(("failed", "timed_out", "lost")))
    assert str(err.value) == f"no task transition from {status.value} on {cause.value}"
    assert (m.status, m.retries_left) == (status, 1)


def test_the_refused_pairs_are_the_bugs() -> None:
    """An attempt's end on a task with none running, a start of a running or finished
    task, a drop of a running one (a drop is of queued tasks), a wait or a resume of a
    task with no attempt on a worker, a resume of one not waiting, a suspension of one
    not waiting: each a bug in corral."""
    assert set(REFUSED) == {
        *((S.QUEUED, c) for c in (C.ANSWERED, C.FAILED, C.TIMED_OUT, C.LOST, C.CRASHED,
                                  C.RELEASED, C.WAIT, C.RESUME, C.SUSPEND)),
        (S.RUNNING, C.START), (S.RUNNING, C.DROPPED), (S.RUNNING, C.RESUME),
        (S.RUNNING, C.SUSPEND),
        (S.WAITING, C.START), (S.WAITING, C.DROPPED),
        *((S.SUSPENDED, c) for c in (C.START, C.ANSWERED, C.FAILED, C.TIMED_OUT, C.LOST,
                                     C.CRASHED, C.RELEASED, C.WAIT, C.SUSPEND)),
        *((s, C.START) for s in TERMINAL)}


# -- the retry rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("cause", [C.FAILED, C.TIMED_OUT, C.LOST, C.CRASHED])
@pytest.mark.parametrize(("retries", "on", "retried"), [
    (1, ("failed", "timed_out", "lost"), True),  # named, one left: retried
    (2, ("failed", "timed_out", "lost"), True),
    (0, ("failed", "timed_out", "lost"), False),  # none left
    (3, (), False),  # the policy names nothing
    (3, None, False),  # no policy (its agent is gone)
])
def test_a_bad_end_is_retried_while_the_policy_names_it_and_retries_last(
        cause: TaskCause, retries: int, on: tuple[str, ...] | None, retried: bool) -> None:
    m = at(S.RUNNING, retries)
    step = m.fire(cause, Policy(on))
    if retried:
        assert step is RETRY and step.retried and not step.ends
        assert (m.status, m.retries_left) == (S.QUEUED, retries - 1)
    else:
        assert step == ROWS[S.RUNNING, cause] and step.ends and not step.retried
        assert (m.status, m.retries_left) == (ROWS[S.RUNNING, cause].target, retries)


@pytest.mark.parametrize("cause", [C.FAILED, C.TIMED_OUT, C.LOST, C.CRASHED])
def test_the_policy_names_the_outcome_retried(cause: TaskCause) -> None:
    """An agent retrying only lost attempts does not retry a failed one, and so on."""
    target = ROWS[S.RUNNING, cause].target
    assert target is not None
    for outcome in ("failed", "timed_out", "lost"):
        m = at(S.RUNNING, 1)
        assert m.fire(cause, Policy((outcome,))).retried == (outcome == target.value)


def test_a_retry_runs_again_until_its_retries_are_spent() -> None:
    m, policy = TaskMachine(2), Policy(("lost",))
    outcomes = []
    for _ in range(3):
        m.fire(C.START)
        outcomes.append(m.fire(C.LOST, policy).target)
    assert outcomes == [S.QUEUED, S.QUEUED, S.LOST] and m.retries_left == 0
    assert m.ended and policy.asked == 2  # not asked once none was left


def test_the_policy_is_asked_only_of_a_bad_end_with_a_retry_left() -> None:
    policy = Policy(("failed", "timed_out", "lost", "cancelled", "succeeded"))
    for cause in (C.ANSWERED, C.CANCEL, C.RELEASED):
        m = at(S.RUNNING, 5)
        assert not m.fire(cause, policy).retried and m.retries_left == 5
    assert policy.asked == 0  # a success, a cancel, a hand-back are never retried
    at(S.RUNNING, 0).fire(C.FAILED, policy)
    assert policy.asked == 0


def test_a_release_waits_again_and_spends_no_retry() -> None:
    m = at(S.RUNNING, 0)
    step = m.fire(C.RELEASED, NEVER)
    assert (step.target, step.retried, m.status, m.retries_left) == (
        S.QUEUED, False, S.QUEUED, 0)


def test_a_finished_task_has_one_outcome() -> None:
    m = at(S.RUNNING, 1)
    assert m.fire(C.ANSWERED).ends
    for cause in (C.CANCEL, C.FAILED, C.LOST, C.ANSWERED, C.DROPPED, C.TIMED_OUT):
        assert m.fire(cause, Policy(("failed", "lost"))) is IGNORE
    assert (m.status, m.retries_left) == (S.SUCCEEDED, 1)


# -- a loss to infrastructure (retry_lost) --------------------------------------------------
@pytest.mark.parametrize("status", [S.RUNNING, S.WAITING])
def test_a_loss_to_infrastructure_is_retried_while_retry_lost_lasts_spending_no_retry(
        status: TaskStatus) -> None:
    for lost in (1, 2):  # lost attempts so far, this one among them: within retry_lost 2
        m = at(status, retries=0)
        step = m.fire(C.LOST, Policy((), LostBudget(2, lost)))
        assert step is RETRY and step.retried and not step.ends
        assert (m.status, m.retries_left) == (S.QUEUED, 0)
    # one more than retry_lost: the retries rule, here none left, so it ends lost
    m = at(status, retries=0)
    assert m.fire(C.LOST, Policy(("lost",), LostBudget(2, 3))) == ROWS[status, C.LOST]
    assert m.status is S.LOST


def test_past_retry_lost_an_agents_retries_still_retry_a_lost_attempt() -> None:
    m = at(S.RUNNING, retries=1)
    assert m.fire(C.LOST, Policy(("lost",), LostBudget(1, 2))) is RETRY
    assert (m.status, m.retries_left) == (S.QUEUED, 0)


def test_at_most_once_a_lost_task_is_never_retried_whatever_its_retries() -> None:
    m = at(S.RUNNING, retries=3)
    policy = Policy(("lost",), LostBudget(0, 1))
    step = m.fire(C.LOST, policy)
    assert step is AT_MOST_ONCE and step.ends and step.once and not step.retried
    assert (m.status, m.retries_left, policy.asked) == (S.LOST, 3, 0)


def test_a_crash_or_a_cap_kill_is_not_retried_by_retry_lost() -> None:
    m = at(S.RUNNING, retries=0)
    step = m.fire(C.CRASHED, Policy(("lost",), LostBudget(2, 1)))
    assert step == ROWS[S.RUNNING, C.CRASHED] and step.ends and not step.once
    assert m.status is S.LOST
    # its agent's retries do (retry_on names lost), and retry_lost = 0 does not stop them
    m = at(S.RUNNING, retries=1)
    assert m.fire(C.CRASHED, Policy(("lost",), LostBudget(0, 1))) is RETRY
    assert m.retries_left == 0


# -- a restart ------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["queued", "running", "waiting", "suspended"])
def test_a_restored_task_takes_its_records_status(status: str) -> None:
    m = TaskMachine(1)
    m.restored(status)
    assert m.status == status


@pytest.mark.parametrize("status", [*sorted(TERMINAL), "refused", ""])
def test_a_finished_or_unknown_status_is_not_restored(status: str) -> None:
    m = TaskMachine(1)
    with pytest.raises(IllegalTransition) as err:
        m.restored(status)
    assert str(err.value) == f"a task restored from a journal is unfinished, not {status}"
    assert m.status is S.QUEUED


def test_a_running_record_after_a_restart_is_retried_or_lost_by_the_same_rule() -> None:
    for retries, end in ((1, S.QUEUED), (0, S.LOST)):
        m = TaskMachine(retries)
        m.restored("running")
        m.fire(C.LOST, Policy(("lost",)))
        assert (m.status, m.retries_left) == (end, 0)


# -- how an attempt ended -------------------------------------------------------------------
def running(retries: int = 0) -> tuple[TaskMachine, Attempt]:
    return at(S.RUNNING, retries), Attempt(0, 1, 1.0)


def test_an_answer_succeeds() -> None:
    m, a = running()
    assert attempt_end(m, a, a, None, None) is ANSWERED
    assert (a.outcome, a.error) == ("succeeded", None)


@pytest.mark.parametrize(("exc", "handed", "end", "outcome", "error"), [
    (RpcError(jsonrpc.PEER_CLOSED, "worker exited"), None,
     AttemptOutcome(C.LOST, TaskFailure(jsonrpc.PEER_CLOSED, "worker exited")), "lost",
     "worker exited"),
    # the kind of loss its worker's end was, on the error (losses.py)
    (RpcError(jsonrpc.PEER_CLOSED, "worker exited: killed by SIGKILL", {"loss": "infra"}),
     None, AttemptOutcome(C.LOST, TaskFailure(jsonrpc.PEER_CLOSED,
                                              "worker exited: killed by SIGKILL")),
     "lost", "worker exited: killed by SIGKILL"),
    (RpcError(jsonrpc.PEER_CLOSED, "worker exited: memory limit", {"loss": "cap"}), None,
     AttemptOutcome(C.CRASHED, TaskFailure(jsonrpc.PEER_CLOSED,
                                           "worker exited: memory limit")),
     "lost", "worker exited: memory limit"),
    (RpcError(jsonrpc.PEER_CLOSED, "worker exited with status 3", {"loss": "crash"}), None,
     AttemptOutcome(C.CRASHED, TaskFailure(jsonrpc.PEER_CLOSED,
                                           "worker exited with status 3")),
     "lost", "worker exited with status 3"),
    # handed over: lost to the stop, whatever the cancelled worker answered
    (RpcError(jsonrpc.REQUEST_CANCELLED, "stopped"), "daemon stopping",
     AttemptOutcome(C.LOST, TaskFailure(jsonrpc.PEER_CLOSED, "daemon stopping")), "lost",
     "daemon stopping"),
    (ValueError("bad answer"), None,
     AttemptOutcome(C.FAILED, TaskFailure(jsonrpc.INTERNAL_ERROR, "bad answer")), "failed",
     "bad answer"),
    (RpcError(jsonrpc.REQUEST_CANCELLED, "it cancelled"), None,
     AttemptOutcome(C.CANCEL, TaskFailure(jsonrpc.REQUEST_CANCELLED, "it cancelled")),
     "cancelled", None),
    (RpcError(-1, "agent error", {"x": 1}), None,
     AttemptOutcome(C.FAILED, TaskFailure(-1, "agent error", {"x": 1})), "failed",
     "agent error"),
])
def test_an_error_is_the_attempts_end(exc: BaseException, handed: str | None,
                                      end: AttemptOutcome, outcome: str,
                                      error: str | None) -> None:
    m, a = running()
    assert attempt_end(m, a, a, exc, handed) == end
    assert (a.outcome, a.error) == (outcome, error)
    assert m.status is S.RUNNING  # deciding moves nothing: firing does


def test_an_answer_after_a_timeout_or_a_cancel_is_late() -> None:
    m, a = running(retries=1)
    end = timed_out(a, 2.5)
    assert end == AttemptOutcome(C.TIMED_OUT, TaskFailure(jsonrpc.REQUEST_TIMEOUT,
                                                          "task timed out after 2.5 s"))
    assert m.fire(C.TIMED_OUT, Policy(("timed_out",))).retried
    # its retry waits for this attempt to stop: its answer is late, and lets the retry go
    assert attempt_end(m, a, a, None, None) is LATE_AGAIN
    assert (a.outcome, a.error) == ("timed_out", "answered after the task ended")
    # an older attempt's answer does not
    assert attempt_end(m, Attempt(0, 1, 0.0, outcome="lost"), a, None, None) is LATE
    m2, b = running()
    cancelled(b)
    m2.fire(C.CANCEL)
    assert attempt_end(m2, b, b, RpcError(jsonrpc.REQUEST_CANCELLED, "ok"), None) is LATE
    assert (b.outcome, b.error) == ("cancelled", "ok")


# -- nothing outside the machine assigns a task's status ------------------------------------
CORRAL = Path(__file__).resolve().parent.parent / "corral"
MACHINE = CORRAL / "supervisor" / "tasks" / "taskmachine.py"
FIELDS = frozenset(TaskMachine.__slots__)
# receivers whose `status` is not a task's, and whose it is
NOT_TASKS = {
    "run": "a workflow run's status (daemon/workflows)",
    "call": "a team call's status (supervisor/teams)",
}
# the classes that are tasks: a `self.status` in one of them is a task's (in any other
# class, its own: a gateway's task handle, say)
TASK_CLASSES = frozenset({"TaskMachine", "Task", "ClusterTask"})


def _assigned(tree: ast.AST, in_task: bool = False) -> list[tuple[int, str]]:
    """Every assignment to an attribute named as a task machine's field, of a task:
    (line, receiver); `self`'s only inside a task's class (`in_task`)."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef):
            bases = {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases}
            found += _assigned(node, node.name in TASK_CLASSES or bool(bases & TASK_CLASSES))
            continue
        found += _assigned(node, in_task)
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        for t in flat:
            if isinstance(t, ast.Attribute) and t.attr in FIELDS:
                receiver = t.value.id if isinstance(t.value, ast.Name) else ast.unparse(t.value)
                if receiver != "self" or in_task:
                    found.append((node.lineno, receiver))
    return sorted(found)


def status_assignments() -> list[str]:
    out = []
    for path in sorted(CORRAL.rglob("*.py")):
        for line, receiver in _assigned(file_tree(path)):
            if receiver not in NOT_TASKS:
                out.append(f"{path.relative_to(CORRAL)}:{line}: {receiver}")
    return out


def test_one_place_assigns_a_tasks_status() -> None:
    found = status_assignments()
    assert found and all(f.startswith("supervisor/tasks/taskmachine.py:") for f in found), found
    assert {f.rsplit(": ", 1)[1] for f in found} == {"self"}


def test_the_walk_sees_an_assignment() -> None:
    """The guard can fail: each form it looks for."""
    tree = ast.parse("task.status = TaskStatus.QUEUED\nt.status, t.error = 'failed', e\n"
                     "self.tasks[0].retries_left -= 1\nrun.status = 'succeeded'\n"
                     "x.state = 1\n"
                     "class Handle:\n    def f(self):\n        self.status = 'working'\n"
                     "class Mine(Task):\n    def f(self):\n        self.status = 'lost'\n")
    assert _assigned(tree) == [(1, "task"), (2, "t"), (3, "self.tasks[0]"), (4, "run"),
                               (11, "self")]


# -- nothing outside the task path decides from one status of a task -------------------------
TASK_PATH = CORRAL / "supervisor" / "tasks"
STATUS_NAMES = frozenset(s.value for s in TaskStatus)
# where a `status` is not a task's (a run's, a step's, a durable call's, an MCP task's): the
# same words, of other machines
OTHER_STATUSES = ("daemon/workflows/", "daemon/teams/", "supervisor/teams/",
                  "supervisor/durable/", "cluster/clustercalls.py", "cli/workflows.py")
# Comparisons of a task's status with one status allowed outside the task path, by file
# and line, and why: what a record (the journal's row, Redis's hash, the wire's string)
# says, shown or counted. A task itself is asked (`queued`, `running`, `ended`); a set of
# the machine's (TERMINAL, UNFINISHED) is a question it answers. Only shrinks.
STATUS_ALLOWED: dict[tuple[str, str], str] = {
    ("cli/tasks.py", 'elif res.status == "succeeded":'): "the wire's answer, shown",
    ("cli/tasks.py", 'if res.status != "succeeded":'): "the wire's answer, an exit status",
    ("cli/tasks.py", "return f\"{node}(claimed, {'waiting for' if a.outcome == 'running' "
                     "else 'never on'} \" \\"): "an attempt's wire outcome, shown",
    ("results.py", 'ended = [t.status for t in self.tasks if t.status not in '
                   '("queued", "running")]'): "a drain report's wire rows, shown",
    ("results.py", 'handed = sum(1 for t in self.tasks if t.status == "queued")'):
        "a drain report's wire rows, shown",
    ("results.py", 'stopped = sum(1 for t in self.tasks if t.status == "running")'):
        "a drain report's wire rows, shown",
    ("daemon/taskjournal.py", 'not_before=not_before if status == "queued" else None,'):
        "a journal row read back",
    ("cluster/clustertasks.py", 'if info.status == "queued" and info.waiting is None:'):
        "a cluster record read back (why a queued turn waits: its session's)",
    ("daemon/tasks/local.py", 'lost = sum(1 for t in tasks if t.status == "lost")'):
        "the recovery's report",
    ("daemon/tasks/local.py",
     'retried = sum(1 for t in tasks if t.id in was_running and t.status != "lost")'):
        "the recovery's report",
    ("daemon/upgrade.py", 'and rec.task_id in running and rec.status == "running"):'):
        "a journal record kept by a handed-over worker",
    ("cluster/listing.py",
     "node=node.decode() if node and st != TaskStatus.QUEUED else msgspec.UNSET,"):
        "a Redis record's status, shown",
    ("supervisor/tracing.py",
     "said = error.message if error is not None and status != SUCCEEDED else None"):
        "a trace record's error text",
    ("supervisor/tracerecords.py", 'if outcome != "succeeded":'):
        "an attempt's span's error, from its record",
    # a task's view (TaskInfo) told as an MCP task's result, and an MCP task's own status
    ("daemon/mcptasks.py", 'if info.status == "cancelled":'): "a task's view, told",
    ("daemon/mcptasks.py", 'elif self.status == "failed":'): "an MCP task's own status",
    ("daemon/mcptasks.py",
     "text = msgspec.json.encode(output).decode() if info.status == SUCCEEDED \\"):
        "a task's view, told",
    ("daemon/mcptasks.py", '"isError": info.status != SUCCEEDED,'): "a task's view, told",
    ("daemon/mcptasks.py", "if info.status == SUCCEEDED and isinstance(output, dict):"):
        "a task's view, told",
}


def _one_status(node: ast.expr, literal: bool) -> bool:
    """Whether an operand is one task status: TaskStatus.X, a status set by hand, or (where
    the other side reads a status: `literal`) a status's name or a tuple of them."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id == "TaskStatus"
    if isinstance(node, ast.Name):
        return node.id == "SUCCEEDED"  # taskmachine's TaskStatus.SUCCEEDED, imported
    if isinstance(node, ast.Constant):
        return literal and node.value in STATUS_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_one_status(e, literal) for e in node.elts)
    return False


def _reads_status(node: ast.expr) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "value":
        node = node.value
    return ((isinstance(node, ast.Attribute) and node.attr in ("status", "outcome"))
            or (isinstance(node, ast.Name) and node.id in ("status", "st", "outcome")))


def status_comparisons(source: str, rel: str) -> list[tuple[str, str]]:
    lines = source.splitlines()
    found = []
    for node in walked(parsed(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literal = any(_reads_status(o) for o in operands)
            if any(_one_status(o, literal) for o in operands):
                found.append((rel, lines[node.lineno - 1].strip()))
    return found


def task_status_comparisons() -> list[tuple[str, str]]:
    found = []
    for path in sorted(CORRAL.rglob("*.py")):
        rel = str(path.relative_to(CORRAL))
        if path.is_relative_to(TASK_PATH) or rel.startswith(OTHER_STATUSES):
            continue
        found += status_comparisons(path.read_text(), rel)
    return found


def test_no_module_outside_the_task_path_compares_a_task_with_one_status() -> None:
    found = task_status_comparisons()
    assert [f for f in found if f not in STATUS_ALLOWED] == []
    gone = [a for a in STATUS_ALLOWED if a not in found]
    assert gone == [], "an allowed comparison is gone: take it out of STATUS_ALLOWED"


def test_the_status_walk_sees_a_comparison() -> None:
    """The guard can fail: each form it looks for, and what it leaves (a set of the
    machine's, a task asked)."""
    source = ("a = t.status == TaskStatus.QUEUED\nb = t.status != 'running'\n"
              "c = st.value in ('queued', 'running')\nd = t.status not in TERMINAL\n"
              "e = t.queued\nf = run_name == 'running'\n")
    assert [line for _, line in status_comparisons(source, "probe.py")] == [
        "a = t.status == TaskStatus.QUEUED", "b = t.status != 'running'",
        "c = st.value in ('queued', 'running')"]
