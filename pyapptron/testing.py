"""Unit-test code that drives a pyapptron Machine, in plain CPython: no browser, no emulator.

`ScriptedBackend` stands in for an emulator. Its "guest" is a Python function that
answers the frames the host sends to the guest agent (emulators/agent/PROTOCOL.md), so a
real `pyapptron.Machine` runs over it: run(), timeouts, kills, check=, text= and the
errors behave as they do with a VM, and your code under test cannot tell the difference.

    import asyncio
    from pyapptron.testing import ScriptedBackend, commands, scripted_machine

    def guest(cmd):                       # cmd.argv, cmd.env, cmd.cwd, cmd.stdin
        if cmd.argv[-1] == "uname -m":
            return 0, b"x86_64\\n", b""
        return 127, b"", b"sh: not found\\n"

    async def main():
        vm = await scripted_machine(ScriptedBackend(commands(guest)))
        assert (await vm.run("uname -m")).stdout == b"x86_64\\n"
        await vm.shutdown()

    asyncio.run(main())

A shell string reaches the guest as ``["/bin/sh", "-c", string]``; a list as it is.
For finer control, give ScriptedBackend any function of one `pyapptron.agent.Frame`
that yields the guest's reply frames (`pyapptron.agent.encode_frame`); `exits()` is the
smallest such function. The backend records what the host sent (`frames`, `signals`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import agent as A
from .backends import Backend, Capabilities
from .errors import SnapshotCorrupt
from .machine import Machine

__all__ = ["ScriptedBackend", "Command", "commands", "exits", "scripted_machine"]

Answer = Callable[[A.Frame], Iterable[bytes]]

_HELLO = struct.pack("<III", A.PROTOCOL_VERSION, 15, 4096)


class ScriptedBackend(Backend):
    """A backend whose 'guest' is a Python function answering agent frames.

    answer: a function of each frame the host sends (EXEC, STDIN, READ_FILE, ...) that
        yields encoded reply frames; None answers nothing (commands never end).
    hello: False makes the guest agent never say it is ready (boot then times out).
    exec_capable: False is a machine without an agent: no exec, files or snapshots.
    damaged_snapshot: resuming raises SnapshotCorrupt, as a damaged state would.
    exit_on_signal: False makes a SIGKILL never end the command (a wedged guest).

    Every frame the host sent is in `frames`, the request ids it signalled in `signals`;
    `stopped` says the machine released its emulator, `starts` how often it was started.
    Like a real agent it grants the host one window credit per frame.
    """

    name = "scripted"

    def __init__(self, answer: Answer | None = None, hello: bool = True, exec_capable: bool = True,
                 damaged_snapshot: bool = False, exit_on_signal: bool = True):
        self.capabilities = Capabilities("i686", exec_capable, exec_capable, True, exec_capable, False)
        self.answer = answer
        self.hello = hello
        self.decoder = A.FrameDecoder()
        self.stopped = False
        self.signals: list[int] = []
        self.frames: list[A.Frame] = []  # every frame the host sent
        self.damaged_snapshot = damaged_snapshot
        self.resumed: list = []
        self.starts = 0
        self.exit_on_signal = exit_on_signal  # False: a SIGKILL that never ends the command

    async def start(self, on_console, on_agent, resume=None):
        self.starts += 1
        self.on_agent = on_agent
        if resume is not None:
            if self.damaged_snapshot:
                raise SnapshotCorrupt("its state does not decompress")
            self.resumed.append(resume)
            return  # a resumed agent waits for the host's HELLO
        on_console(b"login# ")
        if self.hello:
            on_agent(A.encode_frame(A.T_HELLO, 0, _HELLO))

    def snapshot_binding(self):
        return {"emulator": "scripted", "image": "test", "memory_mib": 128}

    async def save_state(self):
        return b"STATE", 1000, 0.01

    async def restore_state(self, resume):
        self.resumed.append(resume)

    def write_console(self, data):
        pass

    def write_agent(self, chunk):
        for frame in self.decoder.feed(chunk):
            self.frames.append(frame)
            loop = asyncio.get_running_loop()
            if frame.type == A.T_HELLO:
                loop.call_soon(self.on_agent, A.encode_frame(A.T_HELLO, 0, _HELLO))
                continue
            loop.call_soon(self.on_agent, A.encode_frame(A.T_WINDOW, 0, struct.pack("<I", 1)))
            if frame.type == A.T_SIGNAL:
                self.signals.append(frame.id)
                if self.exit_on_signal:
                    loop.call_soon(self.on_agent, A.encode_frame(A.T_EXIT, frame.id, struct.pack("<i", -9)))
            elif self.answer:
                for reply in self.answer(frame):
                    loop.call_soon(self.on_agent, reply)

    async def stop(self):
        self.stopped = True


async def scripted_machine(backend: ScriptedBackend | None = None, *, timeout: float = 1.0,
                           resume=None) -> Machine:
    """A started Machine over `backend` (default: one that answers nothing), as boot() returns.

    Call it inside a running event loop (asyncio.run, pytest-asyncio); shut the machine
    down (or `async with` it) when done.
    """
    vm = Machine(backend if backend is not None else ScriptedBackend(),
                 emulator="scripted", image="test", resume=resume)
    await vm._start(timeout)
    return vm


def exits(status: int | None, out: bytes = b"", err: bytes = b"") -> Answer:
    """An answer for which every command writes `out` and `err` and exits with `status`
    (None: it never exits, until the host kills it)."""
    def answer(frame):
        if frame.type == A.T_EXEC:
            if out:
                yield A.encode_frame(A.T_STDOUT, frame.id, out)
            if err:
                yield A.encode_frame(A.T_STDERR, frame.id, err)
            if status is not None:
                yield A.encode_frame(A.T_EXIT, frame.id, struct.pack("<i", status))
    return answer


@dataclass
class Command:
    """One command the host asked the guest to run."""

    argv: list[str]
    env: dict[str, str] | None  # None: the guest's own environment
    cwd: str | None
    stdin: bytes | None  # None: no input= was given
    _waiting_for_stdin: bool = field(default=False, repr=False)


def decode_exec(payload: bytes) -> Command:
    """The command an EXEC frame's payload asks for (the inverse of agent.encode_exec)."""
    (flags, argc) = struct.unpack_from("<II", payload, 0)
    offset, argv = 8, []
    for _ in range(argc):
        value, offset = A.decode_str(payload, offset)
        argv.append(value.decode())
    (envc,) = struct.unpack_from("<I", payload, offset)
    offset, env = offset + 4, {}
    for _ in range(envc):
        item, offset = A.decode_str(payload, offset)
        key, _, value = item.decode().partition("=")
        env[key] = value
    cwd, offset = A.decode_str(payload, offset)
    has_stdin = bool(flags & A.EXEC_STDIN)
    return Command(argv, env if flags & A.EXEC_ENV else None, cwd.decode() or None,
                   b"" if has_stdin else None, has_stdin)


def commands(handler: Callable[[Command], tuple[int, bytes, bytes]]) -> Answer:
    """An answer that runs each command through `handler(command)`, which returns
    (returncode, stdout, stderr); a negative returncode is death by that signal. An
    OSError it raises (FileNotFoundError, PermissionError, ...) is what run() raises.
    A command given input= is handled once all of its stdin has arrived."""
    pending: dict[int, Command] = {}

    def reply(request_id: int, command: Command):
        try:
            status, out, err = handler(command)
        except OSError as exc:
            message = (exc.strerror or str(exc)).encode()
            yield A.encode_frame(A.T_ERROR, request_id, struct.pack("<i", _linux_errno(exc)) + struct.pack(
                "<I", len(message)) + message)
            return
        if out:
            yield A.encode_frame(A.T_STDOUT, request_id, out)
        if err:
            yield A.encode_frame(A.T_STDERR, request_id, err)
        yield A.encode_frame(A.T_EXIT, request_id, struct.pack("<i", status))

    def answer(frame):
        if frame.type == A.T_EXEC:
            command = decode_exec(frame.payload)
            if command._waiting_for_stdin:
                pending[frame.id] = command
            else:
                yield from reply(frame.id, command)
        elif frame.type == A.T_STDIN and frame.id in pending:
            pending[frame.id].stdin += frame.payload
        elif frame.type == A.T_STDIN_EOF and frame.id in pending:
            command = pending.pop(frame.id)
            command._waiting_for_stdin = False
            yield from reply(frame.id, command)
    return answer


def _linux_errno(exc: OSError) -> int:
    import errno

    from .errors import _LINUX_ERRNO_NAMES

    name = errno.errorcode.get(exc.errno or 0)
    for number, linux_name in _LINUX_ERRNO_NAMES.items():
        if linux_name == name:
            return number
    return {FileNotFoundError: 2, PermissionError: 13, IsADirectoryError: 21,
            NotADirectoryError: 20}.get(type(exc), 5)
