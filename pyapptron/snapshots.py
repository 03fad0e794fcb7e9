"""Machine snapshots: what a snapshot is bound to, its byte format, and the store.

A snapshot is an emulator's saved machine state (gzip-compressed) plus a small JSON
header, `meta`, that says what it was made from. Its `binding` names the emulator,
the image, the guest's memory, its kernel command line and a hash of every file and
option the emulator was started with: a state restored into anything else would run
garbage, so resume refuses it (SnapshotMismatch) and says what differs.

Where snapshots live:
- `await vm.snapshot("name")` keeps it in this origin's IndexedDB (`list()`,
  `delete(name)`, `read(name)` below); `await vm.snapshot(to_bytes=True)` returns the
  bytes instead (the format below; `boot(resume=those_bytes)` takes them back).
- Each built image ships a boot snapshot (`images/NAME/boot.snapshot`, made by
  `python emulators/build.py` with a headless browser): boot() resumes from it unless
  `cold=True`, or cold-boots with a warning when it is missing, damaged or stale.

Byte format (version 1): MAGIC (16 bytes), u32 little-endian length of the meta JSON,
the meta JSON (UTF-8), then the payload: the emulator's state, gzip'd (v86: one gzip
stream, or zstd in the shipped boot snapshots; c2w: its state in segments gzip'd
separately, emulators/common/snapshot.mjs).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import posixpath
import re
import struct
import time
import warnings
from dataclasses import dataclass
from typing import Any

from . import _browser
from .errors import (AssetsMissing, InvalidOption, NotSupported, PyapptronError, SnapshotCorrupt, SnapshotMismatch,
                     SnapshotNotFound)

MAGIC = b"PYAPPTRON-SNAP\x00\x01"
FORMAT = 1
_LENGTH = struct.Struct("<I")
_MAX_META = 1 << 20
#: The console output a snapshot keeps, so a resumed terminal shows what was on it.
CONSOLE_TAIL_BYTES = 16 * 1024
_NAME = re.compile(r"^[^\x00-\x1f\x7f/]{1,200}$")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.strip() != name:
        raise InvalidOption(
            f"a snapshot name must be 1 to 200 printable characters without '/' or outer "
            f"spaces, not {name!r}"
        )
    return name


def pack(meta: dict, payload: bytes) -> bytes:
    """meta + payload -> the snapshot's bytes."""
    header = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LENGTH.pack(len(header)), header, payload])


def unpack(data: bytes | bytearray | memoryview) -> tuple[dict, memoryview]:
    """The snapshot's bytes -> (meta, payload). SnapshotCorrupt if they are not one."""
    view = memoryview(data)
    meta, start = unpack_header(lambda a, b: bytes(view[a:b]), len(view))
    return meta, view[start:]


def unpack_header(read, size: int) -> tuple[dict, int]:
    """(meta, where the payload starts) of a snapshot of `size` bytes, reading only its
    header through read(start, end) -> bytes: the payload need not be copied anywhere."""
    if size < len(MAGIC) + 4 or read(0, len(MAGIC)) != MAGIC:
        raise SnapshotCorrupt("these bytes are not a pyapptron snapshot (no snapshot header): "
                              "pass what vm.snapshot(to_bytes=True) returned")
    (length,) = _LENGTH.unpack(read(len(MAGIC), len(MAGIC) + 4))
    start = len(MAGIC) + 4
    if length > _MAX_META or start + length > size:
        raise SnapshotCorrupt("the snapshot's header is damaged (its length is out of range)")
    try:
        meta = json.loads(read(start, start + length))
    except ValueError as exc:
        raise SnapshotCorrupt(f"the snapshot's header is damaged: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("binding"), dict):
        raise SnapshotCorrupt(
            f"the snapshot's header is not format {FORMAT} (made by another pyapptron version?): "
            "make it again with vm.snapshot()"
        )
    return meta, start + length


def digest(value: Any) -> str:
    """A stable hash of plain data (what a binding keeps of the emulator's options)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_BINDING_WORDS = {
    "emulator": "emulator", "image": "image", "memory_mib": "memory_mib",
    "cmdline": "kernel command line", "emulator_version": "emulator version",
    "config": "emulator files and options",
}


def mismatch(made: dict, wanted: dict) -> str | None:
    """None when a snapshot bound to `made` can resume in a machine configured as `wanted`;
    else what differs, in words."""
    if made == wanted:
        return None
    order = builtins.list(_BINDING_WORDS)
    parts = []
    for key in sorted(set(made) | set(wanted), key=lambda k: order.index(k) if k in order else len(order)):
        if made.get(key) != wanted.get(key):
            word = _BINDING_WORDS.get(key, key)
            if key == "config":
                parts.append(f"the {word} differ (the assets were rebuilt or the backend changed)")
            else:
                parts.append(f"{word}: snapshot {made.get(key)!r}, this boot {wanted.get(key)!r}")
    return "; ".join(parts)


def check_binding(meta: dict, wanted: dict, label: str) -> None:
    why = mismatch(meta["binding"], wanted)
    if why is not None:
        raise SnapshotMismatch(
            f"{label} cannot resume here: {why}. Boot with the options it was made "
            "with, or boot cold (cold=True) and make a new snapshot."
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """One saved snapshot, as list() and vm.snapshot() describe it."""

    name: str
    emulator: str
    image: str
    memory_mib: int | None
    created: float  # seconds since the epoch
    size: int  # compressed bytes
    state_bytes: int | None  # the emulator state before compression

    @classmethod
    def from_meta(cls, meta: dict, size: int, name: str | None = None) -> SnapshotInfo:
        binding = meta.get("binding", {})
        return cls(name=name or meta.get("name", ""), emulator=binding.get("emulator", ""),
                   image=binding.get("image", ""), memory_mib=binding.get("memory_mib"),
                   created=float(meta.get("created", 0)), size=int(size),
                   state_bytes=meta.get("state_bytes"))


def default_name(image: str, now: float | None = None) -> str:
    return f"{image}-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))


# -- the store in this origin's IndexedDB ------------------------------------------------

async def list() -> builtins.list[SnapshotInfo]:  # noqa: A001 - pyapptron.snapshots.list()
    """The snapshots kept in this origin, oldest first."""
    found = []
    for meta_json, size in await _browser.snapshot_list():
        meta = json.loads(meta_json)
        found.append(SnapshotInfo.from_meta(meta, size))
    return sorted(found, key=lambda s: (s.created, s.name))


async def delete(name: str) -> None:
    """Forget a kept snapshot. SnapshotNotFound if there is none of that name."""
    if not await _browser.snapshot_delete(check_name(name)):
        raise SnapshotNotFound(f"no snapshot {name!r} in this origin; pyapptron.snapshots.list() names them")


async def read(name: str) -> bytes:
    """A kept snapshot as bytes (the format above): to save elsewhere, or to boot(resume=...) in another origin."""
    meta, payload = await load(name)
    return to_bytes(meta, payload)


async def load(name: str) -> tuple[dict, Any]:
    """(meta, payload) of a kept snapshot; the payload stays a browser object."""
    found = await _browser.snapshot_get(check_name(name))
    if found is None:
        raise SnapshotNotFound(f"no snapshot {name!r} in this origin; pyapptron.snapshots.list() names them")
    meta_json, payload = found
    try:
        meta = json.loads(meta_json)
    except ValueError:
        raise SnapshotCorrupt(f"snapshot {name!r}: its header is damaged; delete it and make it again") from None
    return meta, payload


def to_bytes(meta: dict, payload: Any) -> bytes:
    return pack(meta, _browser.payload_bytes(payload))


async def save(name: str, meta: dict, payload: Any) -> SnapshotInfo:
    meta = {**meta, "name": check_name(name)}
    size = await _browser.snapshot_put(name, json.dumps(meta, sort_keys=True), payload)
    return SnapshotInfo.from_meta(meta, size)


async def chosen(backend, resume) -> Resume:
    """The snapshot boot(resume=...) or vm.restore() names: kept (a name) or bytes; checked."""
    if not backend.capabilities.snapshot:
        raise NotSupported(f"{backend.name} cannot resume from a snapshot (capabilities.snapshot is false)")
    if isinstance(resume, str):
        label = f"snapshot {resume!r}"
        meta, payload = await load(resume)
    elif isinstance(resume, (bytes, bytearray, memoryview)):
        label = "the snapshot (bytes)"
        meta, payload = unpack(resume)
    else:
        raise InvalidOption(f"a snapshot is a name (str) or snapshot bytes, not {type(resume).__name__}")
    check_binding(meta, backend.snapshot_binding(), label)
    return Resume(label, meta, payload)


async def shipped(backend, assets, spec: dict) -> Resume | None:
    """The image's boot snapshot, or None (with a warning) when it cannot serve."""
    label = f"boot snapshot of image {spec['name']!r}"
    entry = spec.get("snapshot")
    try:
        if not entry:
            raise AssetsMissing("the image was built without one")
        # ~20 MB: only its header is read into Python; the payload stays a browser buffer.
        data = await _browser.fetch_buffer(assets.require(posixpath.normpath(f"images/{spec['name']}/{entry['file']}")))
        meta, start = unpack_header(lambda a, b: _browser.buffer_bytes(data, a, b), _browser.buffer_size(data))
        payload = _browser.buffer_from(data, start)
        check_binding(meta, backend.snapshot_binding(), label)
    except PyapptronError as exc:
        warnings.warn(f"{label} cannot be used ({exc}); booting cold. Build it with "
                      "`python emulators/build.py`.", RuntimeWarning, stacklevel=3)
        return None
    return Resume(label, meta, payload, fallback_cold=True)


@dataclass
class Resume:
    """What boot() resumes from: a label for messages, the meta, the payload (bytes or a
    browser object), and whether a failure may fall back to a cold boot (the shipped one)."""

    label: str
    meta: dict
    payload: Any
    fallback_cold: bool = False

    @property
    def console_tail(self) -> bytes:
        """What the console showed when the snapshot was made."""
        return base64.b64decode(self.meta.get("console_tail", ""))
