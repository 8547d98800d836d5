"""Lists the skills an MCP server offers (SEP-2640), with the official MCP SDK's
`ClientSession`: at corral's gateway, the operator's own (`[gateway] skills_dir`, as
skill://corral/NAME/SKILL.md) and those of the servers the client may use. Each skill's
name, description and URI; with --read, the SKILL.md of each too.

    python3 examples/list_skills.py http://127.0.0.1:PORT/mcp [--read]

(the gateway's address: `corral mcp status`; a token, if the gateway needs one, in
CORRAL_MCP_TOKEN)."""

import asyncio
import os
import sys
from typing import Any

import httpx2
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from pydantic import TypeAdapter

SKILLS = "io.modelcontextprotocol/skills"


async def main(url: str, read: bool) -> None:
    token = os.environ.get("CORRAL_MCP_TOKEN")
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"} if token else {},
                              timeout=httpx2.Timeout(30))
    async with http, streamable_http_client(url, http_client=http) as (rd, wr), \
            ClientSession(rd, wr, extensions={SKILLS: {}}) as session:
        await session.initialize()
        listed = await session.send_request(types.Request(method="skills/list", params={}),
                                            TypeAdapter(dict[str, Any]))
        for skill in listed["skills"]:
            front = skill["frontmatter"]
            print(f"{front['name']}: {front['description']}\n  {skill['uri']}")
            if read:
                got = await session.read_resource(skill["uri"])
                for content in got.contents:
                    if isinstance(content, types.TextResourceContents):
                        print("    " + content.text.replace("\n", "\n    ").rstrip())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], "--read" in sys.argv[2:]))
