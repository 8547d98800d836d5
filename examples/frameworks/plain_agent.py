"""An agent with no framework under corral (docs/frameworks.md): the `openai` client's
tool loop over tools it reaches with the official MCP SDK's client at this attempt's
address at corral's gateway, so each tool call is a step of its task, journaled and
replayed on a retry. The model is whatever OpenAI-compatible server OPENAI_BASE_URL
names. Nothing of corral is imported but `run`."""

import json

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from openai import AsyncOpenAI

from corral.worker import run


async def handle(task, ctx):
    if "parts" in task:  # an A2A message (docs/a2a.md): its prompt is its text
        task = {"prompt": " ".join(p["text"] for p in task["parts"] if "text" in p)}
    model = AsyncOpenAI()
    http = httpx2.AsyncClient(headers=ctx.mcp_headers, timeout=httpx2.Timeout(30, read=60))
    async with http, streamable_http_client(ctx.mcp_url, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        tools = [{"type": "function", "function": {
            "name": t.name, "description": t.description or "",
            "parameters": t.input_schema}} for t in (await session.list_tools()).tools]
        messages = [{"role": "user", "content": task["prompt"]}]
        while True:
            answer = (await model.chat.completions.create(
                model=task.get("model", "gpt-5-mini"), messages=messages,
                tools=tools)).choices[0].message
            if not answer.tool_calls:
                return {"answer": answer.content}
            messages.append(answer.model_dump(exclude_none=True))
            for call in answer.tool_calls:
                result = await session.call_tool(call.function.name,
                                                 json.loads(call.function.arguments))
                messages.append({"role": "tool", "tool_call_id": call.id,
                                 "content": result.content[0].text})


if __name__ == "__main__":
    run(handle)
