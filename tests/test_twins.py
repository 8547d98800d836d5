"""No per-store twin of a session's turns (issue 86, decision 1380): the rule (when a turn
may start, which runs next, what a turn's end does, when a session may end) is the table
in corral/supervisor/tasks/turns.py; each store asks it, and a Lua that keeps a decided
move tests the session's turns only against what was read (its ARGV), as a
compare-and-set. What is still decided in a store is a strict xfail naming it."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

from corral.cluster import sessionscripts
from corral.supervisor.tasks import turns
from corral.supervisor.tasks.turns import TurnEvent

from .conftest import ROOT

# what a session's turns are in the cluster's Lua: its current turn, its line
_TURN_FIELDS = re.compile(r"'cur'|\bcur\b|\bsline\b|'LLEN'|'LPOP'|\bnxt\b|\bturn\b")


def decisions(lua: str) -> list[str]:
    """The conditions of `lua` that test a session's turns otherwise than against what was
    read (ARGV): a rule written in the store."""
    out = []
    for cond in re.findall(r"\b(?:if|elseif)\s+(.*?)\s+then\b", lua, re.S):
        out += [part for part in re.split(r"\s+(?:and|or)\s+", cond)
                if _TURN_FIELDS.search(part) and "ARGV" not in part]
    return out


def events_decided(module: Path) -> set[TurnEvent]:
    """The events a store's module asks the rule about (`decide(..., TurnEvent.X)`)."""
    return events_decided_in(ast.parse(module.read_text()))


def closes(module: Path) -> list[str]:
    """The functions of `module` that ask the rule about a session's close."""
    return [fn.name for fn in ast.walk(ast.parse(module.read_text()))
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            and TurnEvent.CLOSE in events_decided_in(fn)]


def events_decided_in(tree: ast.AST) -> set[TurnEvent]:
    return {TurnEvent[node.args[1].attr] for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "decide" and len(node.args) == 2
            and isinstance(node.args[1], ast.Attribute)}


def functions_with(module: Path, found: Callable[[ast.AST], bool]) -> list[str]:
    """The functions of `module` with a node `found` in them."""
    return [fn.name for fn in ast.walk(ast.parse(module.read_text()))
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            and any(found(node) for node in ast.walk(fn))]


def calls(name: str) -> Callable[[ast.AST], bool]:
    """A call of the function `name`."""
    return lambda node: isinstance(node, ast.Call) and isinstance(
        node.func, ast.Name) and node.func.id == name


def reads(attr: str) -> Callable[[ast.AST], bool]:
    """A read of an attribute `attr` (of a spec, or of a bound: `SessionBound.max_bytes`)."""
    return lambda node: isinstance(node, ast.Attribute) and node.attr == attr


def bounded(lua: str) -> list[str]:
    """The conditions of `lua` that compare a count of live sessions or of their states'
    bytes with anything but what was read (`seen`): a bound decided in the store."""
    return [cond for cond in re.findall(r"\b(?:if|elseif)\s+(.*?)\s+then\b", lua, re.S)
            if re.search(r"ZCOUNT|HVALS|\blive\b|\bheld\b", cond) and "seen" not in cond]


def reads_a_ttl(node: ast.AST) -> bool:
    """An agent's session_ttl read (`spec.session_ttl`)."""
    return isinstance(node, ast.Attribute) and node.attr == "session_ttl"


def adds_a_ttl(node: ast.AST) -> bool:
    """A ttl added to a time: an expiry computed."""
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and any(
        "ttl" in ast.unparse(side) for side in (node.left, node.right))


NODE = ROOT / "corral/supervisor/tasks/sessions.py"
CLUSTER = ROOT / "corral/cluster/clustersessions.py"


def test_the_check_sees_a_rule_written_in_lua_and_passes_a_compare_and_set() -> None:
    assert decisions("if redis.call('HGET', skey, 'cur') == task then x() end") == [
        "redis.call('HGET', skey, 'cur') == task"]
    assert decisions("local nxt = redis.call('LPOP', sline)\nif nxt then y() end") == ["nxt"]
    assert decisions("if redis.call('HGET', KEYS[1], 'cur') ~= ARGV[3]\n"
                     "    or redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[4]) then") == []
    assert decisions("if ttl > 0 then z() end") == []


def test_the_check_sees_a_bound_decided_in_lua_and_passes_a_count_as_read() -> None:
    assert bounded("if live >= bound[1] then return {-2} end") == ["live >= bound[1]"]
    assert bounded("if held > bound[1] then return x end") == ["held > bound[1]"]
    assert bounded("if redis.call('ZCOUNT', seen[1], now, '+inf') > seen[2] then") == []


def test_the_rule_has_a_move_for_each_turn_a_store_can_see() -> None:
    """Every state's submit and close, and a current turn's end, have a move; a waiting
    turn's end, only where a line is."""
    for now in turns.Turns:
        assert turns.decide(now, TurnEvent.SUBMIT) is not None
        assert turns.decide(now, TurnEvent.CLOSE) is not None
    assert {turns.decide(now, TurnEvent.ENDS) for now in turns.Turns} == {
        None, turns.Move.REST, turns.Move.ADVANCE}
    assert [now for now in turns.Turns if turns.decide(now, TurnEvent.LEAVES)] == [
        turns.Turns.LINED]


def test_the_node_asks_the_rule_at_a_turns_submit() -> None:
    assert TurnEvent.SUBMIT in events_decided(NODE)


def test_a_sessions_end_is_decided_once_above_every_store() -> None:
    """sessions.end is decided in `end_turns`, above the stores, on what a store read
    (decision 1948); each store keeps it only while the session is as read (the
    cluster's END under a compare-and-set)."""
    assert closes(NODE) == ["end_turns"]
    assert TurnEvent.CLOSE not in events_decided(CLUSTER)
    assert decisions(sessionscripts.END) == []


def test_a_clusters_turn_start_is_decided_above_and_kept_under_a_compare_and_set() -> None:
    assert TurnEvent.SUBMIT in events_decided(CLUSTER)
    assert decisions(sessionscripts.SUBMIT_FIRST + sessionscripts.ENTRY
                     + sessionscripts.SUBMIT_THEN) == []


def test_a_turns_end_is_decided_once_above_every_store() -> None:
    """An ended turn's move is `turns.ended`'s, on what a store read of its session
    (whether the turn held its place, its line's length, whether it waits in it): the
    node keeps it in memory, at a waiting turn's cancel (`remove`) and at a turn's end
    (`_finished`); on the cluster a task's end only marks its turn ended
    (scripts._ended), and MOVE keeps the move under a compare-and-set (decisions 1500,
    1966). Neither store asks the rule about a turn's end itself."""
    for module in (NODE, CLUSTER):
        assert not events_decided(module) & {TurnEvent.ENDS, TurnEvent.LEAVES}
    assert functions_with(NODE, calls("ended")) == ["remove", "_finished"]
    assert functions_with(CLUSTER, calls("ended")) == ["moved"]
    assert decisions(sessionscripts.ended("ARGV[2]") + sessionscripts.MOVE) == []


def test_a_sessions_expiry_is_computed_once_above_every_store() -> None:
    """When an idle session expires is `sessions.expires` of what a store read (its last
    use, its ttl, whether it idles), and its ttl `sessions.session_ttl`'s, the agent's or
    the default: the node asks at each read, the cluster at a turn's submit, keeping it
    as its keys' TTL (decision 1965). No store reads an agent's ttl or adds one itself."""
    assert functions_with(NODE, reads_a_ttl) == ["session_ttl"]
    assert functions_with(NODE, adds_a_ttl) == ["expires"]
    assert functions_with(CLUSTER, reads_a_ttl) == functions_with(CLUSTER, adds_a_ttl) == []


def test_a_new_sessions_bounds_are_decided_once_above_every_store() -> None:
    """max_sessions (an agent's, its tenant's) is `sessions.over`'s, on what a store read of
    each agent a bound counts: the node asks on its table's counts, kept in the same step
    of its loop; the cluster on COUNTS' read, which SUBMIT keeps a new session under only
    while no count has grown (decision 1992). No store reads a bound's max_sessions or
    compares a count with one."""
    assert functions_with(NODE, reads("max_sessions")) == ["session_bounds", "over"]
    assert functions_with(CLUSTER, reads("max_sessions")) == []
    assert functions_with(NODE, calls("over")) == ["_over"]
    assert "submit_args" in functions_with(CLUSTER, calls("over"))
    assert bounded(sessionscripts.SUBMIT_FIRST + sessionscripts.COUNTS) == []


def test_a_checkpoints_bounds_are_decided_once_above_every_store() -> None:
    """max_session_bytes at a checkpoint is `sessions.over`'s too, on the bytes a store
    read of each agent a bound counts (`bytes_counted`): the node on its table's, in the
    same step of its loop; the cluster on SIZES' read, which CHECKPOINT keeps the state
    under only while its session's bytes are as read and no agent's have grown, else it
    is read and decided again (decision 2231). No store reads a bound's max_bytes or
    compares bytes with one."""
    assert functions_with(NODE, reads("max_bytes")) == ["over", "bytes_counted"]
    assert functions_with(CLUSTER, reads("max_bytes")) == []
    assert functions_with(CLUSTER, calls("over")) == ["submit_args", "checkpoint"]
    assert functions_with(CLUSTER, calls("bytes_counted")) == ["checkpoint"]
    assert bounded(sessionscripts.CHECKPOINT + sessionscripts.SIZES) == []
