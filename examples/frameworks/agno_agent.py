"""An Agno agent under corral (docs/frameworks.md): its MCP tools are corral's gateway at
this attempt's address, so each tool call it makes is a step of its task, journaled and
replayed on a retry. The model is whatever OpenAI-compatible server OPENAI_BASE_URL
names. Nothing of corral is imported but `run`."""

import os

from agno.agent import Agent
from agno.models.openai import OpenAIChat
from agno.tools.mcp import MCPTools

from corral.worker import run


async def handle(task, ctx):
    if "parts" in task:  # an A2A message (docs/a2a.md): its prompt is its text
        task = {"prompt": " ".join(p["text"] for p in task["parts"] if "text" in p)}
    async with MCPTools(url=ctx.mcp_url, transport="streamable-http",
                        headers=ctx.mcp_headers, timeout_seconds=60) as tools:
        agent = Agent(model=OpenAIChat(id=task.get("model", "gpt-5-mini"),
                                       base_url=os.environ.get("OPENAI_BASE_URL")),
                      tools=[tools])
        result = await agent.arun(task["prompt"])
    return {"answer": result.content}


if __name__ == "__main__":
    run(handle)
