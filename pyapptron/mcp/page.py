"""The page end of every MCP transport: a connection to the page's VM for JS glue (web/mcp.js).

JS hands in `send(text)` and feeds each incoming message to the returned
connection's `receive(text)`; `close()` when the transport goes away.
"""

from __future__ import annotations

from .. import _browser
from ..errors import MachineClosed
from .server import McpConnection, McpServer
from .tools import MachineTools


def serve(send, machine=None) -> McpConnection:
    """An MCP connection to `machine` (default: the VM this page booted for its terminal).

    `machine` may also be a promise of one (a VM still booting): the client can connect
    and list tools at once; calls wait for the boot.
    """
    if machine is None:
        machine = _browser.page_machine()
        if machine is None or machine.closed:
            raise MachineClosed("this page has no running VM to serve over MCP: boot one first "
                                "(open the page without ?autoboot=0)")
    return McpServer(MachineTools(machine)).connect(send)
