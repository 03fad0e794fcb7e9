"""Persistent layers carried by the guest agent, for engines whose guest keeps its own
files (c2w). Plain Python: unit-tested in CPython against the agent built natively.

v86's 9p tree lives in the page, so its adapter reads and rebuilds the layers itself
(emulators/v86/persist.mjs). On c2w the files live in the guest; the same layers go
into the same store (emulators/common/persist_store.mjs: IndexedDB, one atomic version
per sync) through three commands of the guest agent (emulators/agent/pyapptron-agent.c,
"persistent layers"):

- restore, before boot() returns: `--tree-list` says what the layers' paths hold now;
  what the store's record does not have is removed (on an overlay root: put back to the
  image's), then the record becomes one stream of operations for `--tree-apply`.
- sync: `--tree-list` lists the layers; a file whose (inode, ctime, size) the last sync
  or restore saw keeps its blob, the others are read in one `--tree-read`, and the store
  commits the new version. A sync that finds nothing changed writes nothing.

On an image whose root is an overlay on a read-only image (agent-x86_64: image.json
"persist_overlay"), a layer holds what differs from the image only: the walk is of the
overlay's upper directory, with its whiteouts (an image file deleted) and opaque
directories (one replaced whole), so the image's own /usr/local (Node.js, Claude Code)
is never copied into the store.

A record's entries are v86's ([path, mode, uid, gid, mtime, size, ref]); a whiteout is
an entry of mode S_IFCHR, an opaque directory a directory whose ref is "opaque".
"""

from __future__ import annotations

import stat
import struct
import time
import uuid
from collections.abc import Mapping
from typing import NamedTuple

from .errors import PersistError

AGENT = "pyapptron-agent"
FORMAT = 1
OPAQUE = "opaque"
WHITEOUT_MODE = stat.S_IFCHR
_LISTED = struct.Struct("<BIIIqQQqI")
_OP = struct.Struct("<BIIIqQI")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


class Listed(NamedTuple):
    """One entry of `pyapptron-agent --tree-list` (a tuple: a store has many)."""

    kind: str  # "d" directory, "o" opaque directory, "f" file, "l" symlink, "w" whiteout
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    ino: int
    ctime_ns: int
    path: str
    target: str

    @property
    def stamp(self) -> tuple[int, int, int]:
        """What changes whenever the file's bytes do."""
        return self.ino, self.ctime_ns, self.size

    def entry(self, ref: str | None) -> list:
        if self.kind == "w":
            return [self.path, WHITEOUT_MODE, 0, 0, self.mtime, 0, None]
        if self.kind == "l":
            ref = self.target
        elif self.kind == "o":
            ref = OPAQUE
        return [self.path, self.mode, self.uid, self.gid, self.mtime, self.size if self.kind == "f" else 0, ref]


def parse_listing(data: bytes) -> list[Listed]:
    out = []
    unpack, head, u32 = _LISTED.unpack_from, _LISTED.size, _U32.unpack_from
    pos, end = 0, len(data)
    while pos < end:
        kind, mode, uid, gid, mtime, size, ino, ctime, n = unpack(data, pos)
        pos += head
        path = data[pos:pos + n].decode("utf-8", "surrogateescape")
        pos += n
        (m,) = u32(data, pos)
        pos += 4
        target = data[pos:pos + m].decode("utf-8", "surrogateescape") if m else ""
        pos += m
        out.append(Listed(chr(kind), mode, uid, gid, mtime, size, ino, ctime, path, target))
    return out


def kind_of(entry: list) -> str:
    fmt = stat.S_IFMT(entry[1])
    if fmt == stat.S_IFDIR:
        return "o" if entry[6] == OPAQUE else "d"
    return {stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFCHR: "w"}.get(fmt, "?")


def _encode(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def encode_op(op: str, path: str, mode: int = 0, uid: int = 0, gid: int = 0, mtime: int = 0,
              target: str = "", data: bytes = b"") -> list[bytes]:
    raw = _encode(path)
    link = _encode(target)
    head = _OP.pack(ord(op), mode & 0xFFFFFFFF, uid, gid, mtime, len(data), len(raw)) + raw + _U32.pack(len(link)) + link
    return [head, data] if data else [head]


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def parse_failures(stdout: bytes, layer_of) -> list[dict]:
    damaged = []
    for line in stdout.decode("utf-8", "replace").splitlines():
        path, _, reason = line.partition("\t")
        damaged.append({"layer": layer_of(path), "path": path, "reason": f"could not be put back ({reason})"})
    return damaged


class GuestTree:
    """pyapptron.persist.PersistStore for a guest that keeps its own files.

    `store` is the page's LayerStoreHandle; `layers` name -> guest paths, outer layers
    first (Persist.resolved_layers()); `overlay` the image's {"upper": dir, "lower": dir}
    when its root is an overlay (mounted at "merged", default "/"). start(agent) restores the layers through the agent.
    """

    #: The guest's writes cannot be seen from the page: Machine says when it may have written.
    through_agent = True

    def __init__(self, store, layers: Mapping[str, tuple[str, ...]], overlay: Mapping[str, str] | None = None,
                 *, new_ref=lambda: uuid.uuid4().hex, clock=time.time):
        self._store = store
        self.layers = dict(layers)
        self.roots = sorted({p for paths in self.layers.values() for p in paths})
        self.upper = overlay.get("upper") if overlay else None
        self.lower = overlay.get("lower") if overlay else None
        self.merged = overlay.get("merged", "/") if overlay else "/"  # where the overlay is mounted
        self._new_ref = new_ref
        self._clock = clock
        self._agent = None
        self._known: dict[str, tuple[tuple[int, int, int], str]] = {}  # path -> (stamp, ref)
        self._committed: dict[str, list] = {}  # layer -> entries last committed or restored
        self._detached: set[str] = set()
        self._walking = False
        self._held = False
        self.restored: dict = {}

    @property
    def phase(self) -> str:
        return "walk" if self._walking else self._store.phase

    # -- the guest --------------------------------------------------------------------
    async def _tree(self, args: list[str], input: bytes | None = None, *, failures_ok: bool = False) -> bytes:
        if self._agent is None:
            raise PersistError("the persistent layers are not started yet (the guest agent is not ready)")
        r = await self._agent.exec([AGENT, *args], input=input)
        if r.status != 0 and not (failures_ok and r.status == 1):
            raise PersistError(f"the guest agent could not {args[0][7:]} the persistent layers (exit status "
                               f"{r.status}): {r.stderr.decode(errors='replace').strip()[-500:]}; the last "
                               "committed version stands. Rebuild the image if its agent is older than this "
                               "pyapptron (`python emulators/build.py`)")
        return r.stdout

    async def _list(self, roots: list[str]) -> list[Listed]:
        if not roots:
            return []
        args = ["--tree-list"] + (["--upper", self.upper, "--merged", self.merged] if self.upper else []) + list(roots)
        return parse_listing(await self._tree(args))

    def _by_layer(self, listing: list[Listed], layers):
        """(layer, entry) for a listing of `layers`' roots: the agent walks each root in
        turn, starting with the root itself, and leaves a nested root (one it was given)
        for its own walk; a root it was not given is walked as part of its parent."""
        owner = {root: name for name in layers for root in self.layers[name]}
        layer = None
        for item in listing:
            layer = owner.get(item.path, layer)
            yield layer, item

    def _layer_of(self, path: str) -> str | None:
        best, depth = None, -1
        for name, paths in self.layers.items():
            for root in paths:
                if under(path, root) and len(root) > depth:
                    best, depth = name, len(root)
        return best

    # -- restore ------------------------------------------------------------------------
    async def start(self, agent) -> None:
        """Put the store's layers into the guest (after a boot, a resume or a restore)."""
        self._agent = agent
        self._held = False
        self._known.clear()
        self.restored = await self._restore()

    def hold(self, held: bool) -> None:
        """While the guest's tree is being replaced (a restore in place): no sync, which
        would commit the old tree's files; start() ends it."""
        self._held = held

    async def _restore(self) -> dict:
        report: dict = {"layers": {}, "damaged": []}
        try:
            records = await self._store.records()
        except Exception as exc:
            report["damaged"].append({"layer": None, "path": None,
                                      "reason": f"the store's layer records cannot be read: {exc}"})
            return report
        # A layer's directories exist from the first boot on, stored or not (an image
        # need not have /persist).
        await self._agent_mkdirs()
        usable = {}
        for name in self.layers:
            record = records.get(name)
            if record is None:
                report["layers"][name] = {"files": 0, "bytes": 0, "restored": False}
            elif not _valid(record):
                report["damaged"].append({"layer": name, "path": None, "reason": "its record is not a layer record (damaged)"})
                report["layers"][name] = {"files": 0, "bytes": 0, "restored": False}
            elif bool(record.get("delta")) != bool(self.upper):
                # What differs from an overlay image is not a whole tree, and the reverse.
                report["damaged"].append({"layer": name, "path": None, "reason": (
                    "its record was made on another kind of machine (" + ("an image" if record.get("delta") else
                    "a whole tree") + "'s difference); it was left alone: use one store per engine and image kind")})
                report["layers"][name] = {"files": 0, "bytes": 0, "restored": False}
            else:
                usable[name] = record
        if not usable:
            return report
        refs = [e[6] for r in usable.values() for e in r["entries"] if kind_of(e) == "f" and e[5] > 0]
        blobs = await self._store.blobs(refs)
        current = await self._list([p for name in usable for p in self.layers[name]])
        ops: list[bytes] = []
        for name, record in usable.items():
            report["layers"][name] = self._layer_ops(name, record, list(self._by_layer(current, usable)), blobs, ops,
                                                     report["damaged"])
        if ops:
            args = ["--tree-apply"] + (["--lower", self.lower, "--merged", self.merged] if self.lower else [])
            out = await self._tree(args, b"".join(ops), failures_ok=True)
            report["damaged"] += parse_failures(out, self._layer_of)
        # What is in the guest now is what the store has: remember each file's stamp.
        committed = {name: {e[0]: e for e in record["entries"]} for name, record in usable.items()}
        for layer, item in self._by_layer(await self._list([p for name in usable for p in self.layers[name]]), usable):
            entry = committed.get(layer or "", {}).get(item.path)
            if item.kind == "f" and entry is not None and entry[5] == item.size and item.size:
                self._known[item.path] = (item.stamp, entry[6])
        self._committed.update({name: record["entries"] for name, record in usable.items()})
        return report

    async def _agent_mkdirs(self) -> None:
        r = await self._agent.exec(["mkdir", "-p", *self.roots])
        if r.status != 0:
            raise PersistError(f"the persistent layers' directories cannot be made in the guest: "
                               f"{r.stderr.decode(errors='replace').strip()}")

    def _layer_ops(self, name: str, record: dict, current: list, blobs: dict, ops: list, damaged: list) -> dict:
        """The operations that make the layer's paths what `record` says; `current` is
        (layer, entry) for what the guest has there now."""
        paths = self.layers[name]
        wanted = {e[0]: e for e in record["entries"] if any(under(e[0], r) for r in paths)}
        other_roots = [r for r in self.roots if r not in paths]
        # What the guest has there and the record has not goes first. (Where the record
        # has the path, its own operation replaces what is there.)
        gone: list[str] = []
        for layer, item in current:
            if layer != name or (gone and under(item.path, gone[-1])) or item.path in wanted:
                continue
            if item.kind == "d" and (self.upper or item.path in paths or any(under(r, item.path) for r in other_roots)):
                # A root, the way to another layer's, or (on an overlay) a directory the
                # image may have: its entries are put back one by one, not the whole
                # image's directory copied into the overlay.
                continue
            ops += encode_op("V" if self.upper else "R", item.path)
            gone.append(item.path)
        nested = [r for r in other_roots if any(under(r, p) for p in paths)]
        files = size = 0
        for entry in wanted.values():
            path, mode, uid, gid, mtime, length, ref = entry
            kind = kind_of(entry)
            if nested and any(under(path, r) for r in nested):
                continue  # another layer's, nested in this one's paths
            if kind == "w":
                ops += encode_op("R", path)
            elif kind in ("d", "o"):
                if kind == "o":
                    ops += encode_op("R", path)
                ops += encode_op("D", path, mode, uid, gid, mtime)
            elif kind == "l":
                ops += encode_op("L", path, mode, uid, gid, mtime, target=str(ref or ""))
            elif kind == "f":
                data = b""
                if length:
                    data = blobs.get(ref)
                    if data is None or len(data) != length:
                        damaged.append({"layer": name, "path": path,
                                        "reason": "its data is missing" if ref not in blobs else "its data is damaged"})
                        continue
                ops += encode_op("F", path, mode, uid, gid, mtime, data=data)
                files += 1
                size += length
        return {"files": files, "bytes": size, "restored": True, "committed": record.get("committed")}

    # -- sync ---------------------------------------------------------------------------
    async def sync(self) -> dict:
        if self._agent is None or self._held:
            raise PersistError("the persistent layers are not in the guest yet (the machine is starting or being "
                               "restored); sync once boot() or restore() has returned")
        started = self._clock()
        self._walking = True
        try:
            live = {name: paths for name, paths in self.layers.items() if name not in self._detached}
            listing = await self._list([p for paths in live.values() for p in paths])
            entries: dict[str, list] = {name: [] for name in live}
            to_read: list[Listed] = []
            refs: dict[str, str] = {}
            known_files = self._known
            for name, item in self._by_layer(listing, live):
                if name not in entries:
                    continue
                ref = None
                if item.kind == "f" and item.size:
                    known = known_files.get(item.path)
                    if known is not None and known[0] == item.stamp:
                        ref = known[1]
                    else:
                        to_read.append(item)
                        ref = refs[item.path] = self._new_ref()
                entries[name].append(item.entry(ref))
            data, pieces = await self._read(to_read, refs) if to_read else (b"", [])
        finally:
            self._walking = False
        # A file that vanished between the listing and the read is not in this version;
        # one that changed size meanwhile is kept as read (its stamp is not: the next
        # sync reads it again).
        read = {ref: size for ref, _, size in pieces}
        vanished = {item.path for item in to_read if refs[item.path] not in read}
        resized = {item.path: read[refs[item.path]] for item in to_read
                   if item.path not in vanished and read[refs[item.path]] != item.size}
        for name in entries:
            entries[name] = [e if e[0] not in resized else e[:5] + [resized[e[0]], e[6]]
                             for e in entries[name] if e[0] not in vanished]
        files = sum(1 for es in entries.values() for e in es if kind_of(e) == "f")
        size = sum(e[5] for es in entries.values() for e in es if kind_of(e) == "f")
        written = 0
        if pieces or any(self._committed.get(name) != es for name, es in entries.items()):
            now_ms = int(self._clock() * 1000)
            records = {name: {"format": FORMAT, "paths": list(live[name]), "entries": es, "committed": now_ms,
                              "delta": bool(self.upper)} for name, es in entries.items()}
            written = await self._store.write_version(records, data, pieces)
            self._committed.update(entries)
            for item in to_read:
                if item.path not in vanished and item.path not in resized:
                    self._known[item.path] = (item.stamp, refs[item.path])
        return {"files": files, "bytes": size, "written": written, "blobs": len(pieces),
                "seconds": self._clock() - started}

    async def _read(self, items: list[Listed], refs: dict[str, str]) -> tuple[bytes, list[tuple[str, int, int]]]:
        """The files' bytes as the agent sends them, and where each one is in them
        (ref, offset, size): the store copies the pieces out, Python does not."""
        stream = b"".join(_encode(item.path) + b"\0" for item in items)
        data = await self._tree(["--tree-read"], stream)
        pieces, pos = [], 0
        for item in items:
            (n,) = _I64.unpack_from(data, pos)
            pos += 8
            if n >= 0:
                pieces.append((refs[item.path], pos, n))
                pos += n
        return data, pieces

    # -- the rest of pyapptron.persist.PersistStore ----------------------------------------
    async def records(self) -> dict:
        return await self._store.records()

    async def blob(self, ref: str) -> bytes | None:
        return (await self._store.blobs([ref])).get(ref)

    async def import_entries(self, entries: list, blobs: dict[str, bytes]) -> list:
        ops: list[bytes] = []
        damaged: list = []
        for path, mode, uid, gid, mtime, length, ref in entries:
            kind = kind_of([path, mode, uid, gid, mtime, length, ref])
            if kind == "d":
                ops += encode_op("D", path, mode, uid, gid, mtime)
            elif kind == "l":
                ops += encode_op("L", path, mode, uid, gid, mtime, target=str(ref or ""))
            elif kind == "f":
                data = blobs.get(ref, b"") if length else b""
                if len(data) != length:
                    damaged.append(path)
                    continue
                ops += encode_op("F", path, mode, uid, gid, mtime, data=data)
        if ops:
            out = await self._tree(["--tree-apply"], b"".join(ops), failures_ok=True)
            damaged += [f["path"] for f in parse_failures(out, self._layer_of)]
        return damaged

    async def reset(self, layer: str) -> None:
        self._detached.add(layer)
        self._committed.pop(layer, None)
        await self._store.reset(layer)

    async def read_live(self, path: str) -> bytes | None:
        try:
            return await self._agent.read_file(path)
        except FileNotFoundError:
            return None

    async def write_live(self, path: str, data: bytes, mode: int) -> bool:
        try:
            await self._agent.write_file(path, data, mode)
        except FileNotFoundError:
            return False
        # The agent creates with `mode` only when the file is new; say it either way.
        r = await self._agent.exec(["chmod", f"{mode:o}", path])
        return r.status == 0

    async def estimate(self) -> dict | None:
        return await self._store.estimate()


def _valid(record) -> bool:
    return (isinstance(record, Mapping) and record.get("format") == FORMAT and isinstance(record.get("entries"), list)
            and isinstance(record.get("paths"), list)
            and all(isinstance(e, list) and len(e) == 7 and isinstance(e[0], str) and isinstance(e[1], int)
                    and isinstance(e[5], int) for e in record["entries"]))
