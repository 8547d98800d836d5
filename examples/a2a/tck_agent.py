"""The A2A TCK's 16 scripted behaviours (its scenarios/), as an ordinary corral agent:
the task's input is the A2A message, the behaviour is chosen by its messageId's prefix.
corral serves it over A2A (docs/a2a.md): its output's `a2a` member becomes the task's
artifacts and status message, each JSON chunk it emits one event of the stream, and
`ctx.ask` makes the task input-required until the caller's next message answers it.
Run by corral (examples/a2a/corral.toml), or as `python3 examples/a2a/tck_agent.py`."""

import asyncio
import base64
import json

from corral.worker import TaskError, run

RESUBSCRIBE_WAIT = 4.0  # seconds: twice the TCK's streaming timeout


def text(value):
    return {"text": value}


def artifact(artifact_id, *parts):
    return {"artifactId": artifact_id, "parts": list(parts)}


def said(value, member="message"):
    """The task's status message (member "message"), or a Message in place of the task
    ("reply")."""
    return {"a2a": {member: {"messageId": "tck-reply", "role": "ROLE_AGENT",
                             "parts": [text(value)]}}}


def artifacts(*made):
    return {"a2a": {"artifacts": list(made)}}


FILE = {"raw": base64.b64encode(b"tck").decode(), "filename": "output.txt",
        "mediaType": "text/plain"}
URL = {"url": "https://example.com/output.txt", "filename": "output.txt",
       "mediaType": "text/plain"}
DATA = {"data": {"key": "value", "count": 42}}


def working(ctx):
    ctx.emit(json.dumps({"statusUpdate": {"status": {"state": "TASK_STATE_WORKING"}}}))


def streamed(ctx, made, *, append=False, last=True):
    ctx.emit(json.dumps({"artifactUpdate": {"artifact": made, "append": append,
                                            "lastChunk": last}}))


async def stream_then_complete(ctx, made):
    working(ctx)
    streamed(ctx, made)
    return artifacts(made)


async def handle(message, ctx):
    mid = message.get("messageId", "") if isinstance(message, dict) else ""
    if mid.startswith("tck-stream-artifact-chunked"):
        working(ctx)
        streamed(ctx, artifact("chunked", text("chunk-1 ")), last=False)
        streamed(ctx, artifact("chunked", text("chunk-2")), append=True)
        return artifacts(artifact("chunked", text("chunk-1 chunk-2")))
    if mid.startswith("test-resubscribe-message-id"):
        working(ctx)
        await asyncio.sleep(RESUBSCRIBE_WAIT)
        return said("resubscribed")
    if mid.startswith("tck-stream-artifact-text"):
        return await stream_then_complete(ctx, artifact("text", text("Streamed text content")))
    if mid.startswith("tck-stream-artifact-file"):
        return await stream_then_complete(ctx, artifact("file", FILE))
    if mid.startswith("tck-stream-ordering-001"):
        return await stream_then_complete(ctx, artifact("ordered", text("Ordered output")))
    if mid.startswith("tck-stream-001"):
        return await stream_then_complete(ctx, artifact("hello", text("Stream hello from TCK")))
    if mid.startswith("tck-stream-003"):
        return await stream_then_complete(ctx, artifact("lifecycle", text("Stream task lifecycle")))
    if mid.startswith("tck-stream-002"):
        return None
    if mid.startswith("tck-artifact-file-url"):
        return artifacts(artifact("file-url", URL))
    if mid.startswith("tck-artifact-file"):
        return artifacts(artifact("file", FILE))
    if mid.startswith("tck-artifact-text"):
        return artifacts(artifact("text", text("Generated text content")))
    if mid.startswith("tck-artifact-data"):
        return artifacts(artifact("data", DATA))
    if mid.startswith("tck-message-response"):
        return said("Direct message response", "reply")
    if mid.startswith("tck-reject-task"):
        raise TaskError("rejected", {"state": "TASK_STATE_REJECTED"})
    if mid.startswith("tck-input-required"):
        # input-required until an answer that is not itself "input-required" comes
        while True:
            answer = await ctx.ask("TCK: input required")
            sent = answer.get("messageId", "") if isinstance(answer, dict) else ""
            if not sent.startswith("tck-input-required"):
                return said("Hello from TCK")
    if mid.startswith("tck-complete-task"):
        return said("Hello from TCK")
    return said(f"Unhandled messageId prefix: {mid}")


if __name__ == "__main__":
    run(handle)
