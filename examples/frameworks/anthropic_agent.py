"""An agent with no framework but Anthropic's client under corral (docs/frameworks.md):
the `anthropic` client's tool loop, each answer streamed, over tools it reaches with the
official MCP SDK's client at this attempt's address at corral's gateway, so each tool
call is a step of its task, journaled and replayed on a retry. The model is whatever
Messages server ANTHROPIC_BASE_URL names (corral's model gateway, which corral gives the
replica with its own token as ANTHROPIC_API_KEY). Nothing of corral is imported but
`run`."""

import httpx2
from anthropic import AsyncAnthropic
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from corral.worker import run


async def handle(task, ctx):
    if "parts" in task:  # an A2A message (docs/a2a.md): its prompt is its text
        task = {"prompt": " ".join(p["text"] for p in task["parts"] if "text" in p)}
    model = AsyncAnthropic()
    http = httpx2.AsyncClient(headers=ctx.mcp_headers, timeout=httpx2.Timeout(30, read=60))
    async with http, streamable_http_client(ctx.mcp_url, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        tools = [{"name": t.name, "description": t.description or "",
                  "input_schema": t.input_schema} for t in (await session.list_tools()).tools]
        messages = [{"role": "user", "content": task["prompt"]}]
        while True:
            async with model.messages.stream(
                    model=task.get("model", "claude-haiku-4-5"), max_tokens=1024,
                    messages=messages, tools=tools) as stream:
                answer = await stream.get_final_message()
            messages.append({"role": "assistant", "content": [
                block.model_dump(exclude_none=True) for block in answer.content]})
            calls = [block for block in answer.content if block.type == "tool_use"]
            if not calls:
                return {"answer": "".join(b.text for b in answer.content if b.type == "text")}
            results = []
            for call in calls:
                result = await session.call_tool(call.name, call.input)
                results.append({"type": "tool_result", "tool_use_id": call.id,
                                "content": result.content[0].text})
            messages.append({"role": "user", "content": results})


if __name__ == "__main__":
    run(handle)
