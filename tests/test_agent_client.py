"""Unit tests (CPython) of the host side of the agent protocol, against a scripted fake agent.

The fake only checks framing and flow control; the real agent is tested natively in
test_agent_native.py and in the browser in test_browser_*.py.
"""

import asyncio
import struct

import pytest

from pyapptron import agent as A
from pyapptron.errors import AgentError, CommandTooLong


class FakeAgent:
    """Parses what the host writes, checks chunk rules, answers via client.feed()."""

    def __init__(self, window=15, chunk_size=4096):
        self.window = window
        self.chunk_size = chunk_size
        self.client = A.AgentClient(self.on_chunk)
        self.decoder = A.FrameDecoder()
        self.in_flight = 0  # chunks written by the host and not yet credited back
        self.frames = []
        self.auto_credit = True
        self.handler = None

    def hello(self):
        payload = struct.pack("<III", A.PROTOCOL_VERSION, self.window, self.chunk_size) + b"fake-1"
        self.client.feed(A.encode_frame(A.T_HELLO, 0, payload))

    def on_chunk(self, chunk):
        assert len(chunk) <= self.chunk_size, "a transport write larger than a guest buffer"
        self.in_flight += 1
        assert self.in_flight <= self.window, "the host overran the guest's receive buffers"
        for frame in self.decoder.feed(chunk):
            self.frames.append(frame)
            cost = A.chunk_cost(A.HEADER.size + len(frame.payload), self.chunk_size)
            if self.auto_credit:
                asyncio.get_running_loop().call_soon(self.credit, cost)
            if self.handler:
                asyncio.get_running_loop().call_soon(self.handler, frame)

    def credit(self, n):
        self.in_flight -= n
        self.client.feed(A.encode_frame(A.T_WINDOW, 0, struct.pack("<I", n)))

    def send(self, type_, id_, payload=b""):
        self.client.feed(A.encode_frame(type_, id_, payload))

    def error(self, id_, errno, message: bytes):
        self.send(A.T_ERROR, id_, struct.pack("<iI", errno, len(message)) + message)


def run(coro):
    return asyncio.run(coro)


def test_frame_decoder_handles_frames_split_anywhere():
    data = A.encode_frame(A.T_STDOUT, 7, b"hello") + A.encode_frame(A.T_EXIT, 7, struct.pack("<i", 3))
    for cut in range(len(data)):
        d = A.FrameDecoder()
        frames = d.feed(data[:cut]) + d.feed(data[cut:])
        assert [(f.type, f.id, f.payload) for f in frames] == [
            (A.T_STDOUT, 7, b"hello"), (A.T_EXIT, 7, struct.pack("<i", 3))]


def test_corrupt_stream_fails_pending_requests_with_agent_error():
    async def main():
        fake = FakeAgent()
        fake.hello()
        task = asyncio.ensure_future(fake.client.exec(["true"]))
        await asyncio.sleep(0)
        fake.client.feed(b"garbage-garbage-garbage")
        with pytest.raises(AgentError, match="corrupt frame"):
            await task
    run(main())


def test_exec_payload_layout_matches_protocol():
    payload = A.encode_exec(["/bin/sh", "-c", "echo hi"], env={"A": "1"}, cwd="/tmp", has_stdin=True)
    flags, argc = struct.unpack_from("<II", payload)
    assert flags == A.EXEC_STDIN | A.EXEC_ENV and argc == 3
    pos = 8
    args = []
    for _ in range(argc):
        s, pos = A.decode_str(payload, pos)
        args.append(s)
    assert args == [b"/bin/sh", b"-c", b"echo hi"]
    (envc,) = struct.unpack_from("<I", payload, pos)
    env, pos = A.decode_str(payload, pos + 4)
    cwd, pos = A.decode_str(payload, pos)
    assert (envc, env, cwd, pos) == (1, b"A=1", b"/tmp", len(payload))


@pytest.mark.parametrize("bad", [["a\0b"], []])
def test_exec_rejects_nul_bytes_and_empty_argv(bad):
    with pytest.raises(ValueError):
        A.encode_exec(bad)


def test_exec_collects_separate_streams_and_status():
    async def main():
        fake = FakeAgent()

        def handler(frame):
            if frame.type == A.T_EXEC:
                fake.send(A.T_STDOUT, frame.id, b"out")
                fake.send(A.T_STDERR, frame.id, b"err")
                fake.send(A.T_STDOUT, frame.id, b"\x00\xff")
                fake.send(A.T_EXIT, frame.id, struct.pack("<i", 3))

        fake.handler = handler
        fake.hello()
        r = await fake.client.exec(["x"])
        assert (r.status, r.stdout, r.stderr) == (3, b"out\x00\xff", b"err")
    run(main())


def test_requests_wait_for_hello_before_sending():
    async def main():
        fake = FakeAgent()
        task = asyncio.ensure_future(fake.client.exec(["x"]))
        await asyncio.sleep(0.01)
        assert fake.frames == []
        fake.handler = lambda f: fake.send(A.T_EXIT, f.id, struct.pack("<i", 0)) if f.type == A.T_EXEC else None
        fake.hello()
        assert (await task).status == 0
    run(main())


def test_large_stdin_respects_window_and_arrives_whole():
    async def main():
        fake = FakeAgent(window=4)
        received = bytearray()

        def handler(frame):
            if frame.type == A.T_STDIN:
                received.extend(frame.payload)
            elif frame.type == A.T_STDIN_EOF:
                fake.send(A.T_EXIT, frame.id, struct.pack("<i", 0))

        fake.handler = handler
        fake.hello()
        data = bytes(range(256)) * 4000  # ~1 MB
        await fake.client.exec(["cat"], input=data)
        assert bytes(received) == data
    run(main())


def test_host_stops_sending_when_credit_runs_out():
    async def main():
        fake = FakeAgent(window=3)
        fake.auto_credit = False
        fake.hello()
        task = asyncio.ensure_future(fake.client.write_file("/f", b"x" * 20000))
        await asyncio.sleep(0.05)
        assert fake.in_flight == 3 and not task.done()  # blocked, not dropped
        task.cancel()
    run(main())


def test_request_larger_than_window_is_refused_clearly():
    async def main():
        fake = FakeAgent(window=2)
        fake.hello()
        with pytest.raises(CommandTooLong, match="write long scripts to a file"):
            await fake.client.exec(["sh", "-c", "x" * 10000])
    run(main())


def test_error_frame_maps_linux_errno_to_builtin_exception():
    async def main():
        fake = FakeAgent()
        msg = b"No such file or directory"

        def handler(f):
            path, end = A.decode_str(f.payload, 0)  # a length-prefixed string, per PROTOCOL.md
            assert (path, end) == (b"/missing", len(f.payload))
            fake.error(f.id, 2, msg)

        fake.handler = handler
        fake.hello()
        with pytest.raises(FileNotFoundError) as info:
            await fake.client.read_file("/missing")
        assert info.value.filename == "/missing"
        fake.handler = lambda f: fake.error(f.id, 21, b"no")
        with pytest.raises(IsADirectoryError):
            await fake.client.read_file("/etc")
    run(main())


def test_list_dir_decodes_entries_sorted():
    async def main():
        fake = FakeAgent()

        def entry(kind, name, size=0):
            return struct.pack("<BIQq", ord(kind), 0o100644, size, 1700000000) + struct.pack("<I", len(name)) + name

        def handler(frame):
            fake.send(A.T_RDATA, frame.id, entry("f", b"b.txt", 5) + entry("d", b"a"))
            fake.send(A.T_RDATA, frame.id, entry("l", b"c"))
            fake.send(A.T_END, frame.id)

        fake.handler = handler
        fake.hello()
        entries = await fake.client.list_dir("/x")
        assert [(e.name, e.type, e.size) for e in entries] == [("a", "dir", 0), ("b.txt", "file", 5), ("c", "symlink", 0)]
        assert entries[0].is_dir() and entries[1].is_file() and entries[2].is_symlink()
    run(main())


def test_concurrent_execs_never_mix_outputs():
    async def main():
        fake = FakeAgent()

        def handler(frame):
            if frame.type == A.T_EXEC:
                tag = A.decode_str(frame.payload, 8)[0]
                for _ in range(3):
                    fake.send(A.T_STDOUT, frame.id, tag)
                fake.send(A.T_EXIT, frame.id, struct.pack("<i", 0))

        fake.handler = handler
        fake.hello()
        results = await asyncio.gather(*(fake.client.exec([f"t{i}"]) for i in range(20)))
        assert [r.stdout for r in results] == [f"t{i}".encode() * 3 for i in range(20)]
    run(main())


def test_unsolicited_hello_fails_requests_in_flight():
    async def main():
        fake = FakeAgent()
        fake.hello()
        task = asyncio.ensure_future(fake.client.exec(["sleep"]))
        await asyncio.sleep(0.01)
        fake.hello()  # the agent restarted
        with pytest.raises(AgentError, match="restarted"):
            await task
    run(main())


def test_protocol_version_mismatch_says_to_rebuild():
    async def main():
        fake = FakeAgent()
        fake.client.feed(A.encode_frame(A.T_HELLO, 0, struct.pack("<III", 99, 15, 4096)))
        with pytest.raises(AgentError, match="rebuild the image"):
            await fake.client.exec(["x"])
    run(main())


def test_protocol_mismatch_at_boot_fails_wait_ready_at_once():
    async def main():
        fake = FakeAgent()
        waiter = asyncio.ensure_future(fake.client.wait_ready())
        await asyncio.sleep(0)
        fake.client.feed(A.encode_frame(A.T_HELLO, 0, struct.pack("<III", 99, 15, 4096)))
        with pytest.raises(AgentError, match="rebuild the image"):
            await asyncio.wait_for(waiter, 1)
    run(main())


def test_a_request_failed_by_an_agent_restart_is_never_sent_late():
    async def main():
        fake = FakeAgent(window=1)
        fake.auto_credit = False
        fake.hello()
        first = asyncio.ensure_future(fake.client.exec(["a"]))
        second = asyncio.ensure_future(fake.client.exec(["b"]))  # waits for credit
        await asyncio.sleep(0.01)
        fake.in_flight = 0
        fake.hello()  # the agent restarted: fresh credit, both requests lost
        for task in (first, second):
            with pytest.raises(AgentError, match="restarted"):
                await task
        await asyncio.sleep(0.01)
        assert [A.decode_str(f.payload, 8)[0] for f in fake.frames if f.type == A.T_EXEC] == [b"a"]
    run(main())


def test_a_command_that_cannot_start_does_not_wait_for_all_its_input():
    async def main():
        fake = FakeAgent()
        msg = b"exec nope: No such file or directory"
        fake.handler = lambda f: fake.error(f.id, 2, msg) if f.type == A.T_EXEC else None
        fake.hello()
        with pytest.raises(FileNotFoundError):
            await asyncio.wait_for(fake.client.exec(["nope"], input=b"x" * 50_000_000), 2)
        assert sum(f.type == A.T_STDIN for f in fake.frames) < 20
    run(main())


def test_bad_cwd_error_names_the_directory():
    async def main():
        fake = FakeAgent()
        msg = b"chdir /nope: No such file or directory"
        fake.handler = lambda f: fake.error(f.id, 2, msg)
        fake.hello()
        with pytest.raises(FileNotFoundError) as info:
            await fake.client.exec(["ls"], cwd="/nope")
        assert info.value.filename == "/nope"
    run(main())


def test_corrupt_stream_resyncs_on_the_agents_next_hello():
    async def main():
        fake = FakeAgent()
        fake.hello()
        fake.client.feed(b"\x00garbage that is not a frame at all")
        assert fake.frames[-1].type == A.T_HELLO  # the host asked the agent to start over
        fake.client.feed(b"more junk" + A.encode_frame(A.T_STDOUT, 5, b"stale"))
        fake.handler = lambda f: fake.send(A.T_EXIT, f.id, struct.pack("<i", 0)) if f.type == A.T_EXEC else None
        task = asyncio.ensure_future(fake.client.exec(["x"]))
        await asyncio.sleep(0.01)
        assert not task.done()  # waits for the agent's HELLO
        fake.in_flight = 0
        fake.hello()
        assert (await asyncio.wait_for(task, 1)).status == 0
    run(main())


def test_write_file_always_ends_with_data_end_even_when_cancelled_or_refused():
    async def main():
        fake = FakeAgent()
        fake.hello()
        task = asyncio.ensure_future(fake.client.write_file("/f", b"x" * 200_000))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0.05)
        assert fake.frames[-1].type == A.T_DATA_END
        msg = b"no"
        fake.handler = lambda f: fake.error(f.id, 13, msg) if f.type == A.T_WRITE_FILE else None
        with pytest.raises(PermissionError):
            await fake.client.write_file("/ro", b"y" * 100_000)
        await asyncio.sleep(0.01)
        assert fake.frames[-1].type == A.T_DATA_END
    run(main())


def test_one_malformed_frame_fails_only_its_request():
    async def main():
        fake = FakeAgent()
        fake.hello()
        a = asyncio.ensure_future(fake.client.exec(["a"]))
        b = asyncio.ensure_future(fake.client.exec(["b"]))
        await asyncio.sleep(0.01)
        fake.client.feed(A.encode_frame(A.T_EXIT, 1, b"\x01") + A.encode_frame(A.T_EXIT, 2, struct.pack("<i", 4)))
        with pytest.raises(AgentError, match="malformed"):
            await a
        assert (await b).status == 4
    run(main())
