"""Persistent storage: which guest paths survive a reload, and the policy for keeping them.

`boot(..., persist=True)` (or a store name, or a Persist) keeps named layers of the
guest's file tree in the browser's IndexedDB, under the page's origin:

    home      /root
    packages  /usr/local (npm -g, pip, make install), /root/.local (pip --user),
              /root/.npm, /root/.cache/pip, /var/cache/apt/archives, /var/cache/apk
    persist   /persist (a directory of your own)

plus any layer you name (`Persist(paths={"work": "/srv/work"})`). The store keeps one
committed version of each layer; `await vm.persist.sync()` makes a new one, atomically.

This module is plain Python (unit-tested in CPython): the option, the layers, the
auto-sync policy, usage, and tar export/import. Every engine keeps the layers in the
same store (emulators/common/persist_store.mjs); how they reach it is the engine's:
v86's adapter walks its 9p tree in the page (emulators/v86/persist.mjs: the bytes never
cross into Python except for export/import); on c2w the guest keeps its own files and
the guest agent carries them (pyapptron.persist_guest).
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import re
import stat
import tarfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import InvalidOption, PersistDamaged, PersistError

DEFAULT_STORE = "default"
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "home": ("/root",),
    "packages": ("/usr/local", "/root/.local", "/root/.npm", "/root/.cache/pip",
                 "/var/cache/apt/archives", "/var/cache/apk"),
    "persist": ("/persist",),
}
#: After a change, wait this long for quiet before syncing by itself ...
AUTO_SYNC_DELAY_S = 2.0
#: ... but never let changes wait longer than this.
AUTO_SYNC_MAX_DELAY_S = 10.0

_STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LAYER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# Paths the guest cannot keep: kernel file systems, the init's own mounts.
_RESERVED = ("/", "/proc", "/sys", "/dev", "/run", "/tmp", "/mnt", "/bin", "/sbin", "/lib", "/etc", "/usr")


@dataclass(frozen=True)
class Persist:
    """What to keep: a store name and its layers (name -> guest directories).

    `Persist()` is what `persist=True` means; `Persist("proj")` what `persist="proj"`
    means. `paths` adds layers of your own; `layers` replaces the default set.
    """

    store: str = DEFAULT_STORE
    paths: Mapping[str, str | tuple[str, ...] | list[str]] = field(default_factory=dict)
    layers: Mapping[str, tuple[str, ...] | list[str]] | None = None

    @classmethod
    def from_option(cls, value: Any) -> Persist | None:
        """boot()'s `persist=` option: False/None, True, a store name, or a Persist."""
        if value is None or value is False:
            return None
        if value is True:
            spec = cls()
        elif isinstance(value, str):
            spec = cls(store=value)
        elif isinstance(value, Persist):
            spec = value
        else:
            raise InvalidOption(f"persist must be True, a store name or pyapptron.Persist(...), not {value!r}")
        spec.resolved_layers()  # validate now, before anything boots
        return spec

    def resolved_layers(self) -> dict[str, tuple[str, ...]]:
        """name -> normalised absolute paths, validated; outer layers first."""
        if not isinstance(self.store, str) or not _STORE_NAME.match(self.store):
            raise InvalidOption(
                f"persist store name {self.store!r} is not valid: use 1 to 64 letters, digits, '.', '_' or '-'"
            )
        base = DEFAULT_LAYERS if self.layers is None else self.layers
        merged: dict[str, tuple[str, ...]] = {}
        for source in (base, self.paths):
            if not isinstance(source, Mapping):
                raise InvalidOption(f"persist layers must be a mapping of name to paths, not {source!r}")
            for name, paths in source.items():
                if not isinstance(name, str) or not _LAYER_NAME.match(name):
                    raise InvalidOption(f"persist layer name {name!r} is not valid: use a-z, 0-9, '_' or '-'")
                if name in merged:
                    raise InvalidOption(f"persist layer {name!r} is defined twice")
                merged[name] = tuple(_guest_dir(p, name) for p in ([paths] if isinstance(paths, str) else paths))
                if not merged[name]:
                    raise InvalidOption(f"persist layer {name!r} has no paths")
        owner: dict[str, str] = {}
        for name, paths in merged.items():
            for path in paths:
                if path in owner:
                    raise InvalidOption(f"{path} is in both persist layers {owner[path]!r} and {name!r}")
                owner[path] = name
        return dict(sorted(merged.items(), key=lambda kv: min(p.count("/") for p in kv[1])))

    def js_options(self) -> dict:
        return {"store": self.store,
                "layers": [{"name": n, "paths": list(p)} for n, p in self.resolved_layers().items()]}

    def all_paths(self) -> list[str]:
        return sorted({p for paths in self.resolved_layers().values() for p in paths})


def _guest_dir(path: Any, layer: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidOption(f"persist layer {layer!r}: {path!r} is not an absolute guest path")
    normal = posixpath.normpath(path)
    if normal.startswith("//"):
        normal = normal[1:]
    if any(c in normal for c in ", \t\n"):
        raise InvalidOption(f"persist layer {layer!r}: {path!r} may not contain spaces or commas")
    if normal in _RESERVED or normal.startswith(("/proc/", "/sys/", "/dev/", "/run/", "/tmp/")):
        raise InvalidOption(
            f"persist layer {layer!r}: {normal} cannot be kept (a system or temporary directory); "
            "pick a directory of your own, such as /persist or /srv/NAME"
        )
    return normal


# ---- what the adapter gives back ------------------------------------------------------

@dataclass(frozen=True)
class SyncResult:
    """One committed version: what the layers hold, and what this sync had to write."""

    files: int
    bytes: int
    written_bytes: int
    seconds: float


@dataclass(frozen=True)
class LayerUsage:
    files: int
    bytes: int
    paths: tuple[str, ...]
    committed: float | None  # seconds since the epoch, None if never synced


class PersistStore(Protocol):
    """What a backend offers for the layers: pyapptron._browser.PersistHandle (v86: the
    adapter's own) or pyapptron.persist_guest.GuestTree (c2w: through the guest agent)."""

    #: What start() restored: {"layers": {...}, "damaged": [...]}.
    restored: dict
    #: True where the guest's writes cannot be seen from the page (the files live in the
    #: guest): Machine says when the guest may have written. False where the store sees
    #: every write and the guest's own caches must be flushed before a sync.
    through_agent: bool

    async def start(self, agent) -> None:
        """Once the guest agent answers: put the layers into the guest where the adapter
        has not already (after a boot, a resume, and a restore in place)."""

    def hold(self, held: bool) -> None:
        """True while the guest's tree is replaced (a restore in place), until start()
        (or False, when the restore did not happen): no sync may commit the old tree."""

    async def sync(self) -> dict: ...
    async def records(self) -> dict: ...
    async def blob(self, ref: str) -> bytes | None: ...
    async def import_entries(self, entries: list, blobs: dict[str, bytes]) -> list: ...
    async def reset(self, layer: str) -> None: ...
    async def read_live(self, path: str) -> bytes | None: ...
    async def write_live(self, path: str, data: bytes, mode: int) -> bool: ...
    async def estimate(self) -> dict | None: ...


def damage_errors(report: Mapping) -> list[PersistDamaged]:
    """The adapter's restore report -> one typed error per damaged layer or file."""
    out = []
    for d in report.get("damaged") or []:
        where = f"layer {d['layer']!r}" if d.get("layer") else "the store"
        what = f"{d['path']}: " if d.get("path") else ""
        out.append(PersistDamaged(
            f"persistent {where}: {what}{d['reason']}. The rest was restored; to drop the damaged "
            f"part, run `await vm.persist.sync()` (keeps what was restored) or `reset({d.get('layer')!r})`",
            layer=d.get("layer"), path=d.get("path"),
        ))
    return out


class PersistedFiles:
    """`vm.persist`: sync, usage, export/import, reset; and the automatic sync policy."""

    def __init__(self, spec: Persist, store: PersistStore, *, guest_sync=None, clock=time.monotonic):
        self.spec = spec
        self.layers = spec.resolved_layers()
        self._store = store
        self._guest_sync = guest_sync  # flushes the guest's page cache (its root may cache writes)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._first_change: float | None = None
        self._auto_task: asyncio.Task | None = None
        self.auto_sync_errors: list[BaseException] = []
        self.damaged: list[PersistDamaged] = []
        self.restored: dict = {}
        self._started = False  # a sync waits until the layers are in the guest ...
        self._changed_early = False  # ... and a change seen before then is synced after

    async def start(self, agent) -> None:
        """The guest is ready: the store puts the layers back where its adapter has not
        (c2w), then what came back, and what was damaged, is known."""
        async with self._lock:
            await self._store.start(agent)
        self._started = True
        if self._changed_early:
            self._changed_early = False
            self.changed()
        seen = {str(err) for err in self.damaged}
        self.damaged = damage_errors(self._store.restored or {})
        for err in self.damaged:
            if str(err) not in seen:  # a restore in place reports the same damage again
                warnings.warn(str(err), RuntimeWarning, stacklevel=2)
        self.restored = dict((self._store.restored or {}).get("layers", {}))

    @property
    def store(self) -> str:
        return self.spec.store

    @property
    def through_agent(self) -> bool:
        return bool(getattr(self._store, "through_agent", False))

    # -- sync -----------------------------------------------------------------------
    async def sync(self) -> SyncResult:
        """Commit the layers now. When it returns, a reload or browser restart keeps them."""
        self._cancel_timer()
        async with self._lock:
            if self._guest_sync is not None:
                await self._guest_sync()
            try:
                r = await self._store.sync()
            except Exception as exc:
                raise _typed(exc) from None
        return SyncResult(files=r["files"], bytes=r["bytes"], written_bytes=r["written"], seconds=r["seconds"])

    def hold(self) -> None:
        """The guest's tree is about to be replaced (a restore in place): no sync, by
        itself or asked for, until start() puts the store's layers back (or release())."""
        self._cancel_timer()
        self._started = False
        self._store.hold(True)

    def release(self) -> None:
        """The replacement did not happen: the guest's tree is the one it was."""
        self._store.hold(False)
        self._started = True
        if self._changed_early:
            self._changed_early = False
            self.changed()

    def changed(self) -> None:
        """The adapter saw the guest change the tree: sync after a short quiet spell."""
        if not self._started:
            self._changed_early = True  # the layers are being put back: after start()
            return
        loop = asyncio.get_event_loop()
        now = self._clock()
        if self._first_change is None:
            self._first_change = now
        self._cancel_timer(keep_first=True)
        delay = min(AUTO_SYNC_DELAY_S, max(0.0, self._first_change + AUTO_SYNC_MAX_DELAY_S - now))
        self._timer = loop.call_later(delay, self._auto_sync)

    def _auto_sync(self) -> None:
        self._timer = None
        self._first_change = None
        if self._auto_task is None or self._auto_task.done():
            self._auto_task = asyncio.ensure_future(self._run_auto_sync())

    async def _run_auto_sync(self) -> None:
        try:
            await self.sync()
        except Exception as exc:  # kept for the user to see; the last committed version stands
            self.auto_sync_errors.append(exc)
            warnings.warn(f"automatic persist sync failed: {exc}", RuntimeWarning, stacklevel=1)

    def _cancel_timer(self, keep_first: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not keep_first:
            self._first_change = None

    async def close(self) -> None:
        self._cancel_timer()
        if self._auto_task is not None and not self._auto_task.done():
            try:
                await self._auto_task
            except Exception:
                pass

    # -- inspection -------------------------------------------------------------------
    async def usage(self) -> dict[str, Any]:
        """Per layer: files, bytes, paths, when committed; plus the origin's quota estimate."""
        records = await self._store.records()
        layers = {}
        for name, paths in self.layers.items():
            record = records.get(name)
            entries = record.get("entries", []) if isinstance(record, Mapping) else []
            files = [e for e in entries if stat.S_ISREG(e[1])]
            committed = record.get("committed") if isinstance(record, Mapping) else None
            layers[name] = LayerUsage(len(files), sum(e[5] for e in files), paths,
                                      None if committed is None else committed / 1000)
        return {"store": self.store, "layers": layers, "origin": await self._store.estimate()}

    # -- export / import --------------------------------------------------------------
    async def export(self) -> bytes:
        """The committed layers as a tar archive (paths relative to /), modes and mtimes kept."""
        records = await self._store.records()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in self.layers:
                record = records.get(name)
                if not isinstance(record, Mapping):
                    continue
                for path, mode, uid, gid, mtime, size, ref in record.get("entries", []):
                    if not (stat.S_ISDIR(mode) or stat.S_ISLNK(mode) or stat.S_ISREG(mode)):
                        continue  # an overlay's whiteout (c2w): an image file deleted, not a file
                    data = None
                    if stat.S_ISREG(mode) and size:
                        data = await self._store.blob(ref)
                        if data is None or len(data) != size:
                            raise PersistDamaged(f"persistent layer {name!r}: {path}: its data is damaged; "
                                                 "export stopped (nothing was changed)", layer=name, path=path)
                    tar.addfile(_tarinfo(path, mode, uid, gid, mtime, size, ref), None if data is None else io.BytesIO(data))
        return buf.getvalue()

    async def import_(self, data: bytes) -> int:
        """Put a tar archive's files into the running machine's layers, then sync.

        Every member must fall inside a layer; otherwise nothing is imported. Returns
        the number of entries written.
        """
        entries, blobs = tar_entries(data, self.layers)
        async with self._lock:
            damaged = await self._store.import_entries(entries, blobs)
        if damaged:
            raise PersistError(f"import could not place {len(damaged)} entries: {damaged[:3]}")
        if self._guest_sync is not None:
            await self._guest_sync(drop_caches=True)  # a guest that caches its root must read it anew
        await self.sync()
        return len(entries)

    # -- the files themselves, from Python in the page ------------------------------------
    async def read_file(self, path: str) -> bytes:
        """A file in the persisted tree, read directly (no guest agent; fast for large files)."""
        self._inside_layers(path)
        data = await self._store.read_live(posixpath.normpath(path))
        if data is None:
            raise FileNotFoundError(2, "no such file in the persisted tree", path)
        return data

    async def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Create or replace a file in the persisted tree; the guest sees it, the next sync keeps it."""
        self._inside_layers(path)
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidOption(f"data must be bytes or str, not {type(data).__name__}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise InvalidOption(f"mode must be a permission number like 0o644, not {mode!r}")
        if not await self._store.write_live(posixpath.normpath(path), bytes(data), mode):
            raise FileNotFoundError(2, "its directory does not exist in the persisted tree", path)
        if self._guest_sync is not None:
            await self._guest_sync(drop_caches=True)  # a guest that caches its root must read it anew
        if self.through_agent:
            self.changed()  # the store does not see this write by itself

    def _inside_layers(self, path: str) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidOption(f"a persisted path must be absolute, not {path!r}")
        normal = posixpath.normpath(path)
        roots = [p for paths in self.layers.values() for p in paths]
        if not any(normal.startswith(r + "/") for r in roots):
            raise InvalidOption(f"{path} is not inside a persist layer ({', '.join(sorted(roots))}); "
                                "use vm.read_file / vm.write_file for the rest of the guest")

    async def reset(self, layer: str) -> None:
        """Forget one layer in the store (the others stay). This machine keeps its files but no
        longer syncs that layer; the next boot shows the image's own content there."""
        if layer not in self.layers:
            raise InvalidOption(f"no persist layer {layer!r}; layers: {', '.join(self.layers)}")
        async with self._lock:
            await self._store.reset(layer)


def _typed(exc: BaseException) -> BaseException:
    # The browser seam types what it knows (PersistQuotaExceeded, ...); the rest says what stands.
    if isinstance(exc, PersistError):
        return exc
    return PersistError(f"persist sync failed: {exc}; the last committed version stands")


def _tarinfo(path, mode, uid, gid, mtime, size, ref) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.lstrip("/") or ".")
    info.mode = stat.S_IMODE(mode)
    info.uid, info.gid, info.mtime = uid, gid, mtime
    if stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, ref or ""
    else:
        info.size = size
    return info


def tar_entries(data: bytes, layers: Mapping[str, tuple[str, ...]]) -> tuple[list, dict[str, bytes]]:
    """A tar archive -> the adapter's entries (parents first) and their bytes, validated."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidOption(f"import_ takes the bytes of a tar archive, not {type(data).__name__}")
    roots = [p for paths in layers.values() for p in paths]
    entries, blobs, outside = [], {}, []
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:*") as tar:
            for n, member in enumerate(tar):
                # normpath drops a "./" prefix and clamps ".." at the root; lstrip("/") keeps
                # "//x" from staying "//x" (POSIX normpath keeps two leading slashes).
                path = posixpath.normpath("/" + member.name.lstrip("/"))
                if not any(path == r or path.startswith(r + "/") for r in roots):
                    outside.append(path)
                    continue
                if member.isdir():
                    mode, size, ref = stat.S_IFDIR | member.mode, 0, None
                elif member.issym():
                    mode, size, ref = stat.S_IFLNK | member.mode, 0, member.linkname
                elif member.isreg():
                    content = tar.extractfile(member).read()
                    mode, size = stat.S_IFREG | member.mode, len(content)
                    ref = f"import-{n}" if size else None
                    if size:
                        blobs[ref] = content
                else:
                    continue  # devices, fifos, hard links: not kept by layers
                entries.append([path, mode, member.uid, member.gid, int(member.mtime), size, ref])
    except tarfile.TarError as exc:
        raise InvalidOption(f"import_ needs a tar archive (as vm.persist.export() makes): {exc}") from None
    if outside:
        raise InvalidOption(
            f"{len(outside)} archive members are outside every persist layer (first: {outside[0]}); "
            f"layers: {dict(layers)}. Nothing was imported"
        )
    entries.sort(key=lambda e: (e[0].count("/"), e[0]))
    return entries, blobs
