"""c2w: x86_64 through WASI, the way container2wasm runs containers. Everything
c2w-specific lives here.

Two kinds of machine behind one backend:

- An image built by the asset command (`boot("c2w", image="debian-x86_64")`): Bochs
  3.0 compiled to WASI here (emulators/c2w/build_bochs.py, our patches in
  emulators/c2w/patches) booting a Debian amd64 kernel with a busybox initramfs and
  the guest agent (emulators/c2w/build_guest64.py).
- A user's own WASI command module (`boot("c2w", wasm=URL_or_bytes, args=[...])`):
  container2wasm output, or any WASI preview1 program. Its stdin/stdout/stderr are the
  console; it has no guest agent, so vm.run is not offered (capabilities say so).

Quirks this backend owns:
- The module runs in a Web Worker (emulators/c2w/worker.mjs): Bochs's CPU loop never
  yields. Input reaches it through SharedArrayBuffer rings, so the page must be
  cross-origin isolated (COOP/COEP), else boot raises NotIsolated.
- On an image, the console is COM1 on WASI stdin/stdout and the agent's channel is COM2
  on WASI fd 4 (fd 3 is the one preopen "/"), both unpaced by the baud rate (patch
  0006). Bochs reads them without blocking; a user's module blocks on stdin.
- The image's bochsrc is written here, at boot: `megs:` is memory_mib. The initrd sits
  at 128 MiB (direct boot), so an image says its smallest memory (min_megs).
- Bochs's own log goes to its stderr, kept by the adapter; a failed boot shows its tail.
- Snapshots (images with the agent): Bochs saves a running machine on the worker's
  request (patch 0012: a timer polls the host; the CPU loop stops at an instruction
  boundary) into a directory of the worker's in-memory files, RAM as its non-zero
  pages; the adapter packs them with the disks' written blocks into one payload. Bochs
  restores only at start (-r DIR), so a resume, and vm.restore(), start a new worker
  from the state; it skips what only a cold boot loads (the kernel and initrd images).
  The lazily loaded root's unchanged chunks are not in a snapshot: they are fetched
  again on demand.
- Persistent layers (boot(persist=...), images with the agent): the guest keeps its own
  files, so the layers travel through the guest agent's tree commands into the store
  every engine shares (pyapptron/persist_guest.py, emulators/common/persist_store.mjs);
  the adapter only holds the store. On agent-x86_64, whose root is an overlay on the
  read-only image (image.json "persist_overlay"), a layer keeps what differs from the
  image, not the image's own /usr/local. A snapshot holds the files as they were; the
  layers are put back from the store after a resume, as on v86.
- A network (boot(network=...), images only): bochsrc gets an e1000 card whose frames
  Bochs hands to the worker (patch 0011, ethmod=pyapptron); the page runs v86's network
  stack for them (emulators/v86/network.mjs), so DHCP, DNS and the relay are the v86
  engine's. The image's init brings eth0 up by DHCP when the card is there.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Mapping, Sequence

from .. import _browser
from ..assets import Assets
from ..errors import InvalidOption, NotSupported
from .. import snapshots
from ..network import RENEW_LEASE, Network, stack_options
from ..persist import Persist
from ..persist_guest import GuestTree
from . import Backend, Capabilities, Sink

# Guest RAM lives in the module's wasm32 memory (Bochs allocates it block by block as the
# guest touches it, patch 0009); Bochs itself caps it at 2 GiB on a 32-bit host.
MAX_MEMORY_MIB = 2048
#: Input ring sizes: the agent's flow-control window must fit, with room (on the
#: shared-memory channel it announces 32 chunks of 64 KiB; the rest waits in the adapter).
RING_BYTES = {"console": 1 << 16, "agent": 1 << 20}
#: container2wasm's own flags, in the order its init reads them, before the command.
C2W_FLAGS = ("entrypoint", "no_stdin", "net", "mac")
#: The guest's network card with boot(network=...): an e1000 on the first PCI slot, its
#: frames through the WASI host (Bochs patch 0011). One guest per page worker, so one
#: fixed address does.
NIC_MAC = "52:54:00:12:34:56"
NIC_BOCHSRC = ("pci: enabled=1, chipset=i440fx, slot1=e1000",
               f"e1000: enabled=1, mac={NIC_MAC}, ethmod=pyapptron")
#: bochsrc lines naming files: the disks (a state carries a small one whole) and the
#: images loaded into RAM at a cold boot (a restore skips them).
_DISK_PATH = re.compile(r"^ata\d-(?:master|slave):.*\btype=disk\b.*\bpath=([^,\s]+)", re.M)
_OPTRAM_PATH = re.compile(r"^optramimage\d+:\s*file=([^,\s]+)", re.M)


def c2w_argv(program: str = "c2w", *, entrypoint: str | None = None, no_stdin: bool = False,
             net: str | None = None, mac: str | None = None, args: Sequence[str] = ()) -> list[str]:
    """argv for a container2wasm module: argv[0], its flags, then the container's command.

    `--` separates the flags from a command that starts with a dash.
    """
    argv = [program]
    if entrypoint is not None:
        argv += ["-entrypoint", entrypoint]
    if no_stdin:
        argv.append("-no-stdin")
    if net is not None:
        argv.append(f"--net={net}")
    if mac is not None:
        argv += ["--mac", mac]
    args = list(args)
    if args and args[0].startswith("-"):
        argv.append("--")
    return argv + args


def check_files(files) -> dict[str, bytes | str]:
    """boot(files=...): {absolute guest path: bytes or a URL}, checked."""
    if not isinstance(files, Mapping):
        raise InvalidOption(f"files must be a dict of guest path -> bytes or URL, not {type(files).__name__}")
    checked = {}
    for path, data in files.items():
        if not isinstance(path, str) or not path.startswith("/") or path.endswith("/") or "/../" in path + "/":
            raise InvalidOption(f"files: {path!r} is not an absolute file path like '/data/input.txt'")
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, (bytes, str)):
            raise InvalidOption(f"files[{path!r}] must be bytes or a URL string, not {type(data).__name__}")
        checked[posixpath.normpath(path)] = data
    return checked


class C2WBackend(Backend):
    name = "c2w"
    default_image = "debian-x86_64"
    options = {
        "wasm": (str, bytes, bytearray, memoryview, list, tuple),
        "args": (list, tuple), "env": (dict,), "files": (dict,), "preopens": (list, tuple),
        "entrypoint": str, "no_stdin": bool, "net": str, "mac": str, "arch": str,
    }
    #: The guest device behind the interactive console (for telling it the terminal size).
    console_tty = "/dev/ttyS0"
    network_supported = True
    persist_supported = True
    network: Network | None = None

    @classmethod
    def needs_image(cls, options: dict) -> bool:
        return options.get("wasm") is None

    def __init__(self, assets: Assets, image: dict | None, memory_mib: int | None = None, persist=None, *,
                 wasm=None, args=(), env=None, files=None, preopens=None, entrypoint=None, no_stdin=False,
                 net=None, mac=None, arch=None, network: Network | None = None):
        self.assets = assets
        self.image = image
        self._handle = None
        self.persist: Persist | None = persist
        env = dict(env or {})
        bad_env = [k for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str) or "=" in k]
        if bad_env:
            raise InvalidOption(f"env must map variable names to strings; bad: {bad_env!r}")
        if any(not isinstance(a, str) for a in args):
            raise InvalidOption(f"args must be a list of strings, not {list(args)!r}")
        self.user_files = check_files(files or {})
        if wasm is not None:
            if network is not None:
                raise InvalidOption("network= is for the c2w images; a container2wasm module (wasm=) brings its "
                                    "own networking: pass its net= option instead")
            if persist is not None:
                raise NotSupported("persist= needs an image with the guest agent (image='agent-x86_64'); a "
                                   "container2wasm module (wasm=) has no agent to carry its files")
            self._init_user_module(wasm, args, env, preopens, memory_mib, entrypoint, no_stdin, net, mac, arch)
        else:
            if image is None:
                raise InvalidOption("c2w needs an image (image='debian-x86_64') or a module (wasm=URL_or_bytes)")
            if args or entrypoint or no_stdin or net or mac:
                raise InvalidOption("args=, entrypoint=, no_stdin=, net= and mac= are for a user's module (wasm=); "
                                    f"the image {image['name']!r} runs Bochs with its own arguments")
            self._init_image(image, memory_mib, env, preopens, network)

    # -- the two kinds of machine -------------------------------------------------------
    def _init_image(self, image: dict, memory_mib, env, preopens, network: Network | None) -> None:
        if network is not None and not image.get("network"):
            raise NotSupported(f"the c2w image {image['name']!r} has no driver for the network card (it was built "
                               "before c2w had a network): rebuild it with `python emulators/build.py`")
        if preopens:
            raise InvalidOption("preopens= is for a user's module (wasm=); the image shares files through vm.write_file")
        low = int(image.get("min_megs", 192))
        memory = image.get("memory_mib", 256) if memory_mib is None else memory_mib
        if not low <= memory <= MAX_MEMORY_MIB:
            raise InvalidOption(f"memory_mib={memory} is out of range for c2w image {image['name']!r}: use {low} "
                                f"to {MAX_MEMORY_MIB} (its initrd is loaded at 128 MiB; Bochs on a "
                                "32-bit host allows 2 GiB)")
        self.memory_mib = memory
        image_dir = f"images/{image['name']}/"
        inflate = set(image.get("inflate", []))  # served gzip'd, inflated in the worker
        files = {}
        for guest, rel in image["files"].items():
            if guest == "/bochsrc.txt":
                continue
            url = self.assets.require(posixpath.normpath(image_dir + rel))
            files[guest] = {"url": url, "inflate": True} if guest in inflate else url
        nic = "".join(line + "\n" for line in NIC_BOCHSRC) if network is not None else ""
        files["/bochsrc.txt"] = f"megs: {memory}\n{image['bochsrc_body']}{nic}".encode()
        # Disks read chunk by chunk as the guest touches them (the agent-x86_64 root).
        lazy = {guest: dict(spec, base=self.assets.url(posixpath.normpath(image_dir + spec["base"])) + "/")
                for guest, spec in image.get("lazy", {}).items()}
        files.update(self.user_files)
        self.options = {
            "wasm": self.assets.require(posixpath.normpath(image_dir + image["wasm"])),
            "args": list(image["args"]),
            "env": list(image.get("env", [])) + [f"{k}={v}" for k, v in env.items()],
            "files": files,
            "preopens": ["/"],
            "channels": {"console": {"in": 0, "out": 1}, "agent": {"in": image["agent_fd"], "out": image["agent_fd"]}},
            "stderr": "log",
            "lazy": lazy,
        }
        if image.get("hostchan"):
            # The agent's bytes go over Bochs's shared-memory rings (patch 0008); its
            # serial line only wakes the guest.
            self.options["hostchan"] = {"channel": "agent", "wake_fd": image["agent_fd"]}
        if network is not None:
            self.options["network"] = dict(stack_options(network), libv86_url=self.assets.require("v86/libv86.mjs"),
                                           wasm_path=self.assets.require("v86/v86.wasm"),
                                           stack_url=self.assets.require("v86/network.mjs"))
        self.network = network
        agent = bool(image.get("agent"))
        # Snapshots need the agent (a resumed guest's clock and entropy are set through
        # it) and a Bochs built with patch 0012 (image.json "state").
        snapshot = agent and bool(image.get("state"))
        if snapshot:
            body = image["bochsrc_body"]
            self.options["state"] = {
                "keep": [p for p in _DISK_PATH.findall(body) if p not in lazy],
                "skip_on_restore": _OPTRAM_PATH.findall(body),
            }
        if self.persist is not None:
            if not agent:
                raise NotSupported(f"the c2w image {image['name']!r} has no guest agent to carry the persistent "
                                   "layers: use 'agent-x86_64' or 'debian-x86_64'")
            self.options["persist"] = {"store": self.persist.store}
        self.capabilities = Capabilities(arch=image.get("arch", "x86_64"), exec=agent, files=agent, console=True,
                                         snapshot=snapshot, network=network is not None, persist=self.persist is not None)

    def _init_user_module(self, wasm, args, env, preopens, memory_mib, entrypoint, no_stdin, net, mac, arch) -> None:
        if memory_mib is not None:
            raise InvalidOption("memory_mib= is the image's; a user's module sizes its own memory")
        if isinstance(wasm, (list, tuple)):
            if not wasm or not all(isinstance(u, str) and u for u in wasm):
                raise InvalidOption("wasm= as a list must hold the URLs of the module's chunks, in order")
            wasm = list(wasm)
        elif isinstance(wasm, (bytearray, memoryview)):
            wasm = bytes(wasm)
        elif not isinstance(wasm, (str, bytes)) or not wasm:
            raise InvalidOption(f"wasm= must be a URL, a list of chunk URLs or the module's bytes, not {type(wasm).__name__}")
        if isinstance(wasm, bytes) and wasm[:4] != b"\0asm":
            raise InvalidOption("wasm= bytes are not a WebAssembly module (they do not start with \\0asm)")
        dirs = list(preopens) if preopens is not None else (["/"] if self.user_files else [])
        for d in dirs:
            if not isinstance(d, str) or not d.startswith("/"):
                raise InvalidOption(f"preopens: {d!r} is not an absolute directory like '/mnt/share'")
        self.memory_mib = None
        self.console_has_eof = True  # its stdin can end (Console.sendeof)
        self.options = {
            "wasm": wasm,
            "args": c2w_argv(entrypoint=entrypoint, no_stdin=no_stdin, net=net, mac=mac, args=args),
            "env": [f"{k}={v}" for k, v in env.items()],
            "files": dict(self.user_files),
            "preopens": [posixpath.normpath(d) for d in dirs],
            "channels": {"console": {"in": 0, "out": 1, "blocking": True}},
            "stderr": "console",
        }
        self.capabilities = Capabilities(arch=arch or "x86_64", exec=False, files=False, console=True,
                                         snapshot=False, network=net is not None)

    # -- lifetime -------------------------------------------------------------------------
    async def start(self, on_console: Sink, on_agent: Sink, resume=None) -> None:
        if resume is not None and not self.capabilities.snapshot:
            raise NotSupported("this c2w machine cannot resume a snapshot (capabilities.snapshot is false)")
        options = dict(self.options, worker_url=self.assets.require("c2w/worker.mjs"),
                       shim_url=self.assets.require("c2w/browser_wasi_shim/dist/index.js"),
                       ring_bytes=RING_BYTES)
        self._handle = await _browser.start_emulator(self.assets.require("c2w/adapter.mjs"), options,
                                                     on_console, on_agent, on_exit=self._track_exit(),
                                                     on_persist_changed=self._persist_changed if self.persist else None,
                                                     **self._resume_arguments(resume))
        if self.persist is not None:
            self.persist_store = GuestTree(self._handle.layer_store, self.persist.resolved_layers(),
                                           overlay=self.image.get("persist_overlay"))

    def _persist_changed(self) -> None:
        if self.on_persist_changed is not None:
            self.on_persist_changed()

    # -- snapshots ---------------------------------------------------------------------
    def snapshot_binding(self) -> dict:
        if not self.capabilities.snapshot:
            raise NotSupported("this c2w machine cannot save or restore its state (an image with the agent, "
                               "built with `python emulators/build.py`, can)")
        sha = lambda url: "sha256:" + self.assets.sha256(url[len(self.assets.base_url):])  # noqa: E731
        files = {}
        for guest, ref in self.options["files"].items():
            if guest == "/bochsrc.txt":
                continue  # its lines are below; its megs: is memory_mib
            if isinstance(ref, bytes):  # boot(files=...) bytes
                files[guest] = "sha256:" + hashlib.sha256(ref).hexdigest()
            else:
                url = ref["url"] if isinstance(ref, dict) else ref
                files[guest] = sha(url) if url.startswith(self.assets.base_url) else url
        # The lazy disks by their chunk list (content-addressed names), not their URL.
        lazy = {guest: snapshots.digest({k: v for k, v in spec.items() if k != "base"})
                for guest, spec in self.options["lazy"].items()}
        # The layers come from the store after a resume: persist= is not part of the binding.
        config = {"wasm": sha(self.options["wasm"]), "args": self.options["args"], "env": self.options["env"],
                  "files": files, "lazy": lazy, "channels": self.options["channels"],
                  "hostchan": self.options.get("hostchan"), "state": self.options["state"],
                  # A state holds the network card, not the relay: any relay will do.
                  "bochsrc": self.image["bochsrc_body"], "network_card": self.network is not None}
        return {"emulator": self.name, "emulator_version": "bochs.wasm " + config["wasm"][7:19],
                "image": self.image["name"], "memory_mib": self.memory_mib,
                "cmdline": self.image.get("kernel_cmdline", ""), "config": snapshots.digest(config)}

    def resume_fixups(self) -> tuple[list[str], str | None]:
        return [], RENEW_LEASE if self.network is not None else None

