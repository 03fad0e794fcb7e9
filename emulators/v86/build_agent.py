"""Build the ``agent`` v86 guest image: Debian bookworm i386, root on v86's 9p device.

Output (under ``out_dir``)::

    images/agent/image.json    what the host needs to boot it (the kernel and
                               initramfs are the minimal image's; see build_minimal.py)
    images/agent/fs.json.gz    v86's 9p index (JSON format 3), gzip'd
    images/agent/fs/ID[.zst]   file contents, content-addressed: ID is the first
                               16 hex digits of the file's sha256; ``.zst`` when
                               compression pays (v86 decompresses it)

v86 fetches a file the first time the guest opens it, so a boot downloads only
what it touches (the README gives the figures).

The package set and the versions it resolved to are pinned in
``emulators/manifest.json`` under ``"rootfs" -> "agent"``: ``packages`` is what
we ask for, ``lock`` is every installed package with its version. The root is
made by ``debootstrap --variant=minbase`` plus ``apt-get install`` in a chroot
(debootstrap's own resolver cannot install npm: it does not follow virtual
packages). Debian replaces versions in point releases; when what was installed
differs from the lock the build says so loudly, with the new lock to pin, and
goes on.

Cached under ``cache_dir/v86-agent``: the root file system (keyed by suite and
package list), compressed contents (keyed by content), and the outputs (keyed by
every input). Needs root (debootstrap, chroot) and the ``debootstrap`` and
``zstd`` packages.

Built by the asset command: python emulators/build.py (--only guest,agent for just the images).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
INIT_SCRIPT = HERE / "agent-init.sh"
# zsh-autosuggestions and zsh-syntax-highlighting arranged for an emulated machine (read
# its header); ~/.zshrc sources it. Installed as ZSH_PLUGINS_PATH.
ZSH_PLUGINS = HERE / "zsh-plugins.zsh"
ZSH_PLUGINS_PATH = "etc/zsh/pyapptron-plugins.zsh"
MANIFEST = REPO / "emulators" / "manifest.json"

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import build_minimal  # noqa: E402  (the kernel, the initramfs and the agent binary)
from buildlib import apt_install, debian_mirror, logger, run, sha256_file, warn_loudly  # noqa: E402

IMAGE = "agent"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The initramfs mounts this 9p tag as / and runs /sbin/pyapptron-init from it.
CMDLINE = build_minimal.CMDLINE + " pyapptron.root=host9p"
MEMORY_MIB = 512  # gcc, node and npm want room
# zstd levels: the slow, strong one pays on the big binaries and libraries that hold
# most of the bytes; the rest (tens of thousands of small files) gets a fast one.
ZSTD_LEVEL_BIG, ZSTD_LEVEL_SMALL, BIG_FILE = 19, 12, 128 << 10
# Files smaller than this are stored as they are: one HTTP request costs more
# than the bytes compression would save.
COMPRESS_MIN_SIZE = 512
# Compression must save at least this fraction, else the file is stored raw.
COMPRESS_MIN_GAIN = 0.05

# What a running sandbox never reads: documentation, translations, apt's
# download lists and caches (the guest has no network to use them), logs and
# the debootstrap leftovers. Patterns match paths relative to the root: "DIR/*"
# empties DIR (the directory stays), any other pattern (globs allowed) removes
# what it matches, a whole tree for a directory.
# The GNU triplets of an architecture's gcc and multiarch library directories.
TRIPLETS = {"i386": ("i686-linux-gnu", "i386-linux-gnu"), "amd64": ("x86_64-linux-gnu", "x86_64-linux-gnu")}
PRUNE_I386 = [
    "usr/share/doc/*",            # (copyright files are kept, see KEEP)
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
    "usr/share/bug/*",
    "usr/share/vim/vim90/doc/*",
    "usr/share/vim/vim90/tutor/*",
    "usr/share/vim/vim90/lang/*",
    "usr/share/vim/vim90/spell/*",
    # GCC parts that cost much and serve few (README: what the agent image leaves out):
    # link-time optimisation (-flto), the sanitizer runtimes (-fsanitize=), gprofng.
    "usr/bin/i686-linux-gnu-lto-dump-12",
    "usr/lib/gcc/i686-linux-gnu/12/lto1",
    "usr/lib/gcc/i686-linux-gnu/12/libasan*",
    "usr/lib/gcc/i686-linux-gnu/12/libubsan*",
    "usr/lib/gcc/i686-linux-gnu/12/liblsan*",
    "usr/lib/gcc/i686-linux-gnu/12/libhwasan*",
    "usr/lib/i386-linux-gnu/libasan.so*",
    "usr/lib/i386-linux-gnu/libubsan.so*",
    "usr/lib/i386-linux-gnu/liblsan.so*",
    "usr/lib/i386-linux-gnu/libgprofng.so*",
    # static OpenSSL, pulled in by node-gyp's headers (the shared one stays)
    "usr/lib/i386-linux-gnu/libcrypto.a",
    "usr/lib/i386-linux-gnu/libssl.a",
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/log/*",
    "debootstrap",
    "dev/*", "proc/*", "sys/*", "run/*", "tmp/*",
]
KEEP = ["usr/share/doc/*/copyright"]


def prune_patterns(arch: str = "i386") -> list[str]:
    """PRUNE for a Debian architecture (the list above names i386's paths)."""
    gcc, lib = TRIPLETS[arch]
    return [p.replace("i686-linux-gnu", gcc).replace("i386-linux-gnu", lib) for p in PRUNE_I386]


PRUNE = prune_patterns("i386")

# Shell and tmux configuration for the image (overlay_files() lists everything the
# image adds to or replaces in the Debian root).
ZSHRC = b"""\
# pyapptron: the login shell on the console (/etc/zsh/zshrc.d is not a Debian
# convention, so this sits in /root/.zshrc; a user's own edits live there too).
HISTFILE=~/.zsh_history
HISTSIZE=5000
SAVEHIST=5000
setopt HIST_IGNORE_DUPS SHARE_HISTORY
bindkey -e
# The completion dump is made when the image is built: without it compinit scans
# every completion function, which takes many seconds over 9p.
autoload -Uz compinit && compinit -C -d /var/cache/zsh-completion-dump
autoload -Uz colors && colors
PROMPT='%F{green}%n@%m%f:%F{blue}%~%f%# '
alias ls='ls --color=auto'
# Suggestions from history and syntax highlighting, done after a key is drawn, not before
# (see the file for how and why).
source /etc/zsh/pyapptron-plugins.zsh
"""
TMUX_CONF = b"""\
# pyapptron: xterm.js speaks 256 colours and the mouse.
set -g default-terminal "tmux-256color"
set -g mouse on
set -sg escape-time 10
"""


log = logger("build_agent")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the root file system --------------------------------------------------------

def _chroot_env() -> dict:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
            "LANG": "C.UTF-8", "HOME": "/root"}


def make_rootfs(target: pathlib.Path, suite: str, packages: list[str], debs: pathlib.Path,
                arch: str = "i386") -> None:
    """debootstrap minbase, then apt-get install the packages in a chroot."""
    mirror = debian_mirror(default=DEFAULT_MIRROR)
    debs.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {suite} {arch} from {mirror} (about half a minute)")
    t0 = time.monotonic()
    run(["debootstrap", f"--arch={arch}", "--variant=minbase", f"--cache-dir={debs}",
         suite, str(target), mirror], capture=True)
    log(f"debootstrap done in {time.monotonic() - t0:.0f} s; apt-get install {len(packages)} packages")
    archives = target / "var/cache/apt/archives"
    proc, pts = target / "proc", target / "dev/pts"
    pts.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "proc", "proc", str(proc)])
    run(["mount", "-t", "devpts", "devpts", str(pts)])  # apt and dpkg log through a pty
    run(["mount", "--bind", str(debs), str(archives)])  # downloads land in the cache
    try:
        env = _chroot_env()
        run(["chroot", str(target), "apt-get", "-q", "update"], env=env, capture=True)
        run(["chroot", str(target), "apt-get", "install", "-y", "-q", "--no-install-recommends",
             *packages], env=env, capture=True)
        run(["chroot", str(target), "apt-get", "clean"], env=env)
    finally:
        for mounted in (archives, pts, proc):
            subprocess.run(["umount", str(mounted)])
    log(f"root file system ready in {time.monotonic() - t0:.0f} s")


def installed_packages(root: pathlib.Path) -> dict[str, str]:
    out = run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Status}\n"],
              capture=True, env=_chroot_env()).stdout
    return {name: version for name, version, status in (line.split("\t") for line in out.splitlines())
            if status == "installed"}


def ensure_rootfs(cache: pathlib.Path, spec: dict, arch: str = "i386") -> pathlib.Path:
    """The Debian root for spec (suite, packages), made once and cached under cache."""
    suite, packages = spec["suite"], sorted(spec["packages"])
    key = hashlib.sha256(json.dumps({"suite": suite, "packages": packages, "arch": arch,
                                     "stage": 1}, sort_keys=True).encode()).hexdigest()[:16]
    root = cache / f"rootfs-{key}"
    if (root / ".pyapptron-complete").exists():
        return root
    for old in cache.glob("rootfs-*"):
        log(f"removing an older root file system {old.name}")
        _remove_tree(old)
    if os.geteuid() != 0:
        raise SystemExit("building the agent image needs root (debootstrap and chroot); "
                         "run emulators/setup.sh as root, or build with --only npm,wheels,adapters,guest,wheel")
    for tool, pkg in (("debootstrap", "debootstrap"), ("zstd", "zstd"), ("chroot", "coreutils")):
        if shutil.which(tool) is None:
            apt_install([pkg])
    tmp = cache / f".rootfs-{key}.tmp"
    _remove_tree(tmp)
    try:
        make_rootfs(tmp, suite, packages, cache / "debs", arch)
        (tmp / ".pyapptron-packages.json").write_text(json.dumps(installed_packages(tmp), indent=0, sort_keys=True))
        (tmp / ".pyapptron-complete").touch()
    except BaseException:
        _remove_tree(tmp)
        raise
    tmp.rename(root)
    return root


def _remove_tree(path: pathlib.Path) -> None:
    if not path.exists():
        return
    # A build killed mid-way can leave its mounts behind: never delete through them.
    for sub in ("var/cache/apt/archives", "dev/pts", "proc"):
        subprocess.run(["umount", str(path / sub)], stderr=subprocess.DEVNULL)
    shutil.rmtree(path)


def check_lock(installed: dict[str, str], lock: dict[str, str] | None, lock_path: pathlib.Path,
               name: str = IMAGE) -> None:
    if installed == lock:
        return
    lock = lock or {}
    changed = sorted(n for n in installed.keys() & lock.keys() if installed[n] != lock[n])
    added = sorted(installed.keys() - lock.keys())
    removed = sorted(lock.keys() - installed.keys())
    lines = [f"{n} {lock[n]} -> {installed[n]}" for n in changed[:20]]
    lines += [f"+ {n} {installed[n]}" for n in added[:20]] + [f"- {n}" for n in removed[:20]]
    warn_loudly(
        f"the {name} image's packages differ from the lock in emulators/manifest.json "
        f"(rootfs.{name}.lock): {len(changed)} changed, {len(added)} added, {len(removed)} gone.\n  "
        + "\n  ".join(lines)
        + f"\nTo pin what was built, set rootfs.{name}.lock to the contents of {lock_path}.")


# ---- the 9p index ------------------------------------------------------------------

def _pruned(rel: str, prune: list[str] = PRUNE) -> bool:
    for pattern in prune:
        if pattern.endswith("/*"):
            if rel.startswith(pattern[:-1]):
                return True
        elif rel == pattern or rel.startswith(pattern + "/") or fnmatch.fnmatchcase(rel, pattern):
            return True
    return False


def pruned(rel: str, prune: list[str] = PRUNE) -> bool:
    """Whether a path (relative to the root) is left out of an image built from it."""
    return _pruned(rel, prune) and not _kept(rel)


def _kept(rel: str) -> bool:
    return any(fnmatch.fnmatchcase(rel, k) for k in KEEP)


# Files of the overlay get this mtime (a fixed one: the same inputs give the same index).
OVERLAY_MTIME = 1700000000


class Index:
    """Walks a root, applies PRUNE/KEEP and the overlay, stores contents by id."""

    def __init__(self, blobs: pathlib.Path):
        self.blobs = blobs  # cache of stored contents: ID or ID.zst
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, tuple[int, str]] = {}  # id -> (size, stored name)
        self.pending: dict[str, pathlib.Path] = {}  # id -> a source path still to store
        self.total_size = 0
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "skipped": 0}

    def content(self, data_path: pathlib.Path | None, data: bytes | None = None) -> tuple[str, int]:
        if data is None:
            size, digest = data_path.stat().st_size, sha256_file(data_path)
        else:
            size, digest = len(data), sha256_bytes(data)
        cid = digest[:16]
        if cid not in self.files and cid not in self.pending:
            if data is not None:
                data_path = self.blobs / f".overlay-{cid}"
                data_path.write_bytes(data)
            self.pending[cid] = data_path
        return cid, size

    def walk(self, root: pathlib.Path, overlay: dict[str, tuple[int, bytes]]) -> list:
        """The fsroot list of v86's JSON format 3 for the tree at root (plus overlay)."""
        self.placed = set()
        fsroot = self._dir(root, "", overlay, pruned=False)
        lost = sorted(set(overlay) - self.placed)
        if lost:  # e.g. a path through a symlinked directory
            raise SystemExit(f"overlay files not placed in the image (their directory is missing "
                             f"or a symlink): {', '.join(lost)}")
        return fsroot

    def _dir(self, path: pathlib.Path, rel_dir: str, overlay, pruned: bool) -> list:
        """Entries of one directory. Under a pruned path only KEEP files (and the
        directories that lead to them) are indexed."""
        entries = []
        added = {k.rpartition("/")[2] for k in overlay if k.rpartition("/")[0] == rel_dir}
        for name in sorted(set(os.listdir(path)) | added):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in overlay:
                mode, data = overlay[rel]
                self.placed.add(rel)
                cid, size = self.content(None, data)
                self._add_file(entries, name, size, OVERLAY_MTIME, mode, 0, 0, cid)
                continue
            child = path / name
            st = os.lstat(child)
            inside_pruned = pruned or _pruned(rel)
            meta = [name, 0, int(st.st_mtime), st.st_mode, st.st_uid, st.st_gid]
            if stat.S_ISDIR(st.st_mode):
                children = self._dir(child, rel, overlay, inside_pruned)
                if children or not inside_pruned:
                    entries.append(meta + [children])
                    self.counts["dirs"] += 1
            elif inside_pruned and not _kept(rel):
                continue
            elif stat.S_ISREG(st.st_mode):
                cid, size = self.content(child)
                self._add_file(entries, name, size, int(st.st_mtime), st.st_mode, st.st_uid, st.st_gid, cid)
            elif stat.S_ISLNK(st.st_mode):
                entries.append(meta + [os.readlink(child)])
                self.counts["symlinks"] += 1
            else:  # device nodes, fifos, sockets: v86's format has no room for them (devtmpfs makes /dev)
                self.counts["skipped"] += 1
        return entries

    def _add_file(self, entries, name, size, mtime, mode, uid, gid, cid) -> None:
        entries.append([name, size, mtime, stat.S_IFREG | (mode & 0o7777), uid, gid, cid])
        self.counts["files"] += 1
        self.total_size += size

    def store_pending(self) -> None:
        """Compress every new content once (two zstd processes), keep what pays."""
        todo = []
        for cid, src in self.pending.items():
            for stored in (f"{cid}.zst", cid):
                if (self.blobs / stored).exists():
                    self.files[cid] = (0, stored)
                    break
            else:
                todo.append((cid, src))
        if todo:
            log(f"compressing {len(todo)} new contents with zstd")
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(dir=self.blobs, prefix=".stage-") as stage:
                stage = pathlib.Path(stage)
                staged_ids = []
                for cid, src in todo:
                    if src.stat().st_size < COMPRESS_MIN_SIZE:
                        shutil.copyfile(src, self.blobs / cid)
                        self.files[cid] = (0, cid)
                        continue
                    staged = stage / cid
                    try:
                        os.link(src, staged)
                    except OSError:
                        shutil.copyfile(src, staged)
                    staged_ids.append(cid)
                out = stage / "out"
                out.mkdir()
                big = sorted((c for c in staged_ids if (stage / c).stat().st_size >= BIG_FILE),
                             key=lambda c: -(stage / c).stat().st_size)
                small = [c for c in staged_ids if (stage / c).stat().st_size < BIG_FILE]
                # Two zstd processes (two cores), each given half of each size class.
                for level, ids in ((ZSTD_LEVEL_BIG, big), (ZSTD_LEVEL_SMALL, small)):
                    procs = []
                    for i, part in enumerate((ids[0::2], ids[1::2])):
                        if not part:
                            continue
                        listing = stage / f"list-{level}-{i}"
                        listing.write_text("".join(f"{stage / c}\n" for c in part))
                        procs.append(subprocess.Popen(
                            ["zstd", "-q", f"-{level}", "--no-progress", "--filelist", str(listing),
                             "--output-dir-flat", str(out)]))
                    for p in procs:
                        if p.wait() != 0:
                            raise SystemExit("zstd failed while compressing the agent image")
                for cid in staged_ids:
                    raw = (stage / cid).stat().st_size
                    packed = out / f"{cid}.zst"
                    if packed.stat().st_size <= raw * (1 - COMPRESS_MIN_GAIN):
                        os.replace(packed, self.blobs / f"{cid}.zst")
                        self.files[cid] = (0, f"{cid}.zst")
                    else:
                        shutil.copyfile(stage / cid, self.blobs / cid)
                        self.files[cid] = (0, cid)
            log(f"compressed in {time.monotonic() - t0:.0f} s")
        for f in self.blobs.glob(".overlay-*"):
            f.unlink()
        self.pending.clear()


def rename_ids(fsroot: list, stored: dict[str, tuple[int, str]]) -> None:
    """Point each file entry at its stored name (ID or ID.zst)."""
    for entry in fsroot:
        if stat.S_ISDIR(entry[3]):
            rename_ids(entry[6], stored)
        elif stat.S_ISREG(entry[3]):
            entry[6] = stored[entry[6]][1]


def zsh_completion_dump(root: pathlib.Path) -> bytes:
    """compinit's dump of the image's completion functions, made by the image's own zsh."""
    with _chroot_scratch(root) as (inside, outside):
        run(["chroot", str(root), "/usr/bin/zsh", "-f", "-c", f"autoload -Uz compinit && compinit -d {inside}/dump"],
            env=_chroot_env(), capture=True)
        return (outside / "dump").read_bytes()


# Scripts zsh sources at every start, compiled (zcompile) when the image is built: `source
# F` reads F.zwc instead when that is at least as new, which saves parsing them in the
# emulator (about 0.3 s of a new shell's start). Paths relative to the root; the plugins'
# highlighters are added by zsh_compiled().
ZSH_COMPILED = [
    "usr/share/zsh-autosuggestions/zsh-autosuggestions.zsh",
    "usr/share/zsh-syntax-highlighting/zsh-syntax-highlighting.zsh",
    ZSH_PLUGINS_PATH,
]


def zsh_compiled(root: pathlib.Path, overlay: dict[str, tuple[int, bytes]]) -> dict[str, tuple[int, bytes]]:
    """F.zwc for each script of ZSH_COMPILED (and every zsh-syntax-highlighting
    highlighter), compiled by the image's own zsh, so the same code serves any
    architecture. A script of the overlay is compiled from its overlay contents."""
    scripts = list(ZSH_COMPILED)
    hl = root / "usr/share/zsh-syntax-highlighting/highlighters"
    scripts += sorted(str(f.relative_to(root)) for f in hl.glob("*/*-highlighter.zsh"))
    out = {}
    with _chroot_scratch(root) as (inside, outside):
        for i, rel in enumerate(scripts):
            data = overlay[rel][1] if rel in overlay else (root / rel).read_bytes()
            if rel not in overlay and int((root / rel).stat().st_mtime) > OVERLAY_MTIME:
                # (zsh takes F.zwc only when it is at least as new as F)
                raise SystemExit(f"{rel} is newer than the overlay's files: its .zwc would be ignored")
            name = pathlib.PurePath(rel).name
            (outside / str(i)).mkdir()
            (outside / str(i) / name).write_bytes(data)
            run(["chroot", str(root), "/usr/bin/zsh", "-f", "-c", f"zcompile {inside}/{i}/{name}"],
                env=_chroot_env(), capture=True)
            out[rel + ".zwc"] = (0o644, (outside / str(i) / (name + ".zwc")).read_bytes())
    return out


class _chroot_scratch:
    """A scratch directory under the root's /tmp for work done in a chroot: (its path in
    the chroot, its path here). Removed after, and /tmp's times put back: they are in the
    9p index, which the boot snapshot is bound to. Its name is fixed, not random: zsh
    writes the path it compiled a file at into the .zwc, and a random one would make
    every build's image (and so its boot snapshot) differ."""

    NAME = "pyapptron-build"

    def __init__(self, root: pathlib.Path):
        self.root = root

    def __enter__(self):
        self.tmp = os.stat(self.root / "tmp")
        self.outside = self.root / "tmp" / self.NAME
        shutil.rmtree(self.outside, ignore_errors=True)  # left by a build that was killed
        self.outside.mkdir()
        return "/tmp/" + self.NAME, self.outside

    def __exit__(self, *exc):
        shutil.rmtree(self.outside, ignore_errors=True)
        os.utime(self.root / "tmp", ns=(self.tmp.st_atime_ns, self.tmp.st_mtime_ns))


# pip in the sandbox: the VM is the environment, so `pip install` puts packages in
# /usr/local (the persistent "packages" layer) as it would in a container, instead of
# refusing with PEP 668's externally-managed error; the host's own services
# (boot(network=...) host_ports) are trusted by their plain-HTTP name.
PIP_CONF = b"""# pyapptron (emulators/v86/build_agent.py)
[global]
break-system-packages = true
root-user-action = ignore
trusted-host = host.pyapptron.internal
"""
# /etc/environment of every agent image (the agent and the login shells read it): npm
# does not phone home for updates or funding notices.
ENVIRONMENT = {"NPM_CONFIG_UPDATE_NOTIFIER": "false", "NPM_CONFIG_FUND": "false"}


def environment_file(env: dict[str, str]) -> bytes:
    return "".join(f'{k}="{v}"\n' for k, v in env.items()).encode()


def overlay_files(root: pathlib.Path, agent: bytes) -> dict[str, tuple[int, bytes]]:
    passwd = (root / "etc/passwd").read_text()
    passwd = re.sub(r"^(root:[^:]*:0:0:[^:]*:/root:).*$", r"\1/usr/bin/zsh", passwd, flags=re.M)
    files = {
        # (bookworm merges /usr: /sbin is a symlink to usr/sbin)
        "usr/sbin/pyapptron-init": (0o755, INIT_SCRIPT.read_bytes()),
        "usr/sbin/pyapptron-agent": (0o755, agent),
        "etc/passwd": (0o644, passwd.encode()),
        "etc/hostname": (0o644, b"pyapptron\n"),
        # host.pyapptron.internal and the resolver: the gateway of boot(network=...)
        # (pyapptron/network.py); the initramfs's init gets the lease before switch_root.
        "etc/hosts": (0o644, b"127.0.0.1\tlocalhost\n127.0.1.1\tpyapptron\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                             b"192.168.86.1\thost.pyapptron.internal\n"),
        "etc/resolv.conf": (0o644, b"nameserver 192.168.86.1\n"),
        "etc/default/locale": (0o644, b"LANG=C.UTF-8\n"),
        "etc/pip.conf": (0o644, PIP_CONF),
        "etc/environment": (0o644, environment_file(ENVIRONMENT)),
        "etc/machine-id": (0o444, b""),
        "root/.zshrc": (0o644, ZSHRC),
        ZSH_PLUGINS_PATH: (0o644, ZSH_PLUGINS.read_bytes()),
        "var/cache/zsh-completion-dump": (0o644, zsh_completion_dump(root)),
        "root/.tmux.conf": (0o644, TMUX_CONF),
    }
    files.update(zsh_compiled(root, files))
    return files


# ---- main --------------------------------------------------------------------------

def build(out_dir: pathlib.Path, cache_dir: pathlib.Path, manifest: dict, force: bool = False) -> str:
    """Build the image into out_dir; force rebuilds its index and image.json even when its
    key says they are up to date. The Debian root and the compressed contents are reused:
    the root is made by debootstrap (keyed by the package list; delete CACHE/v86-agent to
    make it again), the contents are stored under their own hash."""
    out_dir, cache_dir = pathlib.Path(out_dir), pathlib.Path(cache_dir)
    spec = (manifest.get("rootfs") or {}).get(IMAGE)
    if not spec:
        raise SystemExit('emulators/manifest.json has no "rootfs" -> "agent" entry')
    minimal = out_dir / "images" / "minimal"
    if not (minimal / "image.json").exists():
        raise SystemExit("the agent image boots the minimal image's kernel and initramfs: build the guest step first")
    cache = cache_dir / "v86-agent"
    cache.mkdir(parents=True, exist_ok=True)
    root = ensure_rootfs(cache, spec)
    installed = json.loads((root / ".pyapptron-packages.json").read_text())
    (cache / "lock.json").write_text(json.dumps(installed, indent=1, sort_keys=True) + "\n")
    check_lock(installed, spec.get("lock"), cache / "lock.json")

    image_dir = out_dir / "images" / IMAGE
    minimal_spec = json.loads((minimal / "image.json").read_text())
    key = hashlib.sha256(json.dumps({
        "root": root.name, "installed": installed, "init": sha256_file(INIT_SCRIPT),
        "zsh_plugins": sha256_file(ZSH_PLUGINS),
        "agent": sha256_file(build_minimal.AGENT_SRC), "boot": minimal_spec["files"],
        "builder": sha256_file(pathlib.Path(__file__)), "cmdline": CMDLINE,
    }, sort_keys=True).encode()).hexdigest()
    key_file = image_dir / ".build-key"
    if not force and key_file.exists() and key_file.read_text() == key and (image_dir / "image.json").exists():
        log(f"up to date: {image_dir}")
        return "up to date"

    with tempfile.TemporaryDirectory() as work:
        agent = build_minimal.compile_agent(pathlib.Path(work))
    # Stored contents are keyed by content; the directory by how they were compressed.
    blobs = cache / f"blobs-zstd{ZSTD_LEVEL_BIG}-{ZSTD_LEVEL_SMALL}-{BIG_FILE}"
    for old in cache.glob("blobs*"):
        if old != blobs:
            shutil.rmtree(old)
    index = Index(blobs)
    t0 = time.monotonic()
    fsroot = index.walk(root, overlay_files(root, agent))
    index.store_pending()
    rename_ids(fsroot, index.files)
    log(f"indexed {index.counts} in {time.monotonic() - t0:.0f} s")

    # Publish: fs/ holds exactly the stored contents this index names.
    fs_dir = image_dir / "fs"
    fs_dir.mkdir(parents=True, exist_ok=True)
    wanted = {name for _, name in index.files.values()}
    for old in os.listdir(fs_dir):
        if old not in wanted:
            (fs_dir / old).unlink()
    stored_bytes = 0
    for name in wanted:
        src, dest = blobs / name, fs_dir / name
        if not dest.exists():
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
        stored_bytes += dest.stat().st_size
    fs_json = json.dumps({"version": 3, "size": index.total_size, "fsroot": fsroot},
                         separators=(",", ":")).encode()
    fs_gz = gzip.compress(fs_json, compresslevel=9, mtime=0)
    build_minimal.write_if_changed(image_dir / "fs.json.gz", fs_gz)

    image = {
        "name": IMAGE,
        "emulator": "v86",
        "arch": "i686",
        "kernel": "../minimal/" + minimal_spec["kernel"],
        "initrd": "../minimal/" + minimal_spec["initrd"],
        "cmdline": CMDLINE,
        "memory_mib": MEMORY_MIB,
        "agent": "virtio-console0",
        "rootfs": {"basefs": "fs.json.gz", "baseurl": "fs/"},
        "files": {"fs.json.gz": build_minimal.file_record(image_dir / "fs.json.gz")},
        "sizes": {
            "files": index.counts["files"],
            "contents": len(wanted),
            "uncompressed_bytes": index.total_size,
            "stored_bytes": stored_bytes,
            "index_bytes": len(fs_gz),
        },
        "sources": {"suite": spec["suite"], "packages": sorted(spec["packages"]),
                    "installed": len(installed), "kernel": minimal_spec["sources"]["kernel"]},
    }
    (image_dir / "image.json").write_text(json.dumps(image, indent=2) + "\n")
    key_file.write_text(key)
    summary = (f"{index.counts['files']} files ({index.total_size / 1e6:.0f} MB) in {len(wanted)} contents, "
               f"{stored_bytes / 1e6:.1f} MB stored + {len(fs_gz) / 1e6:.2f} MB index")
    log(f"built {image_dir}: {summary}")
    return summary
