"""The worker protocol's one list of methods (corral/workerproto.py): the engine serves
exactly the worker's methods in it, docs/protocol.md lists exactly them, and every worker
method's params that do not fit its Struct are refused with the exact message: a request
with -32602, a notification with a line in the worker's log."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.supervisor import LogBatch, State, Supervisor
from corral.workerproto import (
    FROM_WORKER,
    METHODS,
    TO_WORKER,
    BadParams,
    ToolsCallParams,
    params_of,
)

from .conftest import agent

ROOT = Path(__file__).resolve().parent.parent

# (method, params, what the worker is told) for every method a worker sends
REFUSED: list[tuple[str, Any, str]] = [
    ("tools/list", [1], "tools/list: params must be an object"),
    ("tools/call", {"name": 7}, "tools/call: name must be a string"),
    ("tools/call", {}, "tools/call: name must be a string"),
    ("tools/call", {"name": "x__y", "arguments": [1]}, "tools/call: arguments must be an object"),
    ("tools/call", {"name": "x__y", "task_id": 5}, "tools/call: task_id must be a string"),
    ("resources/list", {"server": 1}, "resources/list: server must be a string"),
    ("resources/templates/list", {"server": []},
     "resources/templates/list: server must be a string"),
    ("resources/read", {"server": "s"}, "resources/read: uri must be a string"),
    ("resources/subscribe", {"uri": "u"}, "resources/subscribe: server must be a string"),
    ("resources/unsubscribe", {"server": "s", "uri": 3},
     "resources/unsubscribe: uri must be a string"),
    ("prompts/list", {"server": 3}, "prompts/list: server must be a string"),
    ("prompts/get", {"arguments": {}}, "prompts/get: name must be a string"),
    ("prompts/get", {"name": "p__q", "arguments": {"a": 1}},
     "prompts/get: arguments must be an object of strings"),
    ("events/subscribe", {}, "events/subscribe: topic must be a non-empty string"),
    ("events/subscribe", {"topic": ""}, "events/subscribe: topic must be a non-empty string"),
    ("step/get", {"task_id": "t"}, "step/get: name must be a non-empty string"),
    ("step/get", {"task_id": "t", "name": ""}, "step/get: name must be a non-empty string"),
    ("step/put", {"name": "s"}, "step/put: task_id must be a non-empty string"),
    ("task/checkpoint", {"state": 1}, "task/checkpoint: task_id must be a non-empty string"),
    ("task/spawn", {"task_id": "t", "agent": "a"},
     "task/spawn: key must be a non-empty string of at most MAX_KEY_CHARS (256) characters"),
    ("task/ask", {"task_id": "t", "key": "k" * 257, "prompt": "?"},
     "task/ask: key must be a non-empty string of at most MAX_KEY_CHARS (256) characters"),
    ("task/spawn", {"task_id": "t", "agent": "a", "key": "1", "retries": "x"},
     "task/spawn: retries must be a whole number from 0 to 100"),
    ("task/wait", {"task_id": "t", "children": "c"}, "task/wait: children must be a list"),
    ("task/ask", {"task_id": "t", "key": "1"}, "task/ask: prompt must be a non-empty string"),
    ("task/ask", {"task_id": "t", "key": "1", "prompt": "?", "schema": []},
     "task/ask: schema must be an object"),
    ("task/ask", {"task_id": "t", "key": "1", "prompt": "?", "timeout": 0},
     "task/ask: timeout must be a number"),
    ("session/checkpoint", {"state": 1},
     "session/checkpoint: task_id must be a non-empty string"),
    # notifications: never answered, noted in the worker's log
    ("task/progress", {"task_id": "t"}, "ignored task/progress: progress must be a number"),
    ("task/progress", {"progress": 1}, "ignored task/progress: task_id must be a string"),
    ("task/progress", {"task_id": "t", "progress": 1, "message": 2},
     "ignored task/progress: message must be a string"),
    ("task/output", {"task_id": "t"}, "ignored task/output: data must be a string"),
    ("task/output", {"task_id": "t", "data": {"text": "hi"}},
     "ignored task/output: data must be a string"),
    ("usage/report", {"task_id": "t", "input_tokens": "many"},
     "ignored usage/report: input_tokens must be a number"),
    ("usage/report", {"task_id": "t", "model": 7}, "ignored usage/report: model must be a string"),
    ("events/publish", {"topic": ""}, "ignored events/publish: topic must be a non-empty string"),
    ("events/publish", {"data": 1}, "ignored events/publish: topic must be a non-empty string"),
    ("state/checkpoint", "x", "ignored state/checkpoint: params must be an object"),
]


def test_every_worker_method_has_a_refusal_tested() -> None:
    assert {m for m, _, _ in REFUSED} == FROM_WORKER


@pytest.mark.parametrize(("method", "params", "said"), REFUSED)
def test_a_methods_params_that_do_not_fit_say_what_is_wrong(
        method: str, params: Any, said: str) -> None:
    with pytest.raises(BadParams) as err:
        params_of(method, METHODS[method].params, params)
    assert f"ignored {err.value}" == said if METHODS[method].notification else \
        str(err.value) == said
    assert err.value.method == method


def test_params_that_fit_are_typed_and_extra_keys_are_ignored() -> None:
    p = params_of("tools/call", ToolsCallParams,
                  {"name": "fs__read", "arguments": {"path": "/"}, "newer": True})
    assert (p.name, p.arguments, p.task_id) == ("fs__read", {"path": "/"}, None)


async def test_the_engine_refuses_each_workers_bad_params_as_said(sup: Supervisor) -> None:
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(x.decode() for x in e.lines), LogBatch)
    sup.add(agent("proto", "misbehave.py", tools=["x__*"]))
    await sup.wait_state("proto", State.READY)
    for method, params, said in REFUSED:
        notify = METHODS[method].notification
        res = await sup.tasks.run("proto", {"do": "raw", "method": method, "params": params,
                                            "notify": notify})
        assert res.status == "succeeded", res.error
        if notify:
            assert said in logs, (method, params)
        else:
            assert res.output == {"error": jsonrpc.INVALID_PARAMS, "message": said}
    assert sup.tasks.budgets.bad_reports == 2  # usage reports of the wrong shape: ignored
    assert sup.states.saved == {}


def test_the_engine_serves_exactly_the_workers_methods(sup_tables: tuple[set[str], set[str]]
                                                       ) -> None:
    requests, notifications = sup_tables
    assert requests == {m for m in FROM_WORKER if not METHODS[m].notification}
    assert notifications == {m for m in FROM_WORKER if METHODS[m].notification}


@pytest.fixture
def sup_tables() -> tuple[set[str], set[str]]:
    s = Supervisor()
    return set(s.worker_methods), set(s.worker_notifications)


def _table(text: str, heading: str) -> set[str]:
    """The methods in the first column of the table under `## heading`."""
    part = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return {m for m in re.findall(r"^\| `([a-z/]+)` \|", part, re.M)}


def test_docs_protocol_lists_exactly_the_registrys_methods() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert _table(text, "Supervisor → worker") == TO_WORKER - {"resources/updated"}
    assert "`resources/updated {server, uri}`" in text  # told after resources/subscribe
    assert _table(text, "Worker → supervisor") == FROM_WORKER
    for name, m in METHODS.items():
        kind = "notification" if m.notification else "request"
        assert re.search(rf"^\| `{re.escape(name)}` \| {kind} \|", text, re.M) or \
            name == "resources/updated", name


def test_the_worker_sdk_speaks_the_registrys_methods_without_importing_it() -> None:
    source = (ROOT / "corral" / "worker" / "__init__.py").read_text()
    tree = ast.parse(source)
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and "workerproto" in m for m in imported)
    sent = set(re.findall(r'(?:notify|_call|request)\(\s*"([a-z/]+)"', source))
    handled = set(re.findall(r'method == "([a-z/]+)"', source))
    assert sent and sent <= FROM_WORKER
    assert handled == TO_WORKER
