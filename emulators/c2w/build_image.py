#!/usr/bin/env python3
"""The c2w step of the asset command: the x86_64 engine and its "debian-x86_64" image.

    python3 emulators/build.py --only c2w

build(out_dir, cache_dir, manifest) (called by emulators/build.py) writes
  OUT/c2w/bochs.wasm                  Bochs 3.0 for WASI (build_bochs.py), + bochs.wasm.json
  OUT/images/debian-x86_64/           the guest (build_guest64.py): BIOS, kernel.bin.gz,
                                      initrd.gz, disk.img, bochsrc.txt, guest.json and
                                      image.json (what pyapptron.backends.c2w reads)
  OUT/c2w/probe.wasm                  wasi_probe.c built with Debian's clang + wasi-libc:
                                      the stand-in module that tests the WASI glue
Both are cached (under CACHE/c2w) by the hash of every input; the pins are the
manifest's "c2w" section.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import build_bochs  # noqa: E402
import build_guest64  # noqa: E402
from buildlib import installed_version, run, sha256_file, write_atomic  # noqa: E402

IMAGE = "debian-x86_64"
PROBE_SRC = HERE / "wasi_probe.c"


def _gzip_kernel(image_dir: Path, cache: Path, force: bool = False) -> str:
    """kernel.bin is ~60 MB of load segments, mostly zeros: ship it gzip'd (~10 MB);
    the worker inflates it with the browser's DecompressionStream."""
    raw = image_dir / "kernel.bin"
    digest = sha256_file(raw)
    cached = cache / f"kernel-{digest[:20]}.bin.gz"
    if force or not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        with open(raw, "rb") as src, gzip.GzipFile(tmp, "wb", compresslevel=6, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.replace(cached)
    shutil.copyfile(cached, image_dir / "kernel.bin.gz")
    raw.unlink()
    return "kernel.bin.gz"


def build_probe(out: Path, cache: Path, force: bool = False) -> str:
    """wasi_probe.c -> OUT/c2w/probe.wasm with clang-14 --target=wasm32-wasi (no C++, no EH)."""
    key = hashlib.sha256((sha256_file(PROBE_SRC) + " " + (installed_version("clang-14") or "")
                          + " " + (installed_version("wasi-libc") or "")).encode()).hexdigest()[:20]
    cached = cache / f"probe-{key}.wasm"
    if force or not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        run(["clang-14", "--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-Wall", "-o", tmp, PROBE_SRC],
            capture=True, what="compiling wasi_probe.c")
        tmp.replace(cached)
    dest = out / "c2w" / "probe.wasm"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    return f"probe.wasm {dest.stat().st_size} bytes"


def write_image_record(image_dir: Path, name: str, guest: dict, cache: Path, *, lazy: dict | None = None,
                       sizes: dict | None = None, extra: dict | None = None, force: bool = False) -> dict:
    """image.json: the backend's view of an image (pyapptron/backends/c2w.py), from the
    guest.json make_guest wrote; the flat kernel is shipped gzip'd. lazy: {guest path:
    {size, chunk, base, chunks}} for disks the worker reads chunk by chunk."""
    files = dict(guest["files"])
    if "/kernel.bin" in files:
        files["/kernel.bin"] = _gzip_kernel(image_dir, cache, force)
    image = {
        "name": name,
        "emulator": "c2w",
        "arch": "x86_64",
        "agent": guest["agent_tty"],
        "agent_fd": guest["agent_fd"],
        "hostchan": guest.get("hostchan", False),
        "network": guest.get("network", False),
        # Bochs saves and restores a running machine (patch 0012): snapshots, a boot snapshot.
        "state": True,
        "wasm": "../../c2w/bochs.wasm",
        "args": guest["args"],
        "env": guest["env"],
        "files": files,
        "inflate": ["/kernel.bin"] if "/kernel.bin" in files else [],
        "bochsrc_body": guest["bochsrc_body"],
        "memory_mib": guest["megs"],
        "min_megs": guest["min_megs"],
        "prompt": guest["prompt"],
        "kernel_cmdline": guest["kernel_cmdline"],
        "ips": guest["ips"],
        "clock": guest["clock"],
        "packages": {n: pkg["version"] for n, pkg in guest["inputs"]["packages"].items()},
    }
    if lazy:
        image["lazy"] = lazy
    if sizes:
        image["sizes"] = sizes
    image.update(extra or {})
    write_atomic(image_dir / "image.json", (json.dumps(image, indent=2, sort_keys=True) + "\n").encode())
    return image


def build(out_dir: Path, cache_dir: Path, manifest: dict, force: bool = False) -> str:
    """force: build bochs.wasm, the guest, the gzip'd kernel and the probe again even when
    the cache has them (downloads checked against their pins are reused)."""
    out, cache = Path(out_dir), Path(cache_dir) / "c2w"
    pins = manifest["c2w"]
    if build_bochs.main(["--out", str(out / "c2w"), "--cache", str(cache)] + (["--force"] if force else [])) != 0:
        raise SystemExit("building bochs.wasm failed")
    image_dir = out / "images" / IMAGE
    guest = build_guest64.make_guest(image_dir, cache, pins=pins["debian"], force=force)
    write_image_record(image_dir, IMAGE, guest, cache, force=force)
    probe = build_probe(out, cache, force)
    size = sum(p.stat().st_size for p in image_dir.rglob("*") if p.is_file())
    return f"bochs.wasm + image {IMAGE} ({size >> 20} MiB), {probe}"


if __name__ == "__main__":
    import build as _build  # noqa: E402
    print(build(_build.DEFAULT_OUT, _build.DEFAULT_CACHE, _build.load_manifest()))
