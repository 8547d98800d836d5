"""The clients docs/ tell a new user to call the Quick start's daemon with, run as written:
docs/a2a.md's (a2a-sdk) and docs/gateway.md's (the MCP SDK), each its doc's first Python
block under its heading, pasted into `python -m asyncio`. New users' trials found these
blocks calling another example's port and using a `token` they never defined.

Real parts: the Quick start's `corral daemon` (tests/quickstart.py), its agents and the
notes MCP server as processes, the official clients in a Python process of their own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT
from .daemon_harness import PY
from .quickstart import PORT, quickstart, token


def doc_client(doc: str, heading: str) -> str:
    """The first Python block under `heading` in docs/DOC, as a reader copies it."""
    text = (ROOT / "docs" / doc).read_text()
    return text[text.index(heading):].split("```python\n", 1)[1].split("```", 1)[0]


# each doc's client: where it is, the scopes its doc gives its token, what it prints
_CLIENTS = [
    ("a2a.md", "## Calling it", ("tasks:run", "tasks:read", "approvals"),
     "state: TASK_STATE_COMPLETED"),
    ("gateway.md", "### Connecting a client", ("mcp:call",),
     "['notes__add', 'notes__get', 'notes__search']"),
]


@pytest.mark.timeout(240)
def test_the_docs_clients_run_as_written_against_the_quick_start(tmp_path: Path) -> None:
    """Only the token each block defines is filled in (and the test's free port for the
    Quick start's): each block reaches its door and prints its answer."""
    blocks = {doc: doc_client(doc, heading) for doc, heading, _, _ in _CLIENTS}
    for doc, block in blocks.items():
        assert 'token = "..."' in block, f"docs/{doc}'s client uses a token it never defines"
        assert f"http://127.0.0.1:{PORT}/" in block, (
            f"docs/{doc}'s client is not at the Quick start's port, {PORT}")
    with quickstart(tmp_path) as (port, env, sock):
        for doc, _, scopes, answer in _CLIENTS:
            secret = token(env, sock, doc.removesuffix(".md"), *scopes)
            pasted = blocks[doc].replace('token = "..."', f'token = "{secret}"').replace(
                f"127.0.0.1:{PORT}", f"127.0.0.1:{port}")
            # a blank line ends the pasted block at the prompt, as a reader's Enter does
            ran = subprocess.run([PY, "-m", "asyncio"], input=pasted + "\n\n", env=env,
                                 capture_output=True, text=True, timeout=180)
            assert answer in ran.stdout and "Traceback" not in ran.stderr, (
                doc, ran.stdout, ran.stderr)
