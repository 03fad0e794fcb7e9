"""The machine's interactive console as a byte stream (pure Python).

Output is kept in a bounded buffer so `wait_for` can match text that arrived before the
call, the way pexpect's `expect` does: each match consumes the buffer up to its end, and
`before`, `after` and `match` describe the last one. `expect`, `expect_exact`, `EOF` and
`TIMEOUT` keep pexpect's meaning (a list of patterns, the index of the one that matched).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import ConsoleEOF, WaitTimeout

logger = logging.getLogger(__name__)


class Found(NamedTuple):
    """What one expect() got: the pattern's index, and before / after / match for it."""

    index: int
    before: bytes
    after: Any
    match: Any


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"pyapptron.console.{self.name}"


#: In expect()'s pattern list: the console closed (pexpect.EOF).
EOF = _Sentinel("EOF")
#: In expect()'s pattern list: `timeout` passed with no match (pexpect.TIMEOUT).
TIMEOUT = _Sentinel("TIMEOUT")


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
        #: Bytes ever dropped from the front of _buffer: positions in the stream stay
        #: comparable across trims (a waiter remembers how far it has searched).
        self._dropped = 0
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
            self._drop(len(self._buffer) - self.max_buffer)
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
        for _, fut, _ in self._waiters:
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

        Raises WaitTimeout (with the unmatched output) when `timeout` seconds pass, and
        ConsoleEOF when the console closes first.
        """
        return (await self._expect([_compile(pattern)], timeout)).match

    async def expect(self, pattern, timeout: float | None = 30) -> int:
        """pexpect's expect: `pattern` is a regex or a list of them, where EOF and TIMEOUT
        may also stand. Returns the index of the one that matched: of the patterns that
        match, the one whose match starts first in the output (the first listed on a tie).
        Sets before/after/match as pexpect does: after EOF or TIMEOUT, before is the
        unconsumed output and after and match are the sentinel; EOF consumes the output,
        TIMEOUT leaves it for the next expect. Without EOF (TIMEOUT) in the list, a closed
        console (the timeout) raises ConsoleEOF (WaitTimeout)."""
        return (await self._expect(_pattern_list(pattern, _compile), timeout)).index

    async def expect_exact(self, pattern, timeout: float | None = 30) -> int:
        """expect() with plain strings instead of regexes (pexpect's expect_exact)."""
        found = await self._expect(_pattern_list(pattern, lambda p: re.compile(re.escape(_as_bytes(p)))), timeout)
        return found.index

    async def _expect(self, patterns: list, timeout: float | None) -> Found:
        """What matched, set as before/after/match when this call resumes: a waiter's own
        result, even when several waiters matched in one chunk."""
        found = await self._found(patterns, timeout)
        self.before, self.after, self.match = found.before, found.after, found.match
        return found

    async def _found(self, patterns: list, timeout: float | None) -> Found:
        regexes = [(i, p) for i, p in enumerate(patterns) if isinstance(p, re.Pattern)]
        found = self._try_match(regexes, None)
        if found is not None:
            return found
        if self._closed:
            return self._at_end(patterns, EOF, ConsoleEOF(f"the console is closed: {self._reason}"))
        fut = asyncio.get_running_loop().create_future()
        # [patterns, future, how far in the stream a search has found nothing]
        entry = [regexes, fut, self._dropped + len(self._buffer)]
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            tail = bytes(self._buffer[-2000:])
            wanted = " or ".join(repr(p.pattern) for _, p in regexes) or "nothing"
            return self._at_end(patterns, TIMEOUT, WaitTimeout(
                f"no match for {wanted} within {timeout} s; the console's last output was {tail[-300:]!r}", tail))
        except ConsoleEOF as exc:
            return self._at_end(patterns, EOF, exc)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _at_end(self, patterns: list, sentinel: _Sentinel, error: Exception) -> Found:
        """EOF or TIMEOUT: its index where the caller listed it, else the error. As in
        pexpect, the unconsumed output becomes `before`; EOF consumes it, TIMEOUT keeps it."""
        if sentinel not in patterns:
            raise error
        found = Found(patterns.index(sentinel), bytes(self._buffer), sentinel, sentinel)
        if sentinel is EOF:
            self._drop(len(self._buffer))
        return found

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
    def _drop(self, n: int) -> None:
        del self._buffer[:n]
        self._dropped += n

    def _try_match(self, regexes: list[tuple[int, re.Pattern[bytes]]], searched: int | None) -> Found | None:
        """The index of the pattern whose match starts first in the buffer, consuming the
        buffer up to that match's end; None if none matches. `searched`: the stream
        position up to which these patterns were searched before and matched nothing."""
        best = None
        for index, regex in regexes:
            # On the buffer itself: no copy for the many chunks that match nothing; and
            # where the pattern's matches are short, only from where a new one can start.
            m = regex.search(self._buffer, self._search_start(regex, searched))
            if m is not None and (best is None or m.start() < best[1].start()):
                best = (index, m)
        if best is None:
            return None
        index, m = best
        # The match object reads its string lazily: give it bytes that will not change
        # when the buffer is trimmed (one copy per match, not per chunk); the same search
        # from the same start finds the same match.
        m = m.re.search(bytes(self._buffer), m.start())
        self._drop(m.end())
        return Found(index, m.string[: m.start()], m.group(0), m)

    def _search_start(self, regex: re.Pattern[bytes], searched: int | None) -> int:
        """Where in the buffer a match not found by the last search can start: a match of
        at most W bytes that was not there must reach the new output, so it starts at most
        W (and the end-of-line slack of `$`) before it. Patterns of unbounded width or with
        lookarounds search the whole buffer."""
        if searched is None:
            return 0
        width = _max_width(regex)
        if width is None:
            return 0
        return max(0, searched - self._dropped - width - 2)

    def _check_waiters(self) -> None:
        end = self._dropped + len(self._buffer)
        for entry in list(self._waiters):
            regexes, fut, searched = entry
            if fut.done():
                continue
            found = self._try_match(regexes, searched)
            if found is not None:
                fut.set_result(found)
                self._waiters.remove(entry)
            else:
                entry[2] = end


def _max_width(regex: re.Pattern[bytes]) -> int | None:
    """The longest match `regex` can make, or None if unbounded or it looks around."""
    return _width(regex.pattern, regex.flags)


@functools.lru_cache(maxsize=256)
def _width(pattern: bytes, flags: int) -> int | None:
    try:
        from re import _parser  # the stdlib's own parser: the width it computes for the engine

        parsed = _parser.parse(pattern, flags)
        width = parsed.getwidth()[1]
        looks = {str(op) for op in _opcodes(parsed)} & {"ASSERT", "ASSERT_NOT"}
        return None if looks or width >= _parser.MAXREPEAT else width
    except Exception:  # another Python's internals: search it all, as before
        return None


def _opcodes(parsed):
    """Every opcode of a parsed pattern, nested ones included."""
    for op, arg in parsed:
        yield op
        for item in arg if isinstance(arg, (list, tuple)) else (arg,):
            for sub in item if isinstance(item, (list, tuple)) else (item,):
                if hasattr(sub, "getwidth"):
                    yield from _opcodes(sub)


def _as_bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else bytes(text)


def _pattern_list(pattern, compile_one) -> list:
    """expect()'s patterns as a list: regexes compiled, EOF and TIMEOUT kept as they are."""
    items = pattern if isinstance(pattern, list) else [pattern]
    return [p if isinstance(p, _Sentinel) else compile_one(p) for p in items]


def _compile(pattern) -> re.Pattern[bytes]:
    if isinstance(pattern, re.Pattern):
        if isinstance(pattern.pattern, str):
            return re.compile(pattern.pattern.encode(), pattern.flags & ~re.UNICODE)
        return pattern
    if isinstance(pattern, str):
        pattern = pattern.encode()
    return re.compile(pattern)
