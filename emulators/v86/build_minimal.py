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
import json
import lzma
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
import buildlib  # noqa: E402  (emulators/buildlib.py: commands, apt, the cpio writer)
from buildlib import BuildError, Cpio, apt_install, sha256_file, warn_loudly  # noqa: E402
AGENT_SRC = REPO / "emulators" / "agent" / "pyapptron-agent.c"
INIT_SCRIPT = HERE / "minimal-init.sh"
DHCP_SCRIPT = HERE / "udhcpc.script"  # applies a DHCP lease (boot(network=...))

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
# number (the pattern's group), which changes; the others keep their names.
PACKAGES = {
    "kernel": {"arch": "i386", "pattern": r"^linux-image-6\.1\.0-([0-9]+)-686-unsigned$"},
    "busybox": {"arch": "i386", "name": "busybox-static"},
    "seabios": {"arch": "all", "name": "seabios"},
}

BUILD_TOOLS = {  # command -> Debian package providing it
    "depmod": "kmod",
    "modprobe": "kmod",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
}


log = buildlib.logger("build_minimal")



def add_network_files(c) -> None:
    """What a busybox guest needs for boot(network=...), into the cpio c: the host's own
    services by name (pyapptron/network.py) and udhcpc's hook that applies a lease."""
    c.file("etc/hosts", b"127.0.0.1\tlocalhost\n192.168.86.1\thost.pyapptron.internal\n")
    c.dir("etc/udhcpc")
    c.file("etc/udhcpc/default.script", DHCP_SCRIPT.read_bytes(), 0o755)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    """buildlib.run with the output kept (these commands' output is what we read)."""
    return buildlib.run(cmd, capture=True, **kw)


# ---- host prerequisites ------------------------------------------------------

def ensure_i386_lists() -> None:
    """Makes apt know about i386 packages (the kernel and busybox are i386)."""
    foreign = run(["dpkg", "--print-foreign-architectures"]).stdout.split()
    if "i386" in foreign and buildlib.apt_record("busybox-static:i386") is not None:
        return
    if "i386" not in foreign:
        log("adding the i386 architecture to dpkg")
        run(["dpkg", "--add-architecture", "i386"])
    log("apt-get update (the i386 security index may fail; main is enough)")
    run(["apt-get", "update", "-q"], check=False)


def ensure_tools() -> None:
    missing = sorted({pkg for cmd, pkg in BUILD_TOOLS.items() if shutil.which(cmd) is None})
    if shutil.which("gcc") is None:
        missing.append("gcc")
    if missing:
        apt_install(missing)


# ---- Debian packages ---------------------------------------------------------

def apt_spec(name: str, arch: str) -> str:
    return name if arch == "all" else f"{name}:{arch}"


def deb_filename(package: str, version: str, arch: str) -> str:
    return f"{package}_{version.replace(':', '%3a')}_{arch}.deb"


def apt_download(package: str, version: str, arch: str, dest: pathlib.Path) -> pathlib.Path | None:
    """Downloads one exact package version into dest; None if apt cannot."""
    try:
        return buildlib.apt_download(f"{apt_spec(package, arch)}={version}",
                                     dest / deb_filename(package, version, arch))
    except BuildError as e:
        log(f"apt-get download {package}={version} failed: {str(e)[-300:]}")
        return None


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
    name = (buildlib.newest_package(re.compile(how["pattern"]), "linux-image-") if "pattern" in how
            else how["name"])
    record = buildlib.apt_record(apt_spec(name, arch))
    if record is None:
        raise BuildError(f"apt knows no version of {name}:{arch}: run apt-get update")
    version = record["Version"]
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
        out = run(["modprobe", "-d", str(root), "-S", release, "--show-depends", name]).stdout
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
        out = run(["zstd", "-d", "-c", str(path)], text=False).stdout
        return name[:-4], out
    if name.endswith(".gz"):
        return name[:-3], gzip.decompress(data)
    return name, data


def insmod_files(root: pathlib.Path, release: str, modules: list[str] = MODULES) -> list[tuple[str, bytes]]:
    """(file name, plain .ko bytes) of these modules of the kernel unpacked at root and of
    what they depend on, in insmod order; each name is numbered by its place ("00-virtio.ko")."""
    files = []
    for i, path in enumerate(module_order(root, release, modules)):
        inside = root / path.relative_to("/") if path.is_absolute() else path
        name, data = module_bytes(inside if inside.exists() else path)
        files.append((f"{i:02d}-{name}", data))
    log("modules: " + " ".join(n[3:-3] for n, _ in files))
    return files


# ---- the agent ---------------------------------------------------------------

def compile_agent(work: pathlib.Path) -> bytes:
    out = work / "pyapptron-agent"
    cmd = ["gcc", "-m32", "-static", "-Os", "-s", "-std=c11", "-Wall",
           "-o", str(out), str(AGENT_SRC)]
    proc = run(cmd, check=False)
    if proc.returncode != 0:
        # Usually the 32-bit libc is missing.
        log(f"gcc -m32 failed ({proc.stderr.strip()[-200:]}); installing gcc-multilib")
        apt_install(["gcc-multilib"])
        run(cmd, what="compiling the guest agent (gcc -m32)")
    return out.read_bytes()


# ---- initramfs -----------------------------------------------------------------

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
    add_network_files(c)
    c.file("etc/profile", (
        b"# login shells on ttyS0 (the human console)\n"
        b"export HOME=/root TERM=xterm-256color\n"
        b"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        b"export PS1='\\u@\\h:\\w# '\n"
        b"cd \"$HOME\"\n"))
    modules = insmod_files(kernel_root, release)
    for fname, data in modules:
        c.file(f"lib/modules/pyapptron/{fname}", data)
    c.file("lib/modules/pyapptron/order", "".join(fname + "\n" for fname, _ in modules).encode())
    return gzip.compress(c.finish(), compresslevel=9, mtime=0)


# ---- main --------------------------------------------------------------------

def write_if_changed(path: pathlib.Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def file_record(path: pathlib.Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def build(out_dir: pathlib.Path, cache_dir: pathlib.Path, manifest: dict, force: bool = False) -> None:
    """Build the image into out_dir; force rebuilds it even when its key says it is up to date
    (the pinned .debs in the cache are reused: each is checked against its sha256)."""
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
        "agent": sha256_file(AGENT_SRC), "init": sha256_file(INIT_SCRIPT), "dhcp": sha256_file(DHCP_SCRIPT),
        "builder": sha256_file(pathlib.Path(__file__)),
        "buildlib": sha256_file(pathlib.Path(buildlib.__file__)),  # the cpio writer
    }, sort_keys=True).encode()).hexdigest()
    key_file = image_dir / ".build-key"
    image_json = image_dir / "image.json"
    outputs = [image_dir / "bzImage", image_dir / "initrd.img", image_json,
               bios_dir / "seabios.bin", bios_dir / "vgabios.bin"]
    if not force and key_file.exists() and key_file.read_text() == key and all(p.exists() for p in outputs):
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
