"""Every error pyapptron raises on purpose is a PyapptronError.

Where the standard library already has the right type (subprocess.TimeoutExpired,
FileNotFoundError, ...), the error is a subclass of both, so code written against
`subprocess` or `os` keeps working.
"""

from __future__ import annotations

import subprocess


class PyapptronError(Exception):
    """Base class of pyapptron's errors. The message says what to do about it."""


class UnknownEmulator(PyapptronError, ValueError):
    """boot() was given an emulator name no backend answers to."""


class ImageNotFound(PyapptronError, LookupError):
    """The image is not among the built ones."""


class InvalidOption(PyapptronError, ValueError):
    """An option passed to boot() or run() is of the wrong type or out of range."""


class AssetsMissing(PyapptronError, FileNotFoundError):
    """A built asset (emulator, BIOS, kernel, wheel) is missing: the asset command was not run."""


class BootError(PyapptronError, RuntimeError):
    """The emulator did not start, or the guest agent did not answer in time."""


class NotIsolated(BootError):
    """The page is not cross-origin isolated (no SharedArrayBuffer), which the c2w and
    qemu-wasm emulators need: serve it with COOP/COEP headers (`python -m pyapptron serve` does)."""


class IncompleteBuild(BootError, FileNotFoundError):
    """A user's emulator build (boot("qemu-wasm", build=URL)) lacks files it needs;
    `missing` names them, and the message says how to make them."""

    def __init__(self, message: str, missing: list[str] | None = None):
        super().__init__(message)
        self.missing = list(missing or [])


class NetworkUnavailable(BootError):
    """boot(network=...) found no relay to carry the guest's connections."""


class NotSupported(PyapptronError, NotImplementedError):
    """The backend cannot do this; its capabilities say so beforehand."""


class MachineClosed(PyapptronError, RuntimeError):
    """The machine was shut down (or its emulator stopped); boot a new one."""


class AgentError(PyapptronError, RuntimeError):
    """The guest agent broke the protocol, restarted, or the channel is gone."""


class CommandTooLong(PyapptronError, ValueError):
    """A request does not fit in the agent channel's window."""


class BrowserError(PyapptronError, RuntimeError):
    """Host side: the headless browser failed, or Python in the page raised."""


class PersistError(PyapptronError, RuntimeError):
    """Persistent storage failed; the store's last committed version is intact."""


class PersistLocked(PersistError):
    """The store is in use by another machine (in this tab or another): one writer at a time."""


class PersistQuotaExceeded(PersistError):
    """The browser's storage quota is full. Nothing was lost: the last committed version stands."""


class PersistDamaged(PersistError):
    """Part of a store could not be read back (`layer`, `path`); the rest was restored."""

    def __init__(self, message: str, layer: str | None = None, path: str | None = None):
        super().__init__(message)
        self.layer = layer
        self.path = path


class SnapshotError(PyapptronError, RuntimeError):
    """A machine snapshot could not be saved or resumed."""


class SnapshotNotFound(SnapshotError, LookupError):
    """No snapshot of that name in this origin's store (pyapptron.snapshots.list() names them)."""


class SnapshotMismatch(SnapshotError):
    """The snapshot was made from another emulator, image, memory size or configuration."""


class SnapshotCorrupt(SnapshotError):
    """The snapshot's bytes are damaged or are not a pyapptron snapshot."""


class TimeoutExpired(PyapptronError, subprocess.TimeoutExpired):
    """vm.run(..., timeout=) ran out. The command was killed; the VM is still usable.

    `output`/`stdout` and `stderr` hold what the command wrote before it was killed.
    """

    def __init__(self, cmd, timeout, output=None, stderr=None):
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)

    def __str__(self) -> str:
        return subprocess.TimeoutExpired.__str__(self)


class CalledProcessError(PyapptronError, subprocess.CalledProcessError):
    """vm.run(..., check=True) and the command exited non-zero."""

    def __init__(self, returncode, cmd, output=None, stderr=None):
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)

    def __str__(self) -> str:
        return subprocess.CalledProcessError.__str__(self)


class WaitTimeout(PyapptronError, TimeoutError):
    """console.wait_for() saw no match in time. `.buffer` holds the unmatched output."""

    def __init__(self, message: str, buffer: bytes = b""):
        super().__init__(message)
        self.buffer = buffer


class ConsoleEOF(PyapptronError, EOFError):
    """The console closed (machine shut down) while waiting for a pattern."""


# Linux errno numbers as the guest agent sends them. The host's own numbering may differ
# (Pyodide is Emscripten, whose errno values are not Linux's), so map by value here.
_LINUX_ERRNO_TYPES = {
    1: PermissionError,  # EPERM
    2: FileNotFoundError,  # ENOENT
    13: PermissionError,  # EACCES
    17: FileExistsError,  # EEXIST
    20: NotADirectoryError,  # ENOTDIR
    21: IsADirectoryError,  # EISDIR
}
_LINUX_ERRNO_NAMES = {
    1: "EPERM", 2: "ENOENT", 5: "EIO", 7: "E2BIG", 8: "ENOEXEC", 12: "ENOMEM", 13: "EACCES",
    17: "EEXIST", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL", 24: "EMFILE", 26: "ETXTBSY",
    27: "EFBIG", 28: "ENOSPC", 30: "EROFS", 36: "ENAMETOOLONG", 40: "ELOOP",
}


def guest_os_error(linux_errno: int, message: str, filename: str | None = None) -> OSError:
    """The OSError subclass a local call would raise, for an errno from the guest."""
    import errno as host_errno

    name = _LINUX_ERRNO_NAMES.get(linux_errno)
    local = getattr(host_errno, name, linux_errno) if name else linux_errno
    cls = _LINUX_ERRNO_TYPES.get(linux_errno, OSError)
    err = cls(local, f"{message} (in the guest)", filename)
    err.guest_errno = linux_errno  # type: ignore[attr-defined]
    err.guest_message = message  # type: ignore[attr-defined]
    return err
