"""A pydantic-ai agent under corral (docs/frameworks.md): its tools are corral's MCP
gateway at this attempt's address, so each tool call it makes is a step of its task,
journaled and replayed on a retry. The model is whatever OpenAI-compatible server
OPENAI_BASE_URL names. Nothing of corral is imported but `run`."""

from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.models.openai import OpenAIChatModel

from corral.worker import run


async def handle(task, ctx):
    if "parts" in task:  # an A2A message (docs/a2a.md): its prompt is its text
        task = {"prompt": " ".join(p["text"] for p in task["parts"] if "text" in p)}
    tools = MCPToolset(ctx.mcp_url, headers=ctx.mcp_headers)
    agent = Agent(OpenAIChatModel(task.get("model", "gpt-5-mini")), toolsets=[tools])
    async with agent:
        result = await agent.run(task["prompt"])
    return {"answer": result.output}


if __name__ == "__main__":
    run(handle)
