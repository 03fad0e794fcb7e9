#!/usr/bin/env python3
"""Build Bochs 3.0 (x86_64 guest CPU) as a WASI preview1 module, bochs.wasm.

    python3 emulators/c2w/build_bochs.py --out DIR --cache DIR

Groundwork for an x86_64 backend of pyapptron.  Standard library only.

Steps (each is skipped when its result is already in the cache):
  1. make sure Debian's wasm toolchain is installed (apt-get, as root);
  2. fetch the Bochs source with ``apt-get source bochs/trixie`` from the
     mirror this machine already uses (a deb-src-only entry for trixie is
     added under /etc/apt/sources.list.d/ if none exists).  The .dsc may 404
     while the tarballs download; the orig tarball is then checked against
     the pinned SHA-256 below and unpacked here;
  3. apply emulators/c2w/patches/*.patch in order and copy in the WASI shims
     from emulators/c2w/wasi/;
  4. configure (nogui, x86-64, cpu level 6, no plugins/SMP/debugger, no
     optional devices) with clang-14 --target=wasm32-wasi --sysroot=/usr and
     build with nice -n 10 and make -j2 at most;
  5. copy the result to DIR/bochs.wasm (plus DIR/bochs.wasm.json).

The cache key is a hash of every input: the orig tarball, the patches, the
shim sources, this script and the versions of the toolchain packages.  A
second run with the same inputs only copies the cached bochs.wasm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from build import sha256_file  # noqa: E402  (emulators/build.py)
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

APT_PACKAGES = [
    "clang", "lld", "wasi-libc", "libc++-14-dev-wasm32", "libc++abi-14-dev-wasm32", "llvm",
    # compiler-rt builtins for wasm32 (64/128-bit helpers); clang links them implicitly
    "libclang-rt-14-dev-wasm32",
    "patch",
]
CC = ["clang-14", "--target=wasm32-wasi", "--sysroot=/usr"]
CXX = ["clang++-14", "--target=wasm32-wasi", "--sysroot=/usr"]
AR = "llvm-ar-14"
RANLIB = "llvm-ranlib-14"

WASI_DEFINES = ["-D_WASI_EMULATED_SIGNAL", "-D_WASI_EMULATED_PROCESS_CLOCKS", "-D_WASI_EMULATED_MMAN"]
WASI_LIBS = ["-lwasi-emulated-signal", "-lwasi-emulated-process-clocks", "-lwasi-emulated-mman"]
OPT = ["-O2"]
# Bochs itself has no C++ exceptions: -fno-exceptions, so the only
# try/catch of the module is bx_wasi_catch_longjmp() in the shim (a longjmp
# then runs no destructors, as with a real longjmp).  -fno-exceptions is in
# CFLAGS too because Bochs compiles softfloat's .c files with $(CXX).
# -mexception-handling only enables the wasm feature (longjmp throws).
BOCHS_CFLAGS = OPT + WASI_DEFINES + ["-mexception-handling", "-fno-exceptions"]
BOCHS_CXXFLAGS = BOCHS_CFLAGS
SHIM_CXXFLAGS = OPT + WASI_DEFINES + ["-mexception-handling", "-fwasm-exceptions"]
LDFLAGS = [
    "-Wl,-z,stack-size=1048576",          # wasm-ld's default stack is 64 KiB
    "-Wl,--wrap=fopen", "-Wl,--wrap=open",  # empty-path guard, see bx_wasi_shim.cc
]

CONFIGURE_ARGS = [
    "--host=wasm32-wasi", "--build=x86_64-pc-linux-gnu", "--prefix=/usr",
    "--with-nogui",
    "--enable-x86-64", "--enable-cpu-level=6",
    "--disable-plugins", "--disable-smp", "--disable-debugger", "--disable-gdb-stub",
    "--enable-pci",  # i440FX is the core chipset; no PCI extras below
    "--disable-pcidev", "--disable-usb", "--disable-usb-ohci", "--disable-usb-ehci", "--disable-usb-xhci",
    "--disable-ne2000", "--disable-pnic", "--disable-e1000",
    "--disable-sb16", "--disable-es1370", "--disable-gameport",
    "--disable-voodoo", "--disable-clgd54xx", "--disable-busmouse",
    "--disable-cdrom",       # host CD-ROM passthrough (ioctl)
    "--disable-show-ips",    # needs alarm()/SIGALRM
    "--disable-idle-hack", "--disable-readline", "--disable-docbook", "--disable-xpm",
    # Guest RAM never swaps to a file: patch 0009 allocates its blocks on first use.
    "--disable-large-ramfile",
]

MAX_JOBS = 2

# Opt-in (--speedups): Bochs' own emulation speedups, off by default in
# its configure.  Handlers chaining calls the next instruction's handler
# from each handler; wasm32 has no guaranteed tail calls, so the chain is
# ordinary calls, bounded by the trace length (trace linking stays off).
SPEEDUP_ARGS = ["--enable-repeat-speedups", "--enable-handlers-chaining"]

# ---- helpers ---------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[build_bochs] {msg}", flush=True)


def run(cmd, *, cwd=None, env=None, logfile: Path | None = None, check=True, nice=False):
    cmd = [str(c) for c in cmd]
    if nice:
        cmd = ["nice", "-n", "10"] + cmd
    if logfile is None:
        return subprocess.run(cmd, cwd=cwd, env=env, check=check)
    with open(logfile, "ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if check and r.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-40:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}\n  full log: {logfile}")
    return r


def pkg_version(name: str) -> str | None:
    r = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", name],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    status, _, version = r.stdout.strip().partition(" ")
    return version if status == "installed" else None


# ---- 1. toolchain ------------------------------------------------------------

_apt_updated = False


def apt_update() -> None:
    global _apt_updated
    if not _apt_updated:
        log("apt-get update")
        run(["apt-get", "update", "-qq"])
        _apt_updated = True


def ensure_packages(packages) -> dict:
    missing = [p for p in packages if pkg_version(p) is None]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"missing Debian packages (run as root or install): {' '.join(missing)}")
        apt_update()
        log("apt-get install " + " ".join(missing))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "install", "-y", "-qq"] + missing, env=env)
    versions = {p: pkg_version(p) for p in packages}
    for tool in (CC[0], CXX[0], AR, RANLIB, "wasm-ld"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found after installing {' '.join(packages)}")
    return versions


# ---- 2. source ---------------------------------------------------------------


def _apt_source_entries():
    """(types, uris, suites) for each entry of the machine's apt sources."""
    entries = []
    base = Path("/etc/apt")
    files = [base / "sources.list"] + sorted((base / "sources.list.d").glob("*.list"))
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.match(r"^(deb|deb-src)\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                entries.append(({m.group(1)}, [m.group(3)], [m.group(4)]))
    for f in sorted((base / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text(errors="replace")):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.split("#", 1)[0].split()
            if fields.get("enabled", ["yes"])[0].lower() == "no":
                continue
            if "types" in fields and "uris" in fields:
                entries.append((set(fields["types"]), fields["uris"], fields.get("suites", [])))
    return entries


def ensure_deb_src() -> None:
    entries = _apt_source_entries()
    if any("deb-src" in t and SOURCE_SUITE in s for t, _, s in entries):
        return
    mirror = None
    for types, uris, suites in entries:
        if "deb" not in types:
            continue
        for uri in uris:
            # the main archive: not the security archive, not a third-party repo
            if re.search(r"/debian/?$", uri) and not any(s.endswith("-security") for s in suites):
                mirror = uri
                break
        if mirror:
            break
    if mirror is None:
        raise SystemExit("no Debian mirror found in /etc/apt/sources.list*; cannot add a deb-src entry")
    target = Path("/etc/apt/sources.list.d/pyapptron-trixie-src.sources")
    log(f"adding deb-src {SOURCE_SUITE} entry for {mirror} in {target}")
    target.write_text(
        "# Added by pyapptron emulators/c2w/build_bochs.py: source packages only.\n"
        "Types: deb-src\n"
        f"URIs: {mirror}\n"
        f"Suites: {SOURCE_SUITE}\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    global _apt_updated
    _apt_updated = False


def fetch_source(cache: Path) -> Path:
    src_cache = cache / "src"
    src_cache.mkdir(parents=True, exist_ok=True)
    orig = src_cache / ORIG_TARBALL
    if orig.is_file() and sha256_file(orig) == ORIG_SHA256:
        return orig
    if os.geteuid() != 0:
        raise SystemExit("fetching the source needs apt configuration as root")
    ensure_deb_src()
    apt_update()
    dl = src_cache / "download"
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir()
    # The .dsc may 404 on the mirror while the tarballs download; then
    # apt-get exits non-zero, which is fine as long as the orig tarball came.
    log(f"apt-get source --download-only {SOURCE_PACKAGE}/{SOURCE_SUITE}")
    r = subprocess.run(["apt-get", "source", "--download-only", f"{SOURCE_PACKAGE}/{SOURCE_SUITE}"],
                       cwd=dl, capture_output=True, text=True)
    got = dl / ORIG_TARBALL
    if not got.is_file():
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"apt-get source did not download {ORIG_TARBALL}")
    if r.returncode != 0:
        log("apt-get source reported an error (typically the .dsc 404s); using the downloaded orig tarball")
    digest = sha256_file(got)
    if digest != ORIG_SHA256:
        raise SystemExit(f"{ORIG_TARBALL}: SHA-256 {digest}, expected {ORIG_SHA256}")
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


def inputs_key(orig: Path, versions: dict, extra_configure=()) -> tuple[str, dict]:
    h = hashlib.sha256()
    manifest = {"orig": ORIG_SHA256, "packages": versions, "files": {}}
    if extra_configure:
        manifest["extra_configure"] = list(extra_configure)
    files = [Path(__file__).resolve()] + sorted(PATCH_DIR.glob("*.patch")) + sorted(
        p for p in SHIM_DIR.rglob("*") if p.is_file())
    for p in files:
        manifest["files"][str(p.relative_to(HERE))] = sha256_file(p)
    h.update(json.dumps(manifest, sort_keys=True).encode())
    return h.hexdigest()[:20], manifest


def build(orig: Path, work: Path, logs: Path, extra_configure=()) -> Path:
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
        run(["patch", "-p1", "--forward", "--no-backup-if-mismatch", "-i", p], cwd=tree, logfile=blog)

    # WASI shims: headers (setjmp.h, pthread.h) and a small runtime library.
    shim = tree / "wasi"
    shutil.copytree(SHIM_DIR, shim)
    inc = shim / "include"
    run(CXX + SHIM_CXXFLAGS + [f"-I{inc}", "-c", shim / "bx_wasi_shim.cc", "-o", shim / "bx_wasi_shim.o"],
        cwd=tree, logfile=blog, nice=True)
    run([AR, "rcs", shim / "libbxwasi.a", shim / "bx_wasi_shim.o"], cwd=tree, logfile=blog)

    # Bochs' sub-Makefiles call plain `ar` (GNU ar cannot index wasm objects).
    tools = work / "tools"
    tools.mkdir()
    for name, real in (("ar", AR), ("ranlib", RANLIB)):
        (tools / name).symlink_to(shutil.which(real))

    env = dict(os.environ)
    env.update({
        "PATH": f"{tools}:{env.get('PATH', '/usr/bin:/bin')}",
        "CC": " ".join(CC),
        "CXX": " ".join(CXX),
        "CFLAGS": " ".join(BOCHS_CFLAGS + [f"-I{inc}"]),
        "CXXFLAGS": " ".join(BOCHS_CXXFLAGS + [f"-I{inc}"]),
        "LDFLAGS": " ".join(LDFLAGS + [f"-L{shim}"]),
        "LIBS": " ".join(["-lbxwasi"] + WASI_LIBS),
        "AR": AR,
        "RANLIB": RANLIB,
        "LC_ALL": "C",
        "SOURCE_DATE_EPOCH": "1739696400",
    })
    log("configure")
    run(["./configure"] + CONFIGURE_ARGS + list(extra_configure), cwd=tree, env=env, logfile=logs / "configure.log", nice=True)
    jobs = max(1, min(MAX_JOBS, os.cpu_count() or 1))
    log(f"make -j{jobs} bochs (log: {blog})")
    t0 = time.time()
    run(["make", f"-j{jobs}", "bochs"], cwd=tree, env=env, logfile=blog, nice=True)
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
    ap.add_argument("--speedups", action="store_true", help="configure with " + " ".join(SPEEDUP_ARGS))
    args = ap.parse_args(argv)
    t_start = time.time()
    cache = args.cache.resolve()
    out_dir = args.out.resolve()

    versions = ensure_packages(APT_PACKAGES)
    orig = fetch_source(cache)
    extra = SPEEDUP_ARGS if args.speedups else []
    key, manifest = inputs_key(orig, versions, extra)
    result_dir = cache / "results" / key
    result = result_dir / "bochs.wasm"
    if result.is_file():
        log(f"cached build {key}")
    else:
        work = cache / "work" / key
        built = build(orig, work, result_dir / "logs", extra)
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
    sys.exit(main())
