"""A stream's first event (SendStreamingMessage, JSON-RPC's message/stream) through the
official client, `a2a-sdk`: the task as it was submitted, its state and its metadata
alike, then what it did. A fast task's first event said SUBMITTED while its metadata said
`succeeded` (the task as read once it had ended); a message sent again in its context
(the same task, by its key) always reads it ended."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import a2a_daemon
from .test_sdk import BINDINGS, client, events


@pytest.mark.timeout(120)
async def test_the_first_event_is_the_task_as_submitted_in_state_and_metadata(
        tmp_path: Path) -> None:
    from a2a.types import Message, Part, Role, SendMessageRequest, TaskState

    with a2a_daemon(tmp_path) as (_, url):
        for i, binding in enumerate(BINDINGS):
            sent = SendMessageRequest(message=Message(
                message_id=f"tck-stream-001-{i}", context_id=f"context-{i}",
                role=Role.ROLE_USER, parts=[Part(text="hi")]))
            async with client(url, binding) as c:
                first = await events(c, sent)
                again = await events(c, sent)  # its task, ended by now
            kinds = ["task", "status_update", "artifact_update", "status_update"]
            for seen in (first, again):
                assert [e.WhichOneof("payload") for e in seen] == kinds, seen
                task = seen[0].task
                assert (task.id, task.status.state, dict(task.metadata)) == (
                    first[0].task.id, TaskState.TASK_STATE_SUBMITTED,
                    {"agent": "tck", "corralStatus": "queued"})
                assert seen[-1].status_update.status.state == \
                    TaskState.TASK_STATE_COMPLETED
