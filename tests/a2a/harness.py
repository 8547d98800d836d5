"""A `corral daemon` serving examples/a2a/tck_agent.py over A2A on a free loopback port,
as examples/a2a/corral.toml serves it (tests/daemon_harness.py starts and kills it)."""

from __future__ import annotations

import textwrap
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, Daemon, free_port


def tck_agent(name: str = "tck", extra: str = "") -> str:
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{EXAMPLES}/a2a/tck_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        description = "The A2A TCK's scripted behaviours"
        max_concurrent_tasks = 64
        suspend_after = 0.5
        backoff_initial = 0.05
        retry_lost = 3
    """) + textwrap.dedent(extra)


def a2a_config(port: int, anonymous: str = '["tck"]', extra: str = "",
               push_private: bool = True) -> str:
    return textwrap.dedent(f"""
        [http]
        listen = "127.0.0.1:{port}"
        rate_per_minute = 0
        [a2a]
        anonymous = {anonymous}
        push_private = {str(push_private).lower()}
    """) + textwrap.dedent(extra)


@contextmanager
def a2a_daemon(tmp: Path, agents: str | None = None, anonymous: str = '["tck"]',
               extra: str = "", push_private: bool = True
               ) -> Iterator[tuple[Daemon, str]]:
    """The daemon and its base URL (http://127.0.0.1:PORT), its agent serving."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    d = Daemon(tmp, tck_agent() if agents is None else agents,
               extra=a2a_config(port, anonymous, extra, push_private))
    d.start()  # READY: the HTTP server listens and the agent serves
    try:
        yield d, f"http://127.0.0.1:{port}"
    finally:
        d.close()


def card(url: str, agent: str = "tck") -> bytes:
    with urllib.request.urlopen(f"{url}/a2a/{agent}/.well-known/agent-card.json",
                                timeout=10) as r:
        body: bytes = r.read()
        return body


def assert_replayed(seen_before: list[str], seen_after: list[str], count: int) -> None:
    """A resubscribed stream of tests/a2a/counter_agent.py's chunks (`attempt A chunk N`):
    every chunk the first stream was sent is sent again first, in its order (the journal
    replayed); each attempt's chunks from its first, none skipped, none twice; the last
    attempt's whole (`count` of them)."""
    assert seen_after[:len(seen_before)] == seen_before
    by_attempt: dict[str, list[int]] = {}
    for text in seen_after:
        _, attempt, _, n = text.split()
        by_attempt.setdefault(attempt, []).append(int(n))
    for places in by_attempt.values():
        assert places == list(range(len(places))), by_attempt
    assert by_attempt[max(by_attempt)] == list(range(count)), by_attempt
