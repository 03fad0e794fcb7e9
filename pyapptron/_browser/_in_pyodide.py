"""The browser seam inside Pyodide: fetch, start a JS emulator adapter, attach xterm.js.

`InPyodide` (bottom) is this module's BrowserLayer (pyapptron._browser._interface)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable

import js  # type: ignore[import-not-found]
from pyodide.code import run_js  # type: ignore[import-not-found]
from pyodide.ffi import JsException, JsProxy, create_proxy, to_js  # type: ignore[import-not-found]

from ..errors import AssetsMissing, BootError
from . import _interface
from ._interface import BrowserLayer, typed_error, walk_page_value

_import = run_js("(url) => import(url)")

# The console's output goes to the attached terminals straight from the adapter, then to
# Python (transcript, wait_for); typing goes from the terminal straight to the adapter.
# A terminal never waits on Python, and no byte crosses into Python and back for it.
_TERMINAL_JS = run_js("""({
  tee(toPython) {
    const terminals = new Set();
    const sink = (data) => {
      toPython(data);  // first: a broken terminal must not cost Python (wait_for, exec) a byte
      for (const t of terminals) {
        try {
          t.write(data);  // each chunk is a fresh array: safe to share
        } catch (e) {
          terminals.delete(t);  // disposed without being detached
          console.warn("pyapptron: a terminal that failed to write was detached:", e);
        }
      }
    };
    sink.terminals = terminals;
    return sink;
  },
  typing(adapter) {
    const encoder = new TextEncoder();
    return (text) => adapter.send("console", encoder.encode(text));
  },
})""")


def _js_object(value):
    return to_js(value, dict_converter=js.Object.fromEntries)


def default_assets_url() -> str | None:
    """The page's choice (set by web/pyapptron.js), else /assets/ on this origin."""
    configured = getattr(js.globalThis, "pyapptronAssetsUrl", None)
    if configured:
        return str(configured)
    location = getattr(js.globalThis, "location", None)
    if location is None:
        return None
    return str(js.URL.new("/assets/", location.href).href)


async def fetch_json(url: str) -> dict:
    response = await js.fetch(url)
    if not response.ok:
        raise AssetsMissing(
            f"{url} answered HTTP {response.status}: build the assets with "
            "`python emulators/build.py` and serve them (`python -m pyapptron serve`)"
        )
    return json.loads(await response.text())


async def fetch_bytes(url: str) -> bytes:
    response = await js.fetch(url)
    if not response.ok:
        raise AssetsMissing(f"{url} answered HTTP {response.status}: build the assets with `python emulators/build.py`")
    return (await response.arrayBuffer()).to_bytes()


async def fetch_buffer(url: str):
    response = await js.fetch(url)
    if not response.ok:
        raise AssetsMissing(f"{url} answered HTTP {response.status}: build the assets with `python emulators/build.py`")
    return js.Uint8Array.new(await response.arrayBuffer())


def buffer_size(buffer) -> int:
    return int(buffer.byteLength)


def buffer_bytes(buffer, start: int, end: int) -> bytes:
    return buffer.subarray(start, end).to_bytes()


def buffer_from(buffer, start: int):
    return buffer.subarray(start)


async def probe_urls(urls: list[str], text: bool = False) -> dict[str, tuple[int, str | None]]:
    """{url: (HTTP status, body text if text=True and found)} for each URL, fetched at
    once. Status 0: the request itself failed (no server, blocked by the page's policy)."""

    async def one(url: str):
        try:
            response = await js.fetch(url, _js_object({"method": "GET" if text else "HEAD", "cache": "no-store"}))
        except Exception:
            return url, (0, None)
        body = await response.text() if (text and response.ok) else None
        return url, (int(response.status), body)

    return dict(await asyncio.gather(*(one(u) for u in urls)))


def _js_buffer(data):
    """Python bytes as a JS Uint8Array (a copy); a JS buffer as it is (no copy)."""
    return to_js(data) if isinstance(data, (bytes, bytearray, memoryview)) else data


def _from_js(value):
    """One value of a page's script: a typed array as bytes, anything else as it is."""
    return value.to_bytes() if isinstance(value, JsProxy) and hasattr(value, "to_bytes") else value


def from_page(value):
    return walk_page_value(value, _from_js)


def payload_bytes(payload) -> bytes:
    """A snapshot payload (bytes, or a JS Uint8Array) as bytes."""
    return payload if isinstance(payload, (bytes, bytearray, memoryview)) else payload.to_bytes()


# Snapshots kept in this origin's IndexedDB: "meta" (name -> {meta, size}) and "data"
# (name -> the gzip'd state), written in one transaction so that neither is ever alone.
_SNAPSHOT_STORE_JS = r"""
(() => {
  const open = () => new Promise((resolve, reject) => {
    const req = indexedDB.open("pyapptron-snapshots", 1);
    req.onupgradeneeded = () => { req.result.createObjectStore("meta"); req.result.createObjectStore("data"); };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const done = (tx) => new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = tx.onabort = () => reject(tx.error || new Error("IndexedDB transaction aborted"));
  });
  const ask = (req) => new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  async function withDb(fn) { const db = await open(); try { return await fn(db); } finally { db.close(); } }
  return {
    put: (name, meta, payload) => withDb(async (db) => {
      const tx = db.transaction(["meta", "data"], "readwrite");
      tx.objectStore("data").put(payload, name);
      tx.objectStore("meta").put({ meta, size: payload.byteLength }, name);
      await done(tx);
      return payload.byteLength;
    }),
    get: (name) => withDb(async (db) => {
      const tx = db.transaction(["meta", "data"], "readonly");
      const [meta, data] = await Promise.all([ask(tx.objectStore("meta").get(name)), ask(tx.objectStore("data").get(name))]);
      return meta && data ? [meta.meta, data] : undefined;
    }),
    list: () => withDb(async (db) => {
      const all = await ask(db.transaction("meta", "readonly").objectStore("meta").getAll());
      return all.map((m) => [m.meta, m.size]);
    }),
    remove: (name) => withDb(async (db) => {
      const tx = db.transaction(["meta", "data"], "readwrite");
      const found = await ask(tx.objectStore("meta").getKey(name));
      tx.objectStore("meta").delete(name);
      tx.objectStore("data").delete(name);
      await done(tx);
      return found !== undefined;
    }),
  };
})()
"""
_snapshot_store = None


def _snapshots():
    global _snapshot_store
    if _snapshot_store is None:
        _snapshot_store = run_js(_SNAPSHOT_STORE_JS)
    return _snapshot_store


async def snapshot_put(name: str, meta_json: str, payload) -> int:
    return int(await _snapshots().put(name, meta_json, _js_buffer(payload)))


async def snapshot_get(name: str):
    found = await _snapshots().get(name)
    if found is None:
        return None
    return str(found[0]), found[1]


async def snapshot_list() -> list:
    return [(str(m), int(size)) for m, size in (await _snapshots().list())]


async def snapshot_delete(name: str) -> bool:
    return bool(await _snapshots().remove(name))


def page_machine():
    """The Machine the page booted for its own terminal (web/index.html's `window.sandbox`), if any."""
    sandbox = getattr(js.globalThis, "sandbox", None)
    return None if sandbox is None else sandbox.vm


def _js_error(exc: BaseException) -> BaseException:
    """An adapter's JS error as the pyapptron error its `name` says (JS_ERRORS); any
    other exception unchanged."""
    if isinstance(exc, JsException):
        typed = typed_error(str(exc.name), str(exc.message))
        if typed is not None:
            return typed
    return exc


def _typed_errors(method):
    """Async JS calls whose errors arrive typed."""

    @functools.wraps(method)
    async def call(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except JsException as exc:
            typed = _js_error(exc)
            if typed is exc:
                raise
            raise typed from None

    return call


class PersistHandle(_interface.PersistHandle):
    """The adapter's persistent store (emulators/v86/persist.mjs), in Python terms."""

    def __init__(self, session, restored):
        self._session = session
        self.restored = restored.to_py() if hasattr(restored, "to_py") else {}

    @property
    def phase(self) -> str:
        return str(self._session.phase)

    @_typed_errors
    async def sync(self) -> dict:
        return (await self._session.sync()).to_py()

    @_typed_errors
    async def records(self) -> dict:
        return (await self._session.records()).to_py()

    @_typed_errors
    async def blob(self, ref: str) -> bytes | None:
        data = await self._session.readBlob(ref)
        return None if data is None else data.to_bytes()

    @_typed_errors
    async def import_entries(self, entries: list, blobs: dict[str, bytes]) -> list:
        # A JS Map of ref -> Uint8Array.
        damaged = await self._session.importEntries(to_js(entries), to_js(blobs, dict_converter=js.Map.new))
        return damaged.to_py()

    @_typed_errors
    async def reset(self, layer: str) -> None:
        await self._session.reset(layer)

    @_typed_errors
    async def read_live(self, path: str) -> bytes | None:
        data = await self._session.readLive(path)
        return None if data is None else data.to_bytes()

    @_typed_errors
    async def write_live(self, path: str, data: bytes, mode: int) -> bool:
        return bool(await self._session.writeLive(path, to_js(data), mode))

    @_typed_errors
    async def estimate(self) -> dict | None:
        found = await self._session.estimate()
        return None if found is None else found.to_py()


class LayerStoreHandle(_interface.LayerStoreHandle):
    """The layers' store alone (emulators/common/persist_store.mjs), in Python terms."""

    def __init__(self, store):
        self._store = store

    @property
    def phase(self) -> str:
        return str(self._store.phase)

    @_typed_errors
    async def records(self) -> dict:
        return (await self._store.records()).to_py()

    @_typed_errors
    async def blobs(self, refs: list[str]) -> dict[str, bytes | None]:
        packed = await self._store.blobsPacked(to_js(list(refs)))
        data = memoryview(packed.data.to_bytes())
        out, pos = {}, 0
        for ref, size in zip(refs, packed.sizes.to_py()):
            if size < 0:
                out[ref] = None
            else:
                out[ref] = bytes(data[pos:pos + size])
                pos += size
        return out

    @_typed_errors
    async def write_version(self, records: dict, data: bytes, pieces: list[tuple[str, int, int]]) -> int:
        refs, offsets, sizes = (list(column) for column in zip(*pieces)) if pieces else ([], [], [])
        return int(await self._store.writeVersionPacked(
            to_js(records, dict_converter=js.Object.fromEntries), to_js(data), to_js(refs), to_js(offsets),
            to_js(sizes)))

    @_typed_errors
    async def reset(self, layer: str) -> None:
        await self._store.reset(layer)

    @_typed_errors
    async def estimate(self) -> dict | None:
        found = await self._store.estimate()
        return None if found is None else found.to_py()


class EmulatorHandle(_interface.EmulatorHandle):
    """A running JS emulator adapter: bytes in, bytes out, stop."""

    def __init__(self, adapter, proxies, console_sink):
        self._adapter = adapter
        self._proxies = proxies
        self._console_sink = console_sink
        session = getattr(adapter, "persist", None)
        present = session is not None and type(session).__name__ != "JsNull"
        self.persist = PersistHandle(session, getattr(adapter, "restored", None)) if present else None
        store = getattr(adapter, "layerStore", None)
        self.layer_store = LayerStoreHandle(store) if store is not None else None

    @property
    def engine(self):
        return getattr(self._adapter, "emulator", None)

    def send(self, channel: str, data: bytes) -> None:
        self._adapter.send(channel, to_js(data))

    def close_channel(self, channel: str) -> None:
        self._adapter.close(channel)

    def attach_terminal(self, terminal, replay: bytes, on_resize=None):
        if replay:
            terminal.write(to_js(replay))
        terminals = self._console_sink.terminals
        terminals.add(terminal)
        disposables = [terminal.onData(_TERMINAL_JS.typing(self._adapter))]
        resized = None
        if on_resize is not None:
            resized = create_proxy(lambda size: on_resize(int(size.cols), int(size.rows)))
            disposables.append(terminal.onResize(resized))
            on_resize(int(terminal.cols), int(terminal.rows))

        def detach() -> None:
            terminals.delete(terminal)
            for d in disposables:
                d.dispose()
            if resized is not None:
                resized.destroy()

        return detach

    def log(self) -> str:
        log = getattr(self._adapter, "log", None)
        return str(log()) if log is not None else ""

    def timings(self) -> dict:
        timings = getattr(self._adapter, "timings", None)
        return timings.to_py() if timings is not None and hasattr(timings, "to_py") else {}

    @_typed_errors
    async def restore_state(self, payload, compression: str, sha256: str | None) -> dict | None:
        report = await self._adapter.restoreState(_snapshot_object(payload, compression, sha256))
        return report.to_py() if report is not None and hasattr(report, "to_py") else None

    @_typed_errors
    async def save_state(self) -> tuple:
        """(payload: a JS Uint8Array of the gzip'd state, state bytes, seconds)."""
        saved = await self._adapter.saveState()
        return saved.payload, int(saved.stateBytes), float(saved.seconds)

    async def stop(self) -> None:
        try:
            await self._adapter.stop()
        finally:
            for proxy in self._proxies:
                proxy.destroy()
            self._proxies = []


def _snapshot_object(payload, compression: str, sha256: str | None):
    """What the adapter takes as a snapshot: {payload: Uint8Array, compression, sha256?}."""
    snapshot = js.Object.new()
    snapshot.payload = _js_buffer(payload)
    snapshot.compression = compression
    if sha256:
        snapshot.sha256 = sha256
    return snapshot


def _bytes_sink(callback: Callable[[bytes], None]):
    def sink(chunk) -> None:
        callback(chunk.to_bytes())

    return create_proxy(sink)


async def start_emulator(adapter_url: str, options: dict, on_console, on_agent,
                         on_persist_changed=None, resume_payload=None,
                         resume_compression: str = "gzip", resume_sha256: str | None = None,
                         on_exit=None) -> EmulatorHandle:
    """Import the emulator's JS adapter and start it; output arrives in batches, not bytes.

    resume_payload: a snapshot's payload (bytes or a JS Uint8Array) to start from.
    on_exit(code, log): the emulator's program ended by itself (adapters that can: c2w).
    """
    try:
        module = await _import(adapter_url)
    except Exception as exc:  # a JsException: network or syntax
        raise AssetsMissing(f"cannot load the emulator adapter {adapter_url}: {exc}") from exc
    proxies = [_bytes_sink(on_console), _bytes_sink(on_agent)]
    sinks = js.Object.new()
    sinks.console = console_sink = _TERMINAL_JS.tee(proxies[0])
    sinks.agent = proxies[1]
    if on_persist_changed is not None:
        proxies.append(create_proxy(lambda: on_persist_changed()))
        sinks.persist_changed = proxies[-1]
    if on_exit is not None:
        proxies.append(create_proxy(lambda code, log: on_exit(int(code), str(log))))
        sinks.exit = proxies[-1]

    def destroy_proxies(*_):
        for proxy in proxies:
            proxy.destroy()

    js_options = _js_object(options)
    if resume_payload is not None:
        js_options.resume = _snapshot_object(resume_payload, resume_compression, resume_sha256)
    promise = module.start(js_options, sinks)
    try:
        adapter = await promise
    except asyncio.CancelledError:
        # Boot timed out or was cancelled while loading: stop the emulator once it
        # exists, then let go of the callbacks, so nothing keeps running unseen.
        promise.then(lambda a: a.stop()).finally_(destroy_proxies)
        raise
    except Exception as exc:
        destroy_proxies()
        typed = _js_error(exc)
        if typed is not exc:
            raise typed from None
        raise BootError(f"the emulator did not start: {exc}") from exc
    return EmulatorHandle(adapter, proxies, console_sink)


class InPyodide(BrowserLayer):
    default_assets_url = staticmethod(default_assets_url)
    fetch_json = staticmethod(fetch_json)
    fetch_bytes = staticmethod(fetch_bytes)
    probe_urls = staticmethod(probe_urls)
    fetch_buffer = staticmethod(fetch_buffer)
    buffer_size = staticmethod(buffer_size)
    buffer_bytes = staticmethod(buffer_bytes)
    buffer_from = staticmethod(buffer_from)
    from_page = staticmethod(from_page)
    payload_bytes = staticmethod(payload_bytes)
    snapshot_put = staticmethod(snapshot_put)
    snapshot_get = staticmethod(snapshot_get)
    snapshot_list = staticmethod(snapshot_list)
    snapshot_delete = staticmethod(snapshot_delete)
    page_machine = staticmethod(page_machine)
    start_emulator = staticmethod(start_emulator)
