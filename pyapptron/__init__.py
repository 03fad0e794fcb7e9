"""pyapptron: boot real Linux VMs in the browser from Python.

    import pyapptron
    async with await pyapptron.boot("v86", image="minimal") as vm:
        r = await vm.run("uname -a")
        print(r.returncode, r.stdout)
"""

from __future__ import annotations

from .agent import DirEntry
from .assets import Assets
from .backends import Capabilities, available_emulators, backend_class
from .console import Console
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
    NotSupported,
    PersistDamaged,
    PersistError,
    PersistLocked,
    PersistQuotaExceeded,
    PyapptronError,
    TimeoutExpired,
    UnknownEmulator,
    WaitTimeout,
)
from .machine import CompletedProcess, Machine
from .persist import Persist

__version__ = "0.1.0"

DEFAULT_EMULATOR = "v86"
DEFAULT_IMAGE = "minimal"
DEFAULT_BOOT_TIMEOUT = 120.0

__all__ = [
    "boot", "images", "available_emulators", "Machine", "CompletedProcess", "Capabilities",
    "Console", "DirEntry", "PyapptronError", "UnknownEmulator", "ImageNotFound", "InvalidOption",
    "AssetsMissing", "BootError", "NotSupported", "MachineClosed", "AgentError", "CommandTooLong",
    "TimeoutExpired", "CalledProcessError", "WaitTimeout", "ConsoleEOF", "BrowserError",
    "Persist", "PersistError", "PersistLocked", "PersistQuotaExceeded", "PersistDamaged",
]


async def boot(
    emulator: str = DEFAULT_EMULATOR,
    image: str = DEFAULT_IMAGE,
    *,
    memory_mib: int | None = None,
    timeout: float = DEFAULT_BOOT_TIMEOUT,
    assets_url: str | None = None,
    persist: bool | str | Persist | None = None,
    **options,
) -> Machine:
    """Boot a VM and return it once its guest agent answers.

    emulator: a name from available_emulators() ("v86").
    image: a built image for that emulator ("minimal"); images() lists them.
    memory_mib: guest RAM (default: the image's).
    timeout: seconds to wait for the guest to be ready.
    assets_url: where the built assets are served (default: /assets/ on this origin).
    persist: keep the guest's home, packages and /persist in IndexedDB across reloads:
        True (the store "default"), a store name, or pyapptron.Persist(...). See vm.persist.
    Other keyword options are the backend's own (see its `options`).
    """
    cls = backend_class(emulator)
    persist_spec = Persist.from_option(persist)
    if persist_spec is not None and not cls.persist_supported:
        raise NotSupported(f"{emulator} cannot keep files across reloads (persist=); use v86")
    if memory_mib is not None and (isinstance(memory_mib, bool) or not isinstance(memory_mib, int)):
        raise InvalidOption(f"memory_mib must be an integer number of MiB, not {memory_mib!r}")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidOption(f"timeout must be a positive number of seconds, not {timeout!r}")
    for key, value in options.items():
        expected = cls.options.get(key)
        if expected is None:
            known = ", ".join(["memory_mib", "timeout", "assets_url", "persist", *cls.options])
            raise InvalidOption(f"{emulator} has no option {key!r}; options: {known}")
        if not isinstance(value, expected):
            raise InvalidOption(f"option {key!r} must be {getattr(expected, '__name__', expected)}, not {value!r}")
    if not isinstance(image, str):
        raise InvalidOption(f"image must be an image name (str), not {image!r}")
    assets = await Assets.load(assets_url)
    spec = await assets.image(emulator, image)
    backend = cls(assets, spec, memory_mib, persist=persist_spec, **options)
    machine = Machine(backend, emulator=emulator, image=image)
    await machine._start(timeout)
    return machine


async def images(emulator: str = DEFAULT_EMULATOR, *, assets_url: str | None = None) -> list[str]:
    """Names of the built images for `emulator`."""
    backend_class(emulator)
    return (await Assets.load(assets_url)).images(emulator)
