#!/usr/bin/env python3
"""The Python layer's own cost on the hot paths, in CPython, without an emulator.

    python3 bench/python_paths.py [--mb 10] [--out FILE]

- agent: write_file / read_file / a command's stdout of N MB through AgentClient, with an
  in-process fake agent that answers at once (the transport costs nothing), so MB/s is
  what framing, credit and copies in Python allow: the ceiling the agent channel can
  reach on any engine.
- console: N MB of console output fed in 4 KiB chunks while wait_for waits for a pattern
  that comes only at the end (a terminal transcript of a build, say), and the cost of
  one feed with a waiter on a nearly full buffer.
Prints and saves JSON (default bench/results/python_paths.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pyapptron import agent as A  # noqa: E402
from pyapptron.console import Console  # noqa: E402

CHUNK = 64 * 1024  # the shared-memory channel's chunk size (the agent announces it)
WINDOW = 32


class FakeAgent:
    """Answers frames as the guest agent would, in the same task, with no transport."""

    def __init__(self, client: A.AgentClient, files: dict[str, bytes]):
        self.client = client
        self.files = files
        self.decoder = A.FrameDecoder()
        self.writing: dict[int, tuple[str, bytearray]] = {}

    def write(self, chunk) -> None:
        loop = asyncio.get_running_loop()
        for frame in self.decoder.feed(bytes(chunk)):
            for reply in self.answer(frame):
                loop.call_soon(self.client.feed, reply)

    def answer(self, f: A.Frame):
        window = A.encode_frame(A.T_WINDOW, 0, struct.pack("<I", A.chunk_cost(len(f.payload) + A.HEADER.size, CHUNK)))
        yield window
        if f.type == A.T_WRITE_FILE:
            (n,) = struct.unpack_from("<I", f.payload, 4)
            self.writing[f.id] = (bytes(f.payload[8:8 + n]).decode(), bytearray())
        elif f.type == A.T_DATA:
            self.writing[f.id][1].extend(f.payload)
        elif f.type == A.T_DATA_END:
            path, data = self.writing.pop(f.id)
            self.files[path] = bytes(data)
            yield A.encode_frame(A.T_END, f.id)
        elif f.type == A.T_READ_FILE:
            (n,) = struct.unpack_from("<I", f.payload)
            yield from self.stream(A.T_RDATA, f.id, self.files[bytes(f.payload[4:4 + n]).decode()])
            yield A.encode_frame(A.T_END, f.id)
        elif f.type == A.T_EXEC:
            yield from self.stream(A.T_STDOUT, f.id, self.files["/stdout"])
            yield A.encode_frame(A.T_EXIT, f.id, struct.pack("<i", 0))

    @staticmethod
    def stream(type_: int, id_: int, data: bytes):
        step = CHUNK - A.HEADER.size
        for i in range(0, len(data), step):
            yield A.encode_frame(type_, id_, data[i:i + step])


async def agent_paths(mb: int, rounds: int = 5) -> dict:
    data = bytes(range(256)) * (mb * 1_000_000 // 256)
    files = {"/stdout": data}
    client = A.AgentClient(lambda chunk: agent.write(chunk))
    agent = FakeAgent(client, files)
    client.feed(A.encode_frame(A.T_HELLO, 0, struct.pack("<III", 1, WINDOW, CHUNK)))
    await client.wait_ready()
    out = {}
    for what in ("write_file", "read_file", "stdout"):
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            if what == "write_file":
                await client.write_file("/f", data)
                assert files["/f"] == data
            elif what == "read_file":
                assert await client.read_file("/f") == data
            else:
                assert (await client.exec(["cat"])).stdout == data
            times.append(time.perf_counter() - t)
        out[what] = round(len(data) / 1e6 / min(times), 1)
    return out


async def console_paths(mb: int) -> dict:
    console = Console(lambda data: None)
    chunk = b"x" * 4095 + b"\n"
    n = mb * 1_000_000 // len(chunk)
    waiter = asyncio.ensure_future(console.wait_for(rb"@@DONE@@", timeout=600))
    await asyncio.sleep(0)
    t = time.perf_counter()
    for _ in range(n):
        console.feed(chunk)
    console.feed(b"@@DONE@@")
    await waiter
    fed_s = time.perf_counter() - t
    # One more chunk with a waiter pending, the buffer near its cap (1 MiB unmatched).
    console.feed(b"y" * (Console.max_buffer - 10))
    waiter = asyncio.ensure_future(console.wait_for(rb"@@NEVER@@", timeout=600))
    await asyncio.sleep(0)
    t = time.perf_counter()
    for _ in range(100):
        console.feed(chunk)
    per_feed_ms = (time.perf_counter() - t) / 100 * 1000
    waiter.cancel()
    return {"MB_per_s_with_a_waiter": round(n * len(chunk) / 1e6 / fed_s, 1),
            "feed_ms_with_a_waiter_on_a_full_buffer": round(per_feed_ms, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "python_paths.json")
    args = ap.parse_args()
    figures = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": sys.version.split()[0],
               "MB": args.mb, "agent_MBps": asyncio.run(agent_paths(args.mb)),
               "console": asyncio.run(console_paths(args.mb))}
    text = json.dumps(figures, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
