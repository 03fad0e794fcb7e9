"""vm.run over a serial console that has a shell on it (pure Python).

For guests without pyapptron's agent (a user's QEMU-Wasm kernel and initrd): each
command is typed into the console as one shell line that brackets its output with
markers. The markers are written by `printf` from octal escapes, so they appear as
raw control bytes (RS, 0x1e) only in what the command prints, never in the shell's
echo of the line being typed, and carry a random id, so output of another command
cannot end this one.

    printf '\\036S%s\\036\\n' ID; ( sh -c 'CMD' ) </dev/null 2>&1; printf '\\036E%s:%d\\036\\n' ID $?

What this gives up, compared with the agent (capabilities say exec, the README says
which): stdout and stderr arrive merged, as a terminal shows them, with the line
discipline's CR LF turned back into LF; there is no stdin (input= needs the agent);
one command runs at a time; a timeout sends ^C, which ends the command the way a
terminal user would, and the shell's status for that is 130.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shlex
import time
from collections.abc import Mapping, Sequence

from .console import Console
from .errors import InvalidOption

#: Shell prompts of common guests: root's "# " and a user's "$ " at the end of output.
DEFAULT_PROMPT = rb"[#$] $"
#: Seconds to wait for the shell's status line after ^C before giving up on it.
INTERRUPT_GRACE_S = 5.0
#: A quiet console this long after a ^C, with neither status nor prompt, means the ^C was
#: lost: it is sent again.
INTERRUPT_RETRY_S = 1.0

_MARK = b"\x1e"
# Control bytes a typed line must not hold: they would edit the line, raise signals
# or forge a marker. Tab and newline are fine.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def shell_line(args: str | Sequence[str], token: str, *, cwd: str | None = None,
               env: Mapping[str, str] | None = None) -> str:
    """The line typed into the console to run `args` (a shell string or an argv list).

    A shell string runs under `sh -c`, quoted: however broken its syntax, the typed
    line parses, so the status line always comes (sh reports the error, status 2)."""
    if isinstance(args, str):
        if not args.strip():
            raise InvalidOption("run() needs a command, not an empty string")
        command = "sh -c " + shlex.quote(args)
    elif isinstance(args, Sequence) and args and all(isinstance(a, str) for a in args):
        command = " ".join(shlex.quote(a) for a in args)
    else:
        raise InvalidOption(f"run() over the console takes a shell string or a list of strings, not {args!r}")
    if env is not None:
        bad = [k for k in env if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad or not all(isinstance(v, str) for v in env.values()):
            raise InvalidOption(f"env must map variable names to strings; bad names: {bad!r}")
        command = " ".join(["env", "-i", *(shlex.quote(f"{k}={v}") for k, v in env.items()), command])
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd:
            raise InvalidOption(f"cwd must be a non-empty path string, not {cwd!r}")
        command = f"cd -- {shlex.quote(cwd)} && {command}"
    if _CONTROL.search(command):
        raise InvalidOption("a command run over the console cannot hold control characters "
                            "(other than tab and newline); use a guest with pyapptron's agent for that")
    # The group keeps `cd` (and an argv's `exit`) from touching the console's own shell.
    return f"printf '\\036S%s\\036\\n' {token}; ( {command} ) </dev/null 2>&1; {status_printf(token, '$?')}"


def status_printf(token: str, status: str) -> str:
    """The shell command that prints the end marker with `status`."""
    return f"printf '\\036E%s:%d\\036\\n' {token} {status}"


class _Capture:
    """Collects console output between one command's two markers, chunk by chunk."""

    def __init__(self, token: str):
        self.start = _MARK + b"S" + token.encode() + _MARK
        self.end = re.compile(re.escape(_MARK + b"E" + token.encode() + b":") + rb"(\d+)" + re.escape(_MARK))
        self.buffer = bytearray()
        self.begun = False
        self.scan_from = 0
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def feed(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buffer += data
        if not self.begun:
            at = self.buffer.find(self.start)
            if at < 0:
                # Keep only what could still be the start of the marker.
                keep = len(self.start) - 1
                if len(self.buffer) > keep:
                    del self.buffer[:-keep]
                return
            del self.buffer[: at + len(self.start)]
            self.begun = True
            self.scan_from = 0
        m = self.end.search(self.buffer, self.scan_from)
        if m is None:
            # The end marker is short; only its last bytes can straddle two chunks.
            self.scan_from = max(0, len(self.buffer) - 64)
            return
        self.done.set_result((int(m.group(1)), bytes(self.buffer[: m.start()])))

    def output_so_far(self) -> bytes:
        return bytes(self.buffer) if self.begun else b""


def _clean(output: bytes) -> bytes:
    """The marker line's own newline goes; CR LF (the tty's ONLCR) becomes LF."""
    if output.startswith(b"\r\n"):
        output = output[2:]
    elif output.startswith(b"\n"):
        output = output[1:]
    return output.replace(b"\r\n", b"\n")


class ConsoleExec:
    """Runs commands through a shell on `console`, one at a time."""

    def __init__(self, console: Console, prompt: bytes | str = DEFAULT_PROMPT):
        self.console = console
        self.prompt = prompt.encode() if isinstance(prompt, str) else prompt
        self._lock = asyncio.Lock()
        self._current: _Capture | None = None
        self._closed: Exception | None = None

    def close(self, exc: Exception) -> None:
        """The machine is gone: the running command (if any) and later ones raise exc."""
        self._closed = exc
        current = self._current
        if current is not None and not current.done.done():
            current.done.set_exception(exc)

    async def _interrupt(self, capture: _Capture, token: str) -> tuple[int, bytes]:
        """^C the running command, then get its status. An interactive shell drops the
        rest of the line on SIGINT (its status printf included), so once the shell shows
        its prompt again a second line prints the status a terminal would show: 130.

        Nothing is typed before that prompt: a ^C can be lost (it lands while the command
        is between fork and exec, and the new program never sees it), and a line typed
        behind a lost ^C would wait for the command, or be flushed by the next ^C. So: ^C
        again whenever the console has been quiet for INTERRUPT_RETRY_S with neither status
        nor prompt, and the status line again at each fresh prompt (a shell that read the
        line just as a ^C arrived discards it and prompts again)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        prompt: asyncio.Future = loop.create_future()
        seen = bytearray()  # output since we last typed, to find the prompt in
        before_prompt: bytes | None = None  # the command's output: what came before the first prompt

        def watch(data: bytes) -> None:
            nonlocal before_prompt
            seen.extend(data)
            del seen[:-1024]
            m = None if prompt.done() else re.search(self.prompt, bytes(seen))
            if m is not None:
                if before_prompt is None:  # the capture has this chunk already (it subscribed first)
                    line_start = seen.rfind(b"\n", 0, m.start()) + 1  # the whole prompt, not only its end
                    so_far = capture.output_so_far()
                    before_prompt = so_far[: max(0, len(so_far) - (len(seen) - line_start))]
                prompt.set_result(None)

        def type_(data: bytes) -> float:
            seen.clear()
            self.console.send(data)
            return time.monotonic()

        unsubscribe = self.console.subscribe(watch)
        typed_status = False  # whether the status came from our line, after the prompt
        try:
            typed_at = type_(b"\x03")
            while not capture.done.done() and time.monotonic() < deadline:
                quiet_from = max(typed_at, self.console.last_output)
                wake = min(deadline, quiet_from + INTERRUPT_RETRY_S)
                await asyncio.wait({capture.done, prompt}, timeout=max(0.0, wake - time.monotonic()))
                if capture.done.done():
                    break
                if prompt.done():
                    prompt = loop.create_future()
                    typed_at = type_(status_printf(token, "130").encode() + b"\r")
                    typed_status = True
                elif time.monotonic() >= max(typed_at, self.console.last_output) + INTERRUPT_RETRY_S:
                    typed_at = type_(b"\x03")  # neither status nor prompt: that ^C was lost
        finally:
            unsubscribe()
        if capture.done.done():
            status, output = capture.done.result()  # raises if the machine closed meanwhile
        else:
            status, output = -1, capture.output_so_far()
        # After the prompt comes our status line's echo; before it, the line discipline's
        # echo of each ^C (ECHOCTL) and the shell's newline: the terminal's, not the command's.
        # A shell that ran the command line's own status printf after the ^C (its marker ends
        # the capture before any prompt) has the exact output in the capture already.
        if typed_status and before_prompt is not None:
            output = before_prompt
        output = _clean(output)
        return status, re.sub(rb"\^C(\^C|\n)*\Z", b"", output)

    async def wait_ready(self, timeout: float | None) -> None:
        """Until the guest's shell prompt shows (the machine is booted)."""
        await self.console.wait_for(self.prompt, timeout=timeout)

    async def run(self, args: str | Sequence[str], *, timeout: float | None = None, cwd: str | None = None,
                  env: Mapping[str, str] | None = None) -> tuple[int, bytes, bool]:
        """(status, merged output, timed_out). On timeout the command got ^C."""
        token = secrets.token_hex(8)
        line = shell_line(args, token, cwd=cwd, env=env)
        async with self._lock:
            if self._closed is not None:
                raise self._closed
            capture = self._current = _Capture(token)
            unsubscribe = self.console.subscribe(capture.feed)
            try:
                self.console.sendline(line)
                try:
                    status, output = await asyncio.wait_for(asyncio.shield(capture.done), timeout)
                    return status, _clean(output), False
                except asyncio.TimeoutError:
                    return (*await self._interrupt(capture, token), True)
            finally:
                self._current = None
                unsubscribe()
                if not capture.done.done():
                    capture.done.cancel()
