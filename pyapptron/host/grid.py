"""A Selenium Grid 4 on this machine, in standalone mode, with a Chromium node on the
local chromium and chromedriver: for running the pytest plugin's fixtures through a real
Grid (`--pyapptron-remote URL`) without other machines. The server jar is pinned in
emulators/manifest.json ("tools_npm") and built into build/tools/ by the asset command;
it runs with Debian's Java.

    with local_grid() as grid:
        subprocess.run(["pytest", "--pyapptron-remote", grid.url])
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import BrowserError
from .server import REPO

GRID_JAR = REPO / "build" / "tools" / "selenium-server.jar"


@dataclass
class LocalGrid:
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_grid(*, jar: Path = GRID_JAR, chromium: str = "/usr/bin/chromium",
               chromedriver: str = "/usr/bin/chromedriver", sessions: int = 2, ready_timeout: float = 90):
    java = shutil.which("java")
    if not java or not jar.is_file():
        raise BrowserError(f"a local Grid needs Java and {jar}: run `bash emulators/setup.sh`")
    with tempfile.TemporaryDirectory(prefix="pyapptron-grid-") as tmp:
        work = Path(tmp)
        stereotype = json.dumps({"browserName": "chrome", "goog:chromeOptions": {"binary": chromium}})
        (work / "grid.toml").write_text(
            f"[node]\ndetect-drivers = false\nselenium-manager = false\nmax-sessions = {sessions}\n"
            f"[[node.driver-configuration]]\ndisplay-name = \"Chromium\"\n"
            f"webdriver-executable = \"{chromedriver}\"\nmax-sessions = {sessions}\nstereotype = '{stereotype}'\n")
        port = _free_port()
        grid = LocalGrid(f"http://127.0.0.1:{port}", work / "grid.log")
        with open(grid.log_path, "wb") as log:
            proc = subprocess.Popen([java, "-jar", str(jar), "standalone", "--host", "127.0.0.1", "--port", str(port),
                                     "--config", str(work / "grid.toml")], stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + ready_timeout
                while not _ready(grid.url):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise BrowserError(f"the local Selenium Grid did not come up:\n{grid.log()[-3000:]}")
                    time.sleep(0.5)
                yield grid
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/status", timeout=5) as response:
            return bool(json.load(response)["value"]["ready"])
    except (OSError, ValueError, KeyError):
        return False
