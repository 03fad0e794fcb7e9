"""The page end of every MCP transport: a connection to the page's VM for JS glue (web/mcp.js).

JS hands in `send(text)` and feeds each incoming message to the returned
connection's `receive(text)`; `close()` when the transport goes away.
"""

from __future__ import annotations

import asyncio
import codecs
import logging

from .. import _browser
from ..errors import MachineClosed
from .server import McpConnection, McpServer
from .tools import MachineTools

#: The guest's console reaches a client as `info` log messages, a line at a time.
CONSOLE_LOG_LEVEL = "info"


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
    logging.captureWarnings(True)  # Python warnings reach clients as log messages too
    tools = MachineTools(machine)
    connection = McpServer(tools, forward_logs=True).connect(send)
    _forward_console(connection, tools)
    return connection


def _forward_console(connection: McpConnection, tools: MachineTools) -> None:
    """The guest's console output as log messages, once the VM is up, until the connection closes."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = []

    def on_output(data: bytes) -> None:
        if not connection.wants_log(CONSOLE_LOG_LEVEL):
            pending.clear()
            return  # the client did not ask for this much: no work per byte
        pending.append(decoder.decode(bytes(data)))
        text = "".join(pending)
        lines, _, rest = text.rpartition("\n")
        pending[:] = [rest] if rest else []
        if lines:
            connection.log(CONSOLE_LOG_LEVEL, lines, logger="console")

    async def attach() -> None:
        try:
            vm = await tools.ready()
        except Exception:  # noqa: BLE001 - the tools say why the VM is missing
            return
        if not connection.closed:
            connection.on_close(vm.console.subscribe(on_output))

    asyncio.ensure_future(attach())
