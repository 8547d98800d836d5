"""Issues 86, 90 (decision 1320): what an answered model call's audit row costs, in this
process, with the daemon's Audit over a real state database and its writer thread.

    .venv/bin/python -m bench.bench_model_row [--calls 30000] [--rounds 5]

The audit link's model path (AuditLink._model_call) around a call answered at once, its
row written by the store's `call_row`, against the same call with the row as
`Audit.__call__` writes it (the path of a refused call, and of every answered one before
decision 1320), and against the call with no row. Rounds alternate the three; per call,
the loop's thread's CPU (time.thread_time) and the process's (the writer thread's
included), each once every row is committed. Medians over the rounds, and the row's cost:
each less the call with no row.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from corral.daemon.audit import Audit, AuditLink
from corral.daemon.logs import LogHub
from corral.daemon.store import StateStore
from corral.supervisor.tasks.call import MODELS, Call

WAYS = ("none", "audit", "call_row")


async def _answered(call: Call) -> int:
    return 1


async def one(way: str, calls: int) -> tuple[float, float]:
    """Per call, in µs: the loop's thread's CPU and the process's."""
    store = StateStore(Path(tempfile.mkdtemp(prefix="modelrow-")) / "state.db",
                       audit_max_rows=100_000)
    store.open_writer()
    audit = Audit(LogHub(None))  # (no log line: a model call's row has none)
    audit.to(store)
    link = AuditLink(audit)
    replica: Any = SimpleNamespace(label="caller#1", spec=SimpleNamespace(tenant="default"),
                                   name="caller")
    call = Call(replica, "open", {}, None, door=MODELS, model=object())  # type: ignore[arg-type]
    await asyncio.sleep(0)
    loop0, all0 = time.thread_time(), time.process_time()
    for i in range(calls):
        if way == "call_row":
            await link.intercept_call(call, _answered)
        else:
            await _answered(call)
            if way == "audit":
                link.row(call, "ok")
        if i % 5 == 0:  # (the loop turns, as it does between a gateway's calls)
            await asyncio.sleep(0)
    assert store.writer is not None
    await store.writer.committed()
    loop1, all1 = time.thread_time(), time.process_time()
    assert len(store.audit_log(calls + 1)) == (0 if way == "none" else calls)
    await store.close_writer()
    store.close()
    return 1e6 * (loop1 - loop0) / calls, 1e6 * (all1 - all0) / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    got: dict[str, list[tuple[float, float]]] = {w: [] for w in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            got[way].append(asyncio.run(one(way, args.calls)))
    base = [statistics.median(x[i] for x in got["none"]) for i in (0, 1)]
    for way in WAYS:
        loop = statistics.median(x[0] for x in got[way])
        whole = statistics.median(x[1] for x in got[way])
        print(f"{way:9} loop {loop:5.2f} us a call (the row {loop - base[0]:5.2f}), "
              f"process {whole:5.2f} (the row {whole - base[1]:5.2f})")


if __name__ == "__main__":
    main()
