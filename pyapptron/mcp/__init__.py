"""MCP (Model Context Protocol) for a pyapptron VM: AI agents run commands and move files.

The server is plain Python and transport-free (`McpServer.connect(send)` gives a
connection that is fed one JSON-RPC message at a time), so it runs in Pyodide next to
the VM and is unit-tested in CPython. Transports:
  - in the page: a MessageChannel (web/mcp.js: `serveMcp`, `connectMcp`);
  - from a desktop agent: `python -m pyapptron mcp` (stdio) bridges to the page over a
    loopback WebSocket (pyapptron.host.mcp_bridge);
  - from remote agents, several at once: `python -m pyapptron mcp --http PORT` (Streamable
    HTTP, pyapptron.host.mcp_http), each session its own connection in the page.
"""

from .server import (  # noqa: F401
    HANDSHAKE_VERSIONS,
    MODERN_VERSIONS,
    SUPPORTED_VERSIONS,
    McpConnection,
    McpServer,
)
from .tools import MachineTools  # noqa: F401
