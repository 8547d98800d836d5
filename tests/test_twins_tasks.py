"""No per-store twin of a task's loss and retry rule, its cancel, its delay or its
submission key (issue 86): each behaviour is decided once above the home, the node's
engine or the cluster's reaper asking the task machine (supervisor/tasks/taskmachine.py)
and the words of taskmachine.py and corral/taskkeys.py, and a cluster script keeps what
was decided, comparing the record only against what was read (its ARGV). What is still
decided in a store is a strict xfail naming it. (The keys' rule: tests/test_twins_keys.py.)
"""

from __future__ import annotations

import ast
import re

from corral.cluster import scripts

from .conftest import ROOT

CLUSTER = ROOT / "corral" / "cluster"
# what of a task's record the loss and retry rule reads: its retries, its cancel's mark
_RETRY_FIELDS = re.compile(r"retries_left|retry_lost|'cancel'|\brec\[[45]\]")
# a task's start time read from its options: their JSON searched, or decoded and indexed
# (the record's own not_before field, written as given, is no reading of them)
_START_FIELDS = re.compile(r"\"delay\"|\"not_before\"|\[\s*'(?:delay|not_before)'\s*\]")
# a record's status, as a script finds it
_STATUS = re.compile(r"\brec\[1\]")


def conditions(lua: str, fields: re.Pattern[str]) -> list[str]:
    """The parts of `lua`'s conditions that test `fields` otherwise than against what was
    read (ARGV): a rule written in the store."""
    out = []
    for cond in re.findall(r"\b(?:if|elseif)\s+(.*?)\s+then\b", lua, re.S):
        out += [part for part in parts(cond) if fields.search(part) and "ARGV" not in part]
    return out


def parts(cond: str) -> list[str]:
    """`cond` split at its `and`s and `or`s outside parentheses."""
    out, depth, start = [], 0, 0
    for m in re.finditer(r"[()]|\s+(?:and|or)\s+", cond):
        if m.group() in "()":
            depth += 1 if m.group() == "(" else -1
        elif depth == 0:
            out.append(cond[start:m.start()])
            start = m.end()
    return [*out, cond[start:]]


def lua_scripts() -> dict[str, str]:
    """The task scripts of cluster/scripts.py, by name."""
    return {name: text for name, text in vars(scripts).items()
            if name.isupper() and not name.startswith("_") and isinstance(text, str)
            and "redis.call" in text}


def requeuing() -> set[str]:
    """The scripts that put a claimed task back in its queue (queued again, no owner)."""
    return {name for name, text in lua_scripts().items()
            if re.search(r"'status',\s*'queued',\s*'fence',\s*'0',\s*'owner'", text)}


def calls_in(path: str, function: str) -> set[str]:
    """The names `function` of the module at `path` calls (`f(...)`, `x.f(...)`)."""
    tree = ast.parse((ROOT / path).read_text())
    (fn,) = [n for n in ast.walk(tree)
             if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function]
    return {c.func.attr if isinstance(c.func, ast.Attribute) else c.func.id
            for c in ast.walk(fn) if isinstance(c, ast.Call)
            and isinstance(c.func, ast.Attribute | ast.Name)}


def test_the_check_sees_a_rule_in_lua_and_passes_a_compare_and_set() -> None:
    assert conditions("if redis.call('HGET', KEYS[1], 'cancel') == '1' then x() end",
                      _RETRY_FIELDS) == ["redis.call('HGET', KEYS[1], 'cancel') == '1'"]
    assert conditions("if rec[3] ~= ARGV[3] or (rec[4] or '') ~= ARGV[8] then",
                      _RETRY_FIELDS) == []
    assert conditions("if o['delay'] then", _START_FIELDS) == ["o['delay']"]
    assert requeuing() >= {"TAKEOVER"}


def test_a_claims_loss_is_decided_by_the_task_machine_and_kept_under_a_compare_and_set(
        ) -> None:
    """A dead node's claim, an orphan, and a stopping node's claims (what ran there lost
    with its worker) are each decided by `reaper.decided`, the task machine's rule as
    the engine applies it to a node's lost attempt; TAKEOVER keeps it only while the
    record's retries and cancel's mark are as read. No script hands a claim back on its
    own (RELEASE did, retries untouched, an at-most-once task run again: decision 1995)."""
    assert "fire" in calls_in("corral/cluster/reaper.py", "decided")
    assert {"take_over"} <= calls_in("corral/cluster/reaper.py", "hand_back")
    assert conditions(scripts.TAKEOVER, _RETRY_FIELDS) == []
    assert "RELEASE" not in lua_scripts()
    assert requeuing() == {"FINISH", "TAKEOVER"}


def test_a_retry_is_kept_by_finish_as_decided_above() -> None:
    """A retry asked to cancel while it ran ends cancelled: decided by its node on the
    cancel's mark it read, by the machine's cancel of a running task (outbox.py, the
    reaper's `cancelled`, as a takeover decides it); FINISH keeps a retry only while the
    mark is as read (decision 2090)."""
    assert {"fire", "cancelled"} <= calls_in("corral/cluster/outbox.py", "_decide_again")
    assert "cancelled" in calls_in("corral/cluster/reaper.py", "decided")
    assert conditions(scripts.FINISH, _RETRY_FIELDS) == []


def test_a_claim_keeps_no_retry_policy_of_its_own_reading() -> None:
    """A claim keeps its node's agent's retry_lost as data; the task's own is read where
    a loss is decided, by RetryOptions.lost (decision 2091)."""
    assert "lost" in calls_in("corral/cluster/reaper.py", "decided")
    assert "retry_lost" not in scripts.READ_CLAIM.replace("'retry_lost'", "")
    assert "retry_lost" not in scripts.SUBMIT_CLAIM.replace("'retry_lost'", "")


def test_a_cancel_is_decided_above_and_kept_under_a_compare_and_set() -> None:
    """What a cancel does is decided on the status read, in the machine's words
    (taskmachine.cancel_failure), by the engine and by the cluster's `scripts.cancel`;
    CANCEL keeps it only while the record's status is as read (decision 1996)."""
    assert "cancel_failure" in calls_in("corral/supervisor/tasks/manager.py", "cancel")
    assert "cancel_failure" in calls_in("corral/cluster/scripts.py", "cancel")
    assert conditions(scripts.CANCEL, _STATUS) == []


def test_a_tasks_start_time_is_computed_once_above_the_home() -> None:
    """SUBMIT is given the time a task may start at (ClusterTasks, from
    TaskOptions.start_at, as the node's intake asks it): no script reads a delay or a
    not_before from the options (decision 2041)."""
    assert [n for n, text in lua_scripts().items() if _START_FIELDS.search(text)] == []
