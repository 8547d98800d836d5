"""The model gateway bench's client (bench/bench_model_gateway.py): a corral worker whose
task times Chat Completions calls, whole and streamed, to the stand-in upstream directly
and to a peer in turn (corral's model gateway with the replica's own OPENAI_BASE_URL and
OPENAI_API_KEY, or LiteLLM's proxy), one keep-alive connection each, interleaved call by
call so that the machine's load drifts alike for both of a pair (one peer at a time: a
peer's work after its answer does not fall on the other's calls).

Its task's input: {"pairs": [{"peer": NAME, "calls": N, "streams": M}], "warmup": W,
"targets": {name: [base URL, key]}} (corral's taken from the environment). Its output:
per peer, its and direct's seconds of each whole call and, for streams, to the first
content token."""

import http.client
import json
import os
import time
from urllib.parse import urlsplit

from corral.worker import run

BODY = {"model": "bench", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi there"}]}
WHOLE = json.dumps(BODY).encode()
STREAMED = json.dumps({**BODY, "stream": True}).encode()


class Target:
    def __init__(self, base, key):
        parts = urlsplit(base)
        self.path = parts.path.rstrip("/") + "/chat/completions"
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port)
        self.headers = {"Content-Type": "application/json",
                        "Authorization": f"Bearer {key}"}

    def whole(self):
        t0 = time.perf_counter()
        self.conn.request("POST", self.path, WHOLE, self.headers)
        r = self.conn.getresponse()
        body = r.read()
        took = time.perf_counter() - t0
        if r.status != 200 or b"echo" not in body:
            raise RuntimeError(f"{self.path}: {r.status} {body[:200]!r}")
        return took

    def streamed(self):
        t0 = time.perf_counter()
        self.conn.request("POST", self.path, STREAMED, self.headers)
        r = self.conn.getresponse()
        first = None
        while True:
            line = r.readline()
            if not line:
                break
            if first is None and b"echo" in line:
                first = time.perf_counter() - t0
        if r.status != 200 or first is None:
            raise RuntimeError(f"{self.path}: a stream of status {r.status} with no token")
        return first


def pair(direct, peer, calls, streams, warmup):
    """`direct` and `peer` called in turn, call by call: each one's whole times and
    times to the first token."""
    out = [{"whole": [], "first_token": []}, {"whole": [], "first_token": []}]
    for measure, n in (("whole", calls), ("first_token", streams)):
        for i in range(warmup + n):
            for j, target in enumerate((direct, peer)):
                took = target.whole() if measure == "whole" else target.streamed()
                if i >= warmup:
                    out[j][measure].append(took)
    return out


def handle(task_input, ctx):
    targets = {name: Target(base, key) for name, (base, key) in task_input["targets"].items()}
    targets["corral"] = Target(os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"])
    out = {}
    for p in task_input["pairs"]:
        direct, peer = pair(targets["direct"], targets[p["peer"]], p["calls"], p["streams"],
                            task_input["warmup"])
        out[p["peer"]] = {"direct": direct, p["peer"]: peer}
    return out


run(handle)
