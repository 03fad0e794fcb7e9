"""Unit tests (CPython, real sockets on loopback): the Wisp relay the host runs for its
pages (pyapptron/host/relay.py). A small Wisp v1 client written here plays v86, and
services on 127.0.0.1 play the host's own servers and the guest's targets."""

import asyncio
import base64
import contextlib
import ipaddress
import os
import socket
import struct
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pyapptron.errors import InvalidOption, PyapptronError
from pyapptron.host.relay import Relay, encode_dns_response, parse_dns_query
from pyapptron.network import GATEWAY_IP, HOST_NAME, Network, Refused, decide

ORIGIN = "http://127.0.0.1:8123"
CONNECT, DATA, CONTINUE, CLOSE = 1, 2, 3, 4
BLOCKED, INVALID, REFUSED, TIMED_OUT, VOLUNTARY = 0x48, 0x41, 0x44, 0x43, 0x02
WAIT_S = 10  # a backstop only: every wait ends as soon as its condition holds


@pytest.fixture
def relay():
    with Relay([ORIGIN]) as made:
        yield made


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario, 30))


class Wisp:
    """A Wisp v1 client that keeps to the relay's flow control, as v86 does."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: dict[int, asyncio.Queue] = {}
        self.budget: dict[int, int] = {}
        self.continues: dict[int, list[int]] = {}
        self.budget_changed = asyncio.Event()
        self.initial_budget = None
        self._reader = None

    @classmethod
    @contextlib.asynccontextmanager
    async def dial(cls, relay, network=Network(), origin=ORIGIN):
        async with connect(relay.wisp_url.replace("wisp://", "ws://") + "?" + network.to_query(),
                           origin=origin, max_size=None) as ws:
            client = cls(ws)
            first = await asyncio.wait_for(ws.recv(), WAIT_S)
            assert first == struct.pack("<BII", CONTINUE, 0, 128)  # the budget, before anything else
            client.initial_budget = 128
            client._reader = asyncio.create_task(client._read())
            try:
                yield client
            finally:
                client._reader.cancel()

    async def _read(self):
        async for frame in self.ws:
            kind, stream_id = struct.unpack_from("<BI", frame)
            if kind == CONTINUE:
                assert stream_id in self.budget, "CONTINUE for a stream the client does not know"
                (free,) = struct.unpack_from("<I", frame, 5)
                self.budget[stream_id] = free
                self.continues[stream_id].append(free)
                self.budget_changed.set()
            else:
                assert stream_id in self.frames, f"frame {kind} for a stream that is over"
                if kind == CLOSE:
                    self.budget.pop(stream_id)
                await self.frames[stream_id].put((kind, frame[5:]))
                if kind == CLOSE:
                    del self.frames[stream_id]

    async def open(self, stream_id, address, port, stream_type=1):
        self.frames[stream_id] = asyncio.Queue()
        self.budget[stream_id] = self.initial_budget
        self.continues[stream_id] = []
        await self.ws.send(struct.pack("<BIBH", CONNECT, stream_id, stream_type, port) + address.encode())
        return self.frames[stream_id]

    async def send(self, stream_id, data):
        while self.budget.get(stream_id, 1) == 0:
            self.budget_changed.clear()
            await asyncio.wait_for(self.budget_changed.wait(), WAIT_S)
        self.budget[stream_id] -= 1
        await self.ws.send(struct.pack("<BI", DATA, stream_id) + data)

    async def close(self, stream_id):
        await self.ws.send(struct.pack("<BIB", CLOSE, stream_id, VOLUNTARY))


async def read_to_close(frames):
    """What a stream carried to the client, and the relay's CLOSE reason."""
    received = bytearray()
    while True:
        kind, payload = await asyncio.wait_for(frames.get(), WAIT_S)
        if kind == CLOSE:
            return bytes(received), payload[0]
        received += payload


@contextlib.asynccontextmanager
async def tcp_service(handle, host="127.0.0.1"):
    """A server on a free port; yields (port, the list of its accepted connections' peers)."""
    accepted = []

    async def serve_one(reader, writer):
        accepted.append(writer.get_extra_info("peername"))
        try:
            await handle(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve_one, host, 0)
    async with server:
        yield server.sockets[0].getsockname()[1], accepted


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def reply_after_eof(reader, writer):
    received = await reader.read()  # up to the guest's EOF
    writer.write(b"got %d bytes" % len(received))
    await writer.drain()


# -- the gate ------------------------------------------------------------------------------
def status_of_dial(url, origin=ORIGIN):
    async def dial():
        try:
            async with connect(url, origin=origin):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code
    return run(dial())


def test_the_gate_wants_the_secret_an_allowed_origin_and_a_good_policy(relay):
    url = relay.wisp_url.replace("wisp://", "ws://")
    assert status_of_dial(url.replace(relay.secret, "guessed-secret-guessed")) == 403
    assert status_of_dial(url + "more/") == 403
    assert status_of_dial(url, origin="http://evil.example") == 403
    assert status_of_dial(url, origin=None) == 403  # no Origin: only with allow_no_origin=True
    assert status_of_dial(url + "?ports=22,abc") == 400
    assert status_of_dial(url + "?ports=70000") == 400
    assert status_of_dial(url) == 400  # no policy: a URL that lost its query must not mean "anything"
    assert status_of_dial(url + "?internet=1") == 400
    policy = "?" + Network(host_ports=(8000,)).to_query()
    assert status_of_dial(url + policy) == 101
    assert status_of_dial(url + policy, origin="http://localhost:9000") == 403
    relay.allow_origin("http://localhost:9000")  # at run time, from another thread
    assert status_of_dial(url + policy, origin="http://localhost:9000") == 101


def test_clients_without_an_origin_only_when_allowed():
    with Relay(allow_no_origin=True) as relay:
        url = relay.wisp_url.replace("wisp://", "ws://") + "?" + Network().to_query()
        assert status_of_dial(url, origin=None) == 101
        assert status_of_dial(url, origin=ORIGIN) == 403  # an Origin must still be an allowed one


def test_bad_constructor_arguments_say_what_is_wrong():
    for kwargs, message in [({"host": "0.0.0.0"}, "loopback"), ({"host": "localhost"}, "loopback"),
                            ({"port": -1}, "port"), ({"port": True}, "port"), ({"secret": "short"}, "secret"),
                            ({"origins": ORIGIN}, "list of page origins"),
                            ({"origins": ["http://127.0.0.1:8000/page.html"]}, "not a page origin"),
                            ({"origins": ["null"]}, "not a page origin"), ({"allow_no_origin": 1}, "True or False")]:
        with pytest.raises(InvalidOption, match=message):
            Relay(**kwargs)


def test_urls_secret_close_twice_and_no_restart():
    relay = Relay([ORIGIN], secret="a-fixed-secret-for-tests").start()
    assert relay.port > 0
    assert relay.wisp_url == f"wisp://127.0.0.1:{relay.port}/a-fixed-secret-for-tests/"
    assert relay.dns_url == f"http://127.0.0.1:{relay.port}/a-fixed-secret-for-tests/dns-query"
    assert len(Relay().secret) >= 32 and Relay().secret != Relay().secret
    relay.close()
    relay.close()
    with pytest.raises(PyapptronError, match="closed"):
        relay.start()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", relay.port), timeout=WAIT_S):
        pass  # nothing listens any more


def test_a_port_in_use_fails_start_and_leaves_nothing_running():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        relay = Relay(port=port)
        with pytest.raises(OSError):
            relay.start()
    with relay.start():  # the same relay, once the port is free
        assert relay.port == port


# -- streams -------------------------------------------------------------------------------
def test_the_gateway_reaches_an_allowed_host_port_byte_exact_with_flow_control(relay):
    payload = os.urandom(1024 * 1024)

    async def scenario():
        async with tcp_service(echo) as (port, accepted), Wisp.dial(relay, Network(host_ports=(port,))) as wisp:
            frames = await wisp.open(1, GATEWAY_IP, port)

            async def upload():
                for start in range(0, len(payload), 1460):  # MTU-sized, as v86 sends them
                    await wisp.send(1, payload[start:start + 1460])
                await wisp.close(1)  # the echo server sees EOF, closes, and the relay says so

            sent = asyncio.create_task(upload())
            received, reason = await read_to_close(frames)
            await sent
            return received, reason, wisp.continues[1], accepted

    received, reason, continues, accepted = run(scenario())
    assert received == payload and reason == VOLUNTARY
    # 719 packets through a budget of 128: the client had to wait for the relay's CONTINUEs.
    assert len(continues) >= (len(payload) // 1460 - 128) // 32
    assert all(0 <= free <= 128 for free in continues)
    assert accepted and accepted[0][0] == "127.0.0.1"
    assert relay.streams_opened == 1


def test_a_host_port_that_is_not_allowed_is_blocked_and_nothing_connects(relay):
    async def scenario():
        async with tcp_service(echo) as (port, accepted), Wisp.dial(relay, Network(host_ports=(port + 1,))) as wisp:
            by_address = await read_to_close(await wisp.open(1, GATEWAY_IP, port))
            by_name = await read_to_close(await wisp.open(3, HOST_NAME, port))
            return by_address, by_name, list(accepted), port

    by_address, by_name, accepted, port = run(scenario())
    assert by_address == (b"", BLOCKED) and by_name == (b"", BLOCKED)
    assert accepted == [] and relay.streams_opened == 0
    address, refused_port, reason = relay.streams_refused[0]
    assert (address, refused_port) == (GATEWAY_IP, port) and "not allowed" in reason


def test_host_only_blocks_public_addresses_and_internet_mode_blocks_loopback_and_private(relay):
    async def reasons(network, targets):
        async with Wisp.dial(relay, network) as wisp:
            return [(await read_to_close(await wisp.open(n, address, 80)))[1]
                    for n, address in enumerate(targets, 1)]

    assert run(reasons(Network(internet=False), ["93.184.215.14", "1.1.1.1"])) == [BLOCKED] * 2
    assert run(reasons(Network(), ["127.0.0.1", "10.0.0.1", "::ffff:127.0.0.1", "localhost",
                                   "169.254.169.254", "0.0.0.0"])) == [BLOCKED] * 6
    assert relay.streams_opened == 0 and len(relay.streams_refused) == 8


def private_address_of_this_machine():
    """An address of this machine in a private range, if it has one (no packet is sent)."""
    candidates = set()
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 9))
        candidates.add(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        candidates.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    for address in sorted(candidates):
        ip = ipaddress.ip_address(address)
        if ip.is_private and not ip.is_loopback and not ip.is_link_local:
            return address
    return None


def test_private_addresses_only_with_allow_private_and_never_the_hosts_own(relay):
    assert decide(Network(allow_private=True), "10.1.2.3", 80) == ("10.1.2.3", 80)
    with pytest.raises(Refused, match="private"):
        decide(Network(), "10.1.2.3", 80)
    with pytest.raises(Refused):  # loopback stays out, whatever the options
        decide(Network(allow_private=True), "127.0.0.1", 80)
    address = private_address_of_this_machine()
    if address is None:
        return  # decide() above is the whole of the policy; this machine has no private address

    async def scenario():
        async with tcp_service(echo, host=address) as (port, accepted):
            async with Wisp.dial(relay, Network(allow_private=True)) as wisp:
                frames = await wisp.open(1, address, port)
                await wisp.send(1, b"hello")
                await wisp.close(1)
                allowed = await read_to_close(frames)
            async with Wisp.dial(relay, Network()) as wisp:
                blocked = await read_to_close(await wisp.open(1, address, port))
            return allowed, blocked, len(accepted)

    # The address is this machine's own: its services are the host's, reached through
    # host_ports only, so even allow_private does not open them.
    assert run(scenario()) == ((b"", BLOCKED), (b"", BLOCKED), 1)
    assert any(a == address and "is this host" in reason for a, _, reason in relay.streams_refused)


def test_a_client_close_half_closes_and_the_reply_still_arrives(relay):
    async def scenario():
        async with tcp_service(reply_after_eof) as (port, _), Wisp.dial(relay, Network(host_ports=(port,))) as wisp:
            frames = await wisp.open(1, GATEWAY_IP, port)
            await wisp.send(1, b"x" * 1000)
            await wisp.send(1, b"y" * 234)
            await wisp.close(1)  # what v86 sends for the guest's FIN
            return await read_to_close(frames)

    assert run(scenario()) == (b"got 1234 bytes", VOLUNTARY)


def test_a_half_closed_stream_that_stays_silent_is_ended(relay):
    relay.half_closed_idle_s = 0.2

    async def scenario():
        told, ended = asyncio.Event(), asyncio.Event()

        async def silent(reader, writer):
            await reader.read()  # the guest's EOF: then neither a reply nor a close
            await told.wait()
            # The relay's end is gone if a write meets its reset (a half-closed socket
            # shows nothing else); were it open, this would go on until the test's backstop.
            with contextlib.suppress(ConnectionError):
                while not writer.is_closing():
                    writer.write(b"late")
                    await writer.drain()
                    await asyncio.sleep(0.01)
            ended.set()

        async with tcp_service(silent) as (port, _), Wisp.dial(relay, Network(host_ports=(port,))) as wisp:
            frames = await wisp.open(1, GATEWAY_IP, port)
            await wisp.close(1)
            result = await read_to_close(frames)
            told.set()
            await asyncio.wait_for(ended.wait(), WAIT_S)
            return result

    assert run(scenario()) == (b"", TIMED_OUT)


def test_udp_is_invalid_and_a_closed_port_is_refused(relay):
    with socket.socket() as placeholder:  # a port that nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]

    async def scenario():
        async with Wisp.dial(relay, Network(host_ports=(53, closed_port))) as wisp:
            udp = await read_to_close(await wisp.open(1, GATEWAY_IP, 53, stream_type=2))
            refused = await read_to_close(await wisp.open(2, GATEWAY_IP, closed_port))
            return udp, refused

    assert run(scenario()) == ((b"", INVALID), (b"", REFUSED))


def test_when_the_page_goes_its_streams_target_connections_close(relay):
    async def scenario():
        closed = asyncio.Event()

        async def hold(reader, writer):
            writer.write(b"ready")
            await writer.drain()
            await reader.read()  # returns at the relay's EOF or close
            closed.set()

        async with tcp_service(hold) as (port, _):
            async with Wisp.dial(relay, Network(host_ports=(port,))) as wisp:
                frames = await wisp.open(1, GATEWAY_IP, port)
                assert await asyncio.wait_for(frames.get(), WAIT_S) == (DATA, b"ready")
            await asyncio.wait_for(closed.wait(), WAIT_S)  # the WebSocket ended with the stream open

    run(scenario())


def test_a_client_that_ignores_continue_is_disconnected(relay):
    async def scenario():
        done = asyncio.Event()

        async def never_read(reader, writer):
            await done.wait()  # a target that takes nothing: the relay's queue fills

        async with tcp_service(never_read) as (port, _), Wisp.dial(relay, Network(host_ports=(port,))) as wisp:
            wisp._reader.cancel()
            await wisp.open(1, GATEWAY_IP, port)
            with pytest.raises(ConnectionClosed) as info:
                for _ in range(10_000):  # no budget kept: 64 KiB packets, far past 128 of them
                    await wisp.ws.send(struct.pack("<BI", DATA, 1) + bytes(65536))
                # Compressed (permessage-deflate), all of them may leave before the relay
                # has read its 256th: its close then comes after the last send.
                while True:
                    await wisp.ws.recv()
            done.set()
            return info.value.rcvd.code

    assert run(scenario()) == 1008


# -- DNS -----------------------------------------------------------------------------------
def dns_query(name, qtype=1, query_id=0x1234):
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def ask(relay, message, network=Network(), origin=ORIGIN):
    """(status, headers, body) of a DoH GET, as the page's adapter sends it."""
    dns = base64.urlsafe_b64encode(message).rstrip(b"=").decode()
    request = urllib.request.Request(f"{relay.dns_url}?{network.to_query()}&dns={dns}",
                                     headers={"Origin": origin} if origin else {})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def answers_of(response):
    """(rcode, [IPv4 addresses]) of a DNS response to a one-question query."""
    _, flags, questions, count, _, _ = struct.unpack_from("!HHHHHH", response)
    offset = response.index(b"\0", 12) + 5
    addresses = []
    for _ in range(count):
        _, rtype, _, _, length = struct.unpack_from("!HHHIH", response, offset)
        assert rtype == 1 and length == 4
        addresses.append(socket.inet_ntoa(response[offset + 12:offset + 16]))
        offset += 16
    return flags & 0xF, addresses


def test_dns_codec_on_a_hand_built_query():
    query = dns_query(HOST_NAME, query_id=0xBEEF)
    query_id, flags, questions = parse_dns_query(query)
    assert (query_id, flags) == (0xBEEF, 0x0100)
    assert [(q.name, q.type, q.klass, q.offset, q.end) for q in questions] == [(HOST_NAME, 1, 1, 12, len(query))]
    response = encode_dns_response(query_id, flags, questions, query, 0, [(questions[0], "192.168.86.1")])
    rid, rflags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", response)
    assert (rid, rflags, qd, an, ns, ar) == (0xBEEF, 0x8180, 1, 1, 0, 0)  # QR, RD echoed, RA, NOERROR
    assert response[12:len(query)] == query[12:]  # the question as it came
    assert response[len(query):] == struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + bytes([192, 168, 86, 1])
    for bad in [b"", query[:11], query[:-2], query[:20], struct.pack("!HHHHHH", 1, 0x8000, 0, 0, 0, 0),
                query[:12] + b"\xc0\x0c" + query[-4:], query[:12] + b"\x03\xff\xfe\xfd\0" + query[-4:]]:
        with pytest.raises(ValueError):
            parse_dns_query(bad)


def test_dns_answers_under_the_page_policy(relay):
    status, headers, body = ask(relay, dns_query(HOST_NAME), Network(internet=False))
    assert status == 200 and headers["Content-Type"] == "application/dns-message"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert answers_of(body) == (0, [GATEWAY_IP])
    assert answers_of(ask(relay, dns_query("localhost"), Network(internet=False))[2]) == (3, [])  # NXDOMAIN
    # With the internet, names resolve for real; loopback answers are fine, the connect refuses them.
    assert answers_of(ask(relay, dns_query("localhost"), Network())[2]) == (0, ["127.0.0.1"])
    assert answers_of(ask(relay, dns_query(HOST_NAME, qtype=28))[2]) == (0, [])  # AAAA: empty, ask A
    assert relay.dns_queries == 4
    assert ask(relay, b"\x12\x34")[0] == 400
    assert ask(relay, dns_query(HOST_NAME), origin="http://evil.example")[0] == 403
    assert ask(relay, dns_query(HOST_NAME), Network(internet=False), origin=None)[0] == 403
    assert relay.dns_queries == 4


def test_a_dns_query_with_more_than_one_question_gets_formerr_and_no_lookups(relay):
    one = dns_query(HOST_NAME)
    question = one[12:]
    two = struct.pack("!HHHHHH", 0x4321, 0x0100, 2, 0, 0, 0) + question + question
    status, _, body = ask(relay, two)
    _, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", body)
    assert status == 200 and flags & 0xF == 1 and (qd, an) == (0, 0)


def test_a_guest_cannot_hold_more_than_max_streams_open(relay):
    from pyapptron.host.relay import MAX_STREAMS

    async def scenario():
        async with tcp_service(echo) as (port, accepted):
            async with Wisp.dial(relay, Network(internet=False, host_ports=(port,))) as wisp:
                opened = [await wisp.open(i, GATEWAY_IP, port) for i in range(1, MAX_STREAMS + 2)]
                return await read_to_close(opened[-1])

    assert run(scenario()) == (b"", BLOCKED)
    assert any(f"more than {MAX_STREAMS} streams" in reason for _, _, reason in relay.streams_refused)


def test_the_page_server_gives_the_relay_to_its_own_loopback_pages_only(tmp_path):
    import http.client
    import json

    from pyapptron.host.server import PageServer

    (tmp_path / "assets.json").write_text("{}")
    with PageServer(0, assets_dir=tmp_path, refresh=False) as server:
        def get(host):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT_S)
            connection.request("GET", "/pyapptron/relay.json", headers={"Host": host})
            response = connection.getresponse()
            return response.status, response.getheader("Cache-Control"), response.read().decode()

        status, cache, body = get(f"127.0.0.1:{server.port}")
        info = json.loads(body)
        assert status == 200 and cache == "no-store"
        assert info["wisp"].startswith("wisp://127.0.0.1:") and info["dns"].endswith("/dns-query")
        relay = server.relay()
        assert info["wisp"] == relay.wisp_url
        # A DNS-rebinding page (another name for 127.0.0.1) must not learn the secret.
        status, _, body = get(f"evil.example:{server.port}")
        assert status == 403 and relay.secret not in body
        status, _, _ = get(f"localhost:{server.port}")
        assert status == 200
        # the page's origin, as its browser names it, may dial the relay
        url = relay.wisp_url.replace("wisp://", "ws://") + "?" + Network().to_query()
        assert status_of_dial(url, origin=f"http://localhost:{server.port}") == 101
        assert status_of_dial(url, origin=f"http://evil.example:{server.port}") == 403
