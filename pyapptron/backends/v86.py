"""v86: 32-bit x86 in WebAssembly. Everything v86-specific lives here.

Quirks this backend owns:
- The guest agent's channel is a pair of shared-memory rings in guest RAM that the
  kernel leaves alone (memmap=...$HOSTCHAN_BASE), with a doorbell page above RAM, the
  only place v86 can trap (emulators/v86/hostchan.mjs). virtio-console port 0
  (`/dev/hvc0`) is the agent's wake-up line, and its whole channel when the rings are
  missing; there v86 puts each host write into one guest buffer of 4096 bytes and drops
  writes when the guest has none free, which the agent protocol's window keeps within
  (emulators/agent/PROTOCOL.md).
- The human's console is the first UART (ttyS0); v86 reports it byte by byte, so the JS
  adapter batches it per emulator tick before it reaches Python.
- v86 loads the initrd at 64 MiB: guests need at least 128 MiB.
- An image may keep its root on v86's 9p device (image.json "rootfs": v86's JSON
  index, gzip'd, and a directory of content-addressed files). v86 fetches a file the
  first time the guest opens it; the adapter inflates the index (v86 reads it as plain
  JSON only).
- Persistent layers (boot(persist=...)) live in that same 9p tree: the adapter puts the
  committed files back before the CPU starts (emulators/v86/persist.mjs) and sees every
  9p write. On the initramfs image the init bind-mounts them (pyapptron.persist=...);
  it always binds the default layers' paths, persist or not, so that a snapshot made
  without persist resumes with them in place.
- Snapshots: v86's save_state/restore_state. A state holds the guest's RAM and its 9p
  tree, so a resume loads neither the kernel nor the 9p index, and must be restored
  into a V86 made with the same options (snapshot_binding hashes them). The state
  keeps what the 9p tree held when saved: persistent layers are put back from the
  store after the state, and a 9p root cached with cache=loose drops its caches.
"""

from __future__ import annotations

import posixpath
import shlex

from .. import _browser
from ..assets import Assets
from ..errors import InvalidOption
from .. import snapshots
from ..network import RENEW_LEASE, Network, stack_options
from ..persist import DEFAULT_LAYERS, Persist
from . import Backend, Capabilities, Sink

#: What the initramfs init binds from the 9p tree when boot() keeps nothing (persist=None).
DEFAULT_BIND_PATHS = sorted({p for paths in DEFAULT_LAYERS.values() for p in paths})

MIN_MEMORY_MIB = 128
MAX_MEMORY_MIB = 2048

#: The agent's rings: 4 MiB of RAM the kernel is told to leave alone, 8 MiB below the
#: top (SeaBIOS keeps its tables at the very top; v86 loads the initrd at 64 MiB).
HOSTCHAN_RESERVED_MIB = 4
HOSTCHAN_BELOW_TOP_MIB = 8
#: The doorbell: a 128 KiB block above RAM, where v86 calls our handler on a write.
HOSTCHAN_DOORBELL = 0xFD000000


def hostchan_base(memory_mib: int) -> int:
    return (memory_mib - HOSTCHAN_BELOW_TOP_MIB) * 1024 * 1024


def network_options(network: Network) -> dict:
    """A virtio network card on the page's network stack (v86's own, in the emulator)."""
    options = stack_options(network)
    options["net_device"]["type"] = "virtio"
    return options


class V86Backend(Backend):
    name = "v86"
    options = {"cmdline_extra": str}
    #: The guest device behind the interactive console (for telling it the terminal size).
    console_tty = "/dev/ttyS0"

    persist_supported = True
    network_supported = True
    state_compressions = ("gzip", "zstd")

    def __init__(self, assets: Assets, image: dict, memory_mib: int | None = None,
                 persist: Persist | None = None, cmdline_extra: str = "", network: Network | None = None):
        memory = image.get("memory_mib", MIN_MEMORY_MIB) if memory_mib is None else memory_mib
        if not MIN_MEMORY_MIB <= memory <= MAX_MEMORY_MIB:
            raise InvalidOption(
                f"memory_mib={memory} is out of range for v86: use {MIN_MEMORY_MIB} to "
                f"{MAX_MEMORY_MIB} (v86 loads the initrd at 64 MiB)"
            )
        self.assets = assets
        self.image = image
        self.memory_mib = memory
        self.persist = persist
        self.network = network
        # On an initramfs root the init bind-mounts the persisted paths from the 9p tree
        # (the default layers' even without persist: see the module's docstring); an image
        # whose root is that tree already has them in place.
        self.bind_paths = [] if image.get("rootfs") else (persist.all_paths() if persist else DEFAULT_BIND_PATHS)
        persist_arg = "pyapptron.persist=" + ",".join(self.bind_paths) if self.bind_paths else ""
        # A snapshot is bound to the command line without the persist paths: those are
        # the resume fixups' business (resume_fixups).
        base = hostchan_base(memory)
        self._hostchan = {"base": base, "doorbell": HOSTCHAN_DOORBELL} if image.get("agent") else None
        channel_args = "" if self._hostchan is None else (
            f"memmap={HOSTCHAN_RESERVED_MIB}M${base:#x} pyapptron.agent=hostchan@{base:#x},{HOSTCHAN_DOORBELL:#x}:/dev/hvc0")
        # The init brings eth0 up by DHCP before it starts the agent.
        network_arg = "pyapptron.net=dhcp" if network is not None else ""
        self.base_cmdline = " ".join(filter(None, [image.get("cmdline", ""), channel_args, network_arg, cmdline_extra]))
        self.cmdline = " ".join(filter(None, [image.get("cmdline", ""), channel_args, network_arg, persist_arg,
                                              cmdline_extra]))
        self.capabilities = Capabilities(
            arch=image.get("arch", "i686"), exec=bool(image.get("agent")), files=bool(image.get("agent")),
            console=True, snapshot=bool(image.get("agent")), network=network is not None, persist=persist is not None,
        )
        self._handle: _browser.EmulatorHandle | None = None

    def emulator_options(self, file_ref=None, dir_ref=None) -> dict:
        """The V86 constructor options (plain data; the JS adapter adds the callbacks).

        file_ref(path) / dir_ref(path) name an asset file / directory (default: its URL).
        """
        a = self.assets
        file_ref = file_ref or a.require
        dir_ref = dir_ref or a.url
        image_dir = f"images/{self.image['name']}/"

        def image_file(name: str) -> str:
            # Image files may be shared with another image ("../minimal/bzImage").
            return file_ref(posixpath.normpath(image_dir + name))

        options = {
            "libv86_url": file_ref("v86/libv86.mjs"),
            "wasm_path": file_ref("v86/v86.wasm"),
            "memory_size": self.memory_mib * 1024 * 1024,
            "vga_memory_size": 2 * 1024 * 1024,
            "bios": {"url": file_ref("bios/seabios.bin")},
            "vga_bios": {"url": file_ref("bios/vgabios.bin")},
            "bzimage": {"url": image_file(self.image.get("kernel", "bzImage"))},
            "cmdline": self.cmdline,
            "virtio_console": True,
            "filesystem": {},  # the 9p device (tag host9p); empty unless the image has a rootfs
            "autostart": True,
            "disable_keyboard": True,
            "disable_mouse": True,
            "disable_speaker": True,
        }
        if self._hostchan is not None:
            options["hostchan"] = dict(self._hostchan)
        if self.network is not None:
            options.update(network_options(self.network))
        if self.image.get("initrd"):
            options["initrd"] = {"url": image_file(self.image["initrd"])}
        rootfs = self.image.get("rootfs")
        if rootfs:
            options["filesystem"] = {
                "basefs": image_file(rootfs["basefs"]),
                "baseurl": dir_ref(posixpath.normpath(image_dir + rootfs["baseurl"]) + "/"),
            }
        if self.persist is not None:
            options["persist"] = self.persist.js_options()
        return options

    async def start(self, on_console: Sink, on_agent: Sink, resume=None) -> None:
        self._handle = await _browser.start_emulator(
            self.assets.require("v86/adapter.mjs"), self.emulator_options(), on_console, on_agent,
            on_persist_changed=self._persist_changed if self.persist else None,
            **self._resume_arguments(resume),
        )
        self.persist_store = self._handle.persist

    # -- snapshots ---------------------------------------------------------------------
    def snapshot_binding(self) -> dict:
        options = self.emulator_options(file_ref=lambda path: "sha256:" + self.assets.sha256(path),
                                        dir_ref=lambda path: path)
        for key in ("cmdline", "memory_size", "persist", "autostart", "dns_url"):
            options.pop(key, None)
        if "net_device" in options:
            # A state holds the network card, not the relay: any relay will do on a resume.
            options["net_device"] = {"type": options["net_device"]["type"]}
        return {"emulator": self.name, "emulator_version": self.assets.version("v86"),
                "image": self.image["name"], "memory_mib": self.memory_mib,
                "cmdline": self.base_cmdline, "config": snapshots.digest(options)}

    def resume_fixups(self) -> tuple[list[str], str | None]:
        flags, steps = self._persist_fixups()
        if self.network is not None:
            steps.append(RENEW_LEASE)
        return flags, " && ".join(f"{{ {step}; }}" for step in steps) if steps else None

    def _persist_fixups(self) -> tuple[list[str], list[str]]:
        if self.persist is None:
            return [], []
        if self.image.get("rootfs"):
            # The root is the 9p tree the store was just restored into, cached by the guest.
            return ["--drop-caches"], []
        extra = [p for p in self.bind_paths if p not in DEFAULT_BIND_PATHS]
        if not extra:
            return [], []  # the snapshot's init bound them already
        quoted = " ".join(shlex.quote(p) for p in extra)
        return [], [f"for d in {quoted}; do mountpoint -q \"$d\" || "
                    "{ mkdir -p \"/mnt/host$d\" \"$d\" && mount --bind \"/mnt/host$d\" \"$d\"; } || exit 1; done"]

    def _persist_changed(self) -> None:
        if self.on_persist_changed is not None:
            self.on_persist_changed()
