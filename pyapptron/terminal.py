"""Attach an xterm.js terminal to a machine's console (inside the page)."""

from __future__ import annotations

import asyncio

from .errors import MachineClosed
from .machine import Machine


def attach(vm: Machine, terminal, *, resize_guest: bool = True):
    """Show `vm.console` in an xterm.js `Terminal` and send its keystrokes to the guest.

    The terminal first gets the console's transcript so far; then the emulator's output
    and the keystrokes flow between the terminal and the emulator in the browser itself
    (vm.console still sees every byte: transcript, wait_for, subscribers). When the
    terminal resizes, the guest's tty is told its new size (a serial line cannot carry
    it). Returns a function that detaches the terminal.
    """
    pending: dict[str, asyncio.Task] = {}

    def on_resize(cols: int, rows: int) -> None:
        if not resize_guest or vm.closed:
            return
        previous = pending.get("resize")
        if previous is not None and not previous.done():
            previous.cancel()
        pending["resize"] = asyncio.ensure_future(_resize(vm, cols, rows))

    if vm.closed:
        raise MachineClosed("this machine was shut down; boot a new one to show it in a terminal")
    return vm.backend.attach_terminal(terminal, vm.console.transcript, on_resize)


async def _resize(vm: Machine, cols: int, rows: int) -> None:
    await asyncio.sleep(0.1)  # coalesce the burst of events a window drag makes
    try:
        await vm.resize_console(cols, rows)
    except Exception:
        pass  # a resize is best effort; the terminal keeps working at the old size
