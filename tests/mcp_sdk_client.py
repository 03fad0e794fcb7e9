"""Drive `python -m pyapptron mcp --headless` with the official MCP SDK as the client.

Run by tests/test_mcp_sdk.py inside a virtual environment holding one SDK release
(1.x speaks 2025-11-25 through `initialize`; 2.x speaks 2026-07-28 through
`server/discover`). Prints one JSON object: what each step saw, for the test to check.

    python mcp_sdk_client.py '{"command": ..., "args": [...], "cwd": ..., "env": {...}}'   (stdio)
    python mcp_sdk_client.py '{"url": "http://127.0.0.1:PORT/mcp?key=KEY"}'              (Streamable HTTP)
"""

import asyncio
import base64
import json
import sys
import time

import anyio
import mcp
from mcp import StdioServerParameters, types
from mcp.client.stdio import stdio_client

report: dict = {}


def field(model, camel: str):
    """1.x models use the wire's camelCase names, 2.x snake_case."""
    if hasattr(model, camel):
        return getattr(model, camel)
    return getattr(model, "".join("_" + c.lower() if c.isupper() else c for c in camel))


def structured(result) -> dict:
    return field(result, "structuredContent")


def is_error(result) -> bool:
    return bool(field(result, "isError"))


def transport_v1(server):
    """mcp 1.x's transport for `server`: stdio parameters, or an HTTP URL."""
    if isinstance(server, str):
        from mcp.client.streamable_http import streamable_http_client

        return streamable_http_client(server)
    return stdio_client(server)


async def session_v1(server):
    """mcp 1.x: ClientSession over stdio or Streamable HTTP, the initialize handshake."""
    from mcp import ClientSession

    async with transport_v1(server) as (read, write, *_):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            report["protocol_version"] = init.protocolVersion
            report["server_name"] = init.serverInfo.name

            async def cancel(call_args, after_pid):
                request_id = session._request_id  # the SDK's next id: 1.x sends no cancel itself
                call = asyncio.ensure_future(session.call_tool("exec", call_args))
                await until(lambda: session._request_id > request_id, "the call never took its request id")
                await after_pid()
                await session.send_notification(types.ClientNotification(types.CancelledNotification(
                    method="notifications/cancelled",
                    params=types.CancelledNotificationParams(requestId=request_id, reason="test"))))
                call.cancel()  # the server answers no cancelled request: stop waiting for it

            await exercise(session, cancel, raw_error=lambda e: (e.error.code, e.error.message))


async def session_v2(server):
    """mcp 2.x: Client in auto mode (server/discover, per-request _meta), over stdio or HTTP."""
    from mcp import Client

    async with Client(server) as client:
        report["protocol_version"] = client.protocol_version
        report["server_name"] = client.server_info.name if client.server_info else None

        async def cancel(call_args, after_pid):
            async def call():
                await client.call_tool("exec", call_args)

            task = asyncio.ensure_future(call())
            await after_pid()
            task.cancel()  # 2.x sends notifications/cancelled when a call is abandoned
            try:
                await task
            except BaseException:
                pass

        await exercise(client, cancel, raw_error=lambda e: (e.code, str(e)))


async def until(condition, failure: str, timeout: float = 30):
    """Wait for condition() to hold, checking often; AssertionError(failure) after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        await asyncio.sleep(0.01)


async def exercise(client, cancel, raw_error):
    try:
        await _exercise(client, cancel, raw_error)
    except Exception as exc:  # the report says where it stopped; the test shows it
        import traceback

        report["exception"] = "".join(traceback.format_exception(exc))


async def _exercise(client, cancel, raw_error):
    tools = await client.list_tools()
    report["tools"] = {t.name: {"input": field(t, "inputSchema"), "output": field(t, "outputSchema")}
                       for t in tools.tools}

    async def call(name, args, **kw):
        result = await client.call_tool(name, args, **kw)
        return {"error": is_error(result), "structured": structured(result),
                "text": [c.text for c in result.content if getattr(c, "type", "") == "text"]}

    started = time.perf_counter()
    report["uname"] = await call("exec", {"command": "uname -a"})
    report["first_exec_seconds"] = time.perf_counter() - started
    report["exit3"] = await call("exec", {"command": "echo out; echo err >&2; exit 3"})
    report["env_cwd_stdin"] = await call("exec", {"command": "cat; echo \"$GREETING\"; pwd",
                                                  "stdin": "from stdin\n", "env_add": {"GREETING": "hello"},
                                                  "cwd": "/tmp"})
    report["old_env"] = await call("exec", {"command": "true", "env": {"GREETING": "hello"}})
    report["argv"] = await call("exec", {"command": ["printf", "%s|", "a b", "c"]})
    report["timeout"] = await call("exec", {"command": "echo started; sleep 30", "timeout": 1})
    report["write"] = await call("write_file", {"path": "/tmp/mcp/deep/hello.txt", "content": "héllo\n",
                                                "make_parents": True, "mode": 0o600})
    report["read"] = await call("read_file", {"path": "/tmp/mcp/deep/hello.txt"})
    blob = bytes(range(256))
    report["write_binary"] = await call("write_file", {"path": "/tmp/mcp/blob.bin",
                                                       "content": base64.b64encode(blob).decode(),
                                                       "encoding": "base64"})
    read_binary = await call("read_file", {"path": "/tmp/mcp/blob.bin"})
    report["binary_round_trip"] = (read_binary["structured"]["encoding"] == "base64"
                                   and base64.b64decode(read_binary["structured"]["content"]) == blob)
    report["list_dir"] = await call("list_dir", {"path": "/tmp/mcp"})
    # snapshot, change, restore: the change is gone; the snapshot is listed.
    report["snapshot"] = await call("snapshot", {"name": "mcp-before"})
    await call("exec", {"command": "echo changed > /tmp/mcp/deep/hello.txt"})
    report["restore"] = await call("restore", {"name": "mcp-before"})
    report["after_restore"] = await call("exec", {"command": "cat /tmp/mcp/deep/hello.txt"})
    report["list_snapshots"] = await call("list_snapshots", {})
    report["restore_missing"] = await call("restore", {"name": "no-such-snapshot"})
    report["read_missing"] = await call("read_file", {"path": "/no/such/file"})
    report["bad_arguments"] = await call("exec", {"command": 42, "colour": "blue"})
    try:
        await client.call_tool("no_such_tool", {})
        report["unknown_tool"] = None
    except Exception as exc:  # MCPError / McpError
        report["unknown_tool"] = raw_error(exc)

    resources = await client.list_resources()
    report["resources"] = [str(r.uri) for r in resources.resources]
    templates = await client.list_resource_templates()
    report["resource_templates"] = [field(t, "uriTemplate") for t in field(templates, "resourceTemplates")]
    await call("exec", {"command": "echo console-marker-$((6*7)) > /dev/ttyS0"})
    console = await client.read_resource("pyapptron://console")
    report["console_has_marker"] = "console-marker-42" in console.contents[0].text
    hello = await client.read_resource("file:///tmp/mcp/deep/hello.txt")
    report["file_resource"] = hello.contents[0].text
    try:
        await client.read_resource("file:///no/such/file")
        report["missing_resource"] = None
    except Exception as exc:
        report["missing_resource"] = raw_error(exc)

    progress: list = []

    async def on_progress(value, total, message):
        progress.append([value, total, message])

    report["progress_exec"] = await call("exec", {"command": "sleep 3; echo finished"},
                                         progress_callback=on_progress)
    report["progress"] = progress

    async def pid_written():
        for _ in range(200):
            r = await call("exec", {"command": "cat /tmp/cancel.pid 2>/dev/null"})
            if r["structured"]["stdout"].strip():
                report["cancel_pid"] = r["structured"]["stdout"].strip()
                return
            await asyncio.sleep(0.2)
        raise AssertionError("the command to cancel never started")

    await cancel({"command": "echo $$ > /tmp/cancel.pid; exec sleep 300"}, pid_written)
    # The server kills the command when the cancellation arrives: wait for that, not a while.
    deadline = time.monotonic() + 30
    while True:
        report["after_cancel"] = await call("exec", {"command": f"kill -0 {report['cancel_pid']} 2>&1; "
                                                                "echo alive=$?"})
        if "alive=1" in report["after_cancel"]["structured"]["stdout"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    report["still_serving"] = await call("exec", {"command": "echo ok"})


async def main():
    spec = json.loads(sys.argv[1])
    params = spec["url"] if "url" in spec else StdioServerParameters(
        command=spec["command"], args=spec["args"], cwd=spec.get("cwd"), env=spec.get("env"))
    report["sdk_version"] = getattr(mcp, "__version__", None) or _dist_version()
    started = time.perf_counter()
    try:
        if _dist_version().startswith("1."):
            await session_v1(params)
        else:
            await session_v2(params)
    finally:
        report["total_seconds"] = time.perf_counter() - started
        print(json.dumps(report, default=str), flush=True)


def _dist_version() -> str:
    from importlib.metadata import version

    return version("mcp")


if __name__ == "__main__":
    anyio.run(main)
