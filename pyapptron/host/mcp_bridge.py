"""`python -m pyapptron mcp`: an MCP server for agents, bridged to the page.

The MCP server runs in the browser page next to the VM (pyapptron.mcp). This process
only carries its JSON-RPC messages: one per line on stdin/stdout (MCP's stdio
transport), or Streamable HTTP with --http (host/mcp_http.py) <-> frames on a WebSocket
that the page dials, one channel (one MCP connection in the page) per client. It
answers the handshake itself while the page is still loading, so a client's connect
timeout never races a boot.

Security: the WebSocket listens on 127.0.0.1 only, checks the page's Origin, and
serves nothing until the page presents the random per-run token (passed in the page
URL's fragment, which never reaches an HTTP server). Everything the bridge itself
says goes to stderr; stdout carries protocol messages only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from ..mcp.server import INVALID_REQUEST, MAX_MESSAGE_BYTES, error_message, id_key, valid_id
from .page_socket import accept_hello, listen, new_token

#: JSON-RPC error code for "no page can answer" (implementation-defined server error).
NO_PAGE = -32000


#: Backend options the terminal page takes from its query string (web/index.html).
PAGE_OPTIONS = {"qemu-wasm": ("build", "packages", "kernel", "initrd", "disk", "append", "main")}


def page_boot_options(emulator: str, options: list[str]) -> list[str]:
    """--option KEY=VALUE ... as the page's query parameters (qemu-wasm: build=, packages=a.js,b.js, ...)."""
    allowed = PAGE_OPTIONS.get(emulator, ())
    query = []
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in allowed:
            raise SystemExit(f"pyapptron mcp: --option {option!r}: " + (
                f"{emulator} takes {', '.join(k + '=' for k in allowed)}" if allowed
                else f"{emulator} has no options for the page; they are for --emulator qemu-wasm"))
        query.append(f"{key}={quote(value, safe='/,:')}")
    return query

def log(text: str) -> None:
    print(f"pyapptron mcp: {text}", file=sys.stderr, flush=True)


@dataclass
class BridgeConfig:
    token: str = field(default_factory=new_token)
    origins: list[str] = field(default_factory=list)  # page origins allowed to dial in
    page_url: str = ""  # where a browser can open the page (for messages)
    connect_timeout: float = 120.0  # how long a request waits for a page before it is refused
    max_message_bytes: int = MAX_MESSAGE_BYTES


#: What the bridge answers itself, at once, before (and without) a page: the handshake and
#: the calls that need no VM. The page's own connection gets the state-setting ones replayed.
_LOCAL = {"initialize", "ping", "server/discover", "logging/setLevel"}
_REPLAYED = {"initialize", "logging/setLevel"}


class Channel:
    """One client of the bridge: the stdio client, a Streamable HTTP session, or one
    stateless HTTP request. In the page it has an MCP connection of its own.

    `deliver(text)` carries each JSON-RPC message to the client. The handshake is answered
    here while no page is ready (a client's connect timeout is shorter than a boot), and
    replayed to the page's connection when it comes (and again after a reload).
    """

    def __init__(self, bridge: Bridge, number: int, deliver):
        from ..mcp.server import McpServer
        from ..mcp.tools import MachineTools

        self.bridge = bridge
        self.number = number
        self.deliver = deliver
        self.closed = False
        self._pending: dict[object, str] = {}  # request id -> method, sent to the page
        self._waiting: list[tuple[str, object, float]] = []  # (text, id, deadline) until a page is ready
        self._replay: list[tuple[object, str, str]] = []  # (id or None, method, text): set-up for a new page
        self._swallow: set[object] = set()  # ids of replayed requests: their answers are not the client's
        self._local_answers: set[object] = set()  # ids the local connection answers to the client
        # The same core the page runs, without a VM: its handshake says the VM is still booting.
        self._local = McpServer(MachineTools(None)).connect(self._from_local)
        self.wait_timer: asyncio.TimerHandle | None = None
        self.on_cancelled = lambda request_id: None  # the transport's hook: a request that gets no answer

    # -- from the client ---------------------------------------------------------------
    def from_client(self, text: str) -> None:
        if self.closed:
            return
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        request_id = None
        method = None
        if isinstance(message, dict):
            method = message.get("method")
            request_id = message.get("id")
            if "id" in message and isinstance(method, str) and not valid_id(request_id):
                # Answered here: an answer with a null id would find no caller to go back to.
                self.answer_error(None, INVALID_REQUEST, "a request id must be a string or an integer")
                return
            if method == "notifications/initialized":
                self._remember(None, method, text)  # a page that comes later gets it with the handshake
                if self.bridge.page is not None:
                    self._to_page(text)
                return
            if method == "notifications/cancelled" and isinstance(message.get("params"), dict):
                # A cancelled request gets no answer: not from the page, not from us.
                cancelled = message["params"].get("requestId")
                self._pending.pop(id_key(cancelled), None)
                self.on_cancelled(cancelled)
        if isinstance(method, str) and method in _LOCAL and request_id is not None:
            page_ready = self.bridge.page is not None
            if method in _REPLAYED:
                self._remember(request_id, method, text)
            if method != "ping" and page_ready:
                self._local_quietly(text, request_id)  # keep the local state; the page answers
            else:
                self._local_answers.add(id_key(request_id))
                self._local.receive(text)
                return  # answered here; a page that comes later gets the replayed ones
        if method is not None and request_id is not None:
            self._pending[id_key(request_id)] = method
        # Everything else (malformed JSON included) is the page's to answer: one validator.
        if self.bridge.page is not None:
            self._to_page(text)
        elif self.bridge.failed:
            self._refuse(request_id, self.bridge.failed)
        else:
            self._queue(text, request_id)

    def _remember(self, request_id, method: str, text: str) -> None:
        """The client's latest set-up message of this kind, replayed to each new page."""
        self._replay = [entry for entry in self._replay if entry[1] != method]
        self._replay.append((request_id, method, text))

    def _queue(self, text: str, request_id) -> None:
        """Hold a message until a page is ready; a request waits at most --connect-timeout."""
        timeout = self.bridge.config.connect_timeout
        self._waiting.append((text, request_id, time.monotonic() + timeout))
        if self.wait_timer is None:
            self.wait_timer = asyncio.get_running_loop().call_later(timeout, self._expire)

    def _expire(self) -> None:
        self.wait_timer = None
        now = time.monotonic()
        due = [entry for entry in self._waiting if entry[2] <= now]
        self._waiting = [entry for entry in self._waiting if entry[2] > now]
        for _, request_id, _ in due:
            self._refuse(request_id, self.bridge.no_page_message())
        if due:
            self.warn(self.bridge.no_page_message())
        if self._waiting:
            self.wait_timer = asyncio.get_running_loop().call_later(self._waiting[0][2] - now, self._expire)

    def _stop_waiting(self) -> None:
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None

    def _local_quietly(self, text: str, request_id) -> None:
        self._local_answers.discard(id_key(request_id))
        self._local.receive(text)

    def _from_local(self, text: str) -> None:
        message = json.loads(text)
        if "id" not in message:  # a log message of the bridge's own (warn())
            self.deliver(text)
            return
        key = id_key(message.get("id"))
        if key in self._local_answers:
            self._local_answers.discard(key)
            self.deliver(text)

    def warn(self, text: str) -> None:
        """The bridge's own trouble as a log message, at the level the client set."""
        self._local.log("warning", text, logger="pyapptron.bridge")

    def answer_error(self, request_id, code: int, message: str) -> None:
        self.deliver(json.dumps(error_message(request_id, code, message)))

    def _refuse(self, request_id, message: str) -> None:
        if request_id is not None:
            self._pending.pop(id_key(request_id), None)
            self.answer_error(request_id, NO_PAGE, message)

    def give_up(self, message: str) -> None:
        """The page cannot serve this channel (or boot its VM): what waits or runs is refused,
        saying why, and the client is told in a log message too."""
        self._stop_waiting()
        waiting, self._waiting = self._waiting, []
        for _, request_id, _ in waiting:
            self._refuse(request_id, message)
        pending, self._pending = self._pending, {}
        for key in pending:
            self.answer_error(key[1], NO_PAGE, message)
        self.warn(message)

    def close(self) -> None:
        """The client is gone: the page's connection for it closes (its calls are cancelled)."""
        if self.closed:
            return
        self.closed = True
        self._stop_waiting()
        self._local.close()
        self._waiting.clear()
        self._pending.clear()
        self.bridge.close_channel(self)

    # -- the page's side ---------------------------------------------------------------
    def _to_page(self, text: str) -> None:
        self.bridge.send_page(self, text)

    def page_ready(self) -> None:
        """A page (the first, or a reloaded one) is there: bring it to the client's state."""
        self._stop_waiting()
        for request_id, _, text in self._replay:
            if request_id is not None:
                self._swallow.add(id_key(request_id))
            self._to_page(text)
        waiting, self._waiting = self._waiting, []
        for text, _, _ in waiting:
            self._to_page(text)

    def from_page(self, text: str) -> None:
        if self.closed:
            return
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict) and "method" not in message and "id" in message:
            key = id_key(message["id"])
            if key in self._swallow:
                self._swallow.discard(key)
                return
            self._pending.pop(key, None)
        self.deliver(text)

    def page_gone(self) -> None:
        self._swallow.clear()
        pending, self._pending = self._pending, {}
        for key, method in pending.items():
            self.answer_error(key[1], NO_PAGE, f"{method}: the page went away (reloaded or closed) while "
                                               "this request ran; the command may not have finished")
        self.warn("the VM's page went away (reloaded or closed); calls wait for it to come back")


class Bridge:
    """Carries messages between its clients (channels) and at most one page."""

    def __init__(self, config: BridgeConfig):
        self.config = config
        self.page = None  # the connected, ready page's WebSocket
        self.page_info: dict = {}
        self.failed: str | None = None
        self.channels: dict[int, Channel] = {}
        self._numbers = itertools.count(1)
        self.ready_event = asyncio.Event()
        self.url_for_humans = ""
        self.stopping = False

    def open_channel(self, deliver) -> Channel:
        channel = Channel(self, next(self._numbers), deliver)
        self.channels[channel.number] = channel
        return channel

    def close_channel(self, channel: Channel) -> None:
        if self.channels.pop(channel.number, None) is not None and self.page is not None:
            asyncio.ensure_future(self._send(f"{channel.number}\n"))

    # -- waiting for a page --------------------------------------------------------------
    def no_page_message(self) -> str:
        return (f"no pyapptron page is connected to this MCP bridge (waited {self.config.connect_timeout:g} s). "
                f"Open {self.url_for_humans} in Chromium, or start the bridge with --headless so it "
                "opens one itself")

    # -- page side -----------------------------------------------------------------
    async def handle_page(self, ws) -> None:
        """One page's WebSocket: hello with the token, status until ready, then messages."""
        if not await accept_hello(ws, self.config.token, log):
            return
        if self.page is not None:
            await ws.close(4009, "another page is already connected to this bridge")
            return
        try:
            async for frame in ws:
                if self.page is ws:
                    self._from_page(frame)
                else:
                    self._control(ws, frame)
        except Exception as exc:  # the connection broke; what was in flight is answered below
            log(f"page connection lost: {exc}")
        finally:
            if self.page is ws:
                self._page_gone()

    def _control(self, ws, frame) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            return
        kind = message.get("pyapptron") if isinstance(message, dict) else None
        if kind == "status":
            log(f"page: {message.get('text')}")
        elif kind == "failed":
            self.failed = f"the page could not start its VM: {message.get('error')}"
            log(f"{self.failed}\n{message.get('detail') or ''}")
            for channel in list(self.channels.values()):
                channel.give_up(self.failed)
        elif kind == "boot-failed":  # Python is up and answers, but the VM is not there
            log(f"page: the VM did not boot: {message.get('error')}")
            for channel in list(self.channels.values()):
                channel.warn(f"the VM did not boot: {message.get('error')}")
        elif kind == "channel-failed":
            channel = self.channels.get(message.get("channel"))
            if channel is not None:
                channel.give_up(f"the page could not serve this client: {message.get('error')}")
        elif kind == "ready":
            if self.page is not None and self.page is not ws:
                # Two pages raced to connect: the first one ready keeps the clients.
                asyncio.ensure_future(ws.close(4009, "another page is already connected to this bridge"))
                return
            self.page_info = {k: v for k, v in message.items() if k != "pyapptron"}
            log(f"page ready: {self.page_info}")
            self.page = ws
            self.failed = None
            for channel in list(self.channels.values()):
                channel.page_ready()
            self.ready_event.set()

    def _from_page(self, frame) -> None:
        text = frame if isinstance(frame, str) else frame.decode()
        number, sep, body = text.partition("\n")
        if not sep:
            self._control(self.page, text)  # a status line from a ready page
            return
        channel = self.channels.get(int(number)) if number.isdigit() else None
        if channel is not None:
            channel.from_page(body)

    def _page_gone(self) -> None:
        self.page = None
        self.ready_event.clear()
        if self.stopping:
            return  # nobody to tell: the clients are gone, so we are stopping
        log("the page disconnected (reloaded or closed); waiting for it to come back")
        for channel in list(self.channels.values()):
            channel.page_gone()

    def send_page(self, channel: Channel, text: str) -> None:
        asyncio.ensure_future(self._send(f"{channel.number}\n{text}"))

    async def _send(self, frame: str) -> None:
        page = self.page
        if page is None:
            return  # the page went: page_gone answered what was pending
        try:
            await page.send(frame)
        except Exception:
            pass  # the close handler answers what is pending


# -- the process ---------------------------------------------------------------------
def _protocol_stdout():
    """Keep the real stdout for protocol lines; point fd 1 at stderr for everything else
    (a chatty library or child process must not corrupt the client's stream)."""
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def write(line: bytes) -> None:
        data = line + b"\n"
        with lock:
            while data:
                written = os.write(out_fd, data)
                data = data[written:]

    return write


def _stdin_lines(loop, bridge: Bridge, channel: Channel, done: asyncio.Event) -> None:
    """Read stdin in a thread (works for pipes, files and ttys alike)."""
    limit = bridge.config.max_message_bytes
    stdin = sys.stdin.buffer
    try:
        while True:
            line = stdin.readline(limit + 1)
            if not line:
                break
            if len(line) > limit and not line.endswith(b"\n"):
                size = len(line)
                while True:  # drop the rest of the oversized line
                    rest = stdin.readline(1 << 20)
                    size += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
                loop.call_soon_threadsafe(channel.answer_error, None, INVALID_REQUEST,
                                          f"message of {size} bytes refused: the limit is {limit}")
                continue
            text = line.decode("utf-8", "replace").strip()
            if text:
                loop.call_soon_threadsafe(channel.from_client, text)
    finally:
        bridge.stopping = True
        loop.call_soon_threadsafe(done.set)


async def serve(args) -> int:
    from .server import PageServer, profile_port

    http_mode = args.http is not None
    write_out = None if http_mode else _protocol_stdout()
    port = 0
    if args.persist:
        if not args.profile:
            log("--persist needs --profile DIR: the browser keeps the store (IndexedDB) in its profile")
            return 2
        port = profile_port(args.profile)
    elif args.page_port:
        port = args.page_port
    from .cli import network_option, parse_mounts

    boot_query = page_boot_options(args.emulator, getattr(args, "option", []))
    page_server = PageServer(port, extra_roots=parse_mounts(getattr(args, "mount", []))).start()
    page_origin = f"http://127.0.0.1:{page_server.port}"
    config = BridgeConfig(origins=[page_origin, f"http://localhost:{page_server.port}", *args.allow_origin],
                          connect_timeout=args.connect_timeout,
                          max_message_bytes=args.max_message_bytes or MAX_MESSAGE_BYTES)
    bridge = Bridge(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    browser = None
    started = time.monotonic()
    try:
        async with contextlib.AsyncExitStack() as stack:
            ws_server = await stack.enter_async_context(listen(bridge.handle_page, config.origins, args.port))
            ws_port = ws_server.sockets[0].getsockname()[1]
            query = [f"mcp-bridge=ws://127.0.0.1:{ws_port}/", f"emulator={args.emulator}"]
            if args.image:  # else the emulator's default image
                query.append(f"image={args.image}")
            if args.memory:
                query.append(f"memory={args.memory}")
            if args.persist:
                query.append(f"persist={args.persist}")
            if getattr(args, "cold", False):
                query.append("cold=1")
            network = network_option(args)
            if network is not None:
                query.append("network=" + ("on" if network["internet"] else "host-only"))
                query += [f"host_port={port}" for port in network["host_ports"]]
            query += boot_query
            bridge.url_for_humans = f"{page_origin}/web/index.html?{'&'.join(query)}#mcp-token={config.token}"
            if http_mode:
                from .mcp_http import HttpTransport, http_key

                http = HttpTransport(bridge, key=http_key(args.key), host=args.host, port=args.http,
                                     allow_origins=args.http_allow_origin)
                await http.start()
                stack.push_async_callback(http.stop)
                log(f"serving MCP (Streamable HTTP) at {http.endpoint_with_key}")
            else:
                channel = bridge.open_channel(lambda text: write_out(text.encode()))
                threading.Thread(target=_stdin_lines, args=(loop, bridge, channel, stop), daemon=True,
                                 name="pyapptron-mcp-stdin").start()
            if args.headless:
                browser = await loop.run_in_executor(None, _open_browser, args, bridge.url_for_humans)
                log(f"opened the page in headless Chromium ({time.monotonic() - started:.1f} s)")
            else:
                log(f"open this page to connect a VM: {bridge.url_for_humans}")
            log(f"waiting for the page on ws://127.0.0.1:{ws_port}/ (pid {os.getpid()})")
            await stop.wait()
            bridge.stopping = True
    finally:
        if browser is not None:
            await loop.run_in_executor(None, browser.close)
        page_server.stop()
    return 0


def _open_browser(args, url: str):
    from .browser import Browser, BrowserConfig

    browser = Browser(BrowserConfig(binary=args.browser_binary, remote_url=args.remote, profile_dir=args.profile))
    try:
        browser.driver.get(url)
    except Exception:
        browser.close()
        raise
    return browser


def main(args) -> int:
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0
