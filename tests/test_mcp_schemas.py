"""The hand-written MCP core held to the reference (CPython, no browser).

pyapptron.mcp is our own code (the page gets no SDK), so here every message it sends
is parsed by the official `mcp` SDK's own types (mcp==1.30.0, pinned in the dev extra),
every tool's schemas are checked as JSON Schema 2020-12 by `jsonschema`, every tool
result is validated against its tool's output schema, and the core's own small argument
validator must agree with `jsonschema` on good and bad arguments.
"""

from __future__ import annotations

import asyncio
import json
import logging

import jsonschema
import mcp.types as T
import pytest

from pyapptron import snapshots
from pyapptron.agent import DirEntry
from pyapptron.backends import Capabilities
from pyapptron.machine import CompletedProcess
from pyapptron.mcp import server as core
from pyapptron.mcp.server import McpServer
from pyapptron.mcp.tools import MachineTools, validate
from pyapptron.persist import SyncResult

INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


class Console:
    transcript = bytearray(b"Welcome to pyapptron\n$ ")

    def subscribe(self, callback, replay=False):
        return lambda: None


class Persist:
    layers = {"home": ["/root"]}

    async def sync(self):
        return SyncResult(files=3, bytes=10, written_bytes=4, seconds=0.01)


class Machine:
    """Every method the tools call, answering as a real VM would."""

    emulator, image = "v86", "agent"
    capabilities = Capabilities(arch="i686", exec=True, files=True, console=True, snapshot=True,
                                network=False, persist=True)
    console = Console()
    persist = Persist()

    async def run(self, args, **kwargs):
        return CompletedProcess(args, 3, b"out\n", b"err\n")

    async def read_file(self, path):
        return b"\xff\xfe binary" if path.endswith(".bin") else "héllo\n".encode()

    async def write_file(self, path, data, mode=0o644):
        pass

    async def list_dir(self, path):
        return [DirEntry("a.txt", "file", 6, 0o100644, 1700000000), DirEntry("d", "dir", 0, 0o40755, 1700000000)]

    async def snapshot(self, name=None):
        return snapshots.SnapshotInfo(name or "s", "v86", "agent", 256, 1700000000.0, 1234, 5678)

    async def restore(self, name):
        pass


CALLS = {
    "exec": {"command": "echo out; echo err >&2; exit 3", "timeout": 5, "env_add": {"A": "1"}, "cwd": "/tmp"},
    "read_file": {"path": "/etc/hostname"},
    "write_file": {"path": "/tmp/x", "content": "aGk=", "encoding": "base64", "make_parents": True, "mode": 0o600},
    "list_dir": {"path": "/tmp"},
    "persist_sync": {},
    "snapshot": {"name": "before"},
    "restore": {"name": "before"},
    "list_snapshots": {},
}


class Client:
    """One connection of the core, spoken to as a client would; every message it sends is kept."""

    def __init__(self, monkeypatch, **server_options):
        async def listed():
            return [await Machine().snapshot("before")]

        monkeypatch.setattr(snapshots, "list", listed)
        self.sent: list[dict] = []
        self.connection = McpServer(MachineTools(Machine()), **server_options).connect(
            lambda text: self.sent.append(json.loads(text)))
        self.ids = iter(range(1, 1000))

    def request(self, method: str, params: dict | None = None) -> dict:
        async def go():
            request_id = next(self.ids)
            self.connection.receive(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                                                "params": params or {}}))
            while not any(m.get("id") == request_id for m in self.sent):
                await asyncio.sleep(0)
            return next(m for m in self.sent if m.get("id") == request_id)

        return asyncio.run(go())


@pytest.fixture
def client(monkeypatch):
    client = Client(monkeypatch)
    T.InitializeResult.model_validate(client.request("initialize", INIT)["result"])
    return client


def test_every_tool_schema_is_valid_json_schema_and_every_tool_an_sdk_tool(client):
    listed = T.ListToolsResult.model_validate(client.request("tools/list")["result"])
    assert {tool.name for tool in listed.tools} == set(CALLS)
    for tool in client.request("tools/list")["result"]["tools"]:
        for which in ("inputSchema", "outputSchema"):
            jsonschema.Draft202012Validator.check_schema(tool[which])
            assert tool[which]["type"] == "object", (tool["name"], which)


def test_every_tool_result_is_an_sdk_result_and_valid_against_its_output_schema(client):
    tools = {t["name"]: t for t in client.request("tools/list")["result"]["tools"]}
    for name, arguments in CALLS.items():
        jsonschema.validate(arguments, tools[name]["inputSchema"])
        response = client.request("tools/call", {"name": name, "arguments": arguments})
        T.JSONRPCResponse.model_validate(response)
        result = T.CallToolResult.model_validate(response["result"])
        assert result.isError is not True, (name, response)
        jsonschema.validate(response["result"]["structuredContent"], tools[name]["outputSchema"])
        # The text content carries the same JSON, for clients that read only text.
        assert json.loads(result.content[0].text) == response["result"]["structuredContent"]


def test_tool_errors_protocol_errors_and_resources_are_sdk_messages(client):
    failed = client.request("tools/call", {"name": "exec", "arguments": {"command": 42}})
    assert T.CallToolResult.model_validate(failed["result"]).isError is True
    unknown = T.JSONRPCError.model_validate(client.request("tools/call", {"name": "nope", "arguments": {}}))
    assert unknown.error.code == core.INVALID_PARAMS
    assert T.JSONRPCError.model_validate(client.request("no/such/method")).error.code == core.METHOD_NOT_FOUND
    resources = T.ListResourcesResult.model_validate(client.request("resources/list")["result"])
    assert "pyapptron://console" in [str(r.uri) for r in resources.resources]
    T.ListResourceTemplatesResult.model_validate(client.request("resources/templates/list")["result"])
    for uri in ("pyapptron://console", "file:///etc/hostname", "file:///x.bin"):
        T.ReadResourceResult.model_validate(client.request("resources/read", {"uri": uri})["result"])
    T.EmptyResult.model_validate(client.request("ping")["result"])


def test_log_messages_follow_the_level_the_client_set_and_are_sdk_notifications(monkeypatch):
    client = Client(monkeypatch, forward_logs=True)
    client.request("initialize", INIT)
    bad = T.JSONRPCError.model_validate(client.request("logging/setLevel", {"level": "loud"}))
    assert bad.error.code == core.INVALID_PARAMS and "debug, info" in bad.error.message
    client.connection.log("info", "not yet: the default level is warning")
    logging.getLogger("pyapptron.test").warning("a warning from pyapptron")
    assert T.EmptyResult.model_validate(client.request("logging/setLevel", {"level": "info"})["result"]) is not None
    client.connection.log("info", "console line", logger="console")
    client.connection.log("debug", "below the level")
    notes = [m for m in client.sent if m.get("method") == "notifications/message"]
    for note in notes:
        T.ServerNotification.model_validate(note)
    assert [(n["params"]["level"], n["params"]["data"]) for n in notes] == [
        ("warning", "a warning from pyapptron"), ("info", "console line")]
    client.connection.close()
    logging.getLogger("pyapptron.test").warning("after close")  # the handler is gone with the connection
    assert len([m for m in client.sent if m.get("method") == "notifications/message"]) == 2


def test_progress_notifications_are_sdk_notifications(monkeypatch):
    client = Client(monkeypatch)
    client.request("initialize", INIT)
    monkeypatch.setattr("pyapptron.mcp.tools.PROGRESS_INTERVAL_S", 0.01)

    async def slow_run(self, args, **kwargs):
        await asyncio.sleep(0.05)
        return CompletedProcess(args, 0, b"", b"")

    monkeypatch.setattr(Machine, "run", slow_run)
    client.request("tools/call", {"name": "exec", "arguments": {"command": "sleep"}, "_meta": {"progressToken": 7}})
    progress = [m for m in client.sent if m.get("method") == "notifications/progress"]
    assert progress
    for note in progress:
        T.ServerNotification.model_validate(note)


@pytest.mark.parametrize("name", list(CALLS))
def test_the_cores_argument_check_agrees_with_jsonschema(client, name):
    schema = next(t for t in client.request("tools/list")["result"]["tools"] if t["name"] == name)["inputSchema"]
    samples = [CALLS[name], {}, {"path": 42}, {"command": []}, {"command": ["ls"], "timeout": 0},
               {"command": "x", "env_add": {"A": 1}}, {"name": ""}, {**CALLS[name], "unknown": True},
               {"path": "/x", "content": "y", "encoding": "rot13"}, {"command": "x", "max_output_bytes": 1.5}]
    for sample in samples:
        ours = validate(schema, sample)
        reference = list(jsonschema.Draft202012Validator(schema).iter_errors(sample))
        assert bool(ours) == bool(reference), (name, sample, ours, [e.message for e in reference])


def test_the_handshake_offers_tools_resources_and_logging_as_sdk_capabilities(monkeypatch):
    client = Client(monkeypatch)
    result = T.InitializeResult.model_validate(client.request("initialize", INIT)["result"])
    caps = result.capabilities
    assert caps.logging is not None and caps.tools is not None and caps.resources is not None
    assert caps.prompts is None and caps.completions is None  # not offered: the README's scenario table says so
