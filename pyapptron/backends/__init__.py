"""Emulator backends behind one interface, and the registry boot() picks from.

A backend knows how to start its emulator, how to carry bytes to the console and to
the guest agent, how vm.run reaches its guest (exec_strategy), and what it can do
(Capabilities). Everything else (exec, files, the console stream, snapshots' format)
lives in Machine and works the same on every backend: Machine uses nothing of a
backend that Backend does not declare here.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import InvalidOption, NotSupported, UnknownEmulator

if TYPE_CHECKING:
    from ..agent import AgentClient
    from ..console import Console
    from ..exec_strategy import ExecStrategy


@dataclass(frozen=True)
class Capabilities:
    """What a booted machine can do; callers check these instead of guessing."""

    arch: str  # guest CPU architecture as `uname -m` says it: "i686", "x86_64"
    exec: bool  # vm.run through the guest agent
    files: bool  # vm.read_file / write_file / list_dir
    console: bool  # an interactive console stream
    snapshot: bool  # save / restore machine state
    network: bool  # the guest has a network device
    persist: bool = False  # boot(persist=...): files kept in IndexedDB across reloads

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Sink = Callable[[bytes], None]


class Backend(abc.ABC):
    """One emulator. Subclasses set `name` and implement start/stop/write_*."""

    name: ClassVar[str]
    #: Extra keyword options boot() accepts for this backend, with their types (checked by
    #: isinstance after a page's JS byte array became bytes; never `object`, which checks nothing).
    options: ClassVar[dict[str, type | tuple[type, ...]]] = {}

    #: The image boot() uses when none is named.
    default_image: ClassVar[str] = "minimal"

    @classmethod
    def needs_image(cls, options: dict) -> bool:
        """Whether boot() with these backend options boots a built image (else: None)."""
        return True

    #: Whether boot(persist=...) works with this emulator.
    persist_supported: ClassVar[bool] = False
    #: Whether boot(network=...) works with this emulator: its constructor then takes
    #: network= (a pyapptron.network.Network whose relay is set).
    network_supported: ClassVar[bool] = False

    capabilities: Capabilities
    #: What boot(persist=...) asked this backend to keep (pyapptron.persist.Persist), if anything.
    persist: Any = None
    #: After start, with persist: the adapter's store (pyapptron.persist.PersistStore).
    persist_store: Any = None
    #: Set by Machine before start: called when the guest changes a persisted tree.
    on_persist_changed: Callable[[], None] | None = None
    #: The guest device behind the interactive console, for telling it the terminal
    #: size (Machine.resize_console), or None where there is no such tty.
    console_tty: ClassVar[str | None] = None
    #: Whether the console's input can be ended (Console.sendeof -> close_console).
    console_has_eof: bool = False
    #: Set by start() on engines whose program can end by itself (a user's WASI module,
    #: QEMU exiting): resolves to (exit status, the emulator's last messages).
    exit_future: asyncio.Future | None = None

    @abc.abstractmethod
    async def start(self, on_console: Sink, on_agent: Sink, resume: Any = None) -> None:
        """Start the emulator; output goes to the two sinks in chunks.

        resume: a pyapptron.snapshots.Resume to start from instead of a cold boot; only
        given when capabilities.snapshot is true.
        """

    def snapshot_binding(self) -> dict:
        """What a snapshot of this machine is bound to (pyapptron.snapshots.mismatch)."""
        raise NotSupported(f"{self.name} cannot save or restore machine state")

    #: Which compressions of a snapshot's payload the adapter reads ("zstd": v86 inflates
    #: it itself, faster; every adapter reads the browser's gzip).
    state_compressions: ClassVar[tuple[str, ...]] = ("gzip",)

    async def save_state(self) -> tuple[Any, int, float]:
        """(payload, state bytes before compression, seconds taken) of the running machine:
        the adapter's saveState()."""
        self._require_state()
        return await self._handle.save_state()

    async def restore_state(self, resume: Any) -> None:
        """Put the running machine back to a snapshot (a Resume) in place: the adapter's
        restoreState()."""
        self._require_state()
        await self._handle.restore_state(resume.payload, resume.meta.get("compression", "gzip"),
                                         resume.meta.get("payload_sha256"))

    def _require_state(self) -> None:
        if not self.capabilities.snapshot:
            raise NotSupported(f"{self.name} cannot save or restore machine state")
        if self._handle is None:
            raise InvalidOption("the emulator is not running")

    @staticmethod
    def _resume_arguments(resume: Any) -> dict:
        """start_emulator()'s keywords for a start from `resume` (a Resume or None)."""
        if resume is None:
            return {}
        return {"resume_payload": resume.payload, "resume_compression": resume.meta.get("compression", "gzip"),
                "resume_sha256": resume.meta.get("payload_sha256")}

    def resume_fixups(self) -> tuple[list[str], str | None]:
        """After a resume: extra flags for `pyapptron-agent --resumed`, and a shell
        command to run next (or None): whatever the image's init would have done on a
        cold boot that this resume's options need."""
        return [], None

    def exec_strategy(self, console: Console, agent: AgentClient) -> ExecStrategy:
        """How vm.run reaches this guest: by default through the guest agent on its
        channel. A backend whose guest has no agent supplies another (ConsoleShellExec)."""
        from ..exec_strategy import AgentExec

        return AgentExec(agent)

    #: After start: the running JS adapter (pyapptron._browser.EmulatorHandle).
    _handle: Any = None

    def _track_exit(self) -> Callable[[int, str], None]:
        """For start() on engines whose program can end: a fresh exit_future, and the
        callback (exit status, log) that resolves it once."""
        self.exit_future = future = asyncio.get_running_loop().create_future()

        def exited(code: int, log: str) -> None:
            if not future.done():
                future.set_result((code, log))

        return exited

    def close_console(self) -> None:
        """End of input on the console (only where console_has_eof)."""
        if not self.console_has_eof:
            raise NotSupported(f"{self.name}'s console input cannot be ended")
        if self._handle is not None:
            self._handle.close_channel("console")

    def attach_terminal(self, terminal, replay: bytes, on_resize=None) -> Callable[[], None]:
        """Show the console in an xterm.js Terminal, wired to the emulator in the browser
        (pyapptron._browser.EmulatorHandle.attach_terminal); returns the detach function."""
        if self._handle is None:
            raise NotSupported(f"the {self.name} emulator is not running")
        return self._handle.attach_terminal(terminal, replay, on_resize)

    def emulator_log(self) -> str:
        """The emulator's own recent messages (shown when a boot fails), or ''."""
        return self._handle.log() if self._handle is not None else ""

    def timings(self) -> dict:
        """The adapter's boot phases in seconds (fetch, compile, ready, ...), for bench/."""
        return self._handle.timings() if self._handle is not None else {}

    def engine(self) -> Any:
        """The running emulator's own JS object (v86's V86, ...), for diagnostics and
        bench/ only: nothing in pyapptron drives it past the adapter. None when stopped."""
        return self._handle.engine if self._handle is not None else None

    def write_console(self, data: bytes) -> None:
        """Bytes typed into the interactive console."""
        if self._handle is not None:
            self._handle.send("console", data)

    def write_agent(self, chunk: bytes) -> None:
        """One transport write to the guest agent's channel (at most the chunk size its HELLO announced)."""
        if self._handle is not None:
            self._handle.send("agent", chunk)

    async def stop(self) -> None:
        """Stop the emulator and release its memory. Idempotent."""
        handle, self._handle = self._handle, None
        if handle is not None:
            await handle.stop()


# name -> "module:Class". Only backends that work are listed.
_REGISTRY = {
    "v86": "pyapptron.backends.v86:V86Backend",
    "c2w": "pyapptron.backends.c2w:C2WBackend",
    "qemu-wasm": "pyapptron.backends.qemu_wasm:QemuWasmBackend",
}


def available_emulators() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    try:
        target = _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownEmulator(
            f"unknown emulator {name!r}; available: {', '.join(available_emulators())}"
        ) from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
