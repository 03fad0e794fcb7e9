"""pyapptron: boot real Linux VMs in the browser from Python.

    import pyapptron
    async with await pyapptron.boot("v86", image="minimal") as vm:
        r = await vm.run("uname -a")
        print(r.returncode, r.stdout)
"""

from __future__ import annotations

import dataclasses
import inspect

from . import notebook, snapshots
from .agent import DirEntry
from . import _browser
from .assets import Assets
from .backends import Capabilities, available_emulators, backend_class
from .console import EOF, TIMEOUT, Console
from .errors import (
    AgentError,
    AssetsMissing,
    BootError,
    BrowserError,
    CalledProcessError,
    CommandTooLong,
    ConsoleEOF,
    ImageNotFound,
    InvalidOption,
    MachineClosed,
    NetworkUnavailable,
    NotIsolated,
    IncompleteBuild,
    NotSupported,
    PersistDamaged,
    PersistError,
    PersistLocked,
    PersistQuotaExceeded,
    PyapptronError,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotMismatch,
    SnapshotNotFound,
    TimeoutExpired,
    UnknownEmulator,
    WaitTimeout,
)
from .machine import CompletedProcess, Machine
from .network import HOST_RELAY_INFO, Network
from .persist import Persist
from .snapshots import SnapshotInfo

__version__ = "0.1.0"

DEFAULT_EMULATOR = "v86"
DEFAULT_IMAGE = "minimal"
DEFAULT_BOOT_TIMEOUT = 120.0

__all__ = [
    "boot", "images", "available_emulators", "Machine", "CompletedProcess", "Capabilities",
    "Console", "EOF", "TIMEOUT", "DirEntry", "PyapptronError", "UnknownEmulator", "ImageNotFound", "InvalidOption",
    "AssetsMissing", "BootError", "NotIsolated", "IncompleteBuild", "NotSupported", "MachineClosed", "AgentError", "CommandTooLong",
    "TimeoutExpired", "CalledProcessError", "WaitTimeout", "ConsoleEOF", "BrowserError",
    "Persist", "PersistError", "PersistLocked", "PersistQuotaExceeded", "PersistDamaged",
    "Network", "NetworkUnavailable",
    "snapshots", "SnapshotInfo", "SnapshotError", "SnapshotNotFound", "SnapshotMismatch", "SnapshotCorrupt",
]


async def boot(
    emulator: str = DEFAULT_EMULATOR,
    image: str | None = None,
    *,
    memory_mib: int | None = None,
    timeout: float = DEFAULT_BOOT_TIMEOUT,
    assets_url: str | None = None,
    persist: bool | str | Persist | None = None,
    network: bool | str | Network | None = None,
    resume: str | bytes | None = None,
    cold: bool = False,
    **options,
) -> Machine:
    """Boot a VM and return it once its guest agent answers.

    By default the machine resumes from the image's boot snapshot (made when the assets
    were built) in well under a second instead of booting its kernel; `cold=True` boots
    for real. A missing, damaged or stale boot snapshot means a cold boot and a warning.

    emulator: a name from available_emulators(): "v86" (32-bit x86), "c2w" (x86_64
        through WASI; the page must be cross-origin isolated, see NotIsolated) or
        "qemu-wasm" (a user's QEMU-Wasm build: boot("qemu-wasm", build=URL, kernel=...);
        see pyapptron.backends.qemu_wasm and the README).
    image: a built image for that emulator; images() lists them. Default: "minimal"
        for v86, "debian-x86_64" for c2w.
    memory_mib: guest RAM (default: the image's).
    timeout: seconds to wait for the guest to be ready.
    assets_url: where the built assets are served (default: /assets/ on this origin).
    persist: keep the guest's home, packages and /persist in IndexedDB across reloads:
        True (the store "default"), a store name, or pyapptron.Persist(...). See vm.persist.
        On a resume the layers come from the store, never from the snapshot.
    network: give the guest a network (an address by DHCP, a route, a resolver) whose TCP
        connections go out through a Wisp relay: True (the relay the page's host started,
        `python -m pyapptron serve` and the other host tools), "host-only" (only the
        host's allowed ports), a relay's URL ("wisp://host:port/path/"), or
        pyapptron.Network(internet=, host_ports=, allow_private=, relay=). The guest reaches
        the host's 127.0.0.1:PORT as host.pyapptron.internal:PORT, for host_ports only.
    resume: a snapshot to start from: a name kept by vm.snapshot(name) in this origin,
        or bytes from vm.snapshot(to_bytes=True). SnapshotNotFound, SnapshotMismatch
        (made from another image, memory size or configuration) or SnapshotCorrupt if
        it cannot be used; nothing falls back silently.
    cold: boot the kernel even where a boot snapshot exists.
    Other keyword options are the backend's own (see its `options`).
    """
    cls = backend_class(emulator)
    # A page's script (web/pyapptron.js) may pass byte arrays: from here on, Python values only.
    resume = _browser.from_page(resume)
    options = {key: _browser.from_page(value) for key, value in options.items()}
    persist_spec = Persist.from_option(persist)
    if persist_spec is not None and not cls.persist_supported:
        raise NotSupported(f"{emulator} cannot keep files across reloads (persist=); use v86 or c2w")
    network_spec = Network.from_option(_browser.from_page(network))
    if network_spec is not None and not cls.network_supported:
        raise NotSupported(f"{emulator} has no network yet (network=); use v86 or c2w")
    if memory_mib is not None and (isinstance(memory_mib, bool) or not isinstance(memory_mib, int)):
        raise InvalidOption(f"memory_mib must be an integer number of MiB, not {memory_mib!r}")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidOption(f"timeout must be a positive number of seconds, not {timeout!r}")
    for key in options:
        expected = cls.options.get(key)
        if expected is None:
            raise InvalidOption(f"{emulator} has no option {key!r}; options: {', '.join(_keywords(cls))}")
        value = options[key]
        if not isinstance(value, expected):
            raise InvalidOption(f"option {key!r} must be {_type_names(expected)}, not {value!r}")
    if image is None:
        image = cls.default_image
    if not isinstance(image, str):
        raise InvalidOption(f"image must be an image name (str), not {image!r}")
    if not isinstance(cold, bool):
        raise InvalidOption(f"cold must be True or False, not {cold!r}")
    if cold and resume is not None:
        raise InvalidOption("boot(): cold=True and resume= contradict each other; pass one of them")
    if resume is not None and not isinstance(resume, (str, bytes, bytearray, memoryview)):
        raise InvalidOption(f"resume must be a snapshot name (str) or snapshot bytes, not {type(resume).__name__}")
    assets = await Assets.load(assets_url)
    spec = await assets.image(emulator, image) if cls.needs_image(options) else None
    if spec is None:
        image = cls.default_image if cls.default_image.startswith("(") else "(own module)"
    if network_spec is not None and network_spec.relay is None:
        network_spec = await _host_relay(network_spec)
    network_arg = {} if network_spec is None else {"network": network_spec}
    backend = cls(assets, spec, memory_mib, persist=persist_spec, **network_arg, **options)
    if resume is not None:
        source = await snapshots.chosen(backend, resume)
    elif cold or not backend.capabilities.snapshot:
        source = None
    else:
        # The boot snapshot was made with the image's defaults: other options, no resume.
        defaults = (not options and network_spec is None and spec is not None
                    and memory_mib in (None, spec.get("memory_mib")))
        source = await snapshots.shipped(backend, assets, spec) if defaults else None
    machine = Machine(backend, emulator=emulator, image=image, resume=source)
    await machine._start(timeout)
    return machine


async def _host_relay(network: Network) -> Network:
    """The network with the relay of the page's host filled in."""
    try:
        info = await _browser.fetch_json(HOST_RELAY_INFO)
        relay = info["wisp"]
    except (AssetsMissing, ValueError, KeyError, TypeError):
        # (AssetsMissing: an HTTP error; ValueError: not JSON, a static host's HTML page.)
        raise NetworkUnavailable(
            f"boot(network=...) needs a Wisp relay, and this page's host offers none at {HOST_RELAY_INFO}: serve the "
            "page with `python -m pyapptron serve` (or run/mcp/the pytest plugin), or pass your own relay "
            "as network=\"wisp://host:port/path/\" or pyapptron.Network(relay=...)") from None
    return dataclasses.replace(network, relay=relay)


def _keywords(cls) -> list[str]:
    """Every keyword boot() takes for this backend: its own and the backend's options."""
    own = [name for name, p in inspect.signature(boot).parameters.items()
           if p.kind is not p.VAR_KEYWORD and name != "emulator" and (name != "persist" or cls.persist_supported)
           and (name != "network" or cls.network_supported)]
    return [*own, *cls.options]


def _type_names(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    names = ["None" if t is type(None) else t.__name__ for t in types]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


async def images(emulator: str = DEFAULT_EMULATOR, *, assets_url: str | None = None) -> list[str]:
    """Names of the built images for `emulator`."""
    backend_class(emulator)
    return (await Assets.load(assets_url)).images(emulator)
