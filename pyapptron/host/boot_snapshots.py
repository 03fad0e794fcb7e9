"""The boot snapshot each image ships (the `snapshot` step of emulators/build.py).

For every built image whose machines can be saved: boot it cold in headless Chromium
through the same page and `vm.snapshot()` a user would use, once its console shows the
shell prompt (image.json "prompt", else pyapptron's) and has gone quiet, after the
image's warm-up commands (image.json "snapshot_warmup": a first run of a large program
reads it from the lazily loaded disk; after a resume it is in the guest's page cache),
and write the bytes to `images/NAME/boot.snapshot`; image.json then names it. boot()
resumes from it by default.

A snapshot is cached under the hash of what it is bound to (the emulator's files and
options, the image's kernel, initrd and 9p index, memory and command line: the same
binding boot() checks), so it is made again exactly when one of those changes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .. import snapshots
from ..assets import Assets
from ..backends import Backend, backend_class

SNAPSHOT_FILE = "boot.snapshot"
#: The recipe below (what "booted" means, how it is stored); bump it to make every boot
#: snapshot again.
RECIPE = 2
#: The v86 images' prompts: "root@pyapptron:~# " (busybox sh), "root@pyapptron ~ # " (zsh);
#: an image.json "prompt" names its own.
PROMPT = rb"root@pyapptron[^\r\n]*# "
QUIET_S = 2.0
BOOT_TIMEOUT_S = 300.0


def log(msg: str) -> None:
    print(f"[snapshot] {msg}", file=sys.stderr, flush=True)


def _images(out: Path, assets: Assets) -> list[dict]:
    found = []
    for image_json in sorted(out.glob("images/*/image.json")):
        spec = json.loads(image_json.read_text())
        spec.setdefault("name", image_json.parent.name)
        # Only where a machine of this image can be saved (its backend says so).
        if _backend(spec, assets).capabilities.snapshot:
            found.append(spec)
    return found


def _backend(spec: dict, assets: Assets) -> Backend:
    return backend_class(spec.get("emulator", "v86"))(assets, spec)


def cache_key(spec: dict, assets: Assets) -> str:
    backend = _backend(spec, assets)
    # What is done before the save is part of the snapshot too (the key of an image
    # without a prompt or warm-up of its own is as it was).
    recipe = {k: spec[k] for k in ("prompt", "snapshot_warmup") if spec.get(k)}
    return snapshots.digest({"binding": backend.snapshot_binding(), "format": snapshots.FORMAT, "recipe": RECIPE,
                             **({"image_recipe": recipe} if recipe else {})})


def build(out: Path, cache: Path, force: bool = False) -> str:
    """Make (or take from `cache`) every image's boot snapshot; returns a summary."""
    index = json.loads((out / "assets.json").read_text())
    assets = Assets("/assets/", index)
    cache.mkdir(parents=True, exist_ok=True)
    todo, done = [], []
    for spec in _images(out, assets):
        cached = cache / f"{spec['name']}-{cache_key(spec, assets)}.snapshot"
        if force or not cached.is_file():
            todo.append((spec, cached))
        else:
            done.append(spec["name"])
    if todo:
        _make(out, todo)
    for spec in _images(out, assets):
        cached = cache / f"{spec['name']}-{cache_key(spec, assets)}.snapshot"
        target = out / "images" / spec["name"] / SNAPSHOT_FILE
        if not target.is_file() or target.read_bytes() != cached.read_bytes():
            shutil.copyfile(cached, target)
        image_json = out / "images" / spec["name"] / "image.json"
        recorded = json.loads(image_json.read_text())
        if recorded.get("snapshot") != {"file": SNAPSHOT_FILE}:
            recorded["snapshot"] = {"file": SNAPSHOT_FILE}
            image_json.write_text(json.dumps(recorded, indent=2) + "\n")
    made = [spec["name"] for spec, _ in todo]
    return f"made {', '.join(made) or 'none'}; cached {', '.join(done) or 'none'}"


def _make(out: Path, todo: list) -> None:
    from .browser import Browser, RemoteSession
    from .server import PageServer

    with PageServer(0, assets_dir=out) as server, Browser() as browser:
        session = RemoteSession(browser, server.url)
        for spec, cached in todo:
            started = time.monotonic()
            vm = session.boot(spec.get("emulator", "v86"), spec["name"], cold=True, timeout=BOOT_TIMEOUT_S)
            prompt = re.escape(spec["prompt"].encode()) if spec.get("prompt") else PROMPT
            vm.console.wait_for(prompt, timeout=BOOT_TIMEOUT_S)
            for command in spec.get("snapshot_warmup", []):
                r = vm.run(command, timeout=BOOT_TIMEOUT_S)
                if r.returncode != 0:
                    raise RuntimeError(f"{spec['name']}: the warm-up command {command!r} failed "
                                       f"(exit {r.returncode}): {r.stderr[-500:]!r}")
            vm.console.wait_quiet(QUIET_S, timeout=BOOT_TIMEOUT_S)  # zsh draws its prompt in steps
            data = session.python(f"result = await machines[{vm.id}].snapshot(to_bytes=True)")
            if "zstd" in backend_class(spec.get("emulator", "v86")).state_compressions:
                data = recompress(data)
            vm.shutdown()
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(cached)
            log(f"{spec['name']}: {len(data) / 1e6:.1f} MB after a cold boot of "
                f"{time.monotonic() - started:.0f} s")


def recompress(data: bytes) -> bytes:
    """gzip (all a browser can write) -> zstd, which v86 inflates itself, faster; with a
    sha256 of the payload, since zstd's checks do not cover every byte."""
    meta, payload = snapshots.unpack(data)
    if not shutil.which("zstd"):
        log("zstd not found (apt-get install zstd): keeping the gzip'd state")
        return data
    raw = gzip.decompress(payload)
    packed = subprocess.run(["zstd", "-9", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    meta.update(compression="zstd", payload_sha256=hashlib.sha256(packed).hexdigest())
    return snapshots.pack(meta, packed)

