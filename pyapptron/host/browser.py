"""Drive the pyapptron page in a real headless Chromium from CPython.

`RemoteSession` opens the page (served by PageServer) and sends JSON requests to
pyapptron.remote inside it; `RemoteMachine` is a CPython proxy for a VM in that page
with the same methods as Machine (run, read_file, write_file, list_dir, console),
synchronous because CPython callers (the CLI, pytest) are.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from .. import errors
from .._wire import decode, encode
from ..agent import DirEntry
from ..errors import BrowserError

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows", "--window-size=1200,800",
]


def _find(names: list[str], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class BrowserConfig:
    binary: str | None = None  # chromium executable
    driver: str | None = None  # chromedriver executable
    profile_dir: str | None = None  # keep the profile (and IndexedDB) here; default: a temp dir
    remote_url: str | None = None  # a remote WebDriver / Selenium Grid instead of a local browser
    headless: bool = True


class Browser:
    """A Chromium under Selenium, with the repo's flags and no network beyond loopback."""

    def __init__(self, config: BrowserConfig | None = None):
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError as exc:
            raise BrowserError("selenium is not installed: pip install 'pyapptron[host]'") from exc
        self.config = config = config or BrowserConfig()
        os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download a driver
        options = webdriver.ChromeOptions()
        for flag in CHROMIUM_FLAGS:
            if flag.startswith("--headless") and not config.headless:
                continue
            options.add_argument(flag)
        self._tmp_profile = None
        self._log_dir = None
        self.log_path: str | None = None
        if config.remote_url:
            if config.binary:  # where the browser is on the Grid's machines
                options.binary_location = config.binary
            try:
                self.driver = webdriver.Remote(command_executor=config.remote_url, options=options)
            except Exception as exc:
                raise BrowserError(f"the remote WebDriver at {config.remote_url} gave no browser: {exc}") from exc
        else:
            binary = config.binary or _find(["chromium", "chromium-browser", "google-chrome"], "PYAPPTRON_CHROMIUM")
            driver = config.driver or _find(["chromedriver"], "PYAPPTRON_CHROMEDRIVER")
            if not binary or not driver:
                raise BrowserError(
                    "Chromium or chromedriver not found: `apt-get install -y chromium chromium-driver` "
                    "(or run `bash emulators/setup.sh`), or set PYAPPTRON_CHROMIUM / PYAPPTRON_CHROMEDRIVER"
                )
            options.binary_location = binary
            profile = config.profile_dir
            if profile is None:
                self._tmp_profile = tempfile.mkdtemp(prefix="pyapptron-profile-")
                profile = self._tmp_profile
            options.add_argument(f"--user-data-dir={profile}")
            # Chromium's own stderr goes to a log, so a crashed tab can say why (see crash_report).
            self._log_dir = tempfile.mkdtemp(prefix="pyapptron-chromium-log-")
            self.log_path = os.path.join(self._log_dir, "chromium.log")
            service = Service(executable_path=driver, log_output=self.log_path,
                              service_args=["--enable-chrome-logs", "--log-level=WARNING"])
            try:
                self.driver = webdriver.Chrome(service=service, options=options)
            except Exception as exc:
                raise BrowserError(f"Chromium did not start: {exc}") from exc
        # Long enough for a cold boot on a slow machine; a hung page fails instead of hanging.
        self.driver.set_script_timeout(900)

    def crash_report(self, lines: int = 12) -> str:
        """The last lines Chromium logged about a failure (FATAL, Check failed, crash), if any."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            # Chromium's own lines look like "[pid:tid:date:LEVEL:file.cc(line)] message".
            found = [line.rstrip() for line in f if re.match(r"\[[\d:/.]+:(ERROR|FATAL)", line)
                     and "crashpad/util/file" not in line
                     and re.search(r"FATAL|Check failed|crash|memory|SIG[A-Z]+", line, re.I)]
        return "\n".join(found[-lines:])

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            for path in (self._tmp_profile, self._log_dir):
                if path:
                    shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_WAIT_READY = """
const done = arguments[arguments.length - 1];
const started = Date.now();
(function poll() {
  // The page sets pyapptronReady in its first module script; until then, look again.
  if (window.pyapptronReady) {
    window.pyapptronReady.then(() => done({ok: true}), e => done({error: String(e && e.stack || e)}));
  } else if (window.pyapptronError) {
    done({error: window.pyapptronError});
  } else if (Date.now() - started > 120000) {
    done({error: "the page did not start pyapptron within 120 s"});
  } else {
    setTimeout(poll, 20);
  }
})();
"""

_REMOTE = """
const done = arguments[arguments.length - 1];
globalThis.pyapptron.remote(arguments[0]).then(done, e => done(JSON.stringify({error: {type: "BrowserError", message: String(e && e.stack || e), attrs: {}}})));
"""


_TERMINAL_TEXT = """
const term = window.sandbox.terminal, buf = term.buffer.active;
const [from, to] = arguments[0] ? [buf.viewportY, buf.viewportY + term.rows] : [0, buf.length];
const lines = [];
for (let i = from; i < to; i++) lines.push(buf.getLine(i).translateToString(true));
return lines.join("\\n");
"""


def terminal_text(driver, visible: bool = False) -> str:
    """What the page's terminal (web/index.html) shows: every line of its buffer, or only
    the rows on screen with visible=True. For tests that type into it."""
    return driver.execute_script(_TERMINAL_TEXT, visible)


def _raise(error: dict) -> None:
    """Re-raise a page-side exception as the same pyapptron (or builtin) type."""
    name, message = error.get("type", "BrowserError"), error.get("message", "")
    attrs = decode(error.get("attrs") or {})
    cls = getattr(errors, name, None)
    if name == "TimeoutExpired":
        raise errors.TimeoutExpired(attrs.get("cmd"), attrs.get("timeout"), attrs.get("output"), attrs.get("stderr"))
    if name == "CalledProcessError":
        raise errors.CalledProcessError(attrs.get("returncode"), attrs.get("cmd"), attrs.get("output"), attrs.get("stderr"))
    if name == "WaitTimeout":
        raise errors.WaitTimeout(message, attrs.get("buffer") or b"")
    if attrs.get("guest_errno") is not None:  # an OSError from the guest, in Linux numbering
        raise errors.guest_os_error(attrs["guest_errno"], attrs.get("guest_message") or message, attrs.get("filename"))
    builtin = {
        "FileNotFoundError": FileNotFoundError, "PermissionError": PermissionError,
        "IsADirectoryError": IsADirectoryError, "NotADirectoryError": NotADirectoryError,
        "FileExistsError": FileExistsError, "ValueError": ValueError, "TypeError": TypeError, "OSError": OSError,
    }.get(name)
    if builtin is not None:
        raise builtin(message)
    if isinstance(cls, type) and issubclass(cls, errors.PyapptronError):
        raise cls(message)
    raise BrowserError(f"{name}: {message}\n{error.get('traceback', '')}")


def _set_http_timeout(driver, seconds: float) -> None:
    """Selenium's HTTP client gives up on a command after 120 s by default, however long
    the script timeout: a long run() would fail with a bare ReadTimeoutError."""
    config = getattr(driver.command_executor, "_client_config", None)
    if config is not None:
        config.timeout = seconds


class RemoteSession:
    """The page open in a Browser, ready for requests. One per browser tab.

    By default the page boots nothing (``?autoboot=0``) and machines come from
    boot(). With ``autoboot=True`` the page boots its own machine into its terminal
    (choose it with ``?image=...`` in page_url); page_machine() then drives that one,
    so a test can type into the terminal and call run() on the same VM.
    """

    def __init__(self, browser: Browser, page_url: str, *, autoboot: bool = False):
        self.browser = browser
        self.page_url = page_url
        url = page_url if autoboot else page_url + ("&" if "?" in page_url else "?") + "autoboot=0"
        browser.driver.get(url)
        result = browser.driver.execute_async_script(_WAIT_READY)
        if "error" in result:
            raise BrowserError(f"the page did not load pyapptron: {result['error']}")

    def request(self, op: str, vm: int | None = None, **args) -> Any:
        from selenium.common.exceptions import TimeoutException, WebDriverException

        payload = json.dumps({"op": op, "vm": vm, "args": encode(args)})
        # The page enforces the request's own timeout; WebDriver's is only a backstop.
        own = args.get("timeout")
        backstop = max(900, own + 120) if isinstance(own, (int, float)) else 24 * 3600
        self.browser.driver.set_script_timeout(backstop)
        _set_http_timeout(self.browser.driver, backstop + 30)
        try:
            answer = json.loads(self.browser.driver.execute_async_script(_REMOTE, payload))
        except TimeoutException as exc:
            raise BrowserError(f"the page did not answer {op!r} in time: {exc.msg}") from None
        except WebDriverException as exc:
            report = self.browser.crash_report() if "crash" in (exc.msg or "") else ""
            detail = f"\nChromium logged:\n{report}" if report else ""
            raise BrowserError(f"the browser failed during {op!r}: {exc.msg}{detail}") from None
        if "error" in answer:
            _raise(answer["error"])
        return decode(answer["ok"])

    def python(self, code: str) -> Any:
        """Run Python (top-level await allowed) in the page; returns its `result` variable."""
        return self.request("python", code=code)

    def boot(self, emulator: str = "v86", image: str | None = None, **options) -> RemoteMachine:
        info = self.request("boot", emulator=emulator, image=image, **options)
        return RemoteMachine(self, info["vm"], info)

    def page_machine(self) -> RemoteMachine:
        """The machine the page booted for its terminal (see autoboot)."""
        info = self.request("page_machine")
        return RemoteMachine(self, info["vm"], info)


class RemoteConsole:
    def __init__(self, machine: RemoteMachine):
        self._m = machine

    def wait_for(self, pattern: str | bytes, timeout: float | None = 30) -> bytes:
        """Wait for a regex on the console; returns the matched bytes."""
        pattern = pattern.decode() if isinstance(pattern, bytes) else pattern
        answer = self._m._call("wait_for", pattern=pattern, timeout=timeout)
        self.before = answer["before"]
        return answer["match"]

    def wait_quiet(self, seconds: float, timeout: float | None = 30) -> None:
        """Wait until the console has printed nothing for `seconds` (one request: the
        page waits, rather than the host polling the transcript)."""
        self._m._call("wait_quiet", seconds=seconds, timeout=timeout)

    def send(self, data: str | bytes) -> None:
        self._m._call("send", data=data.encode() if isinstance(data, str) else data)

    def sendline(self, line: str = "") -> None:
        self.send(line + "\r")

    @property
    def transcript(self) -> bytes:
        return self._m._call("transcript")


class RemotePersist:
    """vm.persist of a VM in the page (see pyapptron.persist.PersistedFiles), synchronous."""

    def __init__(self, machine: RemoteMachine):
        self._m = machine

    def _call(self, method: str, **args) -> Any:
        return self._m._call("persist", method=method, **args)

    def sync(self) -> dict:
        """Commit now; returns {files, bytes, written_bytes, seconds}."""
        return self._call("sync")

    def usage(self) -> dict:
        return self._call("usage")

    def export(self) -> bytes:
        return self._call("export")

    def import_(self, data: bytes) -> int:
        return self._call("import_", data=data)

    def reset(self, layer: str) -> None:
        self._call("reset", layer=layer)

    def state(self) -> dict:
        """What boot restored, and any damage it found: {restored, store, damaged, auto_sync_errors}."""
        return self._call("state")


@dataclass
class CommandRecord:
    """One run() as a test report shows it."""

    args: Any
    returncode: int | None  # None: it raised
    seconds: float
    error: str = ""

    def describe(self) -> str:
        args = self.args if isinstance(self.args, str) else shlex.join(map(str, self.args))
        outcome = f"exit {self.returncode}" if self.returncode is not None else self.error
        return f"{outcome:>12}  {self.seconds:7.2f} s  {args}"


class RemoteMachine:
    """A VM in the page, driven from CPython with Machine's method names (synchronous)."""

    #: How many of the last run() calls `history` keeps.
    HISTORY = 20

    def __init__(self, session: RemoteSession, vm_id: int, info: dict):
        self.session = session
        self.id = vm_id
        self.boot_seconds = info.get("boot_seconds")
        self.emulator = info.get("emulator")
        self.image = info.get("image")
        self.capabilities = info.get("capabilities", {})
        #: What the machine resumed from (None after a cold boot).
        self.resumed_from = info.get("resumed_from")
        self.console = RemoteConsole(self)
        #: The last run() calls (CommandRecord), oldest first: what a failing test's report shows.
        self.history: collections.deque[CommandRecord] = collections.deque(maxlen=self.HISTORY)

    def _call(self, op: str, **args) -> Any:
        return self.session.request(op, vm=self.id, **args)

    def run(self, args, *, timeout=None, input=None, cwd=None, env=None, text=False, check=False):
        started = time.monotonic()
        try:
            answer = self._call("run", args=args, timeout=timeout, input=input, cwd=cwd, env=env, text=text,
                                check=check)
        except Exception as exc:
            self.history.append(CommandRecord(args, getattr(exc, "returncode", None), time.monotonic() - started,
                                              type(exc).__name__))
            raise
        self.history.append(CommandRecord(args, answer["returncode"], time.monotonic() - started))
        return subprocess.CompletedProcess(answer["args"], answer["returncode"], answer["stdout"], answer["stderr"])

    def read_file(self, path: str) -> bytes:
        return self._call("read_file", path=path)

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        self._call("write_file", path=path, data=data, mode=mode)

    def list_dir(self, path: str = "/") -> list[DirEntry]:
        return [DirEntry(**e) for e in self._call("list_dir", path=path)]

    def snapshot(self, name: str | None = None, *, to_bytes: bool = False) -> dict | bytes:
        """vm.snapshot() in the page: its SnapshotInfo as a dict, or the bytes with to_bytes=True."""
        return self._call("snapshot", name=name, to_bytes=to_bytes)

    def restore(self, snapshot: str | bytes) -> None:
        """vm.restore() in the page: back to a kept snapshot (a name) or snapshot bytes, in place."""
        self.resumed_from = self._call("restore", snapshot=snapshot)["resumed_from"]

    def shutdown(self) -> None:
        self._call("shutdown")

    @property
    def persist(self) -> RemotePersist:
        return RemotePersist(self)

    def __enter__(self) -> RemoteMachine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
