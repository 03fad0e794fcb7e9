"""Notebook helpers: the VM's console as an output that updates while a cell runs.

    async with pyapptron.notebook.ConsoleView(vm):
        await vm.run("make 2>&1 | tee /dev/ttyS0")

A live view, not a terminal: Jupyter routes a display update to the cell that is
running, so the view follows the console only while its own cell runs (an
`async with` block); afterwards it keeps the last screen. For typing into the console
use `vm.console.sendline(...)` and `await vm.console.wait_for(...)`, or the page terminal
(web/pyapptron.js).
"""

from __future__ import annotations

import asyncio
import html
import re

#: Terminal control sequences (colours, cursor moves, bracketed paste) are not text.
_CONTROL = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def screen_text(data: bytes, lines: int = 24) -> str:
    """The last `lines` lines of console output as plain text (control sequences removed)."""
    text = _CONTROL.sub(b"", data.replace(b"\r\n", b"\n")).decode("utf-8", "replace")
    # A carriage return without a newline redraws the line: keep what came after it.
    rows = [row.rsplit("\r", 1)[-1] for row in text.split("\n")]
    return "\n".join(rows[-lines:])


class ConsoleView:
    """Shows `vm.console` in the cell's output and redraws it (at most every `interval`
    seconds) while the `async with` block runs; a final redraw at the end."""

    def __init__(self, vm, *, lines: int = 24, interval: float = 0.25, display=None):
        self.vm = vm
        self.lines = lines
        self.interval = interval
        self._display = display
        self._handle = None
        self._unsubscribe = None
        self._pending = None

    def _html(self) -> dict:
        text = screen_text(self.vm.console.transcript, self.lines)
        return {"text/html": "<pre class='pyapptron-console' style='background:#111;color:#ddd;padding:6px;"
                             f"margin:0'>{html.escape(text)}</pre>", "text/plain": text}

    def _show(self) -> None:
        self._pending = None
        self._handle.update(self._html(), raw=True)

    def _changed(self, _data: bytes) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.interval, self._show)

    async def __aenter__(self) -> ConsoleView:
        display = self._display
        if display is None:
            from IPython.display import display  # the notebook kernel has IPython
        self._handle = display(self._html(), raw=True, display_id=True)
        self._unsubscribe = self.vm.console.subscribe(self._changed)
        return self

    async def __aexit__(self, *exc) -> None:
        self._unsubscribe()
        if self._pending is not None:
            self._pending.cancel()
        self._show()
