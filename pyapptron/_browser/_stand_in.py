"""CPython stand-in for the browser seam: the same interface, clear errors."""

from __future__ import annotations

from ..errors import NotSupported
from . import _interface
from ._interface import BrowserLayer

_WHY = (
    "this needs a browser: run it inside Pyodide (a page, a notebook kernel), or drive a "
    "headless browser from CPython with `python -m pyapptron run -- CMD` or "
    "pyapptron.host.RemoteSession"
)


def _needs_browser(*args, **kwargs):
    raise NotSupported(_WHY)


async def _needs_browser_async(*args, **kwargs):
    raise NotSupported(_WHY)


class EmulatorHandle(_interface.EmulatorHandle):
    """Never made in CPython (start_emulator refuses); here so the names match."""

    engine = None
    send = close_channel = attach_terminal = log = timings = _needs_browser
    save_state = restore_state = stop = _needs_browser_async


class StandIn(BrowserLayer):
    # Outside a browser nothing can be fetched, with or without an assets URL: say that.
    default_assets_url = staticmethod(_needs_browser)
    from_page = staticmethod(lambda value: value)  # CPython has no JS values
    payload_bytes = staticmethod(lambda payload: bytes(payload))
    page_machine = staticmethod(lambda: None)
    fetch_json = fetch_bytes = fetch_buffer = probe_urls = staticmethod(_needs_browser_async)
    # Buffers are bytes-like here (what the unit tests hand in)
    buffer_size = staticmethod(lambda buffer: len(buffer))
    buffer_bytes = staticmethod(lambda buffer, start, end: bytes(buffer[start:end]))
    buffer_from = staticmethod(lambda buffer, start: memoryview(buffer)[start:])
    snapshot_put = snapshot_get = snapshot_list = snapshot_delete = staticmethod(_needs_browser_async)
    start_emulator = staticmethod(_needs_browser_async)
