"""qemu-wasm: a user's QEMU-Wasm build (ktock/qemu-wasm: qemu-system-x86_64 compiled
with Emscripten) behind the same boot interface. Everything QEMU-Wasm-specific lives
here and in emulators/qemu_wasm/adapter.mjs.

pyapptron does not ship QEMU-Wasm: it needs an Emscripten far newer than Debian's, so
a user builds it elsewhere (README, "QEMU-Wasm") and serves the build directory:

    out.js                          the Emscripten ES module (qemu-system-x86_64, renamed)
    qemu-system-x86_64.wasm         what out.js loads (the name is read out of out.js)
    qemu-system-x86_64.worker.js    the pthread worker, only from Emscripten < 3.1.58
    load-*.js + load-*.data         file_packager packages: BIOS ROMs, kernel, disks

`boot("qemu-wasm", build=URL, kernel=..., initrd=..., disk=..., append=..., args=[...])`
builds the Emscripten Module the way QEMU-Wasm's own pages do (arguments, locateFile,
mainScriptUrlOrBlob, Module.pty from xterm-pty's openpty(), preRun writes, packages
in order), after checking that every file of the build is there.

Quirks this backend owns:
- QEMU-Wasm runs QEMU's main loop in a pthread (-sPROXY_TO_PTHREAD): the page must be
  cross-origin isolated, else boot raises NotIsolated.
- A package script reads the global `Module`, so each machine lives in its own hidden
  iframe (its own globals); stopping the machine removes the iframe, and with it
  QEMU's workers and memory.
- kernel=, initrd= and disk= take a path inside the emulator (starting with "/": a
  file a package or files= provides), a URL (anything else, relative to the page) or
  bytes; URLs and bytes are written into /pack by a preRun before QEMU starts.
- No agent channel: vm.run types framed command lines into the guest's shell on the
  serial console (pyapptron.console_exec), so capabilities.exec needs a guest that
  gives a shell prompt on ttyS0 (prompt=; None for a console only).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urljoin, urlsplit

from .. import _browser
from ..assets import Assets
from ..console_exec import DEFAULT_PROMPT, ConsoleExec
from ..exec_strategy import ConsoleShellExec
from ..errors import IncompleteBuild, InvalidOption, NotSupported
from . import Backend, Capabilities, Sink

DEFAULT_MAIN = "out.js"
PACK_DIR = "/pack"
SHARE_DIR = "/share"
SHARE_TAG = "share0"
DEFAULT_MEMORY_MIB = 512
#: QEMU-Wasm is a wasm32 program built with -sTOTAL_MEMORY=2300MB; guest RAM lives in it.
MAX_MEMORY_MIB = 1536
DEFAULT_ACCEL = "tcg,tb-size=500"
#: What QEMU's x86_64 PC machine reads from its -L directory before the kernel.
PC_BIOS = "bios-256k.bin"
README_HINT = "build QEMU-Wasm and its packages as the README's \"QEMU-Wasm\" section says"
#: What kernel=, initrd= and disk= become inside the emulator when given as URL or bytes.
INPUT_NAMES = {"kernel": "vmlinuz", "initrd": "initrd.img", "disk": "disk.img"}


# -- QEMU's command line -------------------------------------------------------------

def qemu_arguments(*, kernel: str, initrd: str | None = None, disks: Sequence[str] = (), append: str = "",
                   memory_mib: int = DEFAULT_MEMORY_MIB, bios_dir: str = PACK_DIR + "/",
                   accel: str = DEFAULT_ACCEL, share: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """Module.arguments for qemu-system-x86_64, as QEMU-Wasm's example pages write them:
    no display, the serial console on the pty, TCG, ROMs from bios_dir, no NIC."""
    args = ["-nographic", "-m", f"{memory_mib}M", "-accel", accel, "-L", bios_dir, "-nic", "none",
            "-kernel", kernel]
    if initrd is not None:
        args += ["-initrd", initrd]
    args += ["-append", " ".join(p for p in ("console=ttyS0", append.strip()) if p)]
    for i, disk in enumerate(disks):
        args += ["-drive", f"id=disk{i},file={disk},format=raw,if=virtio"]
    if share is not None:
        args += ["-virtfs", f"local,path={share},mount_tag={SHARE_TAG},security_model=passthrough,id={SHARE_TAG}"]
    return args + list(extra)


# -- what a build directory must hold --------------------------------------------------

_QUOTED_NAME = r"""["']([\w.+-]+%s)["']"""


def referenced_files(main_script: str) -> dict[str, str | None]:
    """The wasm binary and the pthread worker script that an Emscripten main script
    loads, by name ({"wasm": ..., "worker": ... or None})."""
    wasm = re.findall(_QUOTED_NAME % r"\.wasm", main_script)
    worker = re.findall(_QUOTED_NAME % r"\.worker\.js", main_script)
    return {"wasm": wasm[0] if wasm else None, "worker": worker[0] if worker else None}


def parse_package(script: str) -> tuple[str, list[str]]:
    """(its .data file's name, the paths it unpacks) of a file_packager load-*.js."""
    base = re.search(r"""REMOTE_PACKAGE_BASE\s*=\s*["']([^"']+)["']""", script)
    listing = re.search(r"loadPackage\((\{.*?\})\);?\s*\}", script, re.S) or re.search(r"loadPackage\((\{.*\})\)", script)
    if base is None or listing is None:
        raise ValueError("not a file_packager script (no REMOTE_PACKAGE_BASE / loadPackage metadata)")
    try:
        meta = json.loads(listing.group(1))
    except json.JSONDecodeError as exc:
        raise ValueError(f"its loadPackage metadata is not JSON: {exc}") from None
    return base.group(1), [f["filename"] for f in meta.get("files", [])]


def missing_report(build: str, missing: list[str]) -> str:
    return (f"the QEMU-Wasm build at {build} is incomplete: {'; '.join(missing)}. Serve the whole build "
            f"directory (out.js, its .wasm, its packages' load-*.js and .data), or {README_HINT}.")


def is_guest_path(value: str) -> bool:
    """kernel=/initrd=/disk= strings: a path inside the emulator starts with "/" (and
    has no scheme); anything else is a URL."""
    return value.startswith("/") and not value.startswith("//")


class QemuWasmBackend(Backend):
    name = "qemu-wasm"
    default_image = "(user build)"
    options = {
        "build": str, "main": str, "packages": (list, tuple), "kernel": (str, bytes, bytearray, memoryview),
        "initrd": (str, bytes, bytearray, memoryview), "disk": (str, bytes, bytearray, memoryview, list, tuple),
        "append": str, "args": (list, tuple), "arguments": (list, tuple), "files": (dict,), "share": (dict,),
        "bios_dir": str, "accel": str, "prompt": (str, bytes, type(None)), "arch": str,
    }

    @classmethod
    def needs_image(cls, options: dict) -> bool:
        return False

    def __init__(self, assets: Assets, image, memory_mib: int | None = None, persist=None, *, build=None,
                 main=DEFAULT_MAIN, packages=(), kernel=None, initrd=None, disk=None, append="", args=(),
                 arguments=None, files=None, share=None, bios_dir=PACK_DIR + "/", accel=DEFAULT_ACCEL,
                 prompt=DEFAULT_PROMPT, arch="x86_64"):
        if persist is not None:
            raise NotSupported("qemu-wasm cannot persist files (persist=): it has no agent to carry them")
        if not isinstance(build, str) or not build:
            raise InvalidOption("qemu-wasm needs build=URL: the directory serving your QEMU-Wasm build "
                                f"(out.js, its .wasm, load-*.js packages); {README_HINT}")
        self.assets = assets
        self.build = build if build.endswith("/") else build + "/"
        if not isinstance(main, str) or "/" in main or not main.endswith((".js", ".mjs")):
            raise InvalidOption(f"main= names the build's main script inside build=, like 'out.js', not {main!r}")
        self.main = main
        if any(not isinstance(p, str) or not p.endswith(".js") for p in packages):
            raise InvalidOption(f"packages= lists the build's file_packager scripts in load order, like "
                                f"['load-rom.js', 'load-kernel.js'], not {list(packages)!r}")
        self.packages = list(packages)
        memory = DEFAULT_MEMORY_MIB if memory_mib is None else memory_mib
        if isinstance(memory, bool) or not isinstance(memory, int) or not 16 <= memory <= MAX_MEMORY_MIB:
            raise InvalidOption(f"memory_mib={memory_mib!r} is out of range for qemu-wasm: use 16 to {MAX_MEMORY_MIB} "
                                "(QEMU-Wasm is a 32-bit wasm program; guest RAM lives in its memory)")
        self.memory_mib = memory
        for name, value in (("args", args), ("arguments", arguments or [])):
            if any(not isinstance(a, str) for a in value):
                raise InvalidOption(f"{name}= must be a list of strings (QEMU options), not {list(value)!r}")
        if arguments is not None and (kernel is not None or initrd is not None or disk is not None or args):
            raise InvalidOption("arguments= replaces the whole QEMU command line; do not give kernel=, initrd=, "
                                "disk= or args= with it (or leave arguments= out and let pyapptron build it)")
        if prompt is not None and not isinstance(prompt, (str, bytes)):
            raise InvalidOption(f"prompt= is a regex for the guest shell's prompt, or None, not {prompt!r}")
        self.console_prompt = prompt.encode() if isinstance(prompt, str) else prompt
        self.user_files = _check_files("files", files or {}, lambda p: p)
        self.share = None if share is None else _check_files("share", share, lambda p: posixpath.join(SHARE_DIR, p.lstrip("/")))
        self.inputs = {"kernel": _check_input("kernel", kernel), "initrd": _check_input("initrd", initrd)}
        disks = [] if disk is None else list(disk) if isinstance(disk, (list, tuple)) else [disk]
        self.disks = [_check_input("disk", d) for d in disks]
        if arguments is None and self.inputs["kernel"] is None:
            raise InvalidOption("qemu-wasm boots a kernel: give kernel= (a path inside the emulator such as "
                                "'/pack/bzImage', a URL, or bytes), or the whole command line as arguments=")
        self.append, self.extra_args, self.arguments = append, list(args), arguments
        self.bios_dir, self.accel = bios_dir, accel
        self._handle = None
        self.capabilities = Capabilities(arch=arch, exec=prompt is not None, files=False, console=True,
                                         snapshot=False, network=False)

    # -- checking the build, then starting it ----------------------------------------
    async def _plan(self) -> dict:
        """Probe the build directory and the inputs; the adapter's options, or
        IncompleteBuild naming everything that is missing at once."""
        missing: list[str] = []
        main_url = urljoin(self.build, self.main)
        package_urls = [urljoin(self.build, p) for p in self.packages]
        texts = await _browser.probe_urls([main_url] + package_urls, text=True)
        status, main_text = texts[main_url]
        needed: dict[str, str] = {}  # URL -> why it is needed
        if main_text is None:
            missing.append(f"{self.main} (the main script; HTTP {status or 'unreachable'})")
        else:
            ref = referenced_files(main_text)
            if ref["wasm"] is None:
                missing.append(f"{self.main} names no .wasm file: is it an Emscripten build?")
            else:
                needed[urljoin(self.build, ref["wasm"])] = f"{ref['wasm']} (loaded by {self.main})"
            if ref["worker"] is not None:
                needed[urljoin(self.build, ref["worker"])] = f"{ref['worker']} (its pthread worker)"
            if "export default" not in main_text:
                missing.append(f"{self.main} is not an ES module (build QEMU-Wasm with -sEXPORT_ES6=1 "
                               "and -sMODULARIZE, as its README does)")
        packaged: set[str] = set()
        for name, url in zip(self.packages, package_urls):
            status, text = texts[url]
            if text is None:
                missing.append(f"{name} (a package; HTTP {status or 'unreachable'})")
                continue
            try:
                data_name, paths = parse_package(text)
            except ValueError as exc:
                missing.append(f"{name} is {exc}")
                continue
            needed[urljoin(url, data_name)] = f"{data_name} (the data of {name})"
            packaged.update(paths)
        files: dict[str, object] = dict(self.user_files)
        if self.share is not None:
            files.update(self.share)
        provided = packaged | set(files)

        def place(role: str, value, index: int = 0) -> str:
            if isinstance(value, bytes):
                path = f"{PACK_DIR}/{INPUT_NAMES[role]}" if role != "disk" or not index else f"{PACK_DIR}/disk{index}.img"
                files[path] = value
                return path
            if is_guest_path(value):
                if value not in provided:
                    near = sorted(p for p in provided if p.startswith(PACK_DIR))[:8]
                    missing.append(f"{role}={value!r}, which no package or files= provides"
                                   + (f" (the packages hold {', '.join(near)})" if near else ""))
                return value
            base = posixpath.basename(urlsplit(value).path) or INPUT_NAMES[role]
            path = f"{PACK_DIR}/{base}"
            files[path] = value
            needed[value] = f"{role}={value!r}"
            return path

        if self.arguments is None:
            kernel = place("kernel", self.inputs["kernel"])
            initrd = place("initrd", self.inputs["initrd"]) if self.inputs["initrd"] is not None else None
            disks = [place("disk", d, i) for i, d in enumerate(self.disks)]
            bios = posixpath.join(self.bios_dir, PC_BIOS)
            if self.arch == "x86_64" and bios not in provided:
                missing.append(f"{PC_BIOS} in -L {self.bios_dir} (QEMU's PC BIOS; package QEMU's pc-bios files, "
                               "as the README shows, or set bios_dir=)")
            arguments = qemu_arguments(kernel=kernel, initrd=initrd, disks=disks, append=self.append,
                                       memory_mib=self.memory_mib, bios_dir=self.bios_dir, accel=self.accel,
                                       share=SHARE_DIR if self.share is not None else None, extra=self.extra_args)
        else:
            arguments = list(self.arguments)
        found = await _browser.probe_urls(list(needed)) if needed else {}
        for url, why in needed.items():
            status, _ = found[url]
            if not 200 <= status < 300:
                missing.append(f"{why} (HTTP {status or 'unreachable'})")
        if missing:
            raise IncompleteBuild(missing_report(self.build, missing), missing)
        self.command_line = arguments
        return {
            "build": self.build, "main": self.main, "packages": package_urls, "arguments": arguments,
            "files": files, "dirs": [SHARE_DIR] if self.share is not None else [],
        }

    @property
    def arch(self) -> str:
        return self.capabilities.arch

    async def start(self, on_console: Sink, on_agent: Sink, resume=None) -> None:
        if resume is not None:
            raise NotSupported("qemu-wasm cannot resume a snapshot")
        options = await self._plan()
        options["xterm_pty_url"] = self.assets.require("xterm-pty/index.mjs")
        self._handle = await _browser.start_emulator(self.assets.require("qemu_wasm/adapter.mjs"), options,
                                                     on_console, on_agent, on_exit=self._track_exit())

    def exec_strategy(self, console, agent):
        # No agent in the guest: vm.run types framed lines into its console shell.
        return ConsoleShellExec(ConsoleExec(console, self.console_prompt or DEFAULT_PROMPT))

    def write_agent(self, chunk: bytes) -> None:
        raise NotSupported("qemu-wasm has no agent channel; vm.run goes through the console")



def _check_input(role: str, value):
    if value is None:
        return None
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if isinstance(value, bytes):
        if not value:
            raise InvalidOption(f"{role}= bytes are empty")
        return value
    if isinstance(value, str) and value:
        return value
    raise InvalidOption(f"{role}= takes a path inside the emulator ('/pack/...'), a URL or bytes, not {value!r}")


def _check_files(option: str, files, to_path) -> dict[str, bytes | str]:
    """files=/share=: {path: bytes or URL}, checked; paths as the emulator sees them."""
    if not isinstance(files, Mapping):
        raise InvalidOption(f"{option}= must be a dict of path -> bytes or URL, not {type(files).__name__}")
    checked = {}
    for path, data in files.items():
        if not isinstance(path, str) or not path or path.endswith("/") or "/../" in "/" + path + "/":
            raise InvalidOption(f"{option}: {path!r} is not a file path like '/pack/extra.bin'")
        if option == "files" and not path.startswith("/"):
            raise InvalidOption(f"files: {path!r} must be an absolute path inside the emulator, like '/pack/x'")
        if isinstance(data, str):
            data = data if data else None
        elif isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
        else:
            data = None
        if data is None:
            raise InvalidOption(f"{option}[{path!r}] must be bytes or a URL string")
        checked[posixpath.normpath(to_path(path))] = data
    return checked
