"""Host side of the guest-agent protocol (emulators/agent/PROTOCOL.md).

Pure Python: it turns requests into frames, frames into results, and keeps the
host-to-guest flow-control window. A backend gives it one function that writes a chunk
to the channel and calls `feed()` with whatever bytes the channel delivers.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .errors import AgentError, CommandTooLong, guest_os_error

PROTOCOL_VERSION = 1
MAGIC = 0x5AA5
HEADER = struct.Struct("<HBBII")  # magic, type, flags, id, length
MAX_PAYLOAD = 1 << 20

# host -> guest
T_HELLO = 0x01
T_EXEC = 0x10
T_STDIN = 0x11
T_STDIN_EOF = 0x12
T_SIGNAL = 0x13
T_READ_FILE = 0x20
T_WRITE_FILE = 0x21
T_DATA = 0x22
T_DATA_END = 0x23
T_LIST_DIR = 0x24
# guest -> host
T_STDOUT = 0x81
T_STDERR = 0x82
T_EXIT = 0x83
T_ERROR = 0x84
T_RDATA = 0x85
T_END = 0x86
T_WINDOW = 0x87

EXEC_STDIN = 1
EXEC_ENV = 2

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_ENTRY = struct.Struct("<BIQq")


@dataclass(frozen=True)
class Frame:
    type: int
    id: int
    payload: bytes


def encode_frame(type_: int, id_: int, payload: bytes | memoryview = b"") -> bytearray:
    if len(payload) > MAX_PAYLOAD:
        raise CommandTooLong(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    frame = bytearray(HEADER.size + len(payload))
    HEADER.pack_into(frame, 0, MAGIC, type_, 0, id_, len(payload))
    frame[HEADER.size:] = payload
    return frame


def chunk_cost(frame_len: int, chunk_size: int) -> int:
    """Channel chunks a frame occupies; the agent computes the same number."""
    return -(-frame_len // chunk_size)


# What the agent's HELLO starts with: after a corrupt stream the decoder skips to it.
HELLO_PREFIX = HEADER.pack(MAGIC, T_HELLO, 0, 0, 0)[:8]


class FrameDecoder:
    """Splits a byte stream into frames. Works on whole chunks, never byte by byte."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._resync = False

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        if self._resync:
            start = buf.find(HELLO_PREFIX)
            if start < 0:
                del buf[: max(0, len(buf) - len(HELLO_PREFIX) + 1)]
                return []
            del buf[:start]
            self._resync = False
        frames = []
        pos = 0
        size = len(buf)
        while size - pos >= HEADER.size:
            magic, type_, _flags, id_, length = HEADER.unpack_from(buf, pos)
            if magic != MAGIC or length > MAX_PAYLOAD:
                self._buf = bytearray()
                self._resync = True  # until the agent's next HELLO
                raise AgentError(
                    f"corrupt frame from the guest agent (magic {magic:#06x}, length {length})"
                )
            end = pos + HEADER.size + length
            if end > size:
                break
            with memoryview(buf) as view:  # one copy of the payload, not two (a slice, then bytes)
                frames.append(Frame(type_, id_, bytes(view[pos + HEADER.size : end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames


def _pack_str(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def _as_bytes(value: str | bytes, what: str) -> bytes:
    data = value.encode() if isinstance(value, str) else bytes(value)
    if b"\0" in data:
        raise ValueError(f"embedded null byte in {what}")
    return data


def encode_exec(
    argv: Iterable[str | bytes],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    has_stdin: bool = False,
) -> bytes:
    args = [_as_bytes(a, "argument") for a in argv]
    if not args:
        raise ValueError("empty argument list: give a command to run")
    flags = (EXEC_STDIN if has_stdin else 0) | (EXEC_ENV if env is not None else 0)
    parts = [_U32.pack(flags), _U32.pack(len(args))]
    parts += [_pack_str(a) for a in args]
    env_items = []
    for key, value in (env or {}).items():
        k = _as_bytes(key, "environment variable name")
        if not k or b"=" in k:
            raise ValueError(f"illegal environment variable name: {key!r}")
        env_items.append(k + b"=" + _as_bytes(value, "environment variable value"))
    parts.append(_U32.pack(len(env_items)))
    parts += [_pack_str(e) for e in env_items]
    parts.append(_pack_str(_as_bytes(cwd or "", "cwd")))
    return b"".join(parts)


def decode_str(payload: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = _U32.unpack_from(payload, offset)
    start = offset + 4
    return payload[start : start + length], start + length


@dataclass(frozen=True)
class DirEntry:
    """One entry of vm.list_dir(): what lstat says of it in the guest."""

    name: str
    type: str  # "file", "dir", "symlink", "char", "block", "fifo", "socket", "other"
    size: int
    mode: int
    mtime: int

    def is_dir(self) -> bool:
        return self.type == "dir"

    def is_file(self) -> bool:
        return self.type == "file"

    def is_symlink(self) -> bool:
        return self.type == "symlink"


_KINDS = {
    ord("f"): "file", ord("d"): "dir", ord("l"): "symlink", ord("c"): "char",
    ord("b"): "block", ord("p"): "fifo", ord("s"): "socket",
}


def decode_dir_entries(payload: bytes) -> list[DirEntry]:
    entries = []
    pos = 0
    while pos < len(payload):
        kind, mode, size, mtime = _ENTRY.unpack_from(payload, pos)
        name, pos = decode_str(payload, pos + _ENTRY.size)
        entries.append(
            DirEntry(name.decode("utf-8", "surrogateescape"), _KINDS.get(kind, "other"), size, mode, mtime)
        )
    return entries


@dataclass
class _Request:
    id: int
    future: asyncio.Future
    kind: str  # "exec", "read", "write", "list"
    label: str  # the path, or argv[0]: what an error is about
    cwd: str | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    data: bytearray = field(default_factory=bytearray)
    entries: list = field(default_factory=list)


@dataclass(frozen=True)
class ExecResult:
    status: int  # exit code 0-255, or -signal
    stdout: bytes
    stderr: bytes


class AgentClient:
    """Requests to the guest agent over one byte channel, many at once.

    `write_chunk(data)` must deliver `data` (a bytes-like view of at most `chunk_size`
    bytes, valid during the call only: copy what you keep) to the guest as one transport
    write; the backend provides it. Call `feed()` with channel output.
    """

    def __init__(self, write_chunk: Callable[[bytes], None]):
        self._write_chunk = write_chunk
        self._decoder = FrameDecoder()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Request] = {}
        self._send_lock = asyncio.Lock()
        self._credit_changed = asyncio.Event()
        self._hello = asyncio.Event()
        self._closed: BaseException | None = None
        self.window = 0
        self.chunk_size = 4096
        self.credit = 0

    # -- the channel -------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except AgentError as exc:
            # Whatever was in flight is lost; ask the agent to start over.
            self._fail_all(exc)
            if self._closed is None:
                self.request_hello()
            return
        for frame in frames:
            try:
                self._dispatch(frame)
            except Exception as exc:  # a malformed payload fails its own request only
                req = self._pending.get(frame.id)
                if req is not None and not req.future.done():
                    req.future.set_exception(AgentError(f"malformed frame {frame.type:#x} from the guest agent: {exc}"))

    async def wait_ready(self) -> None:
        await self._hello.wait()
        if self._closed is not None:
            raise self._closed

    def request_hello(self) -> None:
        """Ask the agent to announce itself again (after a resume, or to resync)."""
        self._hello.clear()
        self._write_chunk(encode_frame(T_HELLO, 0))

    def restart(self, reason: BaseException) -> None:
        """The guest's agent was replaced (the machine was restored to a snapshot): fail
        what was in flight and read the channel afresh; request_hello() comes next."""
        self._fail_all(reason)
        self._decoder = FrameDecoder()
        self._hello.clear()
        self.credit = 0

    def close(self, reason: BaseException) -> None:
        self._closed = reason
        self._fail_all(reason)
        self._credit_changed.set()
        self._hello.set()  # wake whoever waits for the agent: they find it closed

    # -- requests ---------------------------------------------------------------
    async def exec(
        self,
        argv: list[str | bytes],
        *,
        input: bytes | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        started: Callable[[_Request], None] | None = None,
    ) -> ExecResult:
        """Run argv in the guest; resolves when it exits.

        `started(request)` gets the request (its id, and its output so far) at once.
        """
        payload = encode_exec(argv, env=env, cwd=cwd, has_stdin=input is not None)
        first = argv[0]
        req = self._new_request("exec", first.decode("utf-8", "replace") if isinstance(first, bytes) else first)
        req.cwd = cwd
        if started is not None:
            started(req)
        try:
            await self._send(T_EXEC, req.id, payload, req)
            if input is not None:
                # A command that exits (or fails to start) stops the input, as with subprocess.
                await self._send_data(T_STDIN, req.id, input, stop=req.future)
                await self._send(T_STDIN_EOF, req.id, b"", req)
            status = await req.future
        finally:
            self._pending.pop(req.id, None)
        return ExecResult(status, bytes(req.stdout), bytes(req.stderr))

    async def signal(self, request_id: int, signo: int) -> None:
        if request_id in self._pending:
            await self._send(T_SIGNAL, request_id, _U32.pack(signo))

    async def read_file(self, path: str) -> bytes:
        req = self._new_request("read", path)
        try:
            await self._send(T_READ_FILE, req.id, _pack_str(_as_bytes(path, "path")))
            await req.future
        finally:
            self._pending.pop(req.id, None)
        return bytes(req.data)

    async def write_file(self, path: str, data: bytes, mode: int = 0) -> None:
        req = self._new_request("write", path)
        try:
            try:
                await self._send(T_WRITE_FILE, req.id, _U32.pack(mode) + _pack_str(_as_bytes(path, "path")), req)
                await self._send_data(T_DATA, req.id, data, stop=req.future)  # an early ERROR stops it
            finally:
                # The agent holds an open file per write until DATA_END, error or not,
                # so it is always sent, even when this call is cancelled.
                end = asyncio.ensure_future(self._send_quietly(T_DATA_END, req.id))
            await end
            await req.future
        finally:
            self._pending.pop(req.id, None)

    async def list_dir(self, path: str) -> list[DirEntry]:
        req = self._new_request("list", path)
        try:
            await self._send(T_LIST_DIR, req.id, _pack_str(_as_bytes(path, "path")))
            await req.future
        finally:
            self._pending.pop(req.id, None)
        return sorted(req.entries, key=lambda e: e.name)

    # -- internals ----------------------------------------------------------------
    def _new_request(self, kind: str, label: str) -> _Request:
        if self._closed is not None:
            raise self._closed
        req = _Request(next(self._ids), asyncio.get_running_loop().create_future(), kind, label)
        self._pending[req.id] = req
        return req

    #: Chunks per DATA/STDIN frame: large frames amortise the agent's per-frame work,
    #: yet two must fit in the window so one is in flight while the other is read.
    #: (Measured in Chromium, 4 MB write_file: 1 chunk 1.2 MB/s, 4: 3.6, 6: 3.3-4.7.)
    data_frame_chunks = 6

    async def _send_data(self, type_: int, id_: int, data: bytes, stop: asyncio.Future | None = None) -> None:
        step = self.chunk_size * min(self.data_frame_chunks, max(1, self.window // 2)) - HEADER.size
        view = memoryview(data)
        for offset in range(0, len(view), step):
            if stop is not None and stop.done():
                return
            await self._send(type_, id_, view[offset : offset + step])  # copied once, into the frame

    async def _send_quietly(self, type_: int, id_: int) -> None:
        try:
            await self._send(type_, id_)
        except Exception:
            pass  # the channel is gone: the agent's state went with it

    async def _send(self, type_: int, id_: int, payload: bytes | memoryview = b"",
                    req: _Request | None = None) -> None:
        """Send one frame when credit allows. With `req`, nothing is sent once it has ended
        (failed by an agent restart, say): a late EXEC must not run a command twice.
        The frame is built once; the transport gets views of it, not copies."""
        frame = memoryview(encode_frame(type_, id_, payload))
        if not self._hello.is_set():
            await self._hello.wait()
        if self._closed is not None:
            raise self._closed
        cost = chunk_cost(len(frame), self.chunk_size)  # in the chunk size the agent announced
        if cost > self.window:
            raise CommandTooLong(
                f"request of {len(frame)} bytes does not fit the agent channel "
                f"({self.window * self.chunk_size} bytes); write long scripts to a file with "
                "vm.write_file() and run the file, or pass data with input="
            )
        async with self._send_lock:
            while self.credit < cost:
                if self._closed is not None:
                    raise self._closed
                self._credit_changed.clear()
                await self._credit_changed.wait()
            if self._closed is not None:
                raise self._closed
            if req is not None and req.future.done():
                return
            self.credit -= cost
            size = self.chunk_size
            if len(frame) <= size:
                self._write_chunk(frame)
            else:
                for offset in range(0, len(frame), size):
                    self._write_chunk(frame[offset : offset + size])

    def _dispatch(self, frame: Frame) -> None:
        t = frame.type
        if t == T_WINDOW:
            (n,) = _U32.unpack_from(frame.payload)
            self.credit = min(self.window, self.credit + n)
            self._credit_changed.set()
            return
        if t == T_HELLO:
            self._on_hello(frame.payload)
            return
        req = self._pending.get(frame.id)
        if req is None or req.future.done():
            return  # a late frame for a request that was cancelled or timed out
        if t == T_STDOUT:
            req.stdout += frame.payload
        elif t == T_STDERR:
            req.stderr += frame.payload
        elif t == T_RDATA:
            if req.kind == "list":
                req.entries.extend(decode_dir_entries(frame.payload))
            else:
                req.data += frame.payload
        elif t == T_EXIT:
            (status,) = _I32.unpack_from(frame.payload)
            req.future.set_result(status)
        elif t == T_END:
            req.future.set_result(None)
        elif t == T_ERROR:
            (err,) = _I32.unpack_from(frame.payload)
            message, _ = decode_str(frame.payload, 4)
            text = message.decode("utf-8", "replace")
            about = req.cwd if req.cwd and text.startswith("chdir") else req.label
            req.future.set_exception(guest_os_error(err, text, about))
        else:
            req.future.set_exception(AgentError(f"unexpected frame type {t:#x} from the guest agent"))

    def _on_hello(self, payload: bytes) -> None:
        version, window, chunk_size = struct.unpack_from("<III", payload)
        if version != PROTOCOL_VERSION:
            self.close(AgentError(
                f"guest agent speaks protocol {version}, this pyapptron speaks {PROTOCOL_VERSION}: "
                "rebuild the image with `python emulators/build.py`"
            ))
            return
        if self._hello.is_set():
            # Unasked: the agent started again on its own, and what it was doing is gone.
            # (An answer to request_hello() finds the event cleared, and requests go on.)
            self._fail_all(AgentError("the guest agent restarted; the request was lost"))
        self.window, self.chunk_size = window, chunk_size
        self.credit = window
        self._hello.set()
        self._credit_changed.set()

    def _fail_all(self, exc: BaseException) -> None:
        for req in list(self._pending.values()):
            if not req.future.done():
                req.future.set_exception(exc)
