"""MCP's Streamable HTTP transport for `python -m pyapptron mcp --http PORT`.

One endpoint, `/mcp`, speaks both revisions the stdio bridge speaks:
  - 2025-11-25: `initialize` opens a session (`Mcp-Session-Id`); POST carries one message
    (a request is answered as JSON, or as an SSE stream when it asked for progress), GET
    opens the session's stream for messages that belong to no request (log messages),
    DELETE ends the session. An unknown or expired session id is 404, a missing one 400.
  - 2026-07-28: each POST is self-contained (the version in `MCP-Protocol-Version` or the
    request's `_meta`); no session; closing the response stream cancels the request.

Each session (and each stateless request) is a channel of the bridge (mcp_bridge.py): an
MCP connection of its own in the page, so clients run their calls side by side.

Security, as the specification asks of a local server: it binds to 127.0.0.1 unless told
otherwise; a foreign Host or Origin is refused with 403 (DNS rebinding); every request
carries the run's key (`Authorization: Bearer KEY`, or `?key=KEY` for clients that cannot
set headers), else 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import time

from aiohttp import web

from ..mcp.server import (
    INVALID_REQUEST,
    META_VERSION,
    MODERN_VERSIONS,
    PARSE_ERROR,
    SUPPORTED_VERSIONS,
    error_message,
    id_key,
    valid_id,
)

#: A session nobody has used for this long is ended (its id then gets 404).
SESSION_IDLE_S = 3600.0
#: An SSE stream with nothing to say sends a comment this often (proxies close silent ones).
KEEPALIVE_S = 15.0
#: JSON-RPC error for a routing header that contradicts the body (2026-07-28).
HEADER_MISMATCH = -32020
#: The loopback's names, as a bind address and as they appear in a Host or Origin header.
_LOOPBACK_BIND = ("127.0.0.1", "localhost", "::1")
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform",
                "X-Accel-Buffering": "no"}


def http_key(given: str | None) -> str:
    """The key clients must present: --key, else $PYAPPTRON_MCP_KEY, else a random one."""
    return given or os.environ.get("PYAPPTRON_MCP_KEY") or secrets.token_urlsafe(24)


def _rpc_error(status: int, code: int, message: str, request_id=None, headers=None) -> web.Response:
    return web.json_response(error_message(request_id, code, message), status=status, headers=headers)


async def _event_stream(request: web.Request, next_message) -> web.StreamResponse:
    """An SSE response carrying each message `next_message()` gives, until it gives None.
    A silent stream gets a comment every KEEPALIVE_S (proxies and clients time out idle reads)."""
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await response.prepare(request)
    while True:
        try:
            text = await asyncio.wait_for(next_message(), KEEPALIVE_S)
        except asyncio.TimeoutError:
            await response.write(b": keepalive\n\n")
            continue
        if text is None:
            break
        # JSON text has no raw newlines: one `data:` line per message.
        await response.write(b"event: message\ndata: " + text.encode() + b"\n\n")
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


class _Exchange:
    """A POSTed request waiting for its answer; with `streaming`, its progress too."""

    def __init__(self, request_id, progress_token, streaming: bool):
        self.request_id = request_id
        self.progress_token = progress_token
        self.streaming = streaming
        self.queue: asyncio.Queue[tuple[str | None, bool]] = asyncio.Queue()  # (message, is the answer)
        self.finished = False

    def notify(self, text: str) -> None:
        if self.streaming:
            self.queue.put_nowait((text, False))

    def answer(self, text: str | None) -> None:
        """The answer (None: the client cancelled the request, so none comes)."""
        self.queue.put_nowait((text, True))

    async def next_message(self) -> str | None:
        """For the SSE stream: each message, then the answer, then None."""
        if self.finished:
            return None
        text, self.finished = await self.queue.get()
        return text


class Session:
    """A client's MCP session (or one stateless request): its channel through the bridge."""

    def __init__(self, transport: HttpTransport, session_id: str | None):
        self.id = session_id
        self.transport = transport
        self.channel = transport.bridge.open_channel(self._deliver)
        self.channel.on_cancelled = self._cancelled
        self.exchanges: dict[object, _Exchange] = {}
        self.streams: list[asyncio.Queue] = []  # open GET streams, newest last
        self.last_used = time.monotonic()
        self.closed = False

    def _deliver(self, text: str) -> None:
        """A message from the page (or the bridge) for this client: to the stream it belongs on."""
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "method" not in message:
            exchange = self.exchanges.pop(id_key(message.get("id")), None)
            if exchange is not None:
                exchange.answer(text)
            return  # an answer nobody waits for (its POST went away): the client left it
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if message["method"] == "notifications/progress":
            token = params.get("progressToken")
            for exchange in self.exchanges.values():
                if exchange.progress_token is not None and id_key(exchange.progress_token) == id_key(token):
                    exchange.notify(text)
            return
        if self.streams:  # a message of no request: the session's GET stream, if one is open
            self.streams[-1].put_nowait(text)

    def expect(self, request_id, progress_token, streaming: bool) -> _Exchange:
        exchange = _Exchange(request_id, progress_token, streaming)
        self.exchanges[id_key(request_id)] = exchange
        return exchange

    def _cancelled(self, request_id) -> None:
        """The client cancelled a request: no answer will come, so its POST ends without one."""
        if valid_id(request_id):
            exchange = self.exchanges.pop(id_key(request_id), None)
            if exchange is not None:
                exchange.answer(None)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.channel.close()
        exchanges, self.exchanges = self.exchanges, {}
        for exchange in exchanges.values():
            exchange.answer(json.dumps(error_message(exchange.request_id, INVALID_REQUEST, reason)))
        for stream in self.streams:
            stream.put_nowait(None)


class HttpTransport:
    """The HTTP server: sessions, streams and the checks, in front of the bridge."""

    def __init__(self, bridge, *, key: str, host: str = "127.0.0.1", port: int = 0,
                 allow_origins: list[str] | tuple[str, ...] = ()):
        """`allow_origins`: web clients' origins admitted besides the server's own (CORS)."""
        self.bridge = bridge
        self.key = key
        self.host = host
        self.port = port
        self.allow_origins = list(allow_origins)
        self.sessions: dict[str, Session] = {}
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task | None = None

    # -- lifetime ------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=self.bridge.config.max_message_bytes)
        app.router.add_route("*", "/mcp", self._endpoint)
        app.on_response_prepare.append(self._cors_headers)
        # A client that drops its connection cancels the handler: a stateless request stops.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._reaper = asyncio.ensure_future(self._reap_idle_sessions())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for session in list(self.sessions.values()):
            session.close("the server is stopping")
        self.sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}/mcp"

    @property
    def endpoint_with_key(self) -> str:
        return f"{self.endpoint}?key={self.key}"

    async def _reap_idle_sessions(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, SESSION_IDLE_S))
            now = time.monotonic()
            for session_id, session in list(self.sessions.items()):
                if not session.exchanges and not session.streams and now - session.last_used > SESSION_IDLE_S:
                    self.sessions.pop(session_id, None)
                    session.close("the session expired")

    # -- the checks ------------------------------------------------------------------------
    def _allowed_origins(self) -> set[str]:
        own = {f"http://{name}:{self.port}" for name in _LOOPBACK_NAMES}
        return own | set(self.allow_origins)

    def _host_ok(self, host: str) -> bool:
        if self.host not in _LOOPBACK_BIND:
            return True  # served beyond the loopback on purpose: the key is the guard
        return host.lower() in {*_LOOPBACK_NAMES, *(f"{name}:{self.port}" for name in _LOOPBACK_NAMES)}

    def _key_ok(self, request: web.Request) -> bool:
        offered = request.query.get("key")
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            offered = auth[7:].strip()
        return offered is not None and hmac.compare_digest(offered.encode(), self.key.encode())

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self._allowed_origins():
            return _rpc_error(403, INVALID_REQUEST, f"Origin {origin} may not use this MCP server "
                                                    "(start it with --http-allow-origin ORIGIN to allow a web client)")
        if not self._host_ok(request.host):
            return _rpc_error(403, INVALID_REQUEST, f"Host {request.host!r} is not this server's: requests must "
                                                    f"name 127.0.0.1:{self.port} or localhost:{self.port}")
        if request.method == "OPTIONS":  # a CORS preflight from an allowed origin carries no key
            return web.Response(status=204)
        if not self._key_ok(request):
            return _rpc_error(401, INVALID_REQUEST, "this MCP server needs its key: send `Authorization: Bearer KEY` "
                                                    "or add ?key=KEY to the URL (pyapptron mcp prints it)",
                              headers={"WWW-Authenticate": 'Bearer realm="pyapptron-mcp"'})
        return await handler(request)

    async def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and origin in self._allowed_origins():
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Expose-Headers"] = "Mcp-Session-Id"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = (
                    "Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Mcp-Method, "
                    "Mcp-Name, Last-Event-ID")

    # -- the endpoint --------------------------------------------------------------------------
    async def _endpoint(self, request: web.Request) -> web.StreamResponse:
        version = request.headers.get("MCP-Protocol-Version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            return _rpc_error(400, INVALID_REQUEST, f"MCP-Protocol-Version {version!r} is not supported; "
                                                    f"this server speaks {', '.join(SUPPORTED_VERSIONS)}")
        if request.method == "POST":
            return await self._post(request, version)
        if request.method == "GET":
            return await self._get(request, version)
        if request.method == "DELETE":
            session = self._session(request)
            if not isinstance(session, Session):
                return session
            self.sessions.pop(session.id, None)
            session.close("the client ended the session")
            return web.Response(status=200)
        return web.Response(status=405, headers={"Allow": "GET, POST, DELETE"})

    def _session(self, request: web.Request) -> Session | web.Response:
        session_id = request.headers.get("Mcp-Session-Id")
        if not session_id:
            return _rpc_error(400, INVALID_REQUEST, "Mcp-Session-Id header missing: send `initialize` first "
                                                    "and then the session id its answer gave")
        session = self.sessions.get(session_id)
        if session is None:
            return _rpc_error(404, INVALID_REQUEST, "no such session (it ended or expired): "
                                                    "start a new one with `initialize`")
        session.last_used = time.monotonic()
        return session

    async def _post(self, request: web.Request, version: str | None) -> web.StreamResponse:
        if request.content_type != "application/json":
            return _rpc_error(415, INVALID_REQUEST, "POST a JSON-RPC message as Content-Type: application/json")
        accept = request.headers.get("Accept", "*/*")
        takes_json = "application/json" in accept or "*/*" in accept
        takes_sse = "text/event-stream" in accept or "*/*" in accept
        if not (takes_json or takes_sse):
            return _rpc_error(406, INVALID_REQUEST, "Accept must include application/json and text/event-stream")
        text = await request.text()
        try:
            message = json.loads(text)
        except ValueError as exc:
            return _rpc_error(400, PARSE_ERROR, f"not JSON: {exc}")
        if not isinstance(message, dict):
            return _rpc_error(400, INVALID_REQUEST, "POST one JSON-RPC message (batches are not part of MCP)")
        method = message.get("method")
        request_id = message.get("id")
        is_request = isinstance(method, str) and "id" in message
        if is_request and not valid_id(request_id):
            return _rpc_error(400, INVALID_REQUEST, "a request id must be a string or an integer")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        stateless = (version in MODERN_VERSIONS or meta.get(META_VERSION) in MODERN_VERSIONS
                     or method == "server/discover")
        if stateless:
            named = request.headers.get("Mcp-Method")
            if named is not None and named != method:
                return _rpc_error(400, HEADER_MISMATCH, f"Mcp-Method header {named!r} does not match the body's "
                                                        f"method {method!r}", request_id)
            if not is_request:
                return web.Response(status=202)  # 2026-07-28 has no client notifications over HTTP
            session = Session(self, None)
        elif method == "initialize" and is_request:
            session = Session(self, secrets.token_hex(16))
        else:
            session = self._session(request)
            if not isinstance(session, Session):
                return session
        if not is_request:  # a notification (or a response): the page takes it, nothing comes back
            session.channel.from_client(text)
            return web.Response(status=202)
        if id_key(request_id) in session.exchanges:
            return _rpc_error(409, INVALID_REQUEST, f"request id {request_id!r} is already in use in this session",
                              request_id)
        token = meta.get("progressToken")
        # A call streams (its progress, and keepalives that outlast a client's read timeout);
        # the handshake never does (its answer carries the session id in a header).
        streaming = method != "initialize" and takes_sse and (
            method == "tools/call" or token is not None or not takes_json)
        exchange = session.expect(request_id, token, streaming)
        try:
            session.channel.from_client(text)
            if streaming:
                return await _event_stream(request, exchange.next_message)
            answer, _ = await exchange.queue.get()
            if answer is None:
                return web.Response(status=204)  # the client cancelled it: no answer is due
            headers = {}
            if session.id is not None and method == "initialize":
                if '"error"' in answer and "error" in json.loads(answer):
                    session.close("initialize failed")
                else:
                    self.sessions[session.id] = session
                    headers["Mcp-Session-Id"] = session.id
            return web.Response(text=answer, content_type="application/json", headers=headers)
        finally:
            session.exchanges.pop(id_key(request_id), None)
            if session.id is None or session.id not in self.sessions:
                session.close("the request ended")  # stateless: its channel goes (a call still running stops)

    async def _get(self, request: web.Request, version: str | None) -> web.StreamResponse:
        if version in MODERN_VERSIONS:
            return web.Response(status=405, headers={"Allow": "POST"})  # 2026-07-28: POST only
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return _rpc_error(406, INVALID_REQUEST, "a GET opens the session's event stream: "
                                                    "send Accept: text/event-stream")
        session = self._session(request)
        if not isinstance(session, Session):
            return session
        stream: asyncio.Queue = asyncio.Queue()
        session.streams.append(stream)
        try:
            return await _event_stream(request, stream.get)
        finally:
            if stream in session.streams:
                session.streams.remove(stream)
            session.last_used = time.monotonic()
