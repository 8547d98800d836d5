"""A LangGraph agent under corral (docs/frameworks.md): its tools come from corral's MCP
gateway at this attempt's address through langchain-mcp-adapters, so each tool call it
makes is a step of its task, journaled and replayed on a retry. The model is whatever
OpenAI-compatible server OPENAI_BASE_URL names. Nothing of corral is imported but
`run`."""

from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent

from corral.worker import run


async def handle(task, ctx):
    if "parts" in task:  # an A2A message (docs/a2a.md): its prompt is its text
        task = {"prompt": " ".join(p["text"] for p in task["parts"] if "text" in p)}
    client = MultiServerMCPClient({"corral": {"transport": "streamable_http",
                                              "url": ctx.mcp_url,
                                              "headers": ctx.mcp_headers}})
    agent = create_react_agent(ChatOpenAI(model=task.get("model", "gpt-5-mini")),
                               await client.get_tools())
    result = await agent.ainvoke({"messages": [("user", task["prompt"])]})
    return {"answer": result["messages"][-1].content}


if __name__ == "__main__":
    run(handle)
