"""Machine: one booted VM, the same on every backend."""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence

from . import snapshots
from .agent import AgentClient, DirEntry
from .backends import Backend, Capabilities
from .console import Console
from .persist import PersistedFiles
from .errors import (AgentError, BootError, CalledProcessError, InvalidOption, MachineClosed, NotSupported,
                     SnapshotCorrupt, TimeoutExpired)
from .snapshots import Resume, SnapshotInfo

#: The last sync before a persisting machine stops may take this long.
PERSIST_SHUTDOWN_SYNC_S = 300.0
#: After a resume, a HELLO to the agent is sent again after this long without an answer
#: (the guest may have had no receive buffer free for the first one).
RESUME_HELLO_RETRY_S = 1.0
#: How long a restored machine's agent may take to answer (boot() has its own timeout).
RESTORE_AGENT_TIMEOUT_S = 60.0
#: What our images' init prints on the console when the machine cannot become the one
#: asked for (a root that does not mount, say): boot() fails at once with the reason
#: instead of waiting out its timeout for an agent that will not come.
GUEST_BOOT_FAILED = rb"pyapptron: boot failed: ([^\r\n]*)\r?\n"  # the whole line


class CompletedProcess(subprocess.CompletedProcess):
    """subprocess.CompletedProcess, plus a notebook-friendly view."""

    def _repr_html_(self) -> str:
        import html

        def block(label, data):
            if not data:
                return ""
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            return f"<div><b>{label}</b><pre style='margin:0'>{html.escape(text)}</pre></div>"

        colour = "green" if self.returncode == 0 else "crimson"
        args = self.args if isinstance(self.args, str) else shlex.join(map(str, self.args))
        return (
            f"<div><code>{html.escape(args)}</code> → exit "
            f"<b style='color:{colour}'>{self.returncode}</b>"
            f"{block('stdout', self.stdout)}{block('stderr', self.stderr)}</div>"
        )


class Machine:
    """A booted VM: run commands, move files, talk to its console, shut it down.

    Use it as an async context manager so the emulator is always released:
    `async with await pyapptron.boot("v86") as vm: ...`
    """

    def __init__(self, backend: Backend, *, emulator: str, image: str, resume: Resume | None = None):
        self.backend = backend
        self.emulator = emulator
        self.image = image
        self.console = Console(backend.write_console, eof=backend.close_console if backend.console_has_eof else None)
        #: The exit status of the emulated program, once it ended by itself (c2w's modules).
        self.returncode: int | None = None
        #: The guest agent's channel: files, and (on most backends) exec.
        self._agent = AgentClient(backend.write_agent)
        #: How vm.run reaches the guest: the backend's choice (the agent, or its console shell).
        self._exec = backend.exec_strategy(self.console, self._agent)
        self._closed = False
        self.boot_seconds: float | None = None
        self._persist: PersistedFiles | None = None
        self._booted = False
        self._resume = resume
        #: What this machine was resumed from ("boot snapshot of image 'minimal'", a
        #: snapshot's name, ...), or None after a cold boot.
        self.resumed_from: str | None = None
        backend.on_persist_changed = self._persist_changed

    # -- lifetime --------------------------------------------------------------------
    async def _start(self, timeout: float) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._start_and_wait(), timeout)
        except asyncio.TimeoutError:
            tail = self.console.transcript[-500:]
            log = self._emulator_log()
            await self.shutdown()
            raise BootError(
                f"the machine was not ready within {timeout} s of boot; the console's last "
                f"output was {tail!r}. Raise boot(..., timeout=) on a slow machine, or check "
                "that the image was built with its agent (python emulators/build.py)."
                + (f" The emulator's last messages: {log[-800:]!r}" if log else "")
            ) from None
        except BaseException:
            await self.shutdown()
            raise
        self.boot_seconds = time.monotonic() - started
        self._booted = True

    async def _start_and_wait(self) -> None:
        await self._start_guest()
        if self._persist is not None and self.capabilities.exec:
            await self._persist.start(self._agent)  # the layers are in place before boot() returns

    async def _start_guest(self) -> None:
        resume = self._resume
        try:
            await self.backend.start(self.console.feed, self._agent.feed, resume=resume)
        except SnapshotCorrupt as exc:
            if resume is None or not resume.fallback_cold:
                raise SnapshotCorrupt(f"{resume.label if resume else 'the snapshot'} cannot be resumed: {exc}. "
                                      "Delete it, or boot cold (cold=True).") from None
            warnings.warn(f"the {resume.label} is damaged ({exc}); booting cold. Rebuild it with "
                          "`python emulators/build.py`.", RuntimeWarning, stacklevel=2)
            resume = self._resume = None
            await self.backend.start(self.console.feed, self._agent.feed)
        exit_future = self.backend.exit_future
        if exit_future is not None:
            exit_future.add_done_callback(self._program_exited)
        store = self.backend.persist_store
        if store is not None:
            # A store that sees the guest's files from outside must have the guest's caches flushed.
            flush = self._flush_guest if self.capabilities.exec and not getattr(store, "through_agent", False) else None
            self._persist = PersistedFiles(self.backend.persist, store, guest_sync=flush)
        if resume is not None:
            # The terminal shows what it showed when the snapshot was made (the guest will
            # not print its prompt again). Nothing from the guest came yet: its CPU runs
            # in a later task than the one that resolved the start.
            self.console.feed(resume.console_tail)
            if self.capabilities.exec:
                await self._agent_hello()
                await self._after_resume()
            self.resumed_from = resume.label
            return
        if self.capabilities.exec:
            ready = asyncio.ensure_future(self._exec.wait_ready())
            failed = asyncio.ensure_future(self.console.wait_for(GUEST_BOOT_FAILED, timeout=None))
            waits = [ready, failed] + ([exit_future] if exit_future is not None else [])
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                failed.cancel()
            # exception() also marks a closed console's ConsoleEOF as seen (no "never retrieved").
            guest_failed = failed.done() and not failed.cancelled() and failed.exception() is None
            if guest_failed and not ready.done():
                ready.cancel()
                reason = failed.result().group(1).decode(errors="replace").strip()
                raise BootError(f"the guest could not boot: {reason}")
            stopped = exit_future is not None and exit_future.done() and not exit_future.cancelled()
            if not ready.done() or (stopped and ready.exception() is not None):
                ready.cancel()
                code, log = exit_future.result()
                console = self.console.transcript[-1500:].decode(errors="replace")
                raise BootError(f"the emulator stopped (exit status {code}) before the guest was ready; "
                                f"its last messages: {log[-1500:]!r}"
                                + (f"; the console's last output: {console!r}" if console else ""))
            ready.result()

    def _emulator_log(self) -> str:
        try:
            return self.backend.emulator_log()
        except Exception as exc:  # only shown beside a boot error: that error matters more
            return f"(the emulator's log could not be read: {exc!r})"

    def _program_exited(self, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        code, _ = future.result()
        self.returncode = code
        self.console.close(f"the program exited with status {code}")
        self._close_channels(MachineClosed(f"the emulator stopped (exit status {code})"))

    def _close_channels(self, exc: MachineClosed) -> None:
        self._exec.close(exc)
        self._agent.close(exc)  # files, where the exec strategy is not the agent

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the emulated program to end by itself and return its exit status
        (c2w with wasm=: a WASI program or container that exits). TimeoutExpired-like
        asyncio.TimeoutError after `timeout` seconds."""
        exit_future = self.backend.exit_future
        if exit_future is None:
            raise NotSupported(f"{self.emulator} machines do not end by themselves; use shutdown()")
        code, _ = await asyncio.wait_for(asyncio.shield(exit_future), timeout)
        return code

    async def _agent_hello(self) -> None:
        """The resumed agent talked to another host: ask it to start over (resets credit)."""
        while True:
            self._agent.request_hello()
            try:
                await asyncio.wait_for(self._agent.wait_ready(), RESUME_HELLO_RETRY_S)
                return
            except asyncio.TimeoutError:
                continue

    async def _after_resume(self) -> None:
        """Fix what every machine resumed from one snapshot would otherwise share or get
        wrong: the clock (stuck at the moment of the snapshot), the kernel's random state
        (identical in each), and what the image's init does for this boot's options."""
        flags, shell = self.backend.resume_fixups()
        now = time.time_ns()
        argv = ["pyapptron-agent", "--resumed", f"{now // 10**9}.{now % 10**9:09d}", *flags]
        r = await self.run(argv, input=os.urandom(512), timeout=60)
        if r.returncode != 0:
            warnings.warn(f"after the resume the guest's clock and entropy were not refreshed "
                          f"({r.stderr.decode(errors='replace').strip()}); rebuild the image",
                          RuntimeWarning, stacklevel=3)
        if shell:
            r = await self.run(shell, timeout=60)
            if r.returncode != 0:
                raise BootError(f"after the resume, the image's set-up for this boot's options (persisted "
                                f"directories, the network) failed: "
                                f"{r.stderr.decode(errors='replace').strip()}")

    async def _flush_guest(self, drop_caches: bool = False) -> None:
        # The guest may cache writes to a 9p root (cache=loose): flush them to the tree first;
        # after the host wrote into the tree, also drop what it cached.
        if not self._closed:
            await self.run("sync; echo 3 > /proc/sys/vm/drop_caches" if drop_caches else ["sync"], timeout=60)

    def _persist_changed(self) -> None:
        if self._persist is not None and not self._closed:
            self._persist.changed()

    def _guest_may_write(self) -> None:
        # Where the store cannot see the guest's writes (c2w), a command or a file may
        # have changed the layers: the automatic sync follows a quiet spell. At the start
        # too, so that a long command's early writes are kept while it runs.
        if self._persist is not None and self._persist.through_agent:
            self._persist_changed()

    @property
    def persist(self) -> PersistedFiles:
        """The persistent layers (boot(..., persist=True)): sync(), usage(), export(), import_(), reset()."""
        if self._persist is None:
            raise NotSupported("this machine keeps nothing across reloads: boot it with persist=True "
                               "(or a store name) to get vm.persist")
        return self._persist

    async def snapshot(self, name: str | None = None, *, to_bytes: bool = False) -> SnapshotInfo | bytes:
        """Save the machine's state, compressed: into this origin's IndexedDB under `name`
        (default: the image and the time), or, with to_bytes=True, as bytes.

        `boot(..., resume=name_or_bytes)` starts a machine from it. With persist, the
        layers are synced first: a resume takes them from the store, never from the
        snapshot, so the snapshot must not be newer than the store.
        """
        self._require("snapshot")
        if to_bytes and name is not None:
            raise InvalidOption("snapshot(): give a name to keep it in IndexedDB, or to_bytes=True for its bytes, not both")
        if name is not None:
            snapshots.check_name(name)
        if self._persist is not None:
            await self._persist.sync()
        elif self.capabilities.exec:
            await self.run(["sync"], timeout=60)  # written data in the state, not in flight
        payload, state_bytes, seconds = await self.backend.save_state()
        meta = {
            "format": snapshots.FORMAT, "binding": self.backend.snapshot_binding(), "created": time.time(),
            "state_bytes": state_bytes, "save_seconds": round(seconds, 3),
            "console_tail": base64.b64encode(self.console.transcript[-snapshots.CONSOLE_TAIL_BYTES:]).decode(),
        }
        if to_bytes:
            return snapshots.to_bytes(meta, payload)
        return await snapshots.save(name or snapshots.default_name(self.image), meta, payload)

    async def restore(self, snapshot: str | bytes) -> None:
        """Put this machine back to a snapshot's state, in place: a name kept by
        snapshot(name), or bytes from snapshot(to_bytes=True).

        The console and anything attached to it (a terminal, an MCP client) stay. Commands
        still running are lost (their run() raises AgentError). With persist, the layers
        are synced first and come back from the store, as on a resume.
        """
        self._require("snapshot")
        resume = await snapshots.chosen(self.backend, snapshot)
        if self._persist is not None:
            await self._persist.sync()  # what the guest wrote to the layers is kept
            self._persist.hold()  # until start() below: a sync now would commit the old tree
        try:
            await self.backend.restore_state(resume)
        except BaseException:
            if self._persist is not None:
                self._persist.release()  # the state was refused: the guest is as it was
            raise
        self._agent.restart(AgentError(f"the machine was restored to {resume.label}; the command was lost"))
        self.console.feed(b"\r\n" + resume.console_tail)
        if self.capabilities.exec:
            try:
                await asyncio.wait_for(self._agent_hello(), RESTORE_AGENT_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise BootError(f"the guest agent did not answer within {RESTORE_AGENT_TIMEOUT_S} s of "
                                f"restoring {resume.label}; shut the machine down and boot a new one") from None
            await self._after_resume()
            if self._persist is not None:
                await self._persist.start(self._agent)  # the layers come from the store, as on a resume
        self.resumed_from = resume.label

    async def shutdown(self) -> None:
        """Stop the emulator and release its memory. Safe to call twice.

        With persist, the layers are synced first, so what the guest wrote is kept.
        """
        if self._closed:
            return
        if self._persist is not None and self._booted:
            try:
                await asyncio.wait_for(self._persist.sync(), PERSIST_SHUTDOWN_SYNC_S)
            except Exception as exc:  # the machine still stops; the last committed version stands
                warnings.warn(f"persist sync at shutdown failed: {exc}", RuntimeWarning, stacklevel=2)
        if self._persist is not None:
            await self._persist.close()
        self._closed = True
        self._close_channels(MachineClosed("the machine was shut down"))
        self.console.close()
        await self.backend.stop()

    async def __aenter__(self) -> Machine:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.shutdown()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def capabilities(self) -> Capabilities:
        return self.backend.capabilities

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<Machine {self.emulator}/{self.image} {state}>"

    # -- exec ------------------------------------------------------------------------
    async def run(
        self,
        args: str | Sequence[str],
        *,
        timeout: float | None = None,
        input: bytes | str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        text: bool = False,
        encoding: str | None = None,
        errors: str | None = None,
        check: bool = False,
    ) -> CompletedProcess:
        """Run a command in the guest, like subprocess.run with capture_output=True.

        A string runs under `/bin/sh -c`; a list runs directly (argv[0] found on PATH).
        `env`, like subprocess's, replaces the environment. Output bytes are exact;
        with text=True (or encoding=) they are decoded. On timeout the command is
        killed and TimeoutExpired carries what it wrote; the machine stays usable.
        """
        self._require("exec")
        argv = _argv(args)
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise InvalidOption(f"timeout must be a positive number of seconds, not {timeout!r}")
        decode = text or encoding is not None or errors is not None
        enc = encoding or "utf-8"
        if isinstance(input, str):
            input = input.encode(enc)
        elif input is not None and not isinstance(input, (bytes, bytearray, memoryview)):
            raise InvalidOption(f"input must be bytes or str, not {type(input).__name__}")
        self._guest_may_write()
        try:
            outcome = await self._exec.run(args, argv, timeout=timeout, input=None if input is None else bytes(input),
                                           cwd=cwd, env=env)
        finally:
            self._guest_may_write()
        if outcome.timed_out:
            raise TimeoutExpired(args, timeout, _maybe_decode(outcome.stdout, decode, enc, "replace"),
                                 _maybe_decode(outcome.stderr, decode, enc, "replace"))
        stdout = _maybe_decode(outcome.stdout, decode, enc, errors)
        stderr = _maybe_decode(outcome.stderr, decode, enc, errors)
        if check and outcome.status != 0:
            raise CalledProcessError(outcome.status, args, stdout, stderr)
        return CompletedProcess(args, outcome.status, stdout, stderr)

    # -- files -----------------------------------------------------------------------
    async def read_file(self, path: str) -> bytes:
        """The file's bytes. FileNotFoundError if it does not exist in the guest."""
        self._require("files")
        return await self._agent.read_file(_path(path))

    async def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Create or replace a file in the guest (the directory must exist)."""
        self._require("files")
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidOption(f"data must be bytes or str, not {type(data).__name__}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 < mode <= 0o7777:
            raise InvalidOption(f"mode must be a permission number like 0o644 (1 to 0o7777), not {mode!r}")
        await self._agent.write_file(_path(path), bytes(data), mode)
        self._guest_may_write()

    async def list_dir(self, path: str = "/") -> list[DirEntry]:
        """The directory's entries (name, type, size, mode, mtime), sorted by name."""
        self._require("files")
        return await self._agent.list_dir(_path(path))

    # -- helpers ----------------------------------------------------------------------
    def _require(self, capability: str) -> None:
        if self._closed:
            raise MachineClosed("this machine was shut down; boot a new one with pyapptron.boot()")
        if not getattr(self.capabilities, capability):
            raise NotSupported(
                f"{self.emulator} image {self.image!r} has no {capability} capability "
                f"(capabilities: {self.capabilities.as_dict()})"
            )

    async def resize_console(self, cols: int, rows: int) -> None:
        """Tell the guest's console tty its size (a serial line cannot carry it itself)."""
        tty = self.backend.console_tty
        if tty and self.capabilities.exec and not self._closed:
            await self.run(["stty", "-F", tty, "rows", str(rows), "cols", str(cols)], timeout=10)


def _argv(args) -> list[str | bytes]:
    if isinstance(args, (str, bytes)):
        return ["/bin/sh", "-c", args]
    if isinstance(args, Sequence) and args and all(isinstance(a, (str, bytes)) for a in args):
        return list(args)
    raise InvalidOption(f"run() takes a shell string or a non-empty list of strings, not {args!r}")


def _path(path) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidOption(f"a guest path must be a non-empty string, not {path!r}")
    return path


def _maybe_decode(data: bytes, decode: bool, encoding: str, errors: str | None):
    return data.decode(encoding, errors or "strict") if decode else data
