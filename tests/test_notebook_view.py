"""Unit tests (CPython) of the notebook console view: plain text from terminal output,
and redraws while the block runs."""

import asyncio

from pyapptron.console import Console
from pyapptron.notebook import ConsoleView, screen_text


def test_screen_text_drops_control_sequences_and_keeps_the_last_lines():
    raw = b"\x1b[32mroot@pyapptron\x1b[39m:~# ls\r\nfile\r\n\x1b[?2004hprogress 10%\rprogress 99%\r\n"
    assert screen_text(raw) == "root@pyapptron:~# ls\nfile\nprogress 99%\n"
    assert screen_text(b"a\nb\nc\n", lines=2) == "c\n"


class FakeHandle:
    def __init__(self):
        self.updates = []

    def update(self, data, raw):
        self.updates.append(data["text/plain"])


class FakeVM:
    def __init__(self):
        self.console = Console(lambda data: None)


def test_the_view_redraws_while_output_comes_and_once_at_the_end():
    vm, handle = FakeVM(), FakeHandle()
    shown = []

    def display(data, raw, display_id):
        shown.append(data["text/plain"])
        return handle

    async def main():
        async with ConsoleView(vm, interval=0.01, display=display):
            vm.console.feed(b"tick 1\r\n")
            await asyncio.sleep(0.05)
            vm.console.feed(b"tick 2\r\n")
            vm.console.feed(b"tick 3\r\n")  # within one interval: one redraw
            await asyncio.sleep(0.05)
        vm.console.feed(b"after\r\n")  # not shown: the block is over
    asyncio.run(main())
    assert shown == [""]
    assert handle.updates == ["tick 1\n", "tick 1\ntick 2\ntick 3\n", "tick 1\ntick 2\ntick 3\n"]
