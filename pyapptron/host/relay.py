"""The Wisp relay: carries a guest's TCP connections, and answers its DNS questions, for
the pages the host tools serve (one relay per host process, any number of pages).

v86 in the page turns each TCP connection of the guest into a stream of Wisp v1 (one
WebSocket carrying many TCP streams); the relay opens each stream's target on the host
and copies bytes both ways. The page's DNS-over-HTTPS requests come here too, as RFC
8484's GET (/SECRET/dns-query?dns=...), so no public DNS service is ever asked.

Security model. The guest is untrusted; the page is not (it runs the host's own code).
- The relay listens on loopback only (no SO_REUSEPORT): only this machine can dial it.
- Every request's path carries the run's random secret (/SECRET/), which the host hands
  to its own pages only, and its Origin must be one of those pages' origins, so other
  pages in the same browser cannot use it (clients that send no Origin, such as Node or
  tests, only with allow_no_origin=True).
- The page's Network policy travels in the URL's query, and each stream the guest opens
  is checked against it (`pyapptron.network.decide`): the host's 127.0.0.1 only on the
  allowed ports, through the gateway; nothing else when host-only; never loopback,
  private ranges only if allowed. CONNECT names an IP literal: nothing is resolved then.

Why not PyPI's wisp-python: it is AGPL-3.0 (pyapptron is MIT); it has no per-stream
policy hook (process-wide switches only), no host-port mapping, no Origin or secret
check; it drops a stream on the client's CLOSE, which v86 sends for the guest's FIN, so
replies sent after that FIN are lost; and it forks worker processes.

v86's client, as tested: Wisp v1 only; the guest's FIN and RST both arrive as CLOSE, so
a client CLOSE half-closes (EOF to the target, whose reply still flows back until it
closes or stays silent for `half_closed_idle_s`); it throws on DATA or CONTINUE for a
stream it no longer knows, so nothing goes out on a stream after its CLOSE.

DNS messages (A questions only) are parsed and built here, in a few dozen lines, rather
than with dnspython: the host extra needs no new dependency for so little.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import hmac
import ipaddress
import logging
import re
import secrets
import socket
import struct
import threading
from base64 import urlsafe_b64decode
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import parse_qs

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from ..errors import InvalidOption, PyapptronError
from ..network import Network, Refused, decide, dns_answer_for

log = logging.getLogger("pyapptron.relay")

# Wisp v1 packet types and the CLOSE reasons the relay sends.
CONNECT, DATA, CONTINUE, CLOSE = 0x01, 0x02, 0x03, 0x04
TCP, UDP = 0x01, 0x02
CLOSE_VOLUNTARY, CLOSE_NETWORK_ERROR, CLOSE_INVALID = 0x02, 0x03, 0x41
CLOSE_UNREACHABLE, CLOSE_TIMED_OUT, CLOSE_REFUSED, CLOSE_BLOCKED = 0x42, 0x43, 0x44, 0x48

QUEUE_PACKETS = 128  # each stream's budget of DATA packets, as CONTINUE advertises it
CONTINUE_EVERY = 32  # refresh a stream's budget after this many of its packets left
# A CONTINUE can cross packets in flight, so a queue may pass the budget a little; a
# client far past it ignores flow control, and its WebSocket is closed.
QUEUE_LIMIT = 2 * QUEUE_PACKETS
READ_SIZE = 64 * 1024
CONNECT_TIMEOUT_S, DNS_TIMEOUT_S, DNS_TTL_S = 10.0, 5.0, 60
REFUSALS_KEPT = 100
#: Streams one page may have open at once: a guest cannot spend the host's descriptors.
MAX_STREAMS = 256
#: DNS questions resolved at once, over all pages (each can take DNS_TIMEOUT_S).
MAX_RESOLVING = 8
_GUEST_CLOSED = None  # in a stream's queue: the client's CLOSE, after its last DATA

QTYPE_A, QCLASS_IN = 1, 1
RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP = 1, 2, 3, 4
_NOT_FOUND = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class DnsQuestion(NamedTuple):
    name: str
    type: int
    klass: int
    offset: int  # where it starts in the message: an answer points back to its name
    end: int


def parse_dns_query(message: bytes) -> tuple[int, int, list[DnsQuestion]]:
    """(id, flags, questions) of a DNS query; ValueError if it is not one."""
    if len(message) < 12:
        raise ValueError("shorter than a DNS header")
    query_id, flags, count = struct.unpack_from("!HHH", message)
    if flags & 0x8000:
        raise ValueError("a DNS response, not a query")
    questions, offset = [], 12
    for _ in range(count):
        start, labels = offset, []
        while offset < len(message) and (length := message[offset]):
            # Queries spell their names out: a pointer (0xC0 and up) is not expected here.
            if length > 63 or offset + 1 + length > len(message):
                raise ValueError("a question's name is cut short or compressed")
            labels.append(message[offset + 1:offset + 1 + length].decode("ascii"))
            offset += 1 + length
        if offset + 5 > len(message) or start > 0x3FFF:
            raise ValueError("a question is cut short")
        qtype, qclass = struct.unpack_from("!HH", message, offset + 1)
        offset += 5
        questions.append(DnsQuestion(".".join(labels), qtype, qclass, start, offset))
    return query_id, flags, questions


def encode_dns_response(query_id: int, flags: int, questions: list[DnsQuestion], message: bytes,
                        rcode: int, answers: list[tuple[DnsQuestion, str]]) -> bytes:
    """The response to `message`: its questions as they came, then A records (question, IPv4)."""
    header = struct.pack("!HHHHHH", query_id, 0x8000 | (flags & 0x7900) | 0x0080 | rcode,  # QR, opcode, RD, RA
                         len(questions), len(answers), 0, 0)
    echoed = message[12:questions[-1].end] if questions else b""
    records = b"".join(struct.pack("!HHHIH", 0xC000 | question.offset, QTYPE_A, QCLASS_IN, DNS_TTL_S, 4)
                       + socket.inet_aton(address) for question, address in answers)
    return header + echoed + records


class Relay:
    """The Wisp relay (and DNS answerer) on loopback; start() serves it from a thread.

    `secret` and `port` (the bound one, once started) are attributes; `streams_opened`,
    `streams_refused` and `dns_queries` count this run's traffic, for tests and diagnostics.
    """

    half_closed_idle_s = 120.0  # how long a half-closed stream may stay silent

    def __init__(self, origins: Iterable[str] = (), host: str = "127.0.0.1", port: int = 0,
                 secret: str | None = None, allow_no_origin: bool = False):
        if isinstance(origins, str) or not isinstance(origins, Iterable):
            raise InvalidOption(f"Relay(origins=) takes a list of page origins, not {origins!r}")
        try:
            loopback = isinstance(host, str) and ipaddress.IPv4Address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InvalidOption(f"Relay(host=) takes an IPv4 loopback address such as 127.0.0.1 (the relay "
                                f"serves this machine's pages only), not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidOption(f"Relay(port=) takes a port number (0-65535, 0: any free one), not {port!r}")
        if secret is not None and not (isinstance(secret, str) and re.fullmatch(r"[A-Za-z0-9_-]{16,}", secret)):
            raise InvalidOption("Relay(secret=) takes 16 or more of A-Z a-z 0-9 _ - (it goes in a URL path), "
                                "or None for a random one")
        if not isinstance(allow_no_origin, bool):
            raise InvalidOption(f"Relay(allow_no_origin=) takes True or False, not {allow_no_origin!r}")
        self.secret = secret or secrets.token_urlsafe(24)
        self.port = port
        self._host, self._allow_no_origin = host, allow_no_origin
        self._lock = threading.Lock()
        self._origins: frozenset[str] = frozenset()
        for origin in origins:
            self.allow_origin(origin)
        self.streams_opened = self.dns_queries = 0
        self._refusals: collections.deque = collections.deque(maxlen=REFUSALS_KEPT)
        self._resolving = asyncio.Semaphore(MAX_RESOLVING)  # bound to the relay's loop on first use
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- any thread ----------------------------------------------------------------------
    @property
    def wisp_url(self) -> str:
        return f"wisp://{self._host}:{self.port}/{self.secret}/"

    @property
    def dns_url(self) -> str:
        return f"http://{self._host}:{self.port}/{self.secret}/dns-query"

    @property
    def streams_refused(self) -> list[tuple[str, int, str]]:
        """The latest streams the relay refused: (address, port, reason)."""
        with self._lock:
            return list(self._refusals)

    def allow_origin(self, origin: str) -> None:
        """Let pages of this origin ("http://127.0.0.1:8000") use the relay too."""
        if not isinstance(origin, str) or not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s]+", origin):
            raise InvalidOption(f"Relay: {origin!r} is not a page origin (scheme://host[:port], no path)")
        with self._lock:  # a new set each time: the loop's thread reads it without the lock
            self._origins = self._origins | {origin.lower()}

    def start(self) -> Relay:
        """Listen (in a daemon thread with its own event loop); returns once listening."""
        with self._lock:
            if self._closed:
                raise PyapptronError("this relay was closed: start a new Relay")
            if self._thread is not None:
                return self
            self._loop, self._stop = asyncio.new_event_loop(), asyncio.Event()
            listening: concurrent.futures.Future = concurrent.futures.Future()
            self._thread = threading.Thread(target=self._run, args=(listening,), daemon=True, name="pyapptron-relay")
            self._thread.start()
        try:
            self.port = listening.result()
        except BaseException:  # the bind's OSError: nothing runs, and start() may be tried again
            self._thread.join()
            self._thread = None
            raise
        return self

    def close(self) -> None:
        """Stop listening and end every stream and its target connection (idempotent)."""
        with self._lock:
            self._closed = True
        if self._thread is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # the loop has stopped already
            self._thread.join(15)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the loop's thread ---------------------------------------------------------------
    def _run(self, listening: concurrent.futures.Future) -> None:
        loop = self._loop
        try:
            loop.run_until_complete(self._serve(listening))
        finally:
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.wait(leftover))
            loop.close()  # a getaddrinfo still running in the executor is not waited for

    async def _serve(self, listening: concurrent.futures.Future) -> None:
        try:
            async with serve(self._serve_wisp, self._host, self.port, process_request=self._gate,
                             max_size=1 << 20, compression=None) as server:
                listening.set_result(server.sockets[0].getsockname()[1])
                await self._stop.wait()
        except BaseException as exc:
            if listening.done():
                raise
            listening.set_exception(exc)

    def _note_refusal(self, address: str, port: int, reason: str) -> None:
        log.info("refused a guest's stream to %s:%s: %s", address, port, reason)
        with self._lock:
            self._refusals.append((address, port, reason))

    async def _gate(self, connection, request) -> Response | None:
        """Secret, Origin and policy; answers DNS queries itself, lets Wisp upgrade."""
        path, _, query = request.path.partition("?")
        parts = path.split("/")
        origins = request.headers.get_all("Origin")
        if (len(parts) != 3 or parts[0] or parts[2] not in ("", "dns-query")
                or not hmac.compare_digest(parts[1].encode("utf-8", "replace"), self.secret.encode())):
            return self._refuse(connection, origins, 403, "wrong path or secret")
        if not origins and not self._allow_no_origin:
            return self._refuse(connection, origins, 403, "no Origin: only the host's own pages may use this relay")
        if len(origins) > 1 or (origins and origins[0] not in self._origins):
            return self._refuse(connection, origins, 403, f"origin {', '.join(origins)} is not allowed")
        try:
            network = Network.from_query(query)
        except InvalidOption as exc:
            return self._refuse(connection, origins, 400, str(exc))
        if parts[2] == "dns-query":
            return await self._answer_dns(connection, origins, network, query)
        return None  # the WebSocket handshake goes on; _serve_wisp reads the policy again

    def _refuse(self, connection, origins: list[str], status: int, reason: str) -> Response:
        log.info("refused a request from %s: %s", ", ".join(origins) or "no origin", reason)
        return connection.respond(status, reason + "\n")

    async def _answer_dns(self, connection, origins: list[str], network: Network, query: str) -> Response:
        encoded = parse_qs(query).get("dns", [""])[-1]
        try:
            message = urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            query_id, flags, questions = parse_dns_query(message)
        except ValueError as exc:
            return self._refuse(connection, origins, 400, f"malformed DNS query: {exc}")
        rcode, answers = 0, []
        if flags & 0x7800:  # an opcode other than QUERY
            rcode, questions = RCODE_NOTIMP, []
        elif len(questions) != 1:  # what resolvers send; more would be work for nothing
            rcode, questions = RCODE_FORMERR, []
        for question in questions:
            if question.type == QTYPE_A and question.klass == QCLASS_IN:  # others: no records, so clients ask A
                code, addresses = await self._resolve(network, question.name)
                rcode = rcode or code
                answers += [(question, address) for address in addresses]
        body = encode_dns_response(query_id, flags, questions, message, rcode, answers)
        self.dns_queries += 1
        headers = Headers([("Connection", "close"), ("Content-Type", "application/dns-message"),
                           ("Content-Length", str(len(body))),
                           ("Cross-Origin-Resource-Policy", "cross-origin")])  # cross-origin-isolated pages read it
        if origins:
            headers["Access-Control-Allow-Origin"], headers["Vary"] = origins[0], "Origin"
        return Response(200, "OK", headers, body)

    async def _resolve(self, network: Network, name: str) -> tuple[int, list[str]]:
        """(rcode, IPv4 addresses) for an A question under this policy."""
        fixed = dns_answer_for(network, name)
        if fixed is not None:
            return 0, [fixed]
        if not network.internet:
            return RCODE_NXDOMAIN, []
        try:
            async with self._resolving:
                infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                    name, None, family=socket.AF_INET, type=socket.SOCK_STREAM), DNS_TIMEOUT_S)
        except socket.gaierror as exc:
            return (RCODE_NXDOMAIN if exc.errno in _NOT_FOUND else RCODE_SERVFAIL), []
        except Exception:  # timed out, or a name the resolver will not take
            return RCODE_SERVFAIL, []
        # Loopback answers are given too: it is the connect that the policy refuses.
        return 0, list(dict.fromkeys(info[4][0] for info in infos))

    async def _serve_wisp(self, ws) -> None:
        await _WispSession(self, ws, Network.from_query(ws.request.path.partition("?")[2])).run()


class _Stream:
    def __init__(self, stream_id: int):
        self.id = stream_id
        self.inbound: asyncio.Queue = asyncio.Queue()  # guest -> target; QUEUE_LIMIT bounds it
        self.guest_closed = False  # the client sent CLOSE (the guest's FIN or RST)
        self.idle_deadline: float | None = None  # once half-closed: when silence ends it
        self.closed = False  # the relay sent CLOSE: nothing more goes out on it


class _WispSession:
    """One page's WebSocket: its streams and their target connections."""

    def __init__(self, relay: Relay, ws, network: Network):
        self.relay, self.ws, self.network = relay, ws, network
        self.streams: dict[int, _Stream] = {}
        self.tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        try:
            await self.ws.send(struct.pack("<BII", CONTINUE, 0, QUEUE_PACKETS))  # each new stream's budget
            async for message in self.ws:
                if isinstance(message, bytes) and len(message) >= 5:
                    self._receive(message[0], struct.unpack_from("<I", message, 1)[0], message[5:])
        except ConnectionClosed:
            pass
        finally:  # the page is gone: so are its streams and their target connections
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def _receive(self, kind: int, stream_id: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        if kind == CONNECT:
            if stream is None and stream_id != 0:  # a live stream's id again is a client bug: ignored
                stream = self.streams[stream_id] = _Stream(stream_id)
                if len(self.streams) > MAX_STREAMS:
                    self.relay._note_refusal("-", 0, f"more than {MAX_STREAMS} streams open at once")
                    self._spawn(self._end_stream(stream, CLOSE_BLOCKED))
                else:
                    self._spawn(self._run_stream(stream, payload))
        elif stream is None or stream.guest_closed:
            return  # late frames for a stream that is over
        elif kind == DATA:
            if stream.inbound.qsize() < QUEUE_LIMIT:
                stream.inbound.put_nowait(payload)
            else:  # closed from a task: run() must keep reading to see the client's answer
                self._spawn(self.ws.close(1008, "the client ignored the relay's flow control (CONTINUE)"))
                self.streams.clear()
        elif kind == CLOSE:
            stream.guest_closed = True
            stream.inbound.put_nowait(_GUEST_CLOSED)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_stream(self, stream: _Stream, connect: bytes) -> None:
        try:
            reason = await self._relay_stream(stream, connect)
        except ConnectionClosed:
            return  # the page went away; run() cleans up
        await self._end_stream(stream, reason)

    async def _end_stream(self, stream: _Stream, reason: int) -> None:
        try:
            stream.closed = True
            self.streams.pop(stream.id, None)
            await self.ws.send(struct.pack("<BIB", CLOSE, stream.id, reason))
        except ConnectionClosed:
            pass  # the page went away; run() cleans up

    async def _relay_stream(self, stream: _Stream, connect: bytes) -> int:
        """Open the stream's target and copy both ways; the CLOSE reason."""
        if len(connect) < 3:
            return CLOSE_INVALID
        port, address = struct.unpack_from("<H", connect, 1)[0], connect[3:].decode("utf-8", "replace")
        try:
            if connect[0] != TCP:
                raise Refused(f"{'UDP' if connect[0] == UDP else f'stream type {connect[0]}'} is not relayed")
            target = decide(self.network, address, port)
        except Refused as exc:
            self.relay._note_refusal(address, port, str(exc))
            return CLOSE_BLOCKED if connect[0] == TCP else CLOSE_INVALID
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*target), CONNECT_TIMEOUT_S)
        except TimeoutError:  # before OSError, which it is
            return CLOSE_TIMED_OUT
        except ConnectionRefusedError:
            return CLOSE_REFUSED
        except OSError as exc:
            log.debug("could not connect to %s:%s: %s", address, port, exc)
            return CLOSE_UNREACHABLE if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else CLOSE_NETWORK_ERROR
        peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        if target[0] != "127.0.0.1" and peer and local and peer[0] == local[0]:
            # One of the host's own addresses (its LAN or public IP): its services are the
            # host's, reached only through host_ports.
            writer.close()
            self.relay._note_refusal(address, port, f"{address} is this host; its ports are reached "
                                     "through host.pyapptron.internal (host_ports) only")
            return CLOSE_BLOCKED
        self.relay.streams_opened += 1
        upstream = asyncio.create_task(self._upstream(stream, writer))
        try:
            return await self._downstream(stream, reader)
        finally:
            upstream.cancel()
            writer.close()
            await asyncio.gather(upstream, return_exceptions=True)

    async def _upstream(self, stream: _Stream, writer: asyncio.StreamWriter) -> None:
        """Guest -> target, in order, refreshing the guest's budget as packets leave."""
        sent = 0
        try:
            while (packet := await stream.inbound.get()) is not _GUEST_CLOSED:
                writer.write(packet)
                await writer.drain()
                sent += 1
                if sent % CONTINUE_EVERY == 0 and not stream.guest_closed:  # it sends no more after CLOSE
                    free = max(0, QUEUE_PACKETS - stream.inbound.qsize())
                    await self._send(stream, CONTINUE, struct.pack("<I", free))
            writer.write_eof()  # the guest's FIN: its reply still comes back
            stream.idle_deadline = asyncio.get_running_loop().time() + self.relay.half_closed_idle_s
        except OSError:
            writer.transport.abort()  # the target is gone: the reader sees it and the stream ends

    async def _downstream(self, stream: _Stream, reader: asyncio.StreamReader) -> int:
        """Target -> guest until the target closes (or a half-closed stream stays silent)."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = stream.idle_deadline
            wait = self.relay.half_closed_idle_s if deadline is None else deadline - loop.time()
            if wait <= 0:
                return CLOSE_TIMED_OUT
            try:
                async with asyncio.timeout(wait) as timer:
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                if timer.expired():
                    continue  # look at the deadline again: the guest may have closed meanwhile
                return CLOSE_NETWORK_ERROR
            except OSError:
                return CLOSE_NETWORK_ERROR
            if not data:
                return CLOSE_VOLUNTARY
            await self._send(stream, DATA, data)  # awaited: a slow page slows the target down
            if stream.idle_deadline is not None:
                stream.idle_deadline = loop.time() + self.relay.half_closed_idle_s

    async def _send(self, stream: _Stream, kind: int, payload: bytes) -> None:
        if not stream.closed:  # v86 throws on a frame for a stream it has closed
            await self.ws.send(struct.pack("<BI", kind, stream.id) + payload)
