"""A WebSocket on 127.0.0.1 that a pyapptron page dials: what the MCP bridge
(host/mcp_bridge.py) and RemoteSession (host/browser.py) share.

Security: it listens on loopback only, accepts only the page's Origin, and serves
nothing until the page's first frame, {"pyapptron": "hello", "token": ...}, presents
the random per-run token, which the host handed to the page itself (never in a URL an
HTTP server sees).

PageChannel carries RemoteSession's requests: each goes out as "ID\\nJSON" and its
answer comes back as "ID\\nJSON", in whatever order the page finishes them, so calls
from several threads are in flight at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import itertools
import json
import secrets
import threading
from collections.abc import Callable

#: How long a page has, once connected, to present its token.
HELLO_TIMEOUT_S = 10.0
#: Close code for a page whose hello has the wrong token (web/mcp.js says so to its user).
WRONG_TOKEN = 4003


def new_token() -> str:
    return secrets.token_urlsafe(32)


def listen(handler, origins: list[str], port: int = 0):
    """The server (an async context manager): loopback only, these page origins only,
    messages of any size (a command's output can be many megabytes)."""
    from websockets.asyncio.server import serve

    return serve(handler, "127.0.0.1", port, origins=origins, max_size=None, compression=None)


async def accept_hello(ws, token: str, log: Callable[[str], None]) -> bool:
    """Read the page's hello; a page without the token is told so and closed."""
    try:
        hello = json.loads(await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT_S))
        offered = hello.get("token") if isinstance(hello, dict) else None
    except (asyncio.TimeoutError, ValueError, TypeError):
        offered = None
    except Exception:  # the connection closed before its hello
        return False
    if isinstance(offered, str) and hmac.compare_digest(offered.encode(), token.encode()):
        return True
    log(f"refused a page from {ws.request.headers.get('Origin')}: wrong or missing token")
    await ws.close(WRONG_TOKEN, "wrong token")
    return False


class PageGone(Exception):
    """The page's connection closed (the tab closed, crashed, reloaded or navigated away)."""


class PageChannel:
    """One page's WebSocket, served from a thread of its own; request() from any thread.

    A channel serves exactly one page load: when that page goes, so does the channel,
    and every request still waiting fails with PageGone.
    """

    def __init__(self, origin: str, log: Callable[[str], None] = lambda text: None):
        self.token = new_token()
        self._log = log
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._gone: str | None = None
        self._ws = None
        self._connected = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        listening: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(origin, listening), daemon=True,
                                        name="pyapptron-page-channel")
        self._thread.start()
        self.url = f"ws://127.0.0.1:{listening.result()}/"

    # -- the loop's thread -------------------------------------------------------------
    def _run(self, origin: str, listening: concurrent.futures.Future) -> None:
        try:
            self._loop.run_until_complete(self._serve(origin, listening))
        finally:
            self._loop.close()

    async def _serve(self, origin: str, listening: concurrent.futures.Future) -> None:
        self._stop = asyncio.Event()
        try:
            async with listen(self._handle, [origin]) as server:
                listening.set_result(server.sockets[0].getsockname()[1])
                await self._stop.wait()
        except BaseException as exc:
            if not listening.done():
                listening.set_exception(exc)
        finally:
            self._fail_pending("the channel to the page was closed")

    async def _handle(self, ws) -> None:
        if not await accept_hello(ws, self.token, self._log):
            return
        if self._ws is not None:
            await ws.close(4009, "another page is already connected to this session")
            return
        self._ws = ws
        self._connected.set()
        reason = "the page closed its connection (the tab was closed, crashed, reloaded or navigated away)"
        try:
            async for frame in ws:
                self._answer(frame)
        except Exception as exc:
            reason = f"the connection to the page broke: {exc}"
        finally:
            self._fail_pending(reason)
            self._stop.set()  # this page load is over; a new one gets a new channel

    def _answer(self, frame: str | bytes) -> None:
        text = frame if isinstance(frame, str) else frame.decode()
        request_id, _, answer = text.partition("\n")
        with self._lock:
            future = self._pending.pop(int(request_id), None)
        if future is not None and not future.done():
            future.set_result(answer)

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            if self._gone is None:
                self._gone = reason
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(PageGone(self._gone))

    async def _send(self, request_id: int, text: str) -> None:
        try:
            await self._ws.send(text)
        except Exception as exc:  # the request never left: its caller hears why, now
            with self._lock:
                future = self._pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_exception(PageGone(f"the request could not be sent to the page: {exc}"))

    # -- any thread ------------------------------------------------------------------------
    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def request(self, payload: str, timeout: float) -> str:
        """Send one request and wait for its answer (PageGone, or TimeoutError after `timeout`)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._gone is not None:
                raise PageGone(self._gone)
            request_id = next(self._ids)
            self._pending[request_id] = future
        try:
            asyncio.run_coroutine_threadsafe(self._send(request_id, f"{request_id}\n{payload}"), self._loop)
        except RuntimeError:  # the loop has just stopped
            self._fail_pending("the channel to the page was closed")
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            with self._lock:
                self._pending.pop(request_id, None)
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def close(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # already stopped
        self._thread.join(10)
