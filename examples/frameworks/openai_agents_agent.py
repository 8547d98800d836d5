"""An OpenAI Agents SDK agent under corral (docs/frameworks.md): its MCP server is
corral's gateway at this attempt's address, so each tool call it makes is a step of its
task, journaled and replayed on a retry. The model is whatever OpenAI-compatible server
OPENAI_BASE_URL names (Chat Completions). Nothing of corral is imported but `run`."""

from agents import Agent, OpenAIChatCompletionsModel, Runner
from agents.mcp import MCPServerStreamableHttp
from openai import AsyncOpenAI

from corral.worker import run


async def handle(task, ctx):
    if "parts" in task:  # an A2A message (docs/a2a.md): its prompt is its text
        task = {"prompt": " ".join(p["text"] for p in task["parts"] if "text" in p)}
    gateway = MCPServerStreamableHttp({"url": ctx.mcp_url, "headers": ctx.mcp_headers},
                                      client_session_timeout_seconds=60)
    async with gateway:
        agent = Agent(name="assistant", mcp_servers=[gateway],
                      model=OpenAIChatCompletionsModel(task.get("model", "gpt-5-mini"),
                                                       AsyncOpenAI()))
        result = await Runner.run(agent, task["prompt"])
    return {"answer": result.final_output}


if __name__ == "__main__":
    run(handle)
