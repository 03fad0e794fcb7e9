"""Drive the pyapptron page in a real headless Chromium from CPython.

`RemoteSession` opens the page (served by PageServer) and sends JSON requests to
pyapptron.remote inside it; `RemoteMachine` is a CPython proxy for a VM in that page
with Machine's methods (run, read_file, write_file, list_dir, snapshot, console,
persist, ...), made from pyapptron.surface, synchronous because CPython callers (the
CLI, pytest) are.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import weakref
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .. import surface
from .._wire import decode, encode
from ..errors import BrowserError
from .page_socket import PageChannel, PageGone

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
        #: Selenium's driver is not thread-safe: every use from a RemoteSession holds this.
        self.webdriver_lock = threading.RLock()
        #: The sessions (page loads) on this browser: close() ends their channels.
        self.sessions: weakref.WeakSet[RemoteSession] = weakref.WeakSet()

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
        for session in list(getattr(self, "sessions", ())):
            session.close()
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
globalThis.pyapptron.remote(arguments[0]).then(done);
"""

_DIAL = """
const done = arguments[arguments.length - 1];
const [url, token, ms] = arguments;
// A host the browser cannot reach may never answer the connection: give up in time.
setTimeout(() => done({error: `no connection to ${url} within ${ms} ms`}), ms);
Promise.resolve().then(() => globalThis.pyapptron.dialHost(url, token))
  .then(() => done({ok: true}), e => done({error: String(e && e.message || e)}));
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


def _set_http_timeout(driver, seconds: float) -> None:
    """Selenium's HTTP client gives up on a command after 120 s by default, however long
    the script timeout: a long run() would fail with a bare ReadTimeoutError."""
    config = getattr(driver.command_executor, "_client_config", None)
    if config is not None:
        config.timeout = seconds


class RemoteSession:
    """The page open in a Browser, ready for requests. One per page load.

    By default the page boots nothing (``?autoboot=0``) and machines come from
    boot(). With ``autoboot=True`` the page boots its own machine into its terminal
    (choose it with ``?image=...`` in page_url); page_machine() then drives that one,
    so a test can type into the terminal and call run() on the same VM.

    Requests travel over a WebSocket the page dials back to this process (loopback,
    a per-session token, the page's Origin only), so several threads can have calls in
    flight at once: a run() blocking in one while another types into the console. When
    the browser cannot reach this host (a Grid whose browsers are on other machines),
    they go through WebDriver instead, one at a time.
    """

    #: How long the page has to dial back before requests go through WebDriver.
    DIAL_TIMEOUT_S = 10.0
    # WebDriver carries one script at a time, and Selenium's driver is not thread-safe: the
    # browser's lock (a class default too: a session made without __init__ still has one).
    _webdriver_lock = threading.RLock()
    _channel: PageChannel | None = None

    def __init__(self, browser: Browser, page_url: str, *, autoboot: bool = False):
        self.browser = browser
        self.page_url = page_url
        self._webdriver_lock = getattr(browser, "webdriver_lock", None) or threading.RLock()
        sessions = getattr(browser, "sessions", None)
        if sessions is not None:
            sessions.add(self)
        url = page_url if autoboot else page_url + ("&" if "?" in page_url else "?") + "autoboot=0"
        with self._webdriver_lock:
            browser.driver.get(url)
            result = browser.driver.execute_async_script(_WAIT_READY)
            if "error" in result:
                raise BrowserError(f"the page did not load pyapptron: {result['error']}")
            self._channel = self._dial()

    def _dial(self) -> PageChannel | None:
        """Have the page connect to a WebSocket here; None (and a warning, once) if it cannot."""
        parts = urlsplit(self.browser.driver.current_url)
        channel = PageChannel(f"{parts.scheme}://{parts.netloc}", log=_log.warning)
        result = self.browser.driver.execute_async_script(_DIAL, channel.url, channel.token,
                                                          int(self.DIAL_TIMEOUT_S * 1000))
        if "error" not in result and channel.wait_connected(self.DIAL_TIMEOUT_S):
            return channel
        channel.close()
        _say_once(f"the page could not connect back to this host at {channel.url} "
                  f"({result.get('error') or 'it did not present its token'}); is the browser on another "
                  "machine? Remote calls go through WebDriver instead, one at a time")
        return None

    @property
    def transport(self) -> str:
        """How requests reach the page: "websocket" (several at once) or "webdriver" (one at a time)."""
        return "websocket" if self._channel is not None else "webdriver"

    def request(self, op: str, vm: int | None = None, **args) -> Any:
        """One request to pyapptron.remote in the page; safe to call from several threads."""
        payload = json.dumps({"op": op, "vm": vm, "args": encode(args)})
        # The page enforces the request's own timeout; this is only a backstop.
        own = args.get("timeout")
        backstop = max(900, own + 120) if isinstance(own, (int, float)) else 24 * 3600
        if self._channel is not None:
            try:
                text = self._channel.request(payload, backstop)
            except PageGone as exc:
                raise BrowserError(f"the browser failed during {op!r}: {exc}{self._why_gone()}") from None
            except TimeoutError:
                raise BrowserError(f"the page did not answer {op!r} within {backstop:g} s") from None
        else:
            text = self._request_by_webdriver(op, payload, backstop)
        answer = json.loads(text)
        if "error" in answer:
            raise surface.error_from_wire(answer["error"])
        return decode(answer["ok"])

    def _request_by_webdriver(self, op: str, payload: str, backstop: float) -> str:
        from selenium.common.exceptions import TimeoutException, WebDriverException

        with self._webdriver_lock:
            self.browser.driver.set_script_timeout(backstop)
            _set_http_timeout(self.browser.driver, backstop + 30)
            try:
                return self.browser.driver.execute_async_script(_REMOTE, payload)
            except TimeoutException as exc:
                raise BrowserError(f"the page did not answer {op!r} in time: {exc.msg}") from None
            except WebDriverException as exc:
                detail = self._crash_detail() if "crash" in (exc.msg or "") else ""
                raise BrowserError(f"the browser failed during {op!r}: {exc.msg}{detail}") from None

    def _why_gone(self) -> str:
        """What WebDriver says of the page the WebSocket lost ("tab crashed", ...) and, after a
        crash, what Chromium logged."""
        with self._webdriver_lock:
            try:
                self.browser.driver.execute_script("return 1")
                return ""  # the tab lives: it was reloaded or navigated away
            except Exception as exc:  # a crashed tab, or no browser at all
                said = getattr(exc, "msg", None) or str(exc)
        return f"; WebDriver: {said}" + (self._crash_detail() if "crash" in said else "")

    def _crash_detail(self) -> str:
        report = self.browser.crash_report()
        return f"\nChromium logged:\n{report}" if report else ""

    def close(self) -> None:
        """Stop listening for the page (the browser stays open). Browser.close() calls it."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def python(self, code: str) -> Any:
        """Run Python (top-level await allowed) in the page; returns its `result` variable."""
        return self.request("python", code=code)

    def boot(self, emulator: str = "v86", image: str | None = None, **options) -> RemoteMachine:
        return RemoteMachine(self, self.request("boot", emulator=emulator, image=image, **options))

    def page_machine(self) -> RemoteMachine:
        """The machine the page booted for its terminal (see autoboot)."""
        return RemoteMachine(self, self.request("page_machine"))


def _say_once(message: str) -> None:
    global _said_fallback
    if not _said_fallback:
        _said_fallback = True
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    _log.info(message)


_said_fallback = False
_log = logging.getLogger("pyapptron.host")


# -- the host proxies: made from pyapptron.surface ---------------------------------------------
def _proxy_method(op: surface.Op):
    signature = op.signature()

    def method(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()  # the same defaults as the page's method: the backstop sees `timeout`
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(signature.parameters)))  # self
        return self._invoke(op, arguments)

    method.__name__ = op.method
    method.__doc__ = op.doc()
    method.__signature__ = signature
    return method


def _proxy_property(op: surface.Op) -> property:
    def read(self):
        return self._invoke(op, {})

    return property(read, doc=op.doc())


def _made_from_surface(target: str):
    """Give a proxy class one method (or property) for each operation on `target`."""

    def install(cls):
        for op in surface.ops_on(target):
            setattr(cls, op.method, _proxy_property(op) if op.is_property else _proxy_method(op))
        return cls

    return install


class _Proxy:
    """A part of a machine in the page; calls go there as pyapptron.surface describes."""

    _machine: RemoteMachine

    def _invoke(self, op: surface.Op, arguments: dict) -> Any:
        answer = self._machine._call(op.wire, **op.args_to_wire(arguments))
        return op.result_from_wire(answer, self)


@_made_from_surface("console")
class RemoteConsole(_Proxy):
    """vm.console of a VM in the page (see pyapptron.console.Console), synchronous:
    wait_for returns a match (RemoteMatch, read like re.Match) and sets before, after
    and match as Console does."""

    def __init__(self, machine: RemoteMachine):
        self._machine = machine
        self.before = b""
        self.after = b""
        self.match: surface.RemoteMatch | None = None




@_made_from_surface("persist")
class RemotePersist(_Proxy):
    """vm.persist of a VM in the page (see pyapptron.persist.PersistedFiles), synchronous."""

    def __init__(self, machine: RemoteMachine):
        self._machine = machine


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


@_made_from_surface("machine")
class RemoteMachine(_Proxy):
    """A VM in the page, driven from CPython with Machine's methods, keyword names and
    result types (synchronous)."""

    #: How many of the last run() calls `history` keeps.
    HISTORY = 20

    def __init__(self, session: RemoteSession, info: dict):
        self.session = session
        self._machine = self
        self.id = info["vm"]
        self.boot_seconds = info.get("boot_seconds")
        self.emulator = info.get("emulator")
        self.image = info.get("image")
        self.capabilities = surface.capabilities_from_wire(info["capabilities"])
        #: What the machine resumed from (None after a cold boot).
        self.resumed_from = info.get("resumed_from")
        self.console = RemoteConsole(self)
        #: The last run() calls (CommandRecord), oldest first: what a failing test's report shows.
        self.history: collections.deque[CommandRecord] = collections.deque(maxlen=self.HISTORY)

    def _call(self, op: str, **args) -> Any:
        """One request about this machine, in the wire's terms (plain data back)."""
        return self.session.request(op, vm=self.id, **args)

    def _invoke(self, op: surface.Op, arguments: dict) -> Any:
        if op.method != "run":
            return super()._invoke(op, arguments)
        started = time.monotonic()
        try:
            result = super()._invoke(op, arguments)
        except Exception as exc:
            self.history.append(CommandRecord(arguments["args"], getattr(exc, "returncode", None),
                                              time.monotonic() - started, type(exc).__name__))
            raise
        self.history.append(CommandRecord(arguments["args"], result.returncode, time.monotonic() - started))
        return result

    @property
    def persist(self) -> RemotePersist:
        return RemotePersist(self)

    def __repr__(self) -> str:
        return f"<RemoteMachine {self.emulator}/{self.image} #{self.id}>"

    def __enter__(self) -> RemoteMachine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
