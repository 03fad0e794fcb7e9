"""A remote agent on a pyapptron VM, over MCP's Streamable HTTP, with the official MCP SDK.

Start the server, then run this (pip install mcp):

    python3 -m pyapptron mcp --headless --http 8090 --key "$PYAPPTRON_MCP_KEY" &
    python3 examples/mcp_http_agent.py http://127.0.0.1:8090/mcp "$PYAPPTRON_MCP_KEY"

It runs a command with live progress, writes a file and reads it back; several such
agents can share the VM at once (each gets its own session).
"""

import asyncio
import sys

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, key: str) -> None:
    # The key goes in a header (or append ?key=KEY to the URL for clients without headers).
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=900)) as http, \
            streamable_http_client(url, http_client=http) as (read, write, _), \
            ClientSession(read, write) as session:
        hello = await session.initialize()
        print(f"connected to {hello.serverInfo.name} {hello.serverInfo.version}", file=sys.stderr)

        async def progress(value, total, message):
            print(f"  ... {message}", file=sys.stderr)

        result = await session.call_tool("exec", {"command": "uname -sr; sleep 2; echo built"},
                                         progress_callback=progress)
        print(result.structuredContent["stdout"], end="")
        await session.call_tool("write_file", {"path": "/root/notes.txt", "content": "from a remote agent\n"})
        result = await session.call_tool("read_file", {"path": "/root/notes.txt"})
        print(result.structuredContent["content"], end="")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
