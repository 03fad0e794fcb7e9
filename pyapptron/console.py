"""The machine's interactive console as a byte stream (pure Python).

Output is kept in a bounded buffer so `wait_for` can match text that arrived before the
call, the way pexpect's `expect` does: each match consumes the buffer up to its end, and
`before`, `after` and `match` describe the last one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from .errors import ConsoleEOF, WaitTimeout

logger = logging.getLogger(__name__)


class Console:
    """Subscribe to output, send input, wait for patterns.

    The terminal (xterm.js) and test harnesses are both clients of this object.
    """

    #: Unmatched output kept for wait_for(); older bytes are dropped first.
    max_buffer = 1 << 20
    #: Output kept for `transcript` (what a new subscriber or an MCP resource can show).
    max_transcript = 256 << 10

    def __init__(self, send: Callable[[bytes], None], eof: Callable[[], None] | None = None):
        self._send = send
        self._eof = eof
        self._subscribers: list[Callable[[bytes], None]] = []
        self._buffer = bytearray()
        self._transcript = bytearray()
        self._waiters: list[tuple[re.Pattern[bytes], asyncio.Future]] = []
        #: time.monotonic() of the last output (or of the console's start): unlike the
        #: transcript's length, it keeps moving once the transcript is full.
        self.last_output = time.monotonic()
        self._closed = False
        self._reason = "the machine was shut down"
        self.before = b""
        self.after = b""
        self.match: re.Match[bytes] | None = None

    # -- output side (called by the backend) -------------------------------------
    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.last_output = time.monotonic()
        self._transcript += data
        if len(self._transcript) > self.max_transcript:
            del self._transcript[: len(self._transcript) - self.max_transcript]
        self._buffer += data
        if len(self._buffer) > self.max_buffer:
            del self._buffer[: len(self._buffer) - self.max_buffer]
        if self._waiters:
            self._check_waiters()
        # Subscribers last, each on its own: a failing one (a disposed terminal) must
        # neither lose output for the others nor for wait_for.
        for callback in list(self._subscribers):
            try:
                callback(data)
            except Exception:
                # Dropped, so it does not fail on every chunk; logged, so the reason is not lost.
                logger.exception("console subscriber %r failed; unsubscribed it", callback)
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

    def close(self, reason: str = "the machine was shut down") -> None:
        self._closed = True
        self._reason = reason
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConsoleEOF(f"the console closed: {reason}"))
        self._waiters.clear()

    # -- client side ---------------------------------------------------------------
    def subscribe(self, callback: Callable[[bytes], None], *, replay: bool = False) -> Callable[[], None]:
        """Call `callback(bytes)` with each piece of output; returns the unsubscribe function.

        With replay=True the callback first gets the transcript so far (a terminal
        attached after boot shows the boot messages and the prompt).
        """
        if replay and self._transcript:
            callback(bytes(self._transcript))
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def send(self, data: str | bytes) -> None:
        """Type into the console (what a keyboard would send: use "\\r" for Enter)."""
        if self._closed:
            raise ConsoleEOF(f"the console is closed: {self._reason}")
        self._send(data.encode() if isinstance(data, str) else bytes(data))

    def sendeof(self) -> None:
        """End the console's input (like pexpect's sendeof): the program reading it sees
        end of file. Only where the emulator runs a program on the console's stdin (c2w
        with wasm=); a serial console has no end."""
        if self._eof is None:
            from .errors import NotSupported
            raise NotSupported("this console has no end of input: it is a serial line of a running machine")
        if self._closed:
            raise ConsoleEOF(f"the console is closed: {self._reason}")
        self._eof()

    def sendline(self, line: str | bytes = "") -> None:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r")

    @property
    def transcript(self) -> bytes:
        """The last `max_transcript` bytes of output."""
        return bytes(self._transcript)

    async def wait_for(self, pattern: str | bytes | re.Pattern[bytes], timeout: float | None = 30) -> re.Match[bytes]:
        """Wait until unconsumed output matches `pattern` (a regex); returns the match.

        Raises WaitTimeout (with the unmatched output) when `timeout` seconds pass.
        """
        regex = _compile(pattern)
        if self._try_match(regex):
            return self.match  # type: ignore[return-value]
        if self._closed:
            raise ConsoleEOF(f"the console is closed: {self._reason}")
        fut = asyncio.get_running_loop().create_future()
        entry = (regex, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            tail = bytes(self._buffer[-2000:])
            raise WaitTimeout(
                f"no match for {regex.pattern!r} within {timeout} s; the console's last output was {tail[-300:]!r}",
                tail,
            ) from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    expect = wait_for  # pexpect's name

    async def wait_quiet(self, seconds: float, timeout: float | None = 30) -> None:
        """Wait until the console has printed nothing for `seconds` (e.g. a prompt drawn
        in steps is complete). Raises WaitTimeout if output keeps coming for `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise ConsoleEOF(f"the console is closed: {self._reason}")
            now = time.monotonic()
            quiet_at = self.last_output + seconds
            if now >= quiet_at:
                return
            if deadline is not None and now >= deadline:
                tail = bytes(self._transcript[-300:])
                raise WaitTimeout(f"the console was not quiet for {seconds} s within {timeout} s; "
                                  f"its last output was {tail!r}", tail)
            # Sleep to the earliest moment it can be quiet: output meanwhile only moves that
            # moment later, so there is nothing to poll.
            await asyncio.sleep((quiet_at if deadline is None else min(quiet_at, deadline)) - now)

    # -- internals -------------------------------------------------------------------
    def _try_match(self, regex: re.Pattern[bytes]) -> bool:
        # Search a copy: a match object on the bytearray would change when it is trimmed.
        m = regex.search(bytes(self._buffer))
        if m is None:
            return False
        self.before = m.string[: m.start()]
        self.after = m.group(0)
        self.match = m
        del self._buffer[: m.end()]
        return True

    def _check_waiters(self) -> None:
        for regex, fut in list(self._waiters):
            if not fut.done() and self._try_match(regex):
                fut.set_result(self.match)
                self._waiters.remove((regex, fut))


def _compile(pattern) -> re.Pattern[bytes]:
    if isinstance(pattern, re.Pattern):
        if isinstance(pattern.pattern, str):
            return re.compile(pattern.pattern.encode(), pattern.flags & ~re.UNICODE)
        return pattern
    if isinstance(pattern, str):
        pattern = pattern.encode()
    return re.compile(pattern)
