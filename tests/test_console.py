"""Unit tests (CPython) of the console stream: pexpect-style waiting, subscribers, transcript."""

import asyncio
import logging
import time

import pytest

import re

from pyapptron.console import EOF, TIMEOUT, Console
from pyapptron.errors import ConsoleEOF, WaitTimeout


def test_wait_for_matches_output_that_arrived_before_the_call():
    async def main():
        c = Console(lambda b: None)
        c.feed(b"booting...\nroot@pyapptron:~# ")
        m = await c.wait_for(rb"\$ |# ", timeout=1)
        assert m.group(0) == b"# " and c.before.endswith(b"root@pyapptron:~")
    asyncio.run(main())


def test_each_match_consumes_output_like_pexpect():
    async def main():
        c = Console(lambda b: None)
        c.feed(b"one# two# ")
        await c.wait_for("# ", timeout=1)
        await c.wait_for("# ", timeout=1)
        assert c.before == b"two"
        with pytest.raises(WaitTimeout):
            await c.wait_for("# ", timeout=0.05)
    asyncio.run(main())


def test_wait_for_wakes_on_later_output_split_across_chunks():
    async def main():
        c = Console(lambda b: None)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, c.feed, b"hel")
        loop.call_later(0.02, c.feed, b"lo world")
        m = await c.wait_for(b"hello w", timeout=1)
        assert m.group(0) == b"hello w"
    asyncio.run(main())


def test_timeout_error_shows_what_the_console_printed():
    async def main():
        c = Console(lambda b: None)
        c.feed(b"login: ")
        with pytest.raises(WaitTimeout, match="login") as info:
            await c.wait_for("# ", timeout=0.05)
        assert info.value.buffer == b"login: "
        assert isinstance(info.value, TimeoutError)
    asyncio.run(main())


def test_subscribers_get_chunks_and_replay_the_transcript():
    c = Console(lambda b: None)
    c.feed(b"early ")
    got = []
    unsubscribe = c.subscribe(got.append, replay=True)
    c.feed(b"late")
    unsubscribe()
    c.feed(b"gone")
    assert got == [b"early ", b"late"]
    assert c.transcript == b"early lategone"


def test_send_encodes_text_and_sendline_uses_carriage_return():
    sent = []
    c = Console(sent.append)
    c.send("ls")
    c.sendline(b"pwd")
    assert sent == [b"ls", b"pwd\r"]


def test_close_wakes_waiters_with_eof_and_refuses_input():
    async def main():
        c = Console(lambda b: None)
        task = asyncio.ensure_future(c.wait_for("never", timeout=5))
        await asyncio.sleep(0)
        c.close()
        with pytest.raises(ConsoleEOF):
            await task
        with pytest.raises(ConsoleEOF):
            c.send("x")
    asyncio.run(main())


def test_buffers_stay_bounded():
    c = Console(lambda b: None)
    for _ in range(40):
        c.feed(b"x" * 65536)
    assert len(c.transcript) == Console.max_transcript
    assert len(c._buffer) <= Console.max_buffer


def test_a_failing_subscriber_is_logged_and_loses_nothing_for_the_others_or_wait_for(caplog):
    async def main():
        c = Console(lambda b: None)
        got = []

        def broken(data):
            raise RuntimeError("terminal disposed")

        c.subscribe(broken)
        c.subscribe(got.append)
        c.feed(b"prompt# ")
        await c.wait_for("# ", timeout=1)
        c.feed(b"more")
        assert got == [b"prompt# ", b"more"] and c.transcript == b"prompt# more"
    asyncio.run(main())
    [record] = [r for r in caplog.records if r.name == "pyapptron.console"]
    assert record.levelno == logging.ERROR and "broken" in record.getMessage()
    assert isinstance(record.exc_info[1], RuntimeError)


def test_wait_quiet_waits_for_output_to_stop_even_once_the_transcript_is_full():
    async def main():
        c = Console(lambda b: None)
        c.feed(b"x" * Console.max_transcript)  # full: its length no longer changes
        loop = asyncio.get_running_loop()
        fed = []

        def feed():
            c.feed(b"y" * 1024)
            fed.append(time.monotonic())

        for i in range(1, 9):
            loop.call_later(0.05 * i, feed)
        await c.wait_quiet(0.2, timeout=5)
        assert len(fed) == 8 and time.monotonic() - fed[-1] >= 0.2
    asyncio.run(main())


def test_wait_quiet_times_out_while_output_keeps_coming_and_ends_with_the_console():
    async def main():
        c = Console(lambda b: None)
        loop = asyncio.get_running_loop()

        def chatter():
            c.feed(b"tick\n")
            loop.call_later(0.02, chatter)

        chatter()
        with pytest.raises(WaitTimeout, match="tick"):
            await c.wait_quiet(0.2, timeout=0.5)
        waiting = asyncio.ensure_future(c.wait_quiet(0.2, timeout=5))
        await asyncio.sleep(0)
        c.close()
        with pytest.raises(ConsoleEOF):
            await waiting
    asyncio.run(main())


# -- pexpect's vocabulary -------------------------------------------------------------------------
def test_expect_returns_the_index_of_the_pattern_that_matches_first_in_the_output():
    async def main():
        c = Console(lambda b: None)
        c.feed(b"login: password: ")
        # Both match: the one earlier in the output wins, whatever its place in the list.
        assert await c.expect([rb"password: ", rb"login: "], timeout=1) == 1
        assert (c.before, c.after, c.match.group(0)) == (b"", b"login: ", b"login: ")
        assert await c.expect([rb"password: ", rb"login: "], timeout=1) == 0
        c.feed(b"xy")
        assert await c.expect([rb"x", rb"xy"], timeout=1) == 0  # a tie at one place: the first listed
        assert await c.expect(rb"y", timeout=1) == 0  # a single pattern is index 0
    asyncio.run(main())


def test_expect_waits_for_later_output_like_wait_for():
    async def main():
        c = Console(lambda b: None)
        asyncio.get_running_loop().call_later(0.01, c.feed, b"Continue? [y/n] ")
        assert await c.expect([re.compile(rb"\[y/n\]"), rb"error"], timeout=1) == 0
        assert c.before == b"Continue? "
    asyncio.run(main())


def test_timeout_in_the_list_is_returned_instead_of_raised_and_the_output_becomes_before():
    async def main():
        c = Console(lambda b: None)
        c.feed(b"still working")
        assert await c.expect([rb"done", TIMEOUT], timeout=0.05) == 1
        assert (c.before, c.after, c.match) == (b"still working", TIMEOUT, TIMEOUT)
        with pytest.raises(WaitTimeout):
            await c.expect([rb"done"], timeout=0.05)
        # As in pexpect, a timeout leaves the output for the next expect
        assert await c.expect(rb"working", timeout=1) == 0 and c.before == b"still "
    asyncio.run(main())


def test_eof_in_the_list_is_returned_when_the_console_closes():
    async def main():
        c = Console(lambda b: None)
        c.feed(b"bye")
        asyncio.get_running_loop().call_later(0.01, c.close, "the program exited")
        assert await c.expect([rb"never", EOF], timeout=1) == 1
        assert (c.before, c.after, c.match) == (b"bye", EOF, EOF)
        assert await c.expect([EOF], timeout=1) == 0  # a closed console stays at its end
        with pytest.raises(ConsoleEOF):
            await c.expect(rb"never", timeout=1)
    asyncio.run(main())


def test_expect_exact_takes_strings_literally():
    async def main():
        c = Console(lambda b: None)
        c.feed(b"cost: $5 (approx.) ")
        assert await c.expect_exact(["$5 (approx.)", "never"], timeout=1) == 0
        assert c.before == b"cost: "
    asyncio.run(main())


def test_a_flood_of_output_with_a_waiter_is_scanned_in_place_not_copied_per_chunk():
    copies = []

    class CountedBuffer(bytearray):
        def __bytes__(self):
            copies.append(len(self))
            return bytes(memoryview(self))

    async def main():
        c = Console(lambda b: None)
        c._buffer = CountedBuffer()
        waiter = asyncio.ensure_future(c.wait_for(rb"@@END@@", timeout=5))
        await asyncio.sleep(0)
        for _ in range(300):  # past the buffer's cap
            c.feed(b"z" * 4095 + b"\n")
        c.feed(b"@@END@@ tail")
        m = await waiter
        # The match keeps its own bytes: trimming the buffer later does not move them.
        c.feed(b"more" * 1000)
        assert m.group(0) == b"@@END@@" and m.string.endswith(b"\n@@END@@ tail")
        assert len(c.before) <= Console.max_buffer and c.before.endswith(b"z\n")
    asyncio.run(main())
    assert len(copies) == 1  # the match's own bytes, once: none for the 300 chunks before it


@pytest.mark.parametrize("pattern", [rb"@@END@@", rb"# $", rb"x{2,5}y", rb"(?s)BEGIN.*END", rb"foo(?=bar)",
                                     rb"(?<=q)r+", rb"\d\d-\d\d", rb"a|bc|def"])
def test_a_waiter_finds_the_match_a_full_search_after_every_chunk_would_find(pattern):
    """Searching only where a new match can start (short patterns) must find exactly what
    searching the whole buffer after every chunk finds, however the output is chunked."""
    import random

    stream = (b"noise BEGIN" + b"x" * 3000 + b"IN.." + b"zz" * 500 + b"foo" + b"ba" + b"r qqrr 12-3" + b"4 xxxxy "
              + b"d" * 10 + b"ef # \n# " + b"END @@EN" + b"D@@ tail")
    regex = re.compile(pattern)
    for seed in range(20):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 60)))
        chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        # The model: after each chunk, search everything so far.
        expected, seen = None, b""
        for chunk in chunks:
            seen += chunk
            m = regex.search(seen)
            if m:
                expected = (m.span(), m.group(0))
                break

        async def main():
            c = Console(lambda b: None)
            # No chunk boundary gives a match (`# $` needs the end right after "# "): none comes.
            waiter = asyncio.ensure_future(c.wait_for(regex, timeout=5 if expected else 0.2))
            await asyncio.sleep(0)
            for chunk in chunks:
                c.feed(chunk)
                await asyncio.sleep(0)
                if waiter.done():
                    break
            m = await waiter
            return (len(c.before), len(c.before) + len(m.group(0))), m.group(0)

        if expected is None:
            with pytest.raises(WaitTimeout):
                asyncio.run(main())
        else:
            assert asyncio.run(main()) == expected, (pattern, seed)


def test_waiters_that_match_in_one_chunk_each_get_their_own_match():
    async def main():
        c = Console(lambda b: None)
        first = asyncio.ensure_future(c.wait_for(rb"alpha", timeout=1))
        second = asyncio.ensure_future(c.wait_for(rb"beta", timeout=1))
        await asyncio.sleep(0)
        c.feed(b"xx alpha yy beta zz")
        a, b = await first, await second
        assert (a.group(0), b.group(0)) == (b"alpha", b"beta")
        assert c.match.group(0) == b"beta" and c.before == b" yy "  # the last call to return
    asyncio.run(main())
