"""`python -m pyapptron mcp`, spoken to line by line, as a desktop agent would.

The first tests need no browser: the bridge's own promises (loopback only, the token,
the Origin check, a clear answer when no page is there, a reloaded page brought back
to the client's session) are checked with a hand-made page on the WebSocket. The last
ones open the real page in headless Chromium.
"""

import asyncio
import json
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mcp_clients import McpCommand
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

REPO = Path(__file__).resolve().parents[1]
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}


class McpProcess(McpCommand):
    """The bridge as a subprocess: JSON-RPC lines in, lines out, stderr kept for messages."""

    def __init__(self, *args: str):
        super().__init__(*args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._ids = iter(range(1, 1 << 30))

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data + b"\n")
        self.proc.stdin.flush()

    def send(self, message: dict) -> None:
        self.send_raw(json.dumps(message).encode())

    def recv(self, timeout: float = 120) -> dict:
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"the bridge closed stdout; stderr:\n{self.stderr()}"
        return json.loads(line)

    def request(self, method: str, params: dict | None = None, timeout: float = 300) -> dict:
        """Send a request and return its response (notifications in between are skipped)."""
        request_id = next(self._ids)
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.1, deadline - time.monotonic()))
            if message.get("id") == request_id:
                return message

    def call(self, name: str, arguments: dict) -> dict:
        response = self.request("tools/call", {"name": name, "arguments": arguments})
        assert "result" in response, response
        return response["result"]

    def close(self) -> int:
        """Close stdin, as a client does when it is done: the bridge exits cleanly."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.errors.close()


def _ws_and_token(url: str) -> tuple[str, str, str]:
    """(ws URL, token, page origin) from the page URL the bridge prints."""
    ws = re.search(r"mcp-bridge=(ws://127\.0\.0\.1:\d+/)", url).group(1)
    token = url.split("#mcp-token=", 1)[1]
    origin = re.match(r"(http://127\.0\.0\.1:\d+)", url).group(1)
    return ws, token, origin


class FakePage:
    """A page on the bridge's WebSocket, run by hand (no browser): for the relay's logic only.
    Frames are "CHANNEL\nJSON"; `answer` replies on the channel the request came on."""

    def __init__(self, ws_url, token, origin):
        self.args = (ws_url, token, origin)
        self.channel_of: dict = {}

    async def __aenter__(self):
        ws_url, token, origin = self.args
        self.ws = await connect(ws_url, origin=origin)
        await self.ws.send(json.dumps({"pyapptron": "hello", "token": token}))
        await self.ws.send(json.dumps({"pyapptron": "ready", "emulator": "fake", "image": "none"}))
        return self

    async def recv(self) -> dict:
        channel, _, text = (await asyncio.wait_for(self.ws.recv(), 30)).partition("\n")
        message = json.loads(text)
        self.channel_of[json.dumps(message.get("id"))] = channel
        return message

    async def answer(self, request: dict, result: dict) -> None:
        channel = self.channel_of[json.dumps(request["id"])]
        await self.ws.send(channel + "\n" + json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}))

    async def __aexit__(self, *exc):
        await self.ws.close()


def test_the_handshake_is_answered_at_once_and_without_a_page_a_call_is_refused_with_the_url_to_open():
    mcp = McpProcess("--connect-timeout", "1")
    try:
        url = mcp.page_url()
        started = time.monotonic()
        hello = mcp.request("initialize", INIT, timeout=30)["result"]
        assert time.monotonic() - started < 1, "a client's connect timeout must not race the page's boot"
        assert hello["protocolVersion"] == "2025-11-25" and "still booting" in hello["instructions"]
        assert set(hello["capabilities"]) == {"tools", "resources", "logging"}
        mcp.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert mcp.request("ping", timeout=5)["result"] == {}
        assert mcp.request("logging/setLevel", {"level": "info"}, timeout=5)["result"] == {}
        response = mcp.request("tools/list", timeout=30)
        assert response["error"]["code"] == -32000
        message = response["error"]["message"]
        assert "no pyapptron page is connected" in message and url in message and "--headless" in message
    finally:
        assert mcp.close() == 0


def test_the_websocket_refuses_a_wrong_token_a_foreign_origin_and_an_oversized_line():
    mcp = McpProcess("--connect-timeout", "30", "--max-message-bytes", "1000")
    try:
        ws_url, token, origin = _ws_and_token(mcp.page_url())
        assert ws_url.startswith("ws://127.0.0.1:")  # loopback only

        async def probe():
            async with connect(ws_url, origin=origin) as ws:
                await ws.send(json.dumps({"pyapptron": "hello", "token": token[:-1] + "x"}))
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd.code == 4003
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url, origin="http://evil.example"):
                    pass
            assert refused.value.response.status_code == 403

        asyncio.run(probe())
        assert "wrong or missing token" in mcp.stderr()
        mcp.send_raw(b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "' + b"x" * 2000 + b'"}}')
        response = mcp.recv(timeout=30)
        assert response["error"]["code"] == -32600 and "1000" in response["error"]["message"]
    finally:
        assert mcp.close() == 0


def test_a_reloaded_page_gets_the_clients_handshake_again_and_requests_in_flight_are_answered():
    mcp = McpProcess("--connect-timeout", "60")
    try:
        args = _ws_and_token(mcp.page_url())
        mcp.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT})
        mcp.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert mcp.recv()["result"]["serverInfo"]["name"] == "pyapptron"  # answered before any page came

        async def first_page():
            async with FakePage(*args) as page:
                init = await page.recv()
                assert init["method"] == "initialize" and init["params"] == INIT
                await page.answer(init, {"protocolVersion": "2025-11-25", "serverInfo": {"name": "p1"}})
                assert (await page.recv())["method"] == "notifications/initialized"
                mcp.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
                assert (await page.recv())["id"] == 2  # ...and the page "reloads" before answering

        asyncio.run(first_page())
        gone = mcp.recv()
        assert gone["id"] == 2 and gone["error"]["code"] == -32000 and "went away" in gone["error"]["message"]
        warning = mcp.recv()  # and the bridge says so in a log message (the default level is warning)
        assert warning["method"] == "notifications/message" and warning["params"]["level"] == "warning"
        assert "page went away" in warning["params"]["data"]

        async def second_page():
            async with FakePage(*args) as page:
                replayed = await page.recv()
                assert replayed["method"] == "initialize" and replayed["params"] == INIT
                await page.answer(replayed, {"protocolVersion": "2025-11-25", "serverInfo": {"name": "p2"}})
                assert (await page.recv())["method"] == "notifications/initialized"
                mcp.send({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
                request = await page.recv()
                await page.answer(request, {"tools": []})

        asyncio.run(second_page())
        # The replayed handshake's answer is the bridge's, not the client's: next comes id 3.
        assert mcp.recv() == {"jsonrpc": "2.0", "id": 3, "result": {"tools": []}}
    finally:
        assert mcp.close() == 0


@pytest.mark.browser
def test_a_page_that_cannot_boot_its_vm_answers_the_handshake_and_refuses_calls_with_the_reason():
    mcp = McpProcess("--headless", "--image", "no-such-image")
    try:
        # The handshake is the page's Python, up before (and without) the VM.
        assert mcp.request("initialize", INIT, timeout=120)["result"]["protocolVersion"] == "2025-11-25"
        response = mcp.request("tools/list")
        assert response["error"]["code"] == -32000
        assert response["error"]["message"] == ("the VM did not boot: pyapptron.errors.ImageNotFound: "
                                                "no image 'no-such-image' for emulator 'v86'; available: agent, minimal")
    finally:
        assert mcp.close() == 0


@pytest.mark.browser
def test_malformed_input_is_answered_and_an_agents_setup_survives_a_restart(tmp_path):
    """Two promises on one boot each (a cold boot is the slow part): bad input gets JSON-RPC
    errors while the VM keeps serving, and what the agent installed in the persistent
    layers is there after the bridge and its browser restart on the same profile."""
    profile = str(tmp_path / "profile")
    first = McpProcess("--headless", "--profile", profile, "--persist", "agent-setup", "--max-message-bytes", "100000")
    try:
        first.send_raw(b"this is not json")
        assert first.recv(timeout=300)["error"]["code"] == -32700
        first.send_raw(b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]')
        assert first.recv()["error"]["code"] == -32600
        first.send_raw(b'{"jsonrpc": "1.0", "id": 7, "method": "ping"}')
        assert first.recv() == {"jsonrpc": "2.0", "id": 7, "error": {
            "code": -32600, "message": 'not a JSON-RPC 2.0 message (needs "jsonrpc": "2.0")'}}
        assert first.request("tools/list")["error"]["code"] == -32600  # before initialize
        assert first.request("initialize", INIT)["result"]["protocolVersion"] == "2025-11-25"
        first.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert first.request("no/such/method")["error"]["code"] == -32601
        assert first.request("tools/call", {"arguments": {}})["error"]["code"] == -32602
        first.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": "nonsense"})  # no answer due
        first.send_raw(json.dumps({"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {
            "name": "write_file", "arguments": {"path": "/tmp/big", "content": "x" * 200000}}}).encode())
        assert first.recv()["error"]["code"] == -32600  # oversized: refused by the bridge
        assert first.request("ping")["result"] == {}

        tools = [t["name"] for t in first.request("tools/list")["result"]["tools"]]
        assert "persist_sync" in tools
        installed = first.call("exec", {"command": "mkdir -p /usr/local/bin && printf '#!/bin/sh\\necho tool ok\\n' "
                                                   "> /usr/local/bin/mytool && chmod +x /usr/local/bin/mytool && "
                                                   "echo configured > /root/.agentrc"})
        assert installed["structuredContent"]["exit_code"] == 0
        synced = first.call("persist_sync", {})
        assert synced["structuredContent"]["files"] >= 2, synced
    finally:
        assert first.close() == 0
    second = McpProcess("--headless", "--profile", profile, "--persist", "agent-setup")
    try:
        second.request("initialize", INIT)
        back = second.call("exec", {"command": "mytool && cat /root/.agentrc"})
        assert back["structuredContent"]["stdout"] == "tool ok\nconfigured\n", back
    finally:
        assert second.close() == 0


@pytest.mark.browser
def test_an_agent_gets_the_x86_64_agent_sandbox_with_exec_files_snapshots_and_kept_packages(tmp_path):
    profile = str(tmp_path / "profile")
    sandbox = ("--headless", "--emulator", "c2w", "--image", "agent-x86_64", "--profile", profile, "--persist", "x86-64")
    mcp = McpProcess(*sandbox)
    try:
        mcp.request("initialize", INIT, timeout=120)
        mcp.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools = {t["name"] for t in mcp.request("tools/list")["result"]["tools"]}
        assert tools == {"exec", "read_file", "write_file", "list_dir", "snapshot", "restore", "list_snapshots",
                         "persist_sync"}
        result = mcp.call("exec", {"command": "uname -m; node -p 'process.arch + \" \" + process.version.split(\".\")[0]'; "
                                              "echo err >&2; exit 3", "timeout": 300})
        assert result["structuredContent"]["stdout"] == "x86_64\nx64 v22\n", result
        assert (result["structuredContent"]["stderr"], result["structuredContent"]["exit_code"]) == ("err\n", 3)
        # An agent saves the sandbox, breaks it, and goes back (outside the persistent
        # layers: those always come from the store).
        mcp.call("exec", {"command": "echo kept > /srv/work.txt"})
        saved = mcp.call("snapshot", {"name": "mcp-x86_64"})["structuredContent"]
        assert (saved["name"], saved["image"]) == ("mcp-x86_64", "agent-x86_64")
        mcp.call("exec", {"command": "rm /srv/work.txt"})
        mcp.call("restore", {"name": "mcp-x86_64"})
        back = mcp.call("exec", {"command": "cat /srv/work.txt"})["structuredContent"]
        assert back["stdout"] == "kept\n", back
        # What it installs in /usr/local is kept in the profile, beside the image's own tools.
        installed = mcp.call("exec", {"command": "printf '#!/bin/sh\\necho tool ok\\n' > /usr/local/bin/mytool && "
                                                 "chmod +x /usr/local/bin/mytool && echo configured > /root/.agentrc"})
        assert installed["structuredContent"]["exit_code"] == 0, installed
        synced = mcp.call("persist_sync", {})["structuredContent"]
        assert synced["files"] >= 2, synced
    finally:
        assert mcp.close() == 0
    again = McpProcess(*sandbox)
    try:
        again.request("initialize", INIT, timeout=120)
        back = again.call("exec", {"command": "mytool && cat /root/.agentrc && claude --version", "timeout": 300})
        assert back["structuredContent"]["stdout"].startswith("tool ok\nconfigured\n"), back
        assert "(Claude Code)" in back["structuredContent"]["stdout"]
    finally:
        assert again.close() == 0


@pytest.mark.browser
def test_an_agent_gets_a_qemu_wasm_build_with_exec_through_its_console():
    mcp = McpProcess("--headless", "--emulator", "qemu-wasm", "--option", "build=/assets/qemu_wasm/standin/",
                     "--option", "packages=load-rom.js,load-kernel.js", "--option", "kernel=/pack/standin-kernel.bin")
    try:
        mcp.request("initialize", INIT, timeout=120)
        mcp.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools = {t["name"] for t in mcp.request("tools/list")["result"]["tools"]}
        assert tools == {"exec"}  # no agent in the guest: no file or snapshot tools
        result = mcp.call("exec", {"command": "uname -m; echo err >&2; exit 3"})
        # Over the console the two streams arrive merged.
        assert result["structuredContent"]["stdout"] == "x86_64\nerr\n"
        assert result["structuredContent"]["exit_code"] == 3
    finally:
        assert mcp.close() == 0


def test_mcp_refuses_page_options_the_emulator_does_not_take():
    from pyapptron.host.mcp_bridge import page_boot_options

    assert page_boot_options("qemu-wasm", ["build=/q/", "append=a b"]) == ["build=/q/", "append=a%20b"]
    with pytest.raises(SystemExit, match="qemu-wasm takes build="):
        page_boot_options("qemu-wasm", ["bogus=1"])
    with pytest.raises(SystemExit, match="v86 has no options"):
        page_boot_options("v86", ["build=/q/"])
