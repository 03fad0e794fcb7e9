#!/usr/bin/env python3
"""The qemu-wasm step of the asset command: a stand-in for a user's QEMU-Wasm build.

    python3 emulators/build.py --only qemu-wasm

No QEMU-Wasm can be built here (it needs Emscripten >= 3.1.50; Debian has 3.1.6), so
this builds, with Debian's emscripten, a program that honours the same Module
contract (standin/qemu_standin.c says which) and lays it out the way a QEMU-Wasm
build directory is served (README, "QEMU-Wasm"):

  OUT/qemu_wasm/standin/out.js                        -sMODULARIZE -sEXPORT_ES6 ES module
  OUT/qemu_wasm/standin/qemu-system-x86_64.wasm       what out.js loads
  OUT/qemu_wasm/standin/qemu-system-x86_64.worker.js  its pthread worker (-sPROXY_TO_PTHREAD)
  OUT/qemu_wasm/standin/load-rom.js + .data           file_packager: /pack/bios-256k.bin
                                                      (Debian's seabios, pinned)
  OUT/qemu_wasm/standin/load-kernel.js + .data        file_packager: /pack/standin-kernel.bin

Cached under CACHE/qemu_wasm by the hash of every input.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "v86"))
import build_minimal  # noqa: E402  (Debian package download and unpacking)
from buildlib import BuildError, run  # noqa: E402

SOURCES = [HERE / "standin" / "qemu_standin.c", HERE / "standin" / "pty_bridge.js", Path(__file__)]
EMCC_FLAGS = ["-O2", "-pthread", "-sPROXY_TO_PTHREAD", "-sMODULARIZE", "-sEXPORT_ES6", "-sFORCE_FILESYSTEM",
              "-sEXIT_RUNTIME", "-sEXPORTED_RUNTIME_METHODS=FS,TTY", "-sINITIAL_MEMORY=64MB"]
FILE_PACKAGER = Path("/usr/share/emscripten/tools/file_packager.py")
OUTPUTS = ["out.js", "qemu-system-x86_64.wasm", "qemu-system-x86_64.worker.js",
           "load-rom.js", "load-rom.data", "load-kernel.js", "load-kernel.data"]


def standin_kernel() -> bytes:
    """The file -kernel names: not a kernel (the stand-in only checks it arrived whole),
    64 KiB of deterministic bytes."""
    out = bytearray(b"pyapptron QEMU-Wasm stand-in: not a kernel\n")
    block = b"standin"
    while len(out) < 65536:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:65536])


def _emcc_env() -> dict:
    # Debian's emcc runs its JS optimizer with the machine's node, which looks for
    # acorn where Debian's node-acorn puts it only when told.
    return dict(os.environ, NODE_PATH="/usr/share/nodejs")


def _emcc_version() -> str:
    try:
        return run(["emcc", "--version"], capture=True, env=_emcc_env()).stdout.splitlines()[0]
    except (BuildError, IndexError):
        raise BuildError("emcc is missing or broken: apt-get install emscripten (emulators/setup.sh does)") from None


def build(out_dir: Path, cache_dir: Path, manifest: dict, force: bool = False) -> str:
    """force: build the stand-in again even when the cache has it (the pinned seabios .deb is reused)."""
    out = Path(out_dir) / "qemu_wasm" / "standin"
    seabios_pin = manifest["debian"]["seabios"]
    key = hashlib.sha256(json.dumps({
        "sources": [hashlib.sha256(p.read_bytes()).hexdigest() for p in SOURCES],
        "flags": EMCC_FLAGS, "emcc": _emcc_version(), "seabios": seabios_pin,
    }, sort_keys=True).encode()).hexdigest()[:20]
    cached = Path(cache_dir) / "qemu_wasm" / key
    if force or not all((cached / name).is_file() for name in OUTPUTS):
        _build_into(cached, Path(cache_dir), seabios_pin)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        if not (out / name).is_file() or (out / name).read_bytes() != (cached / name).read_bytes():
            shutil.copyfile(cached / name, out / name)
    size = sum((out / n).stat().st_size for n in OUTPUTS)
    return f"stand-in QEMU-Wasm build {size // 1024} KiB"


def _build_into(dest: Path, cache: Path, seabios_pin: dict) -> None:
    env = _emcc_env()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run(["emcc", *EMCC_FLAGS, "--js-library", HERE / "standin" / "pty_bridge.js",
             "-o", tmp / "qemu-system-x86_64.js", HERE / "standin" / "qemu_standin.c"], capture=True, env=env)
        # QEMU-Wasm's build directory serves the main script as out.js.
        (tmp / "qemu-system-x86_64.js").rename(tmp / "out.js")
        deb = build_minimal.fetch_package("seabios", seabios_pin, cache / "debian" / "debs")
        seabios = build_minimal.unpack(deb, cache / "debian" / "unpacked") / "usr" / "share" / "seabios"
        (tmp / "rom").mkdir()
        shutil.copyfile(seabios / "bios-256k.bin", tmp / "rom" / "bios-256k.bin")
        (tmp / "kernel").mkdir()
        (tmp / "kernel" / "standin-kernel.bin").write_bytes(standin_kernel())
        for name in ("rom", "kernel"):
            script = run([sys.executable, FILE_PACKAGER, f"load-{name}.data", "--preload", f"{name}@/pack"],
                         cwd=tmp, capture=True, text=False, env=env, what="file_packager").stdout
            (tmp / f"load-{name}.js").write_bytes(script)
        dest.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            shutil.copyfile(tmp / name, dest / name)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    import build as asset_build  # emulators/build.py

    print(build(asset_build.DEFAULT_OUT, asset_build.DEFAULT_CACHE, asset_build.load_manifest()))
