"""An agent for the model gateway's tests (tests/test_model_gateway.py): the real `openai`
and `anthropic` client libraries, configured by nothing but the environment corral gives
it (OPENAI_BASE_URL, OPENAI_API_KEY, ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY).

A task makes `calls` model calls of `api` ("chat", "responses" or "messages"), each
asking `say` + its number (or `texts[i]`), whole or streamed (`stream`); on its first
attempt, after call `stop_after`, it writes `marker` and SIGKILLs itself; with
`by_address` its clients name the attempt (`?task=ID&attempt=N`, `default_query`; `forge`:
another task's id in its place); with `tools` N, a tool call (`counting__bump`) after each
of its first N model calls; with `then`, a last Messages call of that model ("two");
`extra`: more of a Chat Completions call's arguments (`n`, `max_tokens`).
Its output:
each answer's text, or the error a call raised (its status and message), and what its
environment held."""

import os
import signal

from corral.worker import run
from tests.quietimports import collector_off


def one(api, model, text, stream, query, extra=None):
    # each library imported by the first call of its format (the worker answers initialize
    # first), and only the one the call uses: either import is seconds of CPU
    if api == "messages":
        with collector_off(freeze=False):
            import anthropic

            client = anthropic.Anthropic(max_retries=0, default_query=query)
        args = {"model": model, "max_tokens": 64,
                "messages": [{"role": "user", "content": text}]}
        if not stream:
            return client.messages.create(**args).content[0].text
        with client.messages.stream(**args) as s:
            return "".join(s.text_stream)
    with collector_off(freeze=False):
        import openai

        client = openai.OpenAI(max_retries=0, default_query=query)
    if api == "responses":
        if not stream:
            return client.responses.create(model=model, input=text).output_text
        out = []
        for event in client.responses.create(model=model, input=text, stream=True):
            if event.type == "response.output_text.delta":
                out.append(event.delta)
        return "".join(out)
    messages = [{"role": "user", "content": text}]
    if not stream:
        return client.chat.completions.create(model=model, messages=messages,
                                              **(extra or {})).choices[0].message.content
    out = []
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            out.append(chunk.choices[0].delta.content)
    return "".join(out)


def handle(task_input, ctx):
    api = task_input.get("api", "chat")
    texts = task_input.get("texts") or [f"{task_input.get('say', 'call')} {i}"
                                        for i in range(1, int(task_input.get("calls", 1)) + 1)]
    # `by_address`: the calls name their attempt, as ctx.mcp_url does for the MCP gateway
    query = {"task": task_input.get("forge") or ctx.task_id, "attempt": str(ctx.attempt)} \
        if task_input.get("by_address") else None
    answers = []
    for i, text in enumerate(texts, 1):
        try:
            answers.append(one(api, task_input["model"], text, task_input.get("stream", False),
                               query, task_input.get("extra")))
        except Exception as exc:  # the client library's APIError, said as it was raised
            answers.append({"error": type(exc).__name__,
                            "status": getattr(exc, "status_code", None), "message": str(exc)})
        if i <= task_input.get("tools", 0):  # a tool call after each of the first model calls
            bumped = ctx.call_tool("counting__bump", {"i": i})
            answers.append(bumped["content"][0]["text"])
        if ctx.attempt == 1 and task_input.get("stop_after") == i:
            with open(task_input["marker"], "w") as f:
                f.write(str(i))
            os.kill(os.getpid(), signal.SIGKILL)
    if task_input.get("then"):
        answers.append(one("messages", task_input["then"], "two", False, query))
    env = dict(os.environ)  # all of it: the test looks for the provider's key there
    return {"answers": answers, "attempt": ctx.attempt, "env": env}


run(handle)
