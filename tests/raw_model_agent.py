"""An agent that speaks to corral's model gateway in raw HTTP (tests/test_attacks_models.py):
what a hostile agent holding its replica's token may send, and all it is answered.

A task's `calls` are made at once, each in a thread: `path` (under the gateway's
address, ANTHROPIC_BASE_URL), `body` (JSON; with `pad` N, N small user messages before
its own, built here so that a body of megabytes is no part of the task's input); with
`tell`, its token is its first chunk of live output (a hostile agent hands it on). Its
output: each answer's status, headers and body, in the order of `calls`."""

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from corral.worker import run


def one(call):
    body = call["body"]
    if call.get("pad"):
        body = {**body, "messages": [{"role": "user", "content": "x"}] * call["pad"]
                + body["messages"]}
    request = urllib.request.Request(
        os.environ["ANTHROPIC_BASE_URL"] + call["path"], method="POST",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json",
                 "authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            if call.get("abandon"):  # read so much of it, then hang up
                return {"status": answer.status, "read": answer.read(call["abandon"]).decode()}
            return {"status": answer.status, "headers": dict(answer.headers),
                    "body": answer.read().decode()}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "headers": dict(exc.headers), "body": exc.read().decode()}


def handle(task_input, ctx):
    calls = task_input["calls"]
    if task_input.get("tell"):
        ctx.emit(os.environ["OPENAI_API_KEY"])
    with ThreadPoolExecutor(len(calls)) as pool:
        return {"answers": list(pool.map(one, calls))}


run(handle)
