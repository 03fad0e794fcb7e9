"""The MCP protocol core: JSON-RPC 2.0 framing, both protocol eras, progress, cancellation.

Two revisions are spoken, chosen per message by what the client sends:
  - 2025-11-25 (the handshake era): `initialize` fixes the version for the connection,
    then `notifications/initialized`, `ping`, `tools/*`, `resources/*`.
  - 2026-07-28 (stateless): every request names its version in
    `params._meta["io.modelcontextprotocol/protocolVersion"]`; `server/discover` replaces
    the handshake; every result carries `resultType` and the server's identity in `_meta`.
Bad input never stops the server: each message gets its JSON-RPC error (or, for a
notification, nothing) and the next one is served.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pyapptron.mcp")

HANDSHAKE_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25")  # answered through `initialize`
MODERN_VERSIONS = ("2026-07-28",)  # per-request `_meta` envelope
SUPPORTED_VERSIONS = HANDSHAKE_VERSIONS + MODERN_VERSIONS
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[-1]

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"

# JSON-RPC error codes (the spec's, plus MCP's own)
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
UNSUPPORTED_PROTOCOL_VERSION = -32022

#: Larger messages are refused (with an error) before they are parsed.
MAX_MESSAGE_BYTES = 64 << 20

#: The specification's log levels (RFC 5424's), least severe first.
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
#: What a client that never sent `logging/setLevel` gets: problems, not chatter.
DEFAULT_LOG_LEVEL = "warning"
_PY_LEVELS = ((logging.CRITICAL, "critical"), (logging.ERROR, "error"), (logging.WARNING, "warning"),
              (logging.INFO, "info"), (logging.NOTSET, "debug"))

_NEEDS_MACHINE = {"tools/list", "tools/call", "resources/list", "resources/templates/list", "resources/read"}
# Results a 2026-07-28 client may cache: they carry cacheScope and ttlMs.
_CACHEABLE = {"server/discover", "tools/list", "resources/list", "resources/templates/list", "resources/read"}


class McpError(Exception):
    """Raised by a handler: goes back to the client as this JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


Send = Callable[[str], Any]
ProgressFn = Callable[..., None]


class McpServer:
    """What the server offers: `tools` is a provider like MachineTools (tools, resources)."""

    def __init__(self, tools, *, name: str = "pyapptron", version: str | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, forward_logs: bool = False):
        """`forward_logs`: pyapptron's own warnings (its `logging` records and Python
        warnings) go to every connection as `notifications/message`."""
        if version is None:
            from .. import __version__ as version
        self.tools = tools
        self.info = {"name": name, "title": "pyapptron Linux VM", "version": version}
        self.max_message_bytes = max_message_bytes
        self.forward_logs = forward_logs

    def connect(self, send: Send) -> McpConnection:
        """A new client connection; `send(text)` carries one JSON-RPC message to the client."""
        return McpConnection(self, send)


class McpConnection:
    """One client. Feed it with `receive(text)`; it answers through `send`."""

    def __init__(self, server: McpServer, send: Send):
        self.server = server
        self._send = send
        self.version: str | None = None  # fixed by `initialize` (handshake era)
        self.modern = False  # a 2026-07-28 request was answered on this connection
        self.initialized = False
        self.client_info: dict | None = None
        self._in_flight: dict[Any, asyncio.Task] = {}
        self.closed = False
        self.log_level = DEFAULT_LOG_LEVEL  # set by `logging/setLevel`
        self._log_handler = None
        self._on_close: list[Callable[[], None]] = []
        if server.forward_logs:
            self._log_handler = _LogForwarder(self)
            for name in ("pyapptron", "py.warnings"):
                logging.getLogger(name).addHandler(self._log_handler)

    # -- input ---------------------------------------------------------------------
    def receive(self, text: str | bytes) -> None:
        """Handle one incoming message. Requests run as tasks, so a long `exec` does not
        hold up the next message and can be cancelled by `notifications/cancelled`."""
        if self.closed:
            return
        limit = self.server.max_message_bytes
        if len(text) * (1 if isinstance(text, bytes) else 4) > limit:  # UTF-8: at most 4 bytes a character
            size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
            if size > limit:
                self._error(None, INVALID_REQUEST,
                            f"message of {size} bytes refused: the limit is {limit} (move large files in parts)")
                return
        try:
            message = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            self._error(None, PARSE_ERROR, f"not JSON: {exc}")
            return
        if isinstance(message, list):
            self._error(None, INVALID_REQUEST, "JSON-RPC batches are not part of MCP: send one message at a time")
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            self._error(_id_of(message), INVALID_REQUEST, 'not a JSON-RPC 2.0 message (needs "jsonrpc": "2.0")')
            return
        method = message.get("method")
        if method is None:
            return  # a response: this server sends no requests, so there is nothing to match
        if not isinstance(method, str):
            self._error(_id_of(message), INVALID_REQUEST, "method must be a string")
            return
        params = message.get("params", {})
        if params is None:
            params = {}
        if "id" not in message:
            self._notification(method, params)
            return
        request_id = message["id"]
        if not valid_id(request_id):
            self._error(None, INVALID_REQUEST, "a request id must be a string or an integer")
            return
        if request_id in self._in_flight:
            self._error(request_id, INVALID_REQUEST, f"request id {request_id!r} is already in use")
            return
        if not isinstance(params, dict):
            self._error(request_id, INVALID_PARAMS, "params must be an object")
            return
        task = asyncio.ensure_future(self._request(request_id, method, params))
        self._in_flight[request_id] = task
        task.add_done_callback(lambda _t, rid=request_id: self._in_flight.pop(rid, None))

    def close(self) -> None:
        """The transport went away: stop every running request (their guest commands too)."""
        self.closed = True
        for task in list(self._in_flight.values()):
            task.cancel()
        if self._log_handler is not None:
            for name in ("pyapptron", "py.warnings"):
                logging.getLogger(name).removeHandler(self._log_handler)
            self._log_handler = None
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when the transport goes away (a log source unsubscribes)."""
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    # -- logging (the `logging` capability) ------------------------------------------
    def wants_log(self, level: str) -> bool:
        """Whether a message at `level` would reach the client (check before building one)."""
        return not self.closed and LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)

    def log(self, level: str, data: Any, logger: str = "pyapptron") -> None:
        """A `notifications/message` to the client, if its level is at or above the one it set."""
        if self.wants_log(level):
            self._write({"jsonrpc": "2.0", "method": "notifications/message",
                         "params": {"level": level, "logger": logger, "data": data}})

    def _notification(self, method: str, params: Any) -> None:
        if not isinstance(params, dict):
            return  # notifications get no answer, not even an error
        if method == "notifications/initialized":
            self.initialized = True
        elif method == "notifications/cancelled":
            task = self._in_flight.get(params.get("requestId"))
            if task is not None:
                task.cancel()  # the tool's own cleanup stops the guest command
        # notifications/progress, roots/list_changed, anything newer: nothing to do

    # -- requests ------------------------------------------------------------------
    async def _request(self, request_id, method: str, params: dict) -> None:
        version = None
        try:
            version = self._version_for(method, params)
            result = await self._dispatch(method, params, version, request_id)
            if version in MODERN_VERSIONS:
                result = self._modern_envelope(method, result)
            self._write({"jsonrpc": "2.0", "id": request_id, "result": result})
        except asyncio.CancelledError:
            # Cancelled by the client (no answer is due) or by close(); either way, quietly.
            pass
        except McpError as exc:
            self._error(request_id, exc.code, exc.message, exc.data)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("MCP request %s failed", method)
            self._error(request_id, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _version_for(self, method: str, params: dict) -> str | None:
        meta = params.get("_meta")
        requested = meta.get(META_VERSION) if isinstance(meta, dict) else None
        if method == "initialize":
            return None
        if requested is not None or method == "server/discover":
            if requested not in MODERN_VERSIONS:
                raise McpError(UNSUPPORTED_PROTOCOL_VERSION,
                               f"protocol version {requested!r} is not supported",
                               {"supported": list(SUPPORTED_VERSIONS), "requested": requested})
            return requested
        if self.version is not None or method == "ping":
            return self.version
        raise McpError(INVALID_REQUEST,
                       f"{method}: the connection is not initialized. Send `initialize` first (protocol "
                       f"2025-11-25), or name the version in params._meta[\"{META_VERSION}\"] (2026-07-28)")

    async def _dispatch(self, method: str, params: dict, version: str | None, request_id) -> dict:
        tools = self.server.tools
        if method == "initialize":
            return self._initialize(params)
        if method == "server/discover":
            self.modern = True
            return {"supportedVersions": list(SUPPORTED_VERSIONS), "capabilities": self._capabilities(),
                    "serverInfo": self.server.info, "instructions": tools.instructions()}
        if method == "ping":
            return {}
        if method == "logging/setLevel":
            level = params.get("level")
            if level not in LOG_LEVELS:
                raise McpError(INVALID_PARAMS, f"logging/setLevel: level {level!r} is not one of {', '.join(LOG_LEVELS)}")
            self.log_level = level
            return {}
        if method in _NEEDS_MACHINE:
            await tools.ready()
        if method == "tools/list":
            return {"tools": tools.list_tools()}
        if method == "tools/call":
            name = params.get("name")
            arguments = params.get("arguments", {})
            if not isinstance(name, str):
                raise McpError(INVALID_PARAMS, "tools/call needs params.name, the tool's name (see tools/list)")
            if arguments is None:
                arguments = {}
            if not isinstance(arguments, dict):
                raise McpError(INVALID_PARAMS, "tools/call params.arguments must be an object")
            return await tools.call_tool(name, arguments, self._progress_fn(params))
        if method == "resources/list":
            return {"resources": await tools.list_resources()}
        if method == "resources/templates/list":
            return {"resourceTemplates": tools.resource_templates()}
        if method == "resources/read":
            uri = params.get("uri")
            if not isinstance(uri, str):
                raise McpError(INVALID_PARAMS, "resources/read needs params.uri (see resources/list)")
            return {"contents": await tools.read_resource(uri)}
        raise McpError(METHOD_NOT_FOUND, f"method {method!r} not found")

    def _initialize(self, params: dict) -> dict:
        requested = params.get("protocolVersion")
        if self.modern and self.version is None:
            # The client's `server/discover` probe was answered, late (a VM boots slowly), after it
            # fell back to the handshake: say so, and a 2026-07-28 client re-probes instead.
            raise McpError(UNSUPPORTED_PROTOCOL_VERSION,
                           "this connection already speaks 2026-07-28 (server/discover was answered)",
                           {"supported": list(MODERN_VERSIONS), "requested": requested})
        if not isinstance(requested, str):
            raise McpError(INVALID_PARAMS, "initialize needs params.protocolVersion (a string such as \"2025-11-25\")")
        # The spec: answer with the client's version if we speak it, else our newest; the client decides.
        self.version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
        info = params.get("clientInfo")
        self.client_info = info if isinstance(info, dict) else None
        return {"protocolVersion": self.version, "capabilities": self._capabilities(),
                "serverInfo": self.server.info, "instructions": self.server.tools.instructions()}

    @staticmethod
    def _capabilities() -> dict:
        return {"tools": {"listChanged": False}, "resources": {"listChanged": False, "subscribe": False},
                "logging": {}}

    def _modern_envelope(self, method: str, result: dict) -> dict:
        result = dict(result)
        result.setdefault("resultType", "complete")
        meta = dict(result.get("_meta") or {})
        meta[META_SERVER_INFO] = self.server.info
        result["_meta"] = meta
        if method in _CACHEABLE:
            # The VM changes under the client: nothing is worth caching, and nothing is shared.
            result.setdefault("cacheScope", "private")
            result.setdefault("ttlMs", 0)
        return result

    def _progress_fn(self, params: dict) -> ProgressFn | None:
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if isinstance(token, bool) or not isinstance(token, (str, int)):
            return None

        def progress(value: float, total: float | None = None, message: str | None = None) -> None:
            params = {"progressToken": token, "progress": value}
            if total is not None:
                params["total"] = total
            if message is not None:
                params["message"] = message
            self._write({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})

        return progress

    # -- output --------------------------------------------------------------------
    def _error(self, request_id, code: int, message: str, data: Any = None) -> None:
        self._write(error_message(request_id, code, message, data))

    def _write(self, message: dict) -> None:
        if self.closed:
            return
        try:
            self._send(json.dumps(message, ensure_ascii=False, separators=(",", ":")))
        except Exception:  # the transport is gone; the next close() cleans up
            log.exception("MCP send failed")


class _LogForwarder(logging.Handler):
    """pyapptron's `logging` records (warnings and worse) as one connection's log messages."""

    def __init__(self, connection: McpConnection):
        super().__init__(logging.WARNING)
        self.connection = connection

    def emit(self, record: logging.LogRecord) -> None:
        level = log_level_of(record.levelno)
        if record.name == "pyapptron.mcp" or not self.connection.wants_log(level):
            return  # the server's own send failures must not feed back into sends
        try:
            self.connection.log(level, record.getMessage(), logger=record.name)
        except Exception:  # noqa: BLE001 - logging must never raise into the code that logged
            pass


def log_level_of(levelno: int) -> str:
    """A Python logging level as the specification's level name."""
    return next(name for number, name in _PY_LEVELS if levelno >= number)


def error_message(request_id, code: int, message: str, data: Any = None) -> dict:
    """A JSON-RPC error response (every transport's refusals are made here)."""
    error = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def valid_id(request_id) -> bool:
    """JSON-RPC ids MCP allows: a string or an integer (not a boolean, a float, null)."""
    return isinstance(request_id, (str, int)) and not isinstance(request_id, bool)


def id_key(request_id):
    """A request id as a dict key: 1 and "1" are different requests."""
    return (type(request_id).__name__, request_id)


def _id_of(message) -> Any:
    if isinstance(message, dict):
        request_id = message.get("id")
        if valid_id(request_id):
            return request_id
    return None

