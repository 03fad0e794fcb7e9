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

    async def save_state(self) -> tuple:
        raise NotSupported(_WHY)

    async def restore_state(self, payload, compression, sha256):
        raise NotSupported(_WHY)

    async def stop(self) -> None:
        raise NotSupported(_WHY)


def default_assets_url() -> str | None:
    return None


async def fetch_json(url: str) -> dict:
    raise NotSupported(_WHY)


async def fetch_bytes(url: str) -> bytes:
    raise NotSupported(_WHY)


async def probe_urls(urls, text=False) -> dict:
    raise NotSupported(_WHY)


def js_bytes(value):
    return value


def payload_bytes(payload) -> bytes:
    return bytes(payload)


async def snapshot_put(name: str, meta_json: str, payload) -> int:
    raise NotSupported(_WHY)


async def snapshot_get(name: str):
    raise NotSupported(_WHY)


async def snapshot_list() -> list:
    raise NotSupported(_WHY)


async def snapshot_delete(name: str) -> bool:
    raise NotSupported(_WHY)


def page_machine():
    return None


async def start_emulator(adapter_url, options, on_console, on_agent, on_persist_changed=None,
                        resume_payload=None, resume_compression="gzip",
                        resume_sha256=None, on_exit=None) -> EmulatorHandle:
    raise NotSupported(_WHY)


def attach_terminal(console, terminal, *, on_resize=None):
    raise NotSupported(_WHY)
