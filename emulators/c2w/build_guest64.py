#!/usr/bin/env python3
"""Build a small x86_64 Linux guest for bochs.wasm from Debian amd64 packages.

    python3 emulators/c2w/build_guest64.py --out DIR --cache DIR [--boot syslinux|direct]
                                           [--kernel-package NAME]

Standard library only; needs root for apt-get (host tools syslinux,
syslinux-common, mtools and nasm are installed if missing, the guest packages
are only downloaded with ``apt-get download``).

Two ways to boot (--boot):
  syslinux  the BIOS boots a FAT disk with syslinux, which loads the bzImage
            and the initrd from it.  Debian's bzImage is XZ-compressed, and
            its decompressor runs ~5e9 guest instructions (~1 min in wasm).
  direct    (default) vmlinux is extracted from the bzImage here (Python's
            lzma) and laid out as a flat image of its load segments; Bochs
            puts it and the initrd into guest RAM before the BIOS runs
            (bochsrc optramimage, Bochs patch 0007).  The disk holds only
            direct_boot.asm's boot sector and a boot_params template; that
            sector adds the BIOS E820 map and enters the kernel through the
            64-bit boot protocol.  No decompression at boot time.

DIR receives:
  bios/BIOS-bochs-latest, bios/vgabios.bin   Bochs BIOS + LGPL VGA BIOS (bochsbios, vgabios)
  vmlinuz                                    Debian's linux-image-6.1.0-NN-amd64-unsigned kernel
  initrd.gz                                  busybox-static initramfs (newc cpio, gzip), /init below
  disk.img                                   syslinux: FAT disk (no partition table) with syslinux,
                                             vmlinuz, initrd.gz; direct: boot sector + boot_params
  kernel.bin                                 direct only: vmlinux load segments, flat, from 0x1000000
  bochsrc.txt                                Bochs config: nogui, 256 MiB, ata0 disk, COM1 = wasi:stdio
  guest.json                                 what a host needs: files (guest path -> file), args, markers

bochsrc.txt uses guest paths inside one WASI preopen "/": /bios/..., /disk.img,
/bochsout.txt (log).  COM1 uses "mode=file, dev=wasi:stdio" (patch 0006):
the console goes to the WASI stdout and input comes from the WASI stdin.
With --com1-file PATH, COM1 writes to that file instead (unpatched Bochs).

Results are cached under CACHE/guest64/<key>, where key hashes the package
names + versions + SHA-256s (from apt-cache), the host tool versions, this
script and the options.  A cached run only copies files.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

HOST_TOOLS = ["syslinux", "syslinux-common", "mtools", "nasm"]
HERE = Path(__file__).resolve().parent
DIRECT_ASM = HERE / "direct_boot.asm"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "v86"))
import buildlib  # noqa: E402  (emulators/buildlib.py: commands, apt, the cpio writer)
from buildlib import BuildError, ensure_packages, installed_version, run, sha256_file  # noqa: E402
import build_minimal  # noqa: E402  (the kernel-module helpers)
KERNEL_ADDR = 0x1000000   # LOAD_PHYSICAL_ADDR of Debian's kernel (= the bzImage's pref_address)
INITRD_ADDR = 0x8000000   # 128 MiB: above the kernel image, inside the usable RAM
ZERO_PAGE = 0x8000        # direct_boot.asm: boot_params at 0x8000, command line at 0x9000
CMDLINE_ADDR = 0x9000
KERNEL_RE = re.compile(r"^linux-image-6\.1\.0-(\d+)-amd64-unsigned$")
BIOS_PACKAGES = {"bochsbios": "usr/share/bochs/BIOS-bochs-latest", "vgabios": "usr/share/vgabios/vgabios.bin"}
BUSYBOX = "busybox-static"

PROMPT = "guest64:~# "
INIT_MARK = "pyapptron-guest64: init"
# Boot time under bochs.wasm (guest uptime at /init, direct boot, ips 50M):
#   cryptomgr.notests  the crypto self-tests (late initcall crypto_algapi_init)
#                      took 7.4 s of a 16 s boot;
#   rodata=off         skips mark_rodata_ro() and its W+X page-table walk
#                      (CONFIG_DEBUG_WX), 12.6 -> 10.0 s.  This disables the
#                      kernel's read-only data protection inside the guest;
#   clearcpuid=aperfmperf  Bochs's CPU model announces APERF/MPERF but has no
#                      such MSRs: the kernel's frequency-invariance tick read them
#                      ~500 times a second, each a Bochs error line in its log;
#   earlycon=...       prints from the kernel's first line instead of
#                      replaying the log when ttyS0 registers (~2 s later).
KERNEL_CMDLINE = ("console=ttyS0,115200 earlycon=uart8250,io,0x3f8,115200 "
                  "mitigations=off nokaslr cryptomgr.notests rodata=off clearcpuid=aperfmperf")
# The guest's clock starts at the host's time when Bochs powers on (the WASI clock): a
# guest that believes it is 2000 rejects every TLS certificate.
TIME0 = "utc"
# Emulated instructions per emulated second.  With clock: sync=slowdown the
# guest never runs more than ips instructions per real second, so ips must be
# above what the host manages: in Chromium here Bochs runs ~75 M instructions/s
# in a shell loop (bench/run.py --images c2w).  Cold boot to exec-ready in Chromium: ips 50M
# 12.9 s (capped at 50 MIPS), 100M 8.0 s, 200M 8.0 s.  When the host is slower
# than ips, the guest's clock runs slower than real time while it is busy.
IPS = 150_000_000
CLOCK_SYNC = os.environ.get("PYAPPTRON_C2W_CLOCK", "slowdown")
MEGS = 256
HEADS, SPT = 16, 63

AGENT_SRC = HERE.parent / "agent" / "pyapptron-agent.c"
# The guest agent's channel: the second UART, which bochsrc streams to WASI fd 4
# (Bochs patch 0006, "dev=wasi:fd:4"; fd 3 is the one preopen "/").
AGENT_TTY = "/dev/ttyS1"
AGENT_FD = 4
# The agent's bytes travel over Bochs's shared-memory rings (patch 0008, mapped
# through /dev/mem); the serial line above only wakes it.  Its device argument:
AGENT_DEVICE = f"hostchan:{AGENT_TTY}"

# The kernel modules every x86_64 guest loads: the network card boot(network=...) adds
# (an e1000, Bochs patch 0011); without the card the driver finds nothing and waits.
NIC_MODULES = ("e1000",)
# The network, when boot(network=...) gave the machine its card: an address, a default
# route and a resolver by DHCP from the page's stack, before the host's first exec.
NETWORK_UP = """if [ -e /sys/class/net/eth0 ]; then
    udhcpc -i eth0 -q -n -t 5 >/dev/null 2>&1 \\
        || echo "pyapptron: boot failed: the network did not come up (no DHCP lease on eth0)"
fi
"""
LOAD_MODULES = ('while read -r m; do insmod "/lib/modules/pyapptron/$m" || echo "insmod $m failed"; '
                'done < /lib/modules/pyapptron/order')

INIT_SCRIPT = f"""#!/bin/sh
# /init of the pyapptron x86_64 guest (emulators/c2w/build_guest64.py).
# Two serial lines, two owners: ttyS0 is the human's shell; {AGENT_TTY} belongs to
# pyapptron-agent, the host's programmatic channel.  PID 1: never exits.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
ln -sf /proc/self/fd /dev/fd
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=xterm-256color
echo "{INIT_MARK}: uptime $(cut -d' ' -f1 /proc/uptime) s"
echo 1 > /proc/sys/kernel/printk
hostname pyapptron64
chmod 1777 /tmp
{LOAD_MODULES}
{NETWORK_UP}(
  cd /
  while :; do
    /sbin/pyapptron-agent {AGENT_DEVICE} </dev/null >/dev/null 2>>/tmp/pyapptron-agent.log
    sleep 1
  done
) &
ip link set lo up 2>/dev/null
cd /root
export PS1='guest64:\\w# '
while :; do
  setsid cttyhack /bin/sh
  sleep 0.2
done
"""

SYSLINUX_CFG = f"""SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT linux
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND {KERNEL_CMDLINE}
"""


log = buildlib.logger("build_guest64")


def ensure_host_tools() -> dict:
    versions = ensure_packages(HOST_TOOLS)
    for tool in ("syslinux", "mformat", "mcopy", "nasm"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not found, though {' '.join(HOST_TOOLS)} are installed")
    return versions


def resolve(names) -> dict:
    info = {}
    for name in names:
        f = buildlib.apt_record(name)
        if f is None:
            buildlib.apt_update_once()
            f = buildlib.apt_record(name)
        if f is None or "SHA256" not in f:
            raise BuildError(f"apt-cache show {name}: no candidate (is {name} in this machine's apt sources?)")
        info[name] = {"version": f["Version"], "sha256": f["SHA256"], "filename": f["Filename"]}
    return info


def download(name: str, meta: dict, debs: Path) -> Path:
    """The .deb apt names in meta (cached in debs, checked against its sha256)."""
    target = debs / Path(meta["filename"]).name
    if target.is_file() and sha256_file(target) == meta["sha256"]:
        return target
    return buildlib.apt_download(f"{name}={meta['version']}", target, meta["sha256"])


# ---- initramfs ------------------------------------------------------------------


def compile_agent(work: Path) -> bytes:
    """pyapptron-agent for x86_64, static (the host is amd64 Debian: its own gcc)."""
    out = work / "pyapptron-agent"
    run(["gcc", "-static", "-Os", "-s", "-std=c11", "-Wall", "-o", out, AGENT_SRC])
    return out.read_bytes()


def make_initramfs(busybox: bytes, agent: bytes | None, init: str = INIT_SCRIPT,
                   modules: list[tuple[str, bytes]] = ()) -> bytes:
    """busybox, /init and, if given, the agent and kernel modules (insmod'ed by /init
    in the order of lib/modules/pyapptron/order)."""
    c = buildlib.Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "usr/local", "usr/local/bin", "dev", "proc", "sys",
              "root", "etc", "mnt", "var", "run"):
        c.dir(d)
    c.dir("tmp", 0o1777)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/ttyS0", 4, 64)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox, 0o755)
    c.symlink("bin/sh", "busybox")
    if agent is not None:
        c.file("sbin/pyapptron-agent", agent, 0o755)
    c.file("init", init.encode(), 0o755)
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\ntty:x:5:\n")
    c.file("etc/hostname", b"pyapptron64\n")
    build_minimal.add_network_files(c)
    if modules:
        c.dir("lib/modules/pyapptron")
        for name, data in modules:
            c.file(f"lib/modules/pyapptron/{name}", data)
        c.file("lib/modules/pyapptron/order", "".join(n + "\n" for n, _ in modules).encode())
    return gzip.compress(c.finish(), compresslevel=9, mtime=0)


def kernel_modules(kernel_deb: Path, work: Path, names: list[str]) -> list[tuple[str, bytes]]:
    """(file name, bytes) of these modules and what they depend on, in insmod order."""
    if not names:
        return []
    root = work / ("x-" + kernel_deb.name)
    if not root.is_dir():
        run(["dpkg-deb", "-x", kernel_deb, root])
    return build_minimal.insmod_files(root, build_minimal.kernel_release(root), names)


# ---- disk --------------------------------------------------------------------


def make_disk(path: Path, files: dict, work: Path) -> int:
    """FAT 'superfloppy' (no partition table) with syslinux; returns cylinders."""
    payload = sum(len(d) for d in files.values())
    cyl_bytes = HEADS * SPT * 512
    cylinders = max(16, -(-(payload * 12 // 10 + (2 << 20)) // cyl_bytes))
    with open(path, "wb") as f:
        f.truncate(cylinders * cyl_bytes)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", SOURCE_DATE_EPOCH="946684800", TZ="UTC")
    run(["mformat", "-i", path, "-t", cylinders, "-h", HEADS, "-s", SPT, "-H", 0,
         "-N", "20260000", "-v", "GUEST64", "::"], env=env)
    run(["syslinux", "--install", path], env=env)
    for name, data in files.items():
        src = work / name
        src.write_bytes(data)
        os.utime(src, (946684800, 946684800))
        run(["mcopy", "-m", "-i", path, src, f"::{name}"], env=env)
    return cylinders


def extract_vmlinux(bzimage: bytes) -> tuple[bytes, dict]:
    """Uncompressed vmlinux (ELF) from a bzImage with an XZ payload."""
    import lzma
    import struct
    if bzimage[0x202:0x206] != b"HdrS":
        raise SystemExit("vmlinuz: no setup header")
    setup_sects = bzimage[0x1f1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start:start + payload_length]
    if not payload.startswith(b"\xfd7zXZ\x00"):
        raise SystemExit(f"vmlinuz: payload is not XZ ({payload[:6]!r})")
    vmlinux = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if vmlinux[:4] != b"\x7fELF" or vmlinux[4] != 2:
        raise SystemExit("vmlinuz: payload is not a 64-bit ELF")
    return vmlinux, {"setup_sects": setup_sects}


def flat_kernel(vmlinux: bytes) -> bytes:
    """The PT_LOAD segments of vmlinux as one image starting at KERNEL_ADDR."""
    import struct
    entry, phoff = struct.unpack_from("<QQ", vmlinux, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", vmlinux, 0x36)
    segs = []
    for i in range(phnum):
        p_type, _flags, off, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", vmlinux, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            segs.append((paddr, off, filesz, memsz))
    base = min(s[0] for s in segs)
    if base != KERNEL_ADDR or entry != KERNEL_ADDR:
        raise SystemExit(f"vmlinux: load base {base:#x}, entry {entry:#x}; expected {KERNEL_ADDR:#x}")
    end = max(p + m for p, _, _, m in segs)
    img = bytearray(end - base)
    for paddr, off, filesz, _memsz in segs:
        img[paddr - base:paddr - base + filesz] = vmlinux[off:off + filesz]
    return bytes(img)


def zero_page(bzimage: bytes, initrd_len: int, cmdline: str) -> bytes:
    """boot_params template (4 KiB) + command line sector, for direct_boot.asm."""
    import struct
    zp = bytearray(4096)
    hdr_end = 0x202 + bzimage[0x201]          # the setup header ends where its jump lands
    zp[0x1f1:hdr_end] = bzimage[0x1f1:hdr_end]
    zp[0x210] = 0xff                          # type_of_loader: undefined
    zp[0x211] |= 0x01                         # loadflags: LOADED_HIGH
    struct.pack_into("<II", zp, 0x218, INITRD_ADDR, initrd_len)  # ramdisk_image, ramdisk_size
    struct.pack_into("<I", zp, 0x228, CMDLINE_ADDR)              # cmd_line_ptr
    line = cmdline.encode() + b"\0"
    if len(line) > 512:
        raise SystemExit("kernel command line longer than one sector")
    return bytes(zp) + line.ljust(512, b"\0")


def make_direct_disk(path: Path, boot_sector: bytes, zp: bytes) -> int:
    cyl_bytes = HEADS * SPT * 512
    data = boot_sector + zp
    with open(path, "wb") as f:
        f.write(data.ljust(cyl_bytes, b"\0"))
    return 1


def bochsrc(cylinders: int, com1: str, ram_images=(), megs: int = MEGS, extra=()) -> str:
    return "\n".join([
        "# Generated by emulators/c2w/build_guest64.py (paths are inside the WASI preopen /)",
        f"megs: {megs}",
        "romimage: file=/bios/BIOS-bochs-latest",
        "vgaromimage: file=/bios/vgabios.bin",
        "display_library: nogui",
        f"cpu: model=corei7_sandy_bridge_2600k, ips={IPS}",
        # slowdown: an idle guest sleeps (WASI poll_oneoff) instead of racing
        # through emulated time on a busy host core.
        f"clock: sync={CLOCK_SYNC}, time0={TIME0}",
        "ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14",
        f"ata0-master: type=disk, path=/disk.img, mode=flat, cylinders={cylinders}, heads={HEADS}, spt={SPT}",
        *extra,
        "boot: disk",
        *[f"optramimage{i + 1}: file={f}, address={a:#x}" for i, (f, a) in enumerate(ram_images)],
        f"com1: enabled=1, mode=file, dev={com1}",
        f"com2: enabled=1, mode=file, dev=wasi:fd:{AGENT_FD}",
        "mouse: enabled=0",
        "log: -",  # Bochs's own messages go to its stderr
        "panic: action=fatal",
        "error: action=report",
        "info: action=report",
        "debug: action=ignore",
        "",
    ])


def extract(deb: Path, member: str, work: Path) -> bytes:
    dest = work / ("x-" + deb.name)
    if not dest.is_dir():
        run(["dpkg-deb", "-x", deb, dest])
    p = dest / member
    return p.read_bytes()


def pinned(pins: dict | None, names) -> dict:
    """apt's record of each package, at its pinned version (manifest "c2w" "debian")
    when one is given: {name: {version, sha256, filename}}."""
    info = resolve(names)
    for name in names:
        pin = (pins or {}).get(name)
        if pin is None:
            continue
        if pin["version"] != info[name]["version"]:
            # apt's candidate moved on; the pinned version may still be on the mirror.
            f = buildlib.apt_record(f"{name}={pin['version']}")
            if f is None or f.get("SHA256") != pin["sha256"]:
                raise SystemExit(
                    f"{name} {pin['version']} (pinned in emulators/manifest.json, section c2w) is no longer "
                    f"on the Debian mirror; apt has {info[name]['version']} (sha256 {info[name]['sha256']}): "
                    "update the pin")
            info[name] = {"version": f["Version"], "sha256": f["SHA256"], "filename": f["Filename"]}
        elif pin["sha256"] != info[name]["sha256"]:
            raise SystemExit(f"{name} {pin['version']}: apt's sha256 {info[name]['sha256']} is not the pinned "
                             f"{pin['sha256']} (emulators/manifest.json, section c2w)")
    return info


def make_guest(out: Path, cache: Path, *, pins: dict | None = None, kernel: str | None = None,
               boot: str = "direct", com1: str = "wasi:stdio", init: str = INIT_SCRIPT,
               agent_in_initramfs: bool = True, modules: tuple[str, ...] = NIC_MODULES, cmdline_extra: str = "",
               bochsrc_extra: tuple[str, ...] = (), megs: int = MEGS, prompt: str = PROMPT,
               init_mark: str = INIT_MARK, force: bool = False) -> dict:
    """Build (or take from the cache) the guest into out; returns its guest.json.
    force builds it again even when the cache has it (the .debs are reused: each is
    checked against the sha256 apt or the pin gives).

    The defaults make the busybox guest ("debian-x86_64"). Another image boots the same
    kernel with its own initramfs /init (init=), the kernel modules that init loads,
    more of the kernel command line, more bochsrc lines (e.g. a second disk) and its
    own memory size."""
    t0 = time.time()
    cache, out = cache.resolve(), out.resolve()
    tools = ensure_host_tools()
    if kernel is None:
        kernel = (next((n for n in (pins or {}) if KERNEL_RE.match(n)), None)
                  or buildlib.newest_package(KERNEL_RE, "linux-image-6.1.0-"))
    if not KERNEL_RE.match(kernel):
        raise SystemExit(f"{kernel}: expected linux-image-6.1.0-NN-amd64-unsigned")
    pkgs = pinned(pins, [kernel, BUSYBOX] + list(BIOS_PACKAGES))
    cmdline = KERNEL_CMDLINE + (" " + cmdline_extra if cmdline_extra else "")
    manifest = {"packages": pkgs, "host_tools": tools, "script": sha256_file(Path(__file__)),
                "buildlib": sha256_file(Path(buildlib.__file__)), "com1": com1,  # (the cpio writer)
                "init": hashlib.sha256(init.encode()).hexdigest(), "agent_in_initramfs": agent_in_initramfs,
                "modules": list(modules), "cmdline": cmdline, "bochsrc_extra": list(bochsrc_extra), "megs": megs,
                "boot": boot, "direct_boot_asm": sha256_file(DIRECT_ASM), "agent": sha256_file(AGENT_SRC),
                "gcc": installed_version("gcc-12"), "libc6-dev": installed_version("libc6-dev"), "clock": CLOCK_SYNC,
                # the initramfs's network files (build_minimal.add_network_files)
                "network_files": [sha256_file(build_minimal.DHCP_SCRIPT), sha256_file(Path(build_minimal.__file__))]}
    key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:20]
    result = cache / "guest64" / key
    if not force and (result / "guest.json").is_file():
        log(f"cached guest {key}")
    else:
        debs = {n: download(n, m, cache / "debs") for n, m in pkgs.items()}
        tmp = result.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "bios").mkdir(parents=True)
        work = Path(tempfile.mkdtemp(prefix="c2w-guest64-"))
        try:
            kver = kernel[len("linux-image-"):-len("-unsigned")]
            vmlinuz = extract(debs[kernel], f"boot/vmlinuz-{kver}", work)
            busybox = extract(debs[BUSYBOX], "bin/busybox", work)
            for pkg, member in BIOS_PACKAGES.items():
                (tmp / "bios" / Path(member).name).write_bytes(extract(debs[pkg], member, work))
            initrd = make_initramfs(busybox, compile_agent(work) if agent_in_initramfs else None, init,
                                    kernel_modules(debs[kernel], work, list(modules)))
            (tmp / "vmlinuz").write_bytes(vmlinuz)
            (tmp / "initrd.gz").write_bytes(initrd)
            files = {"/bochsrc.txt": "bochsrc.txt", "/disk.img": "disk.img",
                     "/bios/BIOS-bochs-latest": "bios/BIOS-bochs-latest", "/bios/vgabios.bin": "bios/vgabios.bin"}
            ram_images = []
            if boot == "syslinux":
                cfg = SYSLINUX_CFG.replace(KERNEL_CMDLINE, cmdline)
                cyl = make_disk(tmp / "disk.img", {"syslinux.cfg": cfg.encode(),
                                                   "vmlinuz": vmlinuz, "initrd.gz": initrd}, work)
            else:
                vmlinux, _ = extract_vmlinux(vmlinuz)
                (tmp / "kernel.bin").write_bytes(flat_kernel(vmlinux))
                del vmlinux
                run(["nasm", "-f", "bin", "-o", work / "direct_boot.bin", DIRECT_ASM])
                boot_sector = (work / "direct_boot.bin").read_bytes()
                if len(boot_sector) != 512:
                    raise SystemExit("direct_boot.asm must assemble to 512 bytes")
                cyl = make_direct_disk(tmp / "disk.img", boot_sector,
                                       zero_page(vmlinuz, len(initrd), "BOOT_IMAGE=vmlinux " + cmdline))
                ram_images = [("/kernel.bin", KERNEL_ADDR), ("/initrd.gz", INITRD_ADDR)]
                files.update({"/kernel.bin": "kernel.bin", "/initrd.gz": "initrd.gz"})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rc = bochsrc(cyl, com1, ram_images, megs, bochsrc_extra)
        (tmp / "bochsrc.txt").write_text(rc)
        guest = {
            "args": ["bochs", "-q", "-f", "/bochsrc.txt"],
            "env": ["BXSHARE=/bios"],
            "files": files,
            "prompt": prompt,
            "init_mark": init_mark,
            "kernel_cmdline": cmdline,
            "ips": IPS,
            "clock": CLOCK_SYNC,
            "megs": megs,
            # bochsrc without its "megs:" line: boot(memory_mib=) writes its own.
            "bochsrc_body": "\n".join(l for l in rc.splitlines() if not l.startswith("megs:")) + "\n",
            "min_megs": (INITRD_ADDR + len(initrd)) // (1 << 20) + 64,
            "agent_tty": AGENT_TTY,
            "agent_fd": AGENT_FD,
            "hostchan": True,
            "boot": boot,
            "time0": TIME0,
            # the guest's init brings up the card boot(network=...) adds (its driver is here)
            "network": "e1000" in modules,
            "sha256": {rel: sha256_file(tmp / rel) for rel in files.values()},
            "inputs": manifest,
            "key": key,
        }
        (tmp / "guest.json").write_text(json.dumps(guest, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(result, ignore_errors=True)
        os.replace(tmp, result)
    if out.exists():
        for name in ("bios", "vmlinuz", "initrd.gz", "disk.img", "kernel.bin", "bochsrc.txt", "guest.json"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(result, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("vmlinuz") if boot == "direct" else None)
    g = json.loads((out / "guest.json").read_text())
    log(f"{out}: kernel {kernel} {pkgs[kernel]['version']}, busybox {pkgs[BUSYBOX]['version']}, "
        f"key {g['key']}, {time.time() - t0:.1f} s")
    return g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--kernel-package", help="default: newest linux-image-6.1.0-NN-amd64-unsigned apt knows")
    ap.add_argument("--com1-file", help="COM1 to this guest file instead of dev=wasi:stdio (unpatched Bochs)")
    ap.add_argument("--boot", choices=("direct", "syslinux"), default="direct")
    ap.add_argument("--force", action="store_true", help="build the guest again even when it is cached")
    args = ap.parse_args(argv)
    make_guest(args.out, args.cache, kernel=args.kernel_package, boot=args.boot,
               com1=args.com1_file or "wasi:stdio", force=args.force)
    return 0


if __name__ == "__main__":
    buildlib.script_main(main)
