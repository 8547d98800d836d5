"""An OpenAI Agents SDK agent under corral on the SDK's default model API, OpenAI's
Responses (docs/frameworks.md): the model named by its name alone, reached at
OPENAI_BASE_URL (corral's model gateway) by the SDK's own client. Its MCP server is
corral's gateway at this attempt's address. Nothing of corral is imported but `run`."""

from agents import Agent, Runner
from agents.mcp import MCPServerStreamableHttp

from corral.worker import run


async def handle(task, ctx):
    if "parts" in task:  # an A2A message (docs/a2a.md): its prompt is its text
        task = {"prompt": " ".join(p["text"] for p in task["parts"] if "text" in p)}
    gateway = MCPServerStreamableHttp({"url": ctx.mcp_url, "headers": ctx.mcp_headers},
                                      client_session_timeout_seconds=60)
    async with gateway:
        agent = Agent(name="assistant", mcp_servers=[gateway],
                      model=task.get("model", "gpt-5-mini"))
        result = await Runner.run(agent, task["prompt"])
    return {"answer": result.final_output}


if __name__ == "__main__":
    run(handle)
