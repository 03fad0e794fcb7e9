"""Unit tests (CPython): what the MCP tools tell an agent and do, over a stand-in Machine."""

from __future__ import annotations

import asyncio
import json

from pyapptron import persist as P
from pyapptron.backends import Capabilities
from pyapptron.errors import NotSupported
from pyapptron.machine import CompletedProcess
from pyapptron.mcp.tools import MachineTools


class Store:
    restored: dict = {}


class FakeMachine:
    """Capabilities, persist and run() of a Machine; run() records what it was given."""

    emulator, image = "v86", "agent"

    def __init__(self, persist: P.Persist | None = None, snapshot: bool = True):
        self.capabilities = Capabilities(arch="i686", exec=True, files=True, console=True, snapshot=snapshot,
                                         network=False, persist=persist is not None)
        self._persist = None if persist is None else P.PersistedFiles(persist, Store())
        self.runs: list[tuple] = []

    @property
    def persist(self):
        if self._persist is None:
            raise NotSupported("nothing kept")
        return self._persist

    async def run(self, args, **kwargs):
        self.runs.append((args, kwargs))
        return CompletedProcess(args, 0, b"ok\n", b"")


def described(tools: MachineTools) -> str:
    return tools.instructions() + json.dumps(tools.list_tools())


def test_tools_describe_the_layers_the_machine_was_booted_with():
    tools = MachineTools(FakeMachine(P.Persist(layers={"work": "/srv/work"}, paths={"data": ["/data", "/opt/d"]})))
    specs = {t["name"]: t["description"] for t in tools.list_tools()}
    assert "work: /srv/work" in specs["persist_sync"] and "data: /data, /opt/d" in specs["persist_sync"]
    assert "work: /srv/work" in specs["restore"]
    assert "work: /srv/work" in tools.instructions() and "data: /data, /opt/d" in tools.instructions()
    text = described(tools)
    for default in ("/root", "/persist", "/usr/local", "pip", "npm"):
        assert default not in text  # the defaults were replaced: an agent must not be told of them


def test_tools_describe_the_default_layers_when_booted_with_persist_true():
    tools = MachineTools(FakeMachine(P.Persist()))
    sync = next(t for t in tools.list_tools() if t["name"] == "persist_sync")["description"]
    for layer in ("home: /root", "persist: /persist", "packages: /usr/local, /root/.local, /root/.npm"):
        assert layer in sync


def test_without_persist_no_tool_speaks_of_persistent_layers():
    tools = MachineTools(FakeMachine())
    names = {t["name"] for t in tools.list_tools()}
    assert "persist_sync" not in names and {"snapshot", "restore"} <= names
    text = described(tools)
    assert "persistent layers" not in text and "/persist" not in text and "/root" not in text
    assert "Nothing is kept when the page reloads" in tools.instructions()


def call(tools: MachineTools, name: str, arguments: dict) -> dict:
    return asyncio.run(tools.call_tool(name, arguments, None))


def test_exec_env_add_adds_variables_and_keeps_the_default_environment():
    vm = FakeMachine()
    result = call(MachineTools(vm), "exec", {"command": "echo $A", "env_add": {"A": "1", "B": "x y", "-i": "z"}})
    assert "isError" not in result and result["structuredContent"]["exit_code"] == 0
    [(argv, kwargs)] = vm.runs
    # `env -- K=V cmd` adds to what it inherits; after `--` a name like "-i" is no option of env's
    assert argv == ["env", "--", "A=1", "B=x y", "-i=z", "/bin/sh", "-c", "echo $A"]
    assert kwargs.get("env") is None  # vm.run(env=) would replace the environment


def test_exec_refuses_the_old_env_argument_with_an_error_naming_env_add():
    vm = FakeMachine()
    result = call(MachineTools(vm), "exec", {"command": "true", "env": {"A": "1"}})
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert "`env` is now called `env_add`" in text and "added to the guest's default environment" in text
    assert vm.runs == []  # nothing ran with a meaning the caller did not ask for


def test_exec_schema_names_env_add_and_says_it_adds():
    exec_tool = next(t for t in MachineTools(FakeMachine()).list_tools() if t["name"] == "exec")
    properties = exec_tool["inputSchema"]["properties"]
    assert "env" not in properties and "added to" in properties["env_add"]["description"]
