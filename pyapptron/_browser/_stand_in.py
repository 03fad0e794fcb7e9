"""CPython stand-in for the browser seam: same names, clear errors."""

from __future__ import annotations

from ..errors import NotSupported

_WHY = (
    "this needs a browser: run it inside Pyodide (a page, a notebook kernel), or drive a "
    "headless browser from CPython with `python -m pyapptron run -- CMD` or "
    "pyapptron.host.RemoteSession"
)


class EmulatorHandle:
    persist = None

    def send(self, channel: str, data: bytes) -> None:
        raise NotSupported(_WHY)

    async def stop(self) -> None:
        raise NotSupported(_WHY)


def default_assets_url() -> str | None:
    return None


async def fetch_json(url: str) -> dict:
    raise NotSupported(_WHY)


def page_machine():
    return None


async def start_emulator(adapter_url, options, on_console, on_agent, on_persist_changed=None) -> EmulatorHandle:
    raise NotSupported(_WHY)


def attach_terminal(console, terminal, *, on_resize=None):
    raise NotSupported(_WHY)
