"""What the browser seam offers, written once (micropip's CompatibilityLayer is the model).

Two implementations: `_in_pyodide.InPyodide` (the real one, inside a page) and
`_stand_in.StandIn` (CPython: the same names, each raising NotSupported where a browser
is needed). Both subclass BrowserLayer and are instantiated once at import, so a name
missing from either fails at once instead of drifting. Plain Python: no `js` here.

Errors cross the seam one way: an adapter throws a JS Error whose `name` is the
pyapptron error class (`e.name = "NotIsolated"`, message without a prefix), and
`typed_error` maps that name through JS_ERRORS. Nothing searches messages.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from ..errors import IncompleteBuild, NotIsolated, PersistLocked, PersistQuotaExceeded, PyapptronError, SnapshotCorrupt

Sink = Callable[[bytes], None]

_QUOTA_ADVICE = ("the browser's storage quota for this page is full; nothing was lost (the last committed "
                 "version stands). Free space with vm.persist.reset(layer) or delete files, then sync again")

#: A JS error's `name` -> the pyapptron error it becomes (given the JS message).
JS_ERRORS: dict[str, Callable[[str], PyapptronError]] = {
    "NotIsolated": NotIsolated,
    "IncompleteBuild": lambda message: IncompleteBuild(message, [message]),
    "SnapshotCorrupt": SnapshotCorrupt,
    "PersistLocked": PersistLocked,
    "PersistQuotaExceeded": lambda message: PersistQuotaExceeded(f"{_QUOTA_ADVICE} ({message})"),
}


def walk_page_value(value, convert: Callable):
    """from_page's walk through lists, tuples and dicts (plain Python); `convert` turns
    each other value (a JS one in a page) into Python's."""
    if isinstance(value, dict):
        return {k: walk_page_value(v, convert) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(walk_page_value(v, convert) for v in value)
    return convert(value)


def typed_error(name: str | None, message: str) -> PyapptronError | None:
    """The pyapptron error for a JS error of this name, or None for any other error."""
    make = JS_ERRORS.get(name or "")
    return None if make is None else make(message)


class PersistHandle(abc.ABC):
    """The adapter's persistent store (emulators/v86/persist.mjs), in Python terms.
    Its errors arrive typed (PersistQuotaExceeded, ...)."""

    #: What the store restored at start: {"files": n, "damaged": [...], ...}.
    restored: dict
    #: The adapter sees every write to its tree (pyapptron.persist.PersistStore).
    through_agent = False

    async def start(self, agent) -> None:
        """The adapter restored the layers before the guest ran: nothing to do."""

    def hold(self, held: bool) -> None:
        """The adapter replaces its tree and the layers together (restore_state)."""

    @property
    @abc.abstractmethod
    def phase(self) -> str:
        """"idle", or where a sync is: "walk", "blobs", "commit"."""

    @abc.abstractmethod
    async def sync(self) -> dict: ...

    @abc.abstractmethod
    async def records(self) -> dict: ...

    @abc.abstractmethod
    async def blob(self, ref: str) -> bytes | None: ...

    @abc.abstractmethod
    async def import_entries(self, entries: list, blobs: dict[str, bytes]) -> list: ...

    @abc.abstractmethod
    async def reset(self, layer: str) -> None: ...

    @abc.abstractmethod
    async def read_live(self, path: str) -> bytes | None: ...

    @abc.abstractmethod
    async def write_live(self, path: str, data: bytes, mode: int) -> bool: ...

    @abc.abstractmethod
    async def estimate(self) -> dict | None: ...


class LayerStoreHandle(abc.ABC):
    """The persistent layers' store alone (emulators/common/persist_store.mjs), for an
    engine whose guest keeps its own files (c2w): pyapptron.persist_guest fills it
    through the guest agent. Its errors arrive typed (PersistQuotaExceeded, ...)."""

    @property
    @abc.abstractmethod
    def phase(self) -> str:
        """"idle", or where a write_version is: "blobs", "commit"."""

    @abc.abstractmethod
    async def records(self) -> dict: ...

    @abc.abstractmethod
    async def blobs(self, refs: list[str]) -> dict[str, bytes | None]:
        """ref -> its bytes; None where the store holds something else (damaged)."""

    @abc.abstractmethod
    async def write_version(self, records: dict, data: bytes, pieces: list[tuple[str, int, int]]) -> int:
        """The new blobs (ref, offset, size: pieces of `data`), then the records,
        atomically; returns the bytes written."""

    @abc.abstractmethod
    async def reset(self, layer: str) -> None: ...

    @abc.abstractmethod
    async def estimate(self) -> dict | None: ...


class EmulatorHandle(abc.ABC):
    """A running JS emulator adapter: bytes in, bytes out, state, stop."""

    #: The adapter's persistent store, where boot(persist=...) asked for one and the
    #: adapter keeps the files itself (v86: its 9p tree lives in the page).
    persist: PersistHandle | None = None
    #: The store alone, where the guest keeps the files (c2w): see LayerStoreHandle.
    layer_store: LayerStoreHandle | None = None

    @property
    @abc.abstractmethod
    def engine(self) -> Any:
        """The emulator's own JS object (v86's V86), for diagnostics only; None where the
        adapter does not expose one."""

    @abc.abstractmethod
    def send(self, channel: str, data: bytes) -> None:
        """Bytes to a channel ("console", "agent")."""

    @abc.abstractmethod
    def close_channel(self, channel: str) -> None:
        """End of input on a channel (adapters that have it: c2w)."""

    @abc.abstractmethod
    def attach_terminal(self, terminal, replay: bytes, on_resize=None) -> Callable[[], None]:
        """Connect an xterm.js Terminal to the console in the browser itself: the emulator's
        output reaches it directly (after `replay`, what the console showed so far) and its
        typing goes to the emulator directly; on_resize(cols, rows) is called now and on
        each resize. Returns a function that detaches it."""

    @abc.abstractmethod
    def log(self) -> str:
        """The emulator's own recent messages (adapters that keep them), else ''."""

    @abc.abstractmethod
    def timings(self) -> dict:
        """The adapter's boot phases in seconds."""

    @abc.abstractmethod
    async def save_state(self) -> tuple[Any, int, float]:
        """(payload, state bytes, seconds): the payload stays a JS buffer inside a page."""

    @abc.abstractmethod
    async def restore_state(self, payload, compression: str, sha256: str | None) -> dict | None:
        """Put the running machine back to a snapshot; what the persistent store restored."""

    @abc.abstractmethod
    async def stop(self) -> None: ...


class BrowserLayer(abc.ABC):
    """Everything above `_browser` reaches the browser through these names only
    (`pyapptron._browser` exports each of them)."""

    @staticmethod
    @abc.abstractmethod
    def default_assets_url() -> str | None:
        """The page's choice (set by web/pyapptron.js), else /assets/ on this origin."""

    @staticmethod
    @abc.abstractmethod
    async def fetch_json(url: str) -> dict: ...

    @staticmethod
    @abc.abstractmethod
    async def fetch_bytes(url: str) -> bytes: ...

    @staticmethod
    @abc.abstractmethod
    async def fetch_buffer(url: str):
        """The body as a buffer that stays where it is (a JS ArrayBuffer in a page): read
        ranges with buffer_bytes, hand the rest on with buffer_from (no copies)."""

    @staticmethod
    @abc.abstractmethod
    def buffer_size(buffer) -> int: ...

    @staticmethod
    @abc.abstractmethod
    def buffer_bytes(buffer, start: int, end: int) -> bytes:
        """A copy of buffer[start:end] as bytes (a header, say)."""

    @staticmethod
    @abc.abstractmethod
    def buffer_from(buffer, start: int):
        """buffer[start:] without a copy: what a snapshot's payload is handed on as."""

    @staticmethod
    @abc.abstractmethod
    async def probe_urls(urls: list[str], text: bool = False) -> dict[str, tuple[int, str | None]]:
        """{url: (HTTP status, body text if text=True and found)}; status 0: unreachable."""

    @staticmethod
    @abc.abstractmethod
    def from_page(value):
        """A value a page's script passed (web/pyapptron.js) in Python terms: JS typed
        arrays, also inside lists and dicts, become bytes. boot() converts its
        arguments with it, so nothing above this layer sees a JS value."""

    @staticmethod
    @abc.abstractmethod
    def payload_bytes(payload) -> bytes:
        """A snapshot payload (bytes, or a JS Uint8Array) as bytes."""

    @staticmethod
    @abc.abstractmethod
    async def snapshot_put(name: str, meta_json: str, payload) -> int: ...

    @staticmethod
    @abc.abstractmethod
    async def snapshot_get(name: str): ...

    @staticmethod
    @abc.abstractmethod
    async def snapshot_list() -> list: ...

    @staticmethod
    @abc.abstractmethod
    async def snapshot_delete(name: str) -> bool: ...

    @staticmethod
    @abc.abstractmethod
    def page_machine():
        """The Machine the page booted for its own terminal, if any."""

    @staticmethod
    @abc.abstractmethod
    async def start_emulator(adapter_url: str, options: dict, on_console: Sink, on_agent: Sink,
                             on_persist_changed=None, resume_payload=None, resume_compression: str = "gzip",
                             resume_sha256: str | None = None, on_exit=None) -> EmulatorHandle:
        """Import the emulator's JS adapter and start it; output arrives in batches."""

