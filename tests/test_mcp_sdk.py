"""The official MCP SDK, as a client, drives a real VM in headless Chromium.

Each SDK release lives in its own virtual environment (build/mcp-clients/), made on
first use from PyPI: 1.x speaks 2025-11-25 (the initialize handshake), 2.x speaks
2026-07-28 (server/discover, per-request _meta). Each speaks to the server over stdio
(the command in examples/mcp_client_config.json, the snippet the README gives desktop
agents) and over Streamable HTTP (`pyapptron mcp --http`).
"""

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from mcp_clients import McpHttpServer

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
#: protocol revision -> the SDK release that speaks it (the one place these pins live)
SDK_CLIENTS = {"2025-11-25": "mcp==1.30.0", "2026-07-28": "mcp==2.3.0"}


def sdk_python(pin: str) -> Path:
    """A venv with `pin` installed, made once and kept in build/mcp-clients/."""
    home = REPO / "build" / "mcp-clients" / pin.replace("==", "-")
    python = home / "bin" / "python"
    marker = home / ".installed"
    if not marker.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", pin],
                       check=True, timeout=600)
        marker.write_text(pin)
    return python


def server_command() -> dict:
    """examples/mcp_client_config.json's server, run with this interpreter from the repo."""
    config = json.loads((REPO / "examples" / "mcp_client_config.json").read_text())["mcpServers"]["pyapptron"]
    assert config["command"] == "python3"
    return {"command": sys.executable, "args": config["args"], "cwd": str(REPO)}


@pytest.fixture(scope="module")
def http_server():
    """`pyapptron mcp --headless --http 0`, shared by the SDKs' HTTP runs."""
    server = McpHttpServer("--headless")
    yield server
    server.close()


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("protocol", list(SDK_CLIENTS))
def test_official_sdk_client_calls_every_tool_on_a_real_vm(protocol, transport, request):
    python = sdk_python(SDK_CLIENTS[protocol])
    server = server_command() if transport == "stdio" else {"url": request.getfixturevalue("http_server").url_with_key}
    r = subprocess.run([str(python), str(REPO / "tests" / "mcp_sdk_client.py"), json.dumps(server)],
                       capture_output=True, text=True, timeout=600)
    assert r.stdout.strip(), f"the client printed no report; its stderr:\n{r.stderr[-4000:]}"
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report.get("exception") is None, report["exception"] + "\n" + r.stderr[-3000:]

    def ok(step):  # a successful tool call's structured result
        assert report[step]["error"] is False, f"{step}: {report[step]}"
        return report[step]["structured"]

    assert report["protocol_version"] == protocol
    assert report["server_name"] == "pyapptron"
    assert set(report["tools"]) == {"exec", "read_file", "write_file", "list_dir",
                                    "snapshot", "restore", "list_snapshots"}
    for name, schemas in report["tools"].items():
        assert schemas["input"]["type"] == "object" and schemas["output"]["type"] == "object", name

    assert ok("uname")["stdout"].startswith("Linux pyapptron") and ok("uname")["exit_code"] == 0
    assert ok("exit3") == {**ok("exit3"), "stdout": "out\n", "stderr": "err\n", "exit_code": 3, "timed_out": False}
    assert ok("env_cwd_stdin")["stdout"] == "from stdin\nhello\n/tmp\n"
    assert report["old_env"]["error"] is True and "`env` is now called `env_add`" in report["old_env"]["text"][0]
    assert ok("argv")["stdout"] == "a b|c|"
    timeout = report["timeout"]
    assert timeout["error"] is True and timeout["structured"]["timed_out"] is True
    assert timeout["structured"]["stdout"] == "started\n" and timeout["structured"]["exit_code"] is None

    assert ok("write") == {"path": "/tmp/mcp/deep/hello.txt", "bytes": 7}
    assert ok("read")["content"] == "héllo\n" and ok("read")["encoding"] == "utf-8"
    assert report["binary_round_trip"] is True
    entries = {e["name"]: e for e in ok("list_dir")["entries"]}
    assert entries["blob.bin"]["type"] == "file" and entries["blob.bin"]["size"] == 256
    assert entries["deep"]["type"] == "dir"
    assert ok("snapshot")["name"] == "mcp-before" and ok("snapshot")["size"] > 0
    assert ok("restore")["restored"] == "mcp-before"
    assert ok("after_restore")["stdout"] == "héllo\n"  # the change after the snapshot is gone
    assert "mcp-before" in [s["name"] for s in ok("list_snapshots")["snapshots"]]
    missing = report["restore_missing"]
    assert missing["error"] is True and "no snapshot 'no-such-snapshot'" in missing["text"][0]
    assert report["read_missing"]["error"] is True and "No such file" in report["read_missing"]["text"][0]
    bad = report["bad_arguments"]["text"][0]
    assert report["bad_arguments"]["error"] is True and "arguments.command" in bad and "colour" in bad
    assert report["unknown_tool"][0] == -32602

    assert "pyapptron://console" in report["resources"]
    assert report["resource_templates"] == ["file:///{+path}"]
    assert report["console_has_marker"] is True
    assert report["file_resource"] == "héllo\n"
    assert report["missing_resource"][0] == -32002

    assert ok("progress_exec")["stdout"] == "finished\n"
    values = [p[0] for p in report["progress"]]
    assert len(values) >= 2 and values == sorted(values), report["progress"]

    # The cancelled command is gone from the guest, and the server goes on serving.
    assert "alive=1" in ok("after_cancel")["stdout"], report["after_cancel"]
    assert ok("still_serving")["stdout"] == "ok\n"
