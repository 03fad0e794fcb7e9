#!/usr/bin/env python3
"""Build Bochs 3.0 (x86_64 guest CPU) as a WASI preview1 module, bochs.wasm.

    python3 emulators/c2w/build_bochs.py --out DIR --cache DIR

Groundwork for an x86_64 backend of pyapptron.  Standard library only.

Steps (each is skipped when its result is already in the cache):
  1. make the toolchain: Debian trixie's LLVM 19 for wasm32-wasi in a chroot
     under the cache (debootstrap --variant=minbase from this machine's Debian
     mirror, as root; `--toolchain host` uses bookworm's clang-14 instead);
  2. fetch the Bochs source with ``apt-get source bochs/trixie`` from the
     mirror this machine already uses, through an apt of its own under the
     cache (CACHE/apt-trixie-src: its sources list, package lists and cache;
     buildlib.PrivateApt), so the machine's apt configuration and lists stay
     as they were.  The .dsc may 404 while the tarballs download; the orig
     tarball is then checked against the pinned SHA-256 below and unpacked;
  3. apply emulators/c2w/patches/*.patch in order and copy in the WASI shims
     from emulators/c2w/wasi/;
  4. configure (nogui, x86-64, cpu level 6, no plugins/SMP/debugger, no
     optional devices; Bochs's speedups: repeat speedups, handlers chaining
     as wasm tail calls, trace linking) with clang-19 --target=wasm32-wasi
     --sysroot=/usr inside the chroot and build with nice -n 10 and make -j2
     at most;
  5. copy the result to DIR/bochs.wasm (plus DIR/bochs.wasm.json).

The cache key is a hash of every input: the orig tarball, the patches, the
shim sources, this script, the compile flags and the versions of the
toolchain packages.  A
second run with the same inputs only copies the cached bochs.wasm; --force
builds it again (the toolchain chroot and the orig tarball, checked against
its pinned SHA-256, are reused).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import buildlib  # noqa: E402  (emulators/buildlib.py)
from buildlib import BuildError, PrivateApt, ensure_packages, installed_version, run, sha256_file  # noqa: E402
PATCH_DIR = HERE / "patches"
SHIM_DIR = HERE / "wasi"

# ---- what is built -------------------------------------------------------

# The pinned source: emulators/manifest.json, section "c2w" "bochs_source"
# (Debian's bochs 3.0+dfsg-1 orig tarball, as apt-cache showsrc names it).
_PIN = json.loads((HERE.parent / "manifest.json").read_text())["c2w"]["bochs_source"]
SOURCE_PACKAGE = _PIN["package"]
SOURCE_SUITE = _PIN["suite"]
ORIG_TARBALL = _PIN["orig"]
ORIG_SHA256 = _PIN["sha256"]
SOURCE_DIR = _PIN["dir"]

# The toolchain: Debian trixie's LLVM 19 in a chroot this script makes under
# the cache (debootstrap --variant=minbase from the machine's own Debian
# mirror), because bookworm's clang-14 cannot do what the speed needs: with
# -mtail-call it puts a function's epilogue (the restore of the shadow stack
# pointer) after a return_call_indirect, so every chained handler with a
# stack frame leaked its frame and the shadow stack ran into the data (the
# guest crashed in its first second); LLVM 19 restores it before the call.
# `--toolchain host` builds with bookworm's clang-14 as before (no tail
# calls then).  The chroot's package versions are part of the cache key.
TOOLCHAIN_SUITE = "trixie"
TOOLCHAIN_PACKAGES = [
    "clang-19", "lld-19", "llvm-19", "wasi-libc", "libc++-19-dev-wasm32", "libc++abi-19-dev-wasm32",
    # compiler-rt builtins for wasm32 (64/128-bit helpers); clang links them implicitly
    "libclang-rt-19-dev-wasm32",
    "make", "patch",
]
TOOLCHAINS = {
    "trixie": {"cc": "clang-19", "cxx": "clang++-19", "ar": "llvm-ar-19", "ranlib": "llvm-ranlib-19",
               "ld": "wasm-ld-19"},
    "host": {"cc": "clang-14", "cxx": "clang++-14", "ar": "llvm-ar-14", "ranlib": "llvm-ranlib-14",
             "ld": "wasm-ld"},
}
HOST_PACKAGES = {  # what this machine needs for each
    "trixie": ["debootstrap", "debian-archive-keyring", "patch"],
    "host": ["clang", "lld", "wasi-libc", "libc++-14-dev-wasm32", "libc++abi-14-dev-wasm32", "llvm",
             "libclang-rt-14-dev-wasm32", "patch"],
}
TARGET = ["--target=wasm32-wasi", "--sysroot=/usr"]

WASI_DEFINES = ["-D_WASI_EMULATED_SIGNAL", "-D_WASI_EMULATED_PROCESS_CLOCKS", "-D_WASI_EMULATED_MMAN"]
WASI_LIBS = ["-lwasi-emulated-signal", "-lwasi-emulated-process-clocks", "-lwasi-emulated-mman"]
OPT = ["-O2"]
# Code generation for speed, trixie toolchain only; each measured with
# bench/c2w_cpu.py in headless Chromium, interleaved, instructions per worker
# CPU second (the commit messages have the figures):
# -mtail-call: the wasm tail-call feature, so that patch 0050's musttail makes
#   the chained handlers return_call_indirect (Chromium runs it since 112):
#   +13% over nested calls, and what makes trace linking pay (+6% more);
# -O3 and -flto (wasm-ld LTO over all of Bochs): about +2% each, near the
#   noise but never behind -O2 in paired runs.
# Tried and left out: -msimd128 (no gain: Bochs's SSE code is scalar C).
TUNE = ["-mtail-call", "-O3", "-flto"]
# Bochs itself has no C++ exceptions: -fno-exceptions, so the only
# try/catch of the module is bx_wasi_catch_longjmp() in the shim (a longjmp
# then runs no destructors, as with a real longjmp).  -fno-exceptions is in
# CFLAGS too because Bochs compiles softfloat's .c files with $(CXX).
# -mexception-handling only enables the wasm feature (longjmp throws).
BOCHS_FLAGS = WASI_DEFINES + ["-mexception-handling", "-fno-exceptions"]
SHIM_FLAGS = WASI_DEFINES + ["-mexception-handling", "-fwasm-exceptions"]
LDFLAGS = [
    "-Wl,-z,stack-size=1048576",          # wasm-ld's default stack is 64 KiB
    "-Wl,--strip-debug",                  # libc's DWARF (0.4 MB); the name section stays
    "-Wl,--wrap=fopen", "-Wl,--wrap=open",  # empty-path guard, see bx_wasi_shim.cc
]

CONFIGURE_ARGS = [
    "--host=wasm32-wasi", "--build=x86_64-pc-linux-gnu", "--prefix=/usr",
    "--with-nogui",
    "--enable-x86-64", "--enable-cpu-level=6",
    "--disable-plugins", "--disable-smp", "--disable-debugger", "--disable-gdb-stub",
    "--enable-pci",  # i440FX is the core chipset; no PCI extras below
    "--disable-pcidev", "--disable-usb", "--disable-usb-ohci", "--disable-usb-ehci", "--disable-usb-xhci",
    # The guest's NIC when it boots with a network: an e1000 moving its frames
    # through the WASI host (patch 0011, ethmod=pyapptron); DMA, so a frame costs
    # no port I/O per byte as ne2k's would.
    "--enable-e1000", "--disable-ne2000", "--disable-pnic",
    # Networking on makes configure add the host packet movers whose headers it finds
    # (builtin slirp for <netinet/in.h>, eth_linux for <netpacket/packet.h>); none can
    # work without sockets, so the WASI build has only null, vnet and ours.
    "ac_cv_header_netinet_in_h=no", "ac_cv_header_netpacket_packet_h=no", "ac_cv_header_net_bpf_h=no",
    "ac_cv_header_net_if_h=no", "ac_cv_header_linux_netlink_h=no",
    "--disable-sb16", "--disable-es1370", "--disable-gameport",
    "--disable-voodoo", "--disable-clgd54xx", "--disable-busmouse",
    "--disable-cdrom",       # host CD-ROM passthrough (ioctl)
    "--disable-show-ips",    # needs alarm()/SIGALRM
    "--disable-idle-hack", "--disable-readline", "--disable-docbook", "--disable-xpm",
    # Guest RAM never swaps to a file: patch 0009 allocates its blocks on first use.
    "--disable-large-ramfile",
]

MAX_JOBS = 2

# Bochs' own emulation speedups, off by default in its configure (--no-speedups
# builds without them).  Handlers chaining calls the next instruction's handler
# from each handler; with TUNE's -mtail-call and patch 0050 that call is a
# wasm tail call (return_call_indirect), so a trace runs without nesting.
SPEEDUP_ARGS = ["--enable-repeat-speedups", "--enable-handlers-chaining",
                # a taken branch jumps into the next trace from the handler (tail call too)
                "--enable-trace-linking"]

# ---- helpers ---------------------------------------------------------------


log = buildlib.logger("build_bochs")
# build.py's probe step asks this name for its key (build_image.build_probe).
pkg_version = installed_version


class Toolchain:
    """Where the compilers run: this machine (root None) or the trixie chroot at root."""

    def __init__(self, name: str, root: Path | None, versions: dict):
        self.name, self.root, self.versions = name, root, versions
        t = TOOLCHAINS[name]
        self.cc, self.cxx, self.ar, self.ranlib, self.ld = t["cc"], t["cxx"], t["ar"], t["ranlib"], t["ld"]

    def inner(self, path: Path) -> str:
        """path as the compilers see it."""
        return str(path) if self.root is None else "/" + str(Path(path).relative_to(self.root))

    def cmd(self, argv, cwd: Path):
        """(argv, cwd) that run argv in cwd with this toolchain."""
        argv = [str(a) for a in argv]
        if self.root is None:
            return argv, cwd
        return ["chroot", str(self.root), "/bin/sh", "-c", 'cd "$0" && exec "$@"', self.inner(cwd)] + argv, None

    def which(self, tool: str) -> str:
        if self.root is None:
            return shutil.which(tool)
        return "/usr/bin/" + tool if (self.root / "usr" / "bin" / tool).exists() else None


def chroot_versions(root: Path, packages) -> dict:
    r = subprocess.run(["chroot", str(root), "dpkg-query", "-W", "-f=${Package} ${db:Status-Status} ${Version}\\n"]
                       + list(packages), capture_output=True, text=True)
    versions = {}
    for line in r.stdout.splitlines():
        name, status, version = (line.split(" ") + ["", ""])[:3]
        if status == "installed":
            versions[name] = version
    return versions


def ensure_toolchain(name: str, cache: Path) -> Toolchain:
    if name == "host":
        versions = ensure_packages(HOST_PACKAGES["host"])
        tc = Toolchain("host", None, versions)
    else:
        ensure_packages(HOST_PACKAGES[name])
        root = cache / "toolchain" / f"{TOOLCHAIN_SUITE}-llvm19"
        versions = chroot_versions(root, TOOLCHAIN_PACKAGES) if (root / "usr" / "bin").is_dir() else {}
        if any(p not in versions for p in TOOLCHAIN_PACKAGES):
            if os.geteuid() != 0:
                raise SystemExit("making the toolchain chroot needs root (debootstrap, chroot)")
            shutil.rmtree(root, ignore_errors=True)
            root.parent.mkdir(parents=True, exist_ok=True)
            mirror = buildlib.debian_mirror()
            log(f"debootstrap {TOOLCHAIN_SUITE} (minbase + {len(TOOLCHAIN_PACKAGES)} packages) into {root} from {mirror}")
            run(["debootstrap", "--variant=minbase", "--include=" + ",".join(TOOLCHAIN_PACKAGES),
                 TOOLCHAIN_SUITE, root, mirror], log_file=cache / "toolchain" / "debootstrap.log")
            versions = chroot_versions(root, TOOLCHAIN_PACKAGES)
            missing = [p for p in TOOLCHAIN_PACKAGES if p not in versions]
            if missing:
                raise SystemExit(f"debootstrap left out {' '.join(missing)}")
        tc = Toolchain(name, root, versions)
    for tool in (tc.cc, tc.cxx, tc.ar, tc.ranlib, tc.ld):
        if tc.which(tool) is None:
            raise SystemExit(f"{tool} not found in the {name} toolchain")
    return tc


# ---- 2. source ---------------------------------------------------------------


# What an older build_bochs.py wrote into the machine's apt configuration (it now has
# an apt of its own): removed when found, and only if it names its writer.
OLD_MACHINE_SOURCE = Path("/etc/apt/sources.list.d/pyapptron-trixie-src.sources")
OLD_MACHINE_SOURCE_MARK = "# Added by pyapptron emulators/c2w/build_bochs.py"


def remove_old_machine_source(path: Path = OLD_MACHINE_SOURCE) -> None:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    if not text.startswith(OLD_MACHINE_SOURCE_MARK):
        return  # someone else's file of that name: not ours to remove
    try:
        path.unlink()
    except PermissionError:
        log(f"{path} was written by an older pyapptron build and is no longer needed: remove it as root")
        return
    log(f"removed {path} (written by an older pyapptron build; the build has its own apt state now)")


def source_apt(cache: Path) -> PrivateApt:
    """apt with trixie's source packages only, from the machine's own Debian mirror."""
    return PrivateApt.for_source_packages(cache / f"apt-{SOURCE_SUITE}-src", SOURCE_SUITE)


def fetch_source(cache: Path) -> Path:
    """The pinned orig tarball: from the cache when its SHA-256 matches, else downloaded
    with `apt-get source` through the private apt state (source_apt)."""
    src_cache = cache / "src"
    src_cache.mkdir(parents=True, exist_ok=True)
    orig = src_cache / ORIG_TARBALL
    if orig.is_file() and sha256_file(orig) == ORIG_SHA256:
        return orig
    apt = source_apt(cache)
    log(f"apt-get update ({SOURCE_SUITE} sources only, lists in {apt.state_dir})")
    apt.apt_get(["update", "-qq"], capture=True)
    dl = src_cache / "download"
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir()
    os.chmod(dl, 0o777)  # apt downloads as its _apt user
    # The .dsc may 404 on the mirror while the tarballs download; then
    # apt-get exits non-zero, which is fine as long as the orig tarball came.
    log(f"apt-get source --download-only {SOURCE_PACKAGE}/{SOURCE_SUITE}")
    r = apt.apt_get(["source", "--download-only", f"{SOURCE_PACKAGE}/{SOURCE_SUITE}"], cwd=dl,
                    capture=True, check=False)
    got = dl / ORIG_TARBALL
    if not got.is_file():
        raise BuildError(buildlib.failure_message(f"apt-get source (it did not download {ORIG_TARBALL})",
                                                  r.args, r, None))
    if r.returncode != 0:
        log("apt-get source reported an error (typically the .dsc 404s); using the downloaded orig tarball")
    digest = sha256_file(got)
    if digest != ORIG_SHA256:
        raise BuildError(f"{ORIG_TARBALL}: SHA-256 {digest}, expected {ORIG_SHA256} "
                         "(emulators/manifest.json, c2w.bochs_source)")
    os.replace(got, orig)
    for extra in dl.iterdir():  # keep the Debian tarball/dsc for reference
        os.replace(extra, src_cache / extra.name)
    dl.rmdir()
    return orig


def unpack(tarball: Path, dest: Path) -> Path:
    with tarfile.open(tarball) as tf:
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(dest, **kwargs)
    top = dest / SOURCE_DIR
    if not (top / "configure").is_file():
        raise SystemExit(f"{tarball} did not unpack to {top}")
    return top


# ---- 3.-4. build -----------------------------------------------------------


def inputs_key(orig: Path, tc: Toolchain, extra_configure=(), speed=True) -> tuple[str, dict]:
    h = hashlib.sha256()
    manifest = {"orig": ORIG_SHA256, "toolchain": tc.name, "packages": tc.versions, "files": {},
                "cflags": compile_flags(tc, speed)}
    if extra_configure:
        manifest["extra_configure"] = list(extra_configure)
    files = [Path(__file__).resolve()] + sorted(PATCH_DIR.glob("*.patch")) + sorted(
        p for p in SHIM_DIR.rglob("*") if p.is_file())
    for p in files:
        manifest["files"][str(p.relative_to(HERE))] = sha256_file(p)
    h.update(json.dumps(manifest, sort_keys=True).encode())
    return h.hexdigest()[:20], manifest


def compile_flags(tc: Toolchain, speed: bool = True) -> list[str]:
    """OPT and, on the trixie toolchain (and unless speed is off), TUNE (a later -O wins)."""
    return OPT + (TUNE if speed and tc.name != "host" else [])


def build(orig: Path, work: Path, logs: Path, tc: Toolchain, extra_configure=(), speed=True) -> Path:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logs.mkdir(parents=True, exist_ok=True)
    blog = logs / "build.log"
    blog.write_text("")
    log(f"unpacking {orig.name}")
    tree = unpack(orig, work)

    patches = sorted(PATCH_DIR.glob("*.patch"))
    for p in patches:
        log(f"patch {p.name}")
        run(["patch", "-p1", "--forward", "--no-backup-if-mismatch", "-i", p], cwd=tree, log_file=blog)

    def tc_run(argv, cwd, **kw):
        argv, where = tc.cmd(argv, cwd)
        return run(argv, cwd=where, **kw)

    flags = compile_flags(tc, speed)
    # WASI shims: headers (setjmp.h, pthread.h) and a small runtime library.
    shim = tree / "wasi"
    shutil.copytree(SHIM_DIR, shim)
    inc = tc.inner(shim / "include")
    # The shim stays a wasm object under LTO: it defines the exception tag that
    # longjmp throws, which wasm-ld 19 cannot take from bitcode.
    shim_flags = [f for f in flags if not f.startswith("-flto")]
    tc_run([tc.cxx] + TARGET + shim_flags + SHIM_FLAGS + [f"-I{inc}", "-c", "wasi/bx_wasi_shim.cc", "-o", "wasi/bx_wasi_shim.o"],
           tree, log_file=blog, nice=True)
    tc_run([tc.ar, "rcs", "wasi/libbxwasi.a", "wasi/bx_wasi_shim.o"], tree, log_file=blog)

    # Bochs' sub-Makefiles call plain `ar` (GNU ar cannot index wasm objects).
    tools = work / "tools"
    tools.mkdir()
    for name, real in (("ar", tc.ar), ("ranlib", tc.ranlib)):
        (tools / name).symlink_to(tc.which(real))

    env = dict(os.environ)
    path = env.get("PATH", "/usr/bin:/bin") if tc.root is None else "/usr/sbin:/usr/bin:/sbin:/bin"
    env.update({
        "PATH": f"{tc.inner(tools)}:{path}",
        "CC": " ".join([tc.cc] + TARGET),
        "CXX": " ".join([tc.cxx] + TARGET),
        "CFLAGS": " ".join(flags + BOCHS_FLAGS + [f"-I{inc}"]),
        "CXXFLAGS": " ".join(flags + BOCHS_FLAGS + [f"-I{inc}"]),
        "LDFLAGS": " ".join(LDFLAGS + flags + [f"-L{tc.inner(shim)}"]),
        "LIBS": " ".join(["-lbxwasi"] + WASI_LIBS),
        "AR": tc.ar,
        "RANLIB": tc.ranlib,
        "LC_ALL": "C",
        "SOURCE_DATE_EPOCH": "1739696400",
    })
    if tc.root is not None:
        env.pop("TMPDIR", None)
    log(f"configure ({tc.name} toolchain, {tc.cxx})")
    tc_run(["./configure"] + CONFIGURE_ARGS + list(extra_configure), tree, env=env, log_file=logs / "configure.log",
           nice=True)
    jobs = max(1, min(MAX_JOBS, os.cpu_count() or 1))
    log(f"make -j{jobs} bochs (log: {blog})")
    t0 = time.time()
    tc_run(["make", f"-j{jobs}", "bochs"], tree, env=env, log_file=blog, nice=True)
    log(f"make took {time.time() - t0:.0f} s")
    out = tree / "bochs"
    with open(out, "rb") as f:
        if f.read(4) != b"\0asm":
            raise SystemExit(f"{out} is not a wasm module")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory to write bochs.wasm to")
    ap.add_argument("--cache", required=True, type=Path, help="cache directory (source, build trees, results)")
    ap.add_argument("--keep-build", action="store_true", help="keep the build tree after a successful build")
    ap.add_argument("--toolchain", choices=sorted(TOOLCHAINS), default="trixie",
                    help="trixie: LLVM 19 in a chroot under the cache (default); host: this machine's clang-14")
    ap.add_argument("--no-speedups", action="store_true",
                    help="Bochs's plain configuration: without " + " ".join(SPEEDUP_ARGS) + " and TUNE")
    ap.add_argument("--force", action="store_true",
                    help="build bochs.wasm again even when the cache has it (toolchain and source are reused)")
    args = ap.parse_args(argv)
    t_start = time.time()
    cache = args.cache.resolve()
    out_dir = args.out.resolve()

    remove_old_machine_source()
    ensure_packages(HOST_PACKAGES["host"])  # wasi_probe.c (build_image.py) builds with this machine's clang-14
    tc = ensure_toolchain(args.toolchain, cache)
    orig = fetch_source(cache)
    speed = not args.no_speedups
    extra = SPEEDUP_ARGS if speed else []
    key, manifest = inputs_key(orig, tc, extra, speed)
    result_dir = cache / "results" / key
    result = result_dir / "bochs.wasm"
    if result.is_file() and not args.force:
        log(f"cached build {key}")
    else:
        # The build tree must be inside the chroot for its compilers to see it.
        work = (tc.root / "build" if tc.root is not None else cache / "work") / key
        built = build(orig, work, result_dir / "logs", tc, extra, speed)
        tmp = result_dir / "bochs.wasm.tmp"
        shutil.copyfile(built, tmp)
        manifest["configure"] = CONFIGURE_ARGS + extra
        manifest["built_seconds"] = round(time.time() - t_start)
        (result_dir / "inputs.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, result)
        if not args.keep_build:
            shutil.rmtree(work, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result, out_dir / "bochs.wasm")
    info = {"key": key, "size": result.stat().st_size, "sha256": sha256_file(result)}
    info.update(json.loads((result_dir / "inputs.json").read_text()))
    (out_dir / "bochs.wasm.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    log(f"{out_dir / 'bochs.wasm'}: {info['size']} bytes, sha256 {info['sha256'][:16]}…, "
        f"{time.time() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    buildlib.script_main(main)
