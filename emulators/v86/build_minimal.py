"""Build the ``minimal`` v86 guest image from pinned Debian packages.

Output (under ``out_dir``)::

    images/minimal/bzImage       Debian's i386 (686) kernel
    images/minimal/initrd.img    gzip'd newc cpio: busybox, virtio/9p modules, the agent, /init
    images/minimal/image.json    what the host needs to boot it (see IMAGE below)
    bios/seabios.bin, bios/vgabios.bin

The Debian packages are pinned in ``emulators/manifest.json`` under ``"debian"``
(package, version, architecture, sha256 of the .deb). Debian drops old kernel
ABIs from its mirror, so when a pinned version is gone we take the current one,
say so loudly (with the new version and sha256 to pin) and go on: a CI run on a
future machine must not break for that. A pinned version whose bytes differ
from its sha256 is a hard error.

Everything is cached: downloads and unpacked packages under ``cache_dir``, and
the outputs are rebuilt only when the hash of every input (debs, agent source,
init script, this file) changes.

Usage: python emulators/v86/build_minimal.py --out build/assets --cache build/cache
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import lzma
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
AGENT_SRC = REPO / "emulators" / "agent" / "pyapptron-agent.c"
INIT_SCRIPT = HERE / "minimal-init.sh"
MANIFEST = REPO / "emulators" / "manifest.json"

# loglevel=1: the harmless firmware complaints v86 provokes (no RSDP, no MP table,
# no PnP BIOS) would otherwise greet every user on the console.
CMDLINE = ("console=ttyS0 tsc=reliable mitigations=off random.trust_cpu=on quiet loglevel=1 "
           "cryptomgr.notests noisapnp")

# Modules the image needs, in the names modprobe knows; their dependencies
# (virtio, virtio_ring, the virtio-pci transport, netfs, fscache, ...) come
# from modprobe --show-depends.
MODULES = ["virtio_pci", "virtio_console", "virtio_net", "9pnet_virtio", "9p"]

# role -> how to find the package.  The kernel's package name carries its ABI
# number, which changes; the others keep their names.
PACKAGES = {
    "kernel": {"arch": "i386", "pattern": r"^linux-image-6\.1\.0-[0-9]+-686-unsigned$"},
    "busybox": {"arch": "i386", "name": "busybox-static"},
    "seabios": {"arch": "all", "name": "seabios"},
}

BUILD_TOOLS = {  # command -> Debian package providing it
    "depmod": "kmod",
    "modprobe": "kmod",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
}


def log(msg: str) -> None:
    print(f"[build_minimal] {msg}", flush=True)


def warn_loudly(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\nWARNING: {msg}\n{bar}\n", file=sys.stderr, flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kw)


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- host prerequisites ------------------------------------------------------

def apt_install(packages: list[str]) -> None:
    log(f"installing build prerequisites: {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "install", "-y", "-q", *packages], env=env)


def ensure_i386_lists() -> None:
    """Makes apt know about i386 packages (the kernel and busybox are i386)."""
    foreign = run(["dpkg", "--print-foreign-architectures"], capture_output=True).stdout.split()
    policy = subprocess.run(["apt-cache", "policy", "busybox-static:i386"],
                            capture_output=True, text=True).stdout
    if "i386" in foreign and "Candidate: (none)" not in policy and "Candidate:" in policy:
        return
    if "i386" not in foreign:
        log("adding the i386 architecture to dpkg")
        run(["dpkg", "--add-architecture", "i386"])
    log("apt-get update (the i386 security index may fail; main is enough)")
    subprocess.run(["apt-get", "update", "-q"])


def ensure_tools() -> None:
    missing = sorted({pkg for cmd, pkg in BUILD_TOOLS.items() if shutil.which(cmd) is None})
    if shutil.which("gcc") is None:
        missing.append("gcc")
    if missing:
        apt_install(missing)


# ---- Debian packages ---------------------------------------------------------

def apt_candidate(name: str, arch: str) -> str | None:
    spec = name if arch == "all" else f"{name}:{arch}"
    out = subprocess.run(["apt-cache", "policy", spec], capture_output=True, text=True).stdout
    m = re.search(r"Candidate:\s*(\S+)", out)
    return m.group(1) if m and m.group(1) != "(none)" else None


def current_kernel_package(pattern: str) -> str:
    out = run(["apt-cache", "search", "--names-only", pattern], capture_output=True).stdout
    names = [line.split(" ", 1)[0] for line in out.splitlines() if line.strip()]
    names = [n for n in names if re.match(pattern, n)]
    if not names:
        raise SystemExit(f"no package matching {pattern} in the apt lists")
    return max(names, key=lambda n: int(re.search(r"6\.1\.0-(\d+)-", n).group(1)))


def deb_filename(package: str, version: str, arch: str) -> str:
    return f"{package}_{version.replace(':', '%3a')}_{arch}.deb"


def apt_download(package: str, version: str, arch: str, dest: pathlib.Path) -> pathlib.Path | None:
    """Downloads one exact package version into dest; None if apt cannot."""
    spec = (package if arch == "all" else f"{package}:{arch}") + f"={version}"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        proc = subprocess.run(["apt-get", "download", "-q", spec], cwd=tmp,
                              capture_output=True, text=True)
        debs = list(pathlib.Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or len(debs) != 1:
            log(f"apt-get download {spec} failed: {proc.stderr.strip()[-300:]}")
            return None
        target = dest / deb_filename(package, version, arch)
        debs[0].replace(target)
        return target


def fetch_package(role: str, pin: dict | None, debs_dir: pathlib.Path) -> dict:
    """Returns the source record {package, version, architecture, sha256, path}
    of the package for role, downloading it if it is not cached."""
    how = PACKAGES[role]
    arch = how["arch"]
    if pin:
        cached = debs_dir / deb_filename(pin["package"], pin["version"], pin["architecture"])
        if not (cached.exists() and sha256_file(cached) == pin["sha256"]):
            cached = apt_download(pin["package"], pin["version"], pin["architecture"], debs_dir)
        if cached is not None:
            digest = sha256_file(cached)
            if digest != pin["sha256"]:
                cached.unlink()
                raise SystemExit(
                    f"{pin['package']} {pin['version']}: sha256 {digest} does not match "
                    f"the pinned {pin['sha256']} in emulators/manifest.json")
            return dict(pin, path=cached)

    # Not pinned, or the pinned version is gone from the mirror: take the current one.
    ensure_i386_lists()
    name = current_kernel_package(how["pattern"]) if "pattern" in how else how["name"]
    version = apt_candidate(name, arch)
    if version is None:
        raise SystemExit(f"apt knows no version of {name}:{arch}")
    path = debs_dir / deb_filename(name, version, arch)
    if not path.exists():
        path = apt_download(name, version, arch, debs_dir)
        if path is None:
            raise SystemExit(f"cannot download {name}:{arch}={version}")
    record = {"package": name, "version": version, "architecture": arch,
              "sha256": sha256_file(path)}
    what = (f"pinned {pin['package']} {pin['version']} is no longer on the Debian mirror"
            if pin else f"no pin for '{role}' in emulators/manifest.json")
    warn_loudly(
        f"{what}; using {name} {version} ({arch}) instead, sha256 {record['sha256']}.\n"
        f"Update the \"debian\" section of emulators/manifest.json with:\n"
        f"  \"{role}\": {json.dumps(record)}")
    return dict(record, path=path)


def unpack(deb: dict, unpack_dir: pathlib.Path) -> pathlib.Path:
    """dpkg-deb -x into a directory named after the .deb's hash (cached)."""
    target = unpack_dir / deb["sha256"][:16]
    done = target / ".unpacked"
    if not done.exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        log(f"unpacking {deb['path'].name}")
        run(["dpkg-deb", "-x", str(deb["path"]), str(target)])
        done.touch()
    return target


# ---- kernel and modules --------------------------------------------------------

def kernel_release(root: pathlib.Path) -> str:
    releases = [p.name for p in (root / "lib" / "modules").iterdir() if p.is_dir()]
    if len(releases) != 1:
        raise SystemExit(f"expected one kernel in the package, found {releases}")
    return releases[0]


def module_order(root: pathlib.Path, release: str, modules: list[str] = MODULES) -> list[pathlib.Path]:
    """The .ko files to insmod for these modules, dependencies first, each once."""
    if not (root / "lib" / "modules" / release / "modules.dep").exists():
        run(["depmod", "-b", str(root), release])
    order: list[pathlib.Path] = []
    for name in modules:
        out = run(["modprobe", "-d", str(root), "-S", release, "--show-depends", name],
                  capture_output=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                path = pathlib.Path(parts[1])
                if path not in order:
                    order.append(path)
            # "builtin NAME" lines need nothing.
    return order


def module_bytes(path: pathlib.Path) -> tuple[str, bytes]:
    """Returns (name.ko, uncompressed bytes): busybox insmod takes plain .ko."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".xz"):
        return name[:-3], lzma.decompress(data)
    if name.endswith(".zst"):
        out = run(["zstd", "-d", "-c", str(path)], capture_output=True, text=False).stdout
        return name[:-4], out
    if name.endswith(".gz"):
        return name[:-3], gzip.decompress(data)
    return name, data


# ---- the agent ---------------------------------------------------------------

def compile_agent(work: pathlib.Path) -> bytes:
    out = work / "pyapptron-agent"
    cmd = ["gcc", "-m32", "-static", "-Os", "-s", "-std=c11", "-Wall",
           "-o", str(out), str(AGENT_SRC)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        # Usually the 32-bit libc is missing.
        log(f"gcc -m32 failed ({proc.stderr.strip()[-200:]}); installing gcc-multilib")
        apt_install(["gcc-multilib"])
        run(cmd)
    return out.read_bytes()


# ---- initramfs -----------------------------------------------------------------

class Cpio:
    """A deterministic newc cpio writer (no cpio binary, no root needed for
    the device node, fixed owner and mtime so identical inputs give identical
    bytes)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev=(0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 2 if mode & 0o170000 == 0o040000 else 1, 0,
                  len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self.buf.write(name.encode() + b"\0")
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str, mode: int = 0o755) -> None:
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, 0o040000 | (mode if d == name else 0o755))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initrd(busybox_root: pathlib.Path, kernel_root: pathlib.Path, release: str,
                 agent: bytes) -> bytes:
    c = Cpio()
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run",
              "mnt/host", "root", "lib/modules/pyapptron"]:
        c.dir(d)
    c.dir("tmp", 0o1777)
    # The kernel opens /dev/console for init's stdio before init can mount
    # devtmpfs, so the node must be in the archive.
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", (busybox_root / "bin" / "busybox").read_bytes(), 0o755)
    c.symlink("bin/sh", "busybox")  # /init's interpreter; init installs the rest
    c.file("sbin/pyapptron-agent", agent, 0o755)
    c.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\n")
    c.file("etc/hostname", b"pyapptron\n")
    c.file("etc/profile", (
        b"# login shells on ttyS0 (the human console)\n"
        b"export HOME=/root TERM=xterm-256color\n"
        b"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        b"export PS1='\\u@\\h:\\w# '\n"
        b"cd \"$HOME\"\n"))
    order = []
    for i, path in enumerate(module_order(kernel_root, release)):
        rel = kernel_root / path.relative_to("/") if path.is_absolute() else path
        name, data = module_bytes(rel if rel.exists() else path)
        fname = f"{i:02d}-{name}"
        c.file(f"lib/modules/pyapptron/{fname}", data)
        order.append(fname)
    log("modules: " + " ".join(n[3:-3] for n in order))
    c.file("lib/modules/pyapptron/order", ("\n".join(order) + "\n").encode())
    return gzip.compress(c.finish(), compresslevel=9, mtime=0)


# ---- main --------------------------------------------------------------------

def write_if_changed(path: pathlib.Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def file_record(path: pathlib.Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def build(out_dir: pathlib.Path, cache_dir: pathlib.Path, manifest: dict) -> None:
    out_dir, cache_dir = pathlib.Path(out_dir), pathlib.Path(cache_dir)
    image_dir = out_dir / "images" / "minimal"
    bios_dir = out_dir / "bios"
    debs_dir = cache_dir / "debian" / "debs"
    for d in (image_dir, bios_dir, debs_dir):
        d.mkdir(parents=True, exist_ok=True)

    ensure_tools()
    pins = manifest.get("debian", {}) or {}
    debs = {role: fetch_package(role, pins.get(role), debs_dir) for role in PACKAGES}
    sources = {role: {k: d[k] for k in ("package", "version", "architecture", "sha256")}
               for role, d in debs.items()}

    # Everything the outputs depend on; equal key and intact outputs: nothing to do.
    key = hashlib.sha256(json.dumps({
        "sources": sources, "cmdline": CMDLINE, "modules": MODULES,
        "agent": sha256_file(AGENT_SRC), "init": sha256_file(INIT_SCRIPT),
        "builder": sha256_file(pathlib.Path(__file__)),
    }, sort_keys=True).encode()).hexdigest()
    key_file = image_dir / ".build-key"
    image_json = image_dir / "image.json"
    outputs = [image_dir / "bzImage", image_dir / "initrd.img", image_json,
               bios_dir / "seabios.bin", bios_dir / "vgabios.bin"]
    if key_file.exists() and key_file.read_text() == key and all(p.exists() for p in outputs):
        recorded = json.loads(image_json.read_text())["files"]
        if all(file_record(image_dir / n) == r for n, r in recorded.items()):
            log(f"up to date: {image_dir}")
            return

    unpack_dir = cache_dir / "debian" / "unpacked"
    kernel_root = unpack(debs["kernel"], unpack_dir)
    busybox_root = unpack(debs["busybox"], unpack_dir)
    seabios_root = unpack(debs["seabios"], unpack_dir)
    release = kernel_release(kernel_root)
    log(f"kernel {release}")

    with tempfile.TemporaryDirectory() as work:
        agent = compile_agent(pathlib.Path(work))
    initrd = build_initrd(busybox_root, kernel_root, release, agent)

    write_if_changed(image_dir / "bzImage", (kernel_root / "boot" / f"vmlinuz-{release}").read_bytes())
    write_if_changed(image_dir / "initrd.img", initrd)
    seabios = seabios_root / "usr" / "share" / "seabios"
    # bios.bin (128 KiB) is the size v86 maps at the top of the first MiB.
    write_if_changed(bios_dir / "seabios.bin", (seabios / "bios.bin").read_bytes())
    write_if_changed(bios_dir / "vgabios.bin", (seabios / "vgabios-stdvga.bin").read_bytes())

    image = {
        "name": "minimal",
        "emulator": "v86",
        "arch": "i686",
        "kernel": "bzImage",
        "initrd": "initrd.img",
        "cmdline": CMDLINE,
        "memory_mib": 128,
        "agent": "virtio-console0",
        "files": {n: file_record(image_dir / n) for n in ("bzImage", "initrd.img")},
        "sources": sources,
    }
    image_json.write_text(json.dumps(image, indent=2) + "\n")
    key_file.write_text(key)
    log(f"built {image_dir}: bzImage {image['files']['bzImage']['size']} bytes, "
        f"initrd.img {image['files']['initrd.img']['size']} bytes")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "build" / "assets")
    ap.add_argument("--cache", type=pathlib.Path, default=REPO / "build" / "cache")
    ap.add_argument("--manifest", type=pathlib.Path, default=MANIFEST)
    args = ap.parse_args(argv)
    build(args.out, args.cache, json.loads(args.manifest.read_text()))


if __name__ == "__main__":
    main()
