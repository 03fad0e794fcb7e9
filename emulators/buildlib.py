"""Helpers every asset builder under emulators/ shares (standard library only).

  run, logger, warn_loudly   run a command with its output logged or kept, and say
                             what failed (BuildError) with the output's last lines
  file_hash, sha256_file,    file digests and atomic writes
  write_atomic
  apt_*, ensure_packages     this machine's apt: installed versions, installs,
                             package records, exact-version downloads
  debian_mirror, PrivateApt  the Debian mirror of this machine's sources, and an apt
                             with its own sources list, lists and cache (for source
                             packages of another suite, without touching /etc/apt)
  Cpio                       a deterministic newc cpio writer (the initramfs images)

The builders import it with emulators/ on sys.path (`import buildlib`).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

# How many lines of a failed command's output its error message carries.
FAILURE_TAIL_LINES = 30


class BuildError(Exception):
    """A build step failed; the message says what failed and what to do."""


# ---- logging and commands ------------------------------------------------------------

def logger(name: str | None) -> Callable[[str], None]:
    """A log(msg) that prints msg prefixed with [name] (no prefix for None), flushed
    at once so that it interleaves rightly with the commands' own output."""
    prefix = f"[{name}] " if name else ""

    def log(msg: str) -> None:
        print(prefix + msg, flush=True)
    return log


def warn_loudly(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\nWARNING: {msg}\n{bar}\n", file=sys.stderr, flush=True)


def run(cmd, *, what: str | None = None, cwd: Path | str | None = None, env: dict | None = None,
        log_file: Path | None = None, capture: bool = False, text: bool = True, nice: bool = False,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run cmd (its items str()'d) with no stdin and return the CompletedProcess.

    Output: appended to log_file after a "$ command" line when given; else kept in
    the result when capture (text, or bytes with text=False); else the terminal's.
    nice runs it under `nice -n 10` (compilers on a machine shared with others).
    A command that cannot start or (with check) exits non-zero raises BuildError:
    "<what> failed (exit N): <command>", the output's last lines and the log's path.
    """
    argv = [str(c) for c in cmd]
    if nice:
        argv = ["nice", "-n", "10", *argv]
    what = what or Path(str(cmd[0])).name
    try:
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "ab") as f:
                f.write(f"\n$ {shlex.join(argv)}\n".encode())
                f.flush()
                proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                      stdout=f, stderr=subprocess.STDOUT)
        else:
            proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=capture, text=text if capture else None)
    except OSError as e:
        raise BuildError(f"{what}: cannot run {shlex.join(argv)}: {e.strerror} ({e.filename}); "
                         f"is {argv[0]} installed?") from None
    if check and proc.returncode != 0:
        raise BuildError(failure_message(what, argv, proc, log_file))
    return proc


def failure_message(what: str, argv: list[str], proc: subprocess.CompletedProcess,
                    log_file: Path | None) -> str:
    head = f"{what} failed (exit {proc.returncode}): {shlex.join(argv)}"
    if log_file is not None:
        output = log_file.read_text(errors="replace")
        output = output[output.rfind("\n$ "):]  # this command's part of the log
        where = f"full log: {log_file}"
    elif proc.stdout is not None or proc.stderr is not None:
        output = "".join(s if isinstance(s, str) else s.decode(errors="replace")
                         for s in (proc.stdout, proc.stderr) if s)
        where = ""
    else:
        output, where = "", "(its output is above)"
    tail = output.strip().splitlines()[-FAILURE_TAIL_LINES:]
    if log_file is not None:
        tail = [line for line in tail if not line.startswith("$ ")]
    return "\n".join([head, *tail] + ([where] if where else []))


# ---- files ---------------------------------------------------------------------------

def file_hash(path: Path, algorithm: str = "sha256"):
    """hashlib's hash of a file's bytes, read a MiB at a time."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def sha256_file(path: Path) -> str:
    return file_hash(path).hexdigest()


def write_atomic(dest: Path, data: bytes) -> bool:
    """Write data to dest unless it already holds exactly that. True if written."""
    if dest.is_file() and dest.stat().st_size == len(data) and dest.read_bytes() == data:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix="." + dest.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


# ---- this machine's apt --------------------------------------------------------------

_log = logger("apt")
APT_ETC = Path("/etc/apt")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_machine_lists_updated = False


def installed_version(package: str) -> str | None:
    """The version of package dpkg has installed on this machine, None if it has not."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package],
                       capture_output=True, text=True)
    status, _, version = r.stdout.strip().partition(" ")
    return version if r.returncode == 0 and status == "installed" else None


def apt_update_once() -> None:
    """apt-get update of the machine's lists, at most once per build."""
    global _machine_lists_updated
    if not _machine_lists_updated:
        _log("apt-get update")
        run(["apt-get", "update", "-qq"], capture=True)
        _machine_lists_updated = True


def apt_install(packages: list[str]) -> None:
    """Install Debian packages this build needs on this machine (needs root)."""
    if os.geteuid() != 0:
        raise BuildError(f"missing Debian packages: run as root, or apt-get install -y {' '.join(packages)}")
    apt_update_once()
    _log("apt-get install " + " ".join(packages))
    run(["apt-get", "install", "-y", "-qq", *packages], capture=True,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def ensure_packages(packages: list[str]) -> dict[str, str | None]:
    """Install whichever of packages is missing; return {package: installed version}."""
    missing = [p for p in packages if installed_version(p) is None]
    if missing:
        apt_install(missing)
    return {p: installed_version(p) for p in packages}


def apt_record(spec: str) -> dict[str, str] | None:
    """The fields (Package, Version, Filename, SHA256, ...) of the version apt would
    take for spec ("name", "name:arch" or "name=version"); None if apt knows none."""
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", spec], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return None
    fields = {}
    for line in r.stdout.split("\n\n")[0].splitlines():
        if line and not line[0].isspace() and ":" in line:
            k, v = line.split(":", 1)
            fields[k] = v.strip()
    return fields


def newest_package(pattern: re.Pattern, prefix: str) -> str:
    """The package name apt knows that matches pattern (names starting with prefix),
    the one whose group 1 (an ABI number) is highest: e.g. the newest kernel."""
    names = run(["apt-cache", "pkgnames", prefix], capture=True).stdout.split()
    numbered = [(int(m.group(1)), name) for name in names if (m := pattern.match(name))]
    if not numbered:
        raise BuildError(f"no package matching {pattern.pattern} known to apt: run apt-get update")
    return max(numbered)[1]


def apt_download(spec: str, target: Path, sha256: str | None = None) -> Path:
    """apt-get download spec ("name[:arch]=version") to target, checked against sha256
    when given. Raises BuildError when apt cannot or the bytes differ."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dl-", dir=target.parent) as tmp:
        os.chmod(tmp, 0o777)  # apt downloads as its _apt user (else: the unsandboxed warning)
        _log(f"apt-get download {spec}")
        run(["apt-get", "download", "-qq", spec], cwd=tmp, capture=True, what=f"apt-get download {spec}")
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise BuildError(f"apt-get download {spec}: expected one .deb, got {[p.name for p in got]}")
        if sha256 is not None and (digest := sha256_file(got[0])) != sha256:
            raise BuildError(f"{got[0].name}: SHA-256 {digest}, expected {sha256}")
        os.replace(got[0], target)
    return target


# ---- the machine's sources, and a private apt ------------------------------------------

def apt_source_entries(etc: Path = APT_ETC) -> list[tuple[set[str], list[str], list[str]]]:
    """(types, uris, suites) of each enabled entry of the apt sources under etc
    (sources.list and sources.list.d/*.list one-line entries, *.sources deb822)."""
    entries = []
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list"))
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^(deb|deb-src)\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                entries.append(({m.group(1)}, [m.group(3)], [m.group(4)]))
    for f in sorted((etc / "sources.list.d").glob("*.sources")):
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


def debian_mirror(etc: Path = APT_ETC, default: str | None = None) -> str:
    """The Debian archive this machine's apt uses (not its security archive, not a
    third-party repository): the mirror the builders fetch other suites from."""
    for types, uris, suites in apt_source_entries(etc):
        if "deb" not in types:
            continue
        for uri in uris:
            if re.search(r"/debian/?$", uri) and not any(s.endswith("-security") for s in suites):
                return uri.rstrip("/")
    if default is not None:
        return default
    raise BuildError(f"no Debian mirror in {etc}/sources.list or {etc}/sources.list.d: "
                     "add a `deb` entry for a Debian archive")


class PrivateApt:
    """apt-get with its own sources list, package lists and cache under state_dir,
    so that indexing and downloading from another suite (trixie's source packages)
    leaves the machine's apt configuration and state as they were.

    The `-o` options replace apt's sources (Dir::Etc::SourceList and an empty
    Dir::Etc::SourceParts: the machine's entries are not read), its lists
    (Dir::State::Lists) and its caches (Dir::Cache); on the command line they win
    over anything in apt.conf.d. Keys, dpkg's status and apt.conf stay the machine's.
    """

    def __init__(self, state_dir: Path, sources: list[str]):
        self.state_dir = Path(state_dir)
        self.sources = list(sources)

    @classmethod
    def for_source_packages(cls, state_dir: Path, suite: str, etc: Path = APT_ETC,
                            components: str = "main") -> "PrivateApt":
        """deb-src of suite from the Debian mirror the machine's sources (under etc) use."""
        line = f"deb-src [signed-by={DEBIAN_KEYRING}] {debian_mirror(etc)} {suite} {components}"
        return cls(state_dir, [line])

    @property
    def sources_list(self) -> Path:
        return self.state_dir / "sources.list"

    def options(self) -> list[str]:
        s = self.state_dir
        return ["-o", f"Dir::Etc::SourceList={self.sources_list}",
                "-o", f"Dir::Etc::SourceParts={s / 'sources.list.d'}",
                "-o", f"Dir::State::Lists={s / 'lists'}",
                "-o", f"Dir::Cache={s / 'cache'}"]

    def prepare(self) -> None:
        """Write the sources list and make the directories apt expects."""
        for d in ("sources.list.d", "lists/partial", "cache/archives/partial"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        write_atomic(self.sources_list, ("# Written by pyapptron's build (emulators/buildlib.py): "
                                         "apt state of its own, not the machine's.\n"
                                         + "".join(line + "\n" for line in self.sources)).encode())

    def apt_get(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        """run() of apt-get with this configuration."""
        self.prepare()
        kw.setdefault("what", "apt-get " + " ".join(args) + f" (private apt state in {self.state_dir})")
        return run(["apt-get", *self.options(), *args], **kw)


# ---- initramfs -----------------------------------------------------------------------

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


def script_main(main: Callable[[], int | None]) -> None:
    """Run a builder's command-line main(): a BuildError ends it with its message
    (exit 1) instead of a traceback."""
    try:
        sys.exit(main())
    except BuildError as e:
        sys.exit(f"error: {e}")
