"""Machine's remote surface, described once: what a CPython host can call on a Machine
in a browser page, and how each answer crosses the JSON wire (pyapptron._wire).

The page side (pyapptron.remote.handle) and the host proxies (pyapptron.host.browser:
RemoteMachine, RemoteConsole, RemotePersist) are both made from OPS, so an operation
added here exists on both sides, with Machine's method name, keyword names and
defaults (taken from the method itself) and the same result type Machine returns.
Pure Python: imported in Pyodide and in CPython.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import errors
from ._wire import decode, encode
from .agent import DirEntry
from .backends import Capabilities
from .console import EOF, TIMEOUT, Console
from .machine import CompletedProcess, Machine
from .persist import LayerUsage, PersistedFiles, SyncResult
from .snapshots import SnapshotInfo

#: What an operation is called on: the machine itself or one of its parts.
TARGETS: dict[str, type] = {"machine": Machine, "console": Console, "persist": PersistedFiles}


def _same(value, target=None):
    return value


def _nothing(value, target=None):
    return None


@dataclass(frozen=True)
class Op:
    """One operation of the surface."""

    target: str  # a key of TARGETS
    method: str  # the attribute on the target (a method, or a property with is_property)
    is_property: bool = False
    #: Page side: (result, target) -> plain data for the wire.
    result_to_wire: Callable[[Any, Any], Any] = _same
    #: Host side: (plain data, the host proxy) -> what Machine would have returned.
    result_from_wire: Callable[[Any, Any], Any] = _same
    #: Host side: keyword arguments -> plain data; page side: back to the method's arguments.
    args_to_wire: Callable[[dict], dict] = _same
    args_from_wire: Callable[[dict], dict] = _same

    @property
    def wire(self) -> str:
        """Its name in requests: "run", "console.wait_for", "persist.sync"."""
        return self.method if self.target == "machine" else f"{self.target}.{self.method}"

    def signature(self) -> inspect.Signature:
        """The method's own signature (self included): the host proxy takes the same arguments."""
        return inspect.signature(getattr(TARGETS[self.target], self.method))

    def doc(self) -> str | None:
        """The method's docstring (None for an attribute the target sets in __init__)."""
        found = getattr(TARGETS[self.target], self.method, None)
        return inspect.getdoc(found) if found is not None else None


# -- run --------------------------------------------------------------------------------
def _process_to_wire(r: subprocess.CompletedProcess, target=None) -> dict:
    return {"args": r.args, "returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr}


def _process_from_wire(value: dict, proxy=None) -> CompletedProcess:
    return CompletedProcess(value["args"], value["returncode"], value["stdout"], value["stderr"])


# -- files and snapshots ------------------------------------------------------------------
def _dataclass_to_wire(value, target=None) -> dict:
    return dataclasses.asdict(value)


def _dataclasses_to_wire(items, target=None) -> list:
    return [dataclasses.asdict(item) for item in items]


def _dir_entries_from_wire(value: list, proxy=None) -> list[DirEntry]:
    return [DirEntry(**entry) for entry in value]


def _snapshot_to_wire(saved, target=None):
    return saved if isinstance(saved, bytes) else dataclasses.asdict(saved)


def _snapshot_from_wire(value, proxy=None) -> SnapshotInfo | bytes:
    return value if isinstance(value, bytes) else SnapshotInfo(**value)


def _resumed_from_to_wire(result, vm) -> str | None:
    return vm.resumed_from


def _resumed_from_from_wire(resumed_from, proxy) -> None:
    proxy.resumed_from = resumed_from  # Machine.restore sets it and returns None


# -- the console ---------------------------------------------------------------------------
class RemoteMatch:
    """A console match that crossed the wire, read like re.Match (group, start, end,
    span, groups, groupdict, re, string, lastindex, lastgroup).

    `string` is the output before the match plus the match itself, so every offset is
    the one the page's re.Match had.
    """

    def __init__(self, string: bytes, spans: list, pattern: str | bytes, flags: int, lastindex: int | None):
        self.string = string
        self.re = re.compile(pattern, flags)
        self.pos, self.endpos = 0, len(string)
        self.lastindex = lastindex
        self._spans = [tuple(s) if s is not None else (-1, -1) for s in spans]
        names = {index: name for name, index in self.re.groupindex.items()}
        self.lastgroup = names.get(lastindex)

    def _index(self, group: int | str) -> int:
        index = self.re.groupindex.get(group, group) if isinstance(group, str) else group
        if not isinstance(index, int) or not 0 <= index < len(self._spans):
            raise IndexError("no such group")
        return index

    def _value(self, group, default=None):
        start, end = self._spans[self._index(group)]
        return default if start < 0 else self.string[start:end]

    def span(self, group: int | str = 0) -> tuple[int, int]:
        return self._spans[self._index(group)]

    def start(self, group: int | str = 0) -> int:
        return self.span(group)[0]

    def end(self, group: int | str = 0) -> int:
        return self.span(group)[1]

    def group(self, *groups):
        values = tuple(self._value(g) for g in groups or (0,))
        return values[0] if len(values) == 1 else values

    __getitem__ = _value

    def groups(self, default=None) -> tuple:
        return tuple(self._value(i, default) for i in range(1, len(self._spans)))

    def groupdict(self, default=None) -> dict:
        return {name: self._value(name, default) for name in self.re.groupindex}

    def __repr__(self) -> str:
        return f"<RemoteMatch object; span={self.span()!r}, match={self.group(0)!r}>"


def _match_to_wire(m: re.Match, console=None) -> dict:
    # Only what precedes the match's end: the page's buffer beyond it is still unconsumed.
    return {"string": m.string[: m.end()], "spans": [m.span(i) for i in range(m.re.groups + 1)],
            "pattern": m.re.pattern, "flags": m.re.flags, "lastindex": m.lastindex}


def _match_from_wire(value: dict, console) -> RemoteMatch:
    m = RemoteMatch(value["string"], value["spans"], value["pattern"], value["flags"], value["lastindex"])
    # As Console.wait_for does: before / after / match describe the last match.
    console.before, console.after, console.match = m.string[: m.start()], m.group(0), m
    return m


def _pattern_to_wire(args: dict) -> dict:
    pattern = args.get("pattern")
    if isinstance(pattern, re.Pattern):  # a compiled pattern travels as its source and flags
        args = {**args, "pattern": pattern.pattern, "flags": pattern.flags}
    return args


def _pattern_from_wire(args: dict) -> dict:
    if "flags" in args:
        args = dict(args)
        args["pattern"] = re.compile(args["pattern"], args.pop("flags"))
    return args


_SENTINELS = {"EOF": EOF, "TIMEOUT": TIMEOUT}


def _patterns_to_wire(args: dict) -> dict:
    """expect()'s patterns: one or a list of regexes (str, bytes, compiled) or strings,
    with EOF and TIMEOUT, as plain data."""
    pattern = args["pattern"]
    items = pattern if isinstance(pattern, list) else [pattern]
    wire = []
    for p in items:
        if p is EOF or p is TIMEOUT:
            wire.append({"sentinel": p.name})
        elif isinstance(p, re.Pattern):
            wire.append({"pattern": p.pattern, "flags": p.flags})
        else:
            wire.append({"pattern": p})
    return {**args, "pattern": wire}


def _patterns_from_wire(args: dict) -> dict:
    items = [_SENTINELS[p["sentinel"]] if "sentinel" in p
             else re.compile(p["pattern"], p["flags"]) if "flags" in p else p["pattern"] for p in args["pattern"]]
    return {**args, "pattern": items}


def _expect_to_wire(index: int, console: Console) -> dict:
    # Read as the call returned: Console set them for this call when it resumed.
    after, match = console.after, console.match
    return {"index": index, "before": console.before,
            "after": {"sentinel": after.name} if after is EOF or after is TIMEOUT else after,
            "match": {"sentinel": match.name} if match is EOF or match is TIMEOUT else _match_to_wire(match)}


def _expect_from_wire(value: dict, console) -> int:
    after, m = value["after"], value["match"]
    console.after = _SENTINELS[after["sentinel"]] if isinstance(after, dict) else after
    console.before = value["before"]
    console.match = (_SENTINELS[m["sentinel"]] if "sentinel" in m
                     else RemoteMatch(m["string"], m["spans"], m["pattern"], m["flags"], m["lastindex"]))
    return value["index"]


# -- persist --------------------------------------------------------------------------------
def _sync_from_wire(value: dict, proxy=None) -> SyncResult:
    return SyncResult(**value)


def _usage_to_wire(usage: dict, target=None) -> dict:
    return {**usage, "layers": {name: dataclasses.asdict(layer) for name, layer in usage["layers"].items()}}


def _usage_from_wire(value: dict, proxy=None) -> dict:
    layers = {name: LayerUsage(**{**layer, "paths": tuple(layer["paths"])}) for name, layer in value["layers"].items()}
    return {**value, "layers": layers}


def _errors_to_wire(excs: list, target=None) -> list:
    return [error_to_wire(exc) for exc in excs]


def _errors_from_wire(value: list, proxy=None) -> list:
    return [error_from_wire(error) for error in value]


def _layers_from_wire(value: dict, proxy=None) -> dict:
    return {name: tuple(paths) for name, paths in value.items()}


OPS: list[Op] = [
    Op("machine", "run", result_to_wire=_process_to_wire, result_from_wire=_process_from_wire),
    Op("machine", "read_file"),
    Op("machine", "write_file", result_to_wire=_nothing),
    Op("machine", "list_dir", result_to_wire=_dataclasses_to_wire, result_from_wire=_dir_entries_from_wire),
    Op("machine", "snapshot", result_to_wire=_snapshot_to_wire, result_from_wire=_snapshot_from_wire),
    Op("machine", "restore", result_to_wire=_resumed_from_to_wire, result_from_wire=_resumed_from_from_wire),
    Op("machine", "wait"),
    Op("machine", "resize_console", result_to_wire=_nothing),
    Op("machine", "shutdown", result_to_wire=_nothing),
    Op("console", "wait_for", result_to_wire=_match_to_wire, result_from_wire=_match_from_wire,
       args_to_wire=_pattern_to_wire, args_from_wire=_pattern_from_wire),
    Op("console", "expect", result_to_wire=_expect_to_wire, result_from_wire=_expect_from_wire,
       args_to_wire=_patterns_to_wire, args_from_wire=_patterns_from_wire),
    Op("console", "expect_exact", result_to_wire=_expect_to_wire, result_from_wire=_expect_from_wire,
       args_to_wire=_patterns_to_wire, args_from_wire=_patterns_from_wire),
    Op("console", "wait_quiet", result_to_wire=_nothing),
    Op("console", "send", result_to_wire=_nothing),
    Op("console", "sendline", result_to_wire=_nothing),
    Op("console", "sendeof", result_to_wire=_nothing),
    Op("console", "transcript", is_property=True),
    Op("persist", "sync", result_to_wire=_dataclass_to_wire, result_from_wire=_sync_from_wire),
    Op("persist", "usage", result_to_wire=_usage_to_wire, result_from_wire=_usage_from_wire),
    Op("persist", "export"),
    Op("persist", "import_"),
    Op("persist", "reset", result_to_wire=_nothing),
    Op("persist", "read_file"),
    Op("persist", "write_file", result_to_wire=_nothing),
    Op("persist", "store", is_property=True),
    Op("persist", "layers", is_property=True, result_from_wire=_layers_from_wire),
    Op("persist", "restored", is_property=True),
    Op("persist", "damaged", is_property=True, result_to_wire=_errors_to_wire, result_from_wire=_errors_from_wire),
    Op("persist", "auto_sync_errors", is_property=True, result_to_wire=_errors_to_wire,
       result_from_wire=_errors_from_wire),
]

BY_WIRE: dict[str, Op] = {op.wire: op for op in OPS}


def ops_on(target: str) -> list[Op]:
    return [op for op in OPS if op.target == target]


# -- page side: carrying out a request ----------------------------------------------------------
async def perform(op: Op, vm: Machine, args: dict) -> Any:
    """Carry out `op` on a Machine in the page; returns plain data for the wire."""
    target = vm if op.target == "machine" else getattr(vm, op.target)
    if op.is_property:
        value = getattr(target, op.method)
    else:
        value = getattr(target, op.method)(**op.args_from_wire(args))
        if inspect.isawaitable(value):
            value = await value
    return op.result_to_wire(value, target)


# -- what a booted machine is, sent once with boot() -----------------------------------------------
def machine_info(vm: Machine, vm_id: int, boot_seconds: float | None) -> dict:
    return {"vm": vm_id, "boot_seconds": boot_seconds, "capabilities": vm.capabilities.as_dict(),
            "resumed_from": vm.resumed_from, "emulator": vm.emulator, "image": vm.image}


def capabilities_from_wire(value: dict) -> Capabilities:
    return Capabilities(**value)


# -- errors ------------------------------------------------------------------------------------------
_ERROR_ATTRS = ("returncode", "timeout", "cmd", "output", "stderr", "filename", "buffer", "guest_errno",
                "guest_message", "strerror", "layer", "path", "missing")
_BUILTIN_ERRORS = {cls.__name__: cls for cls in (FileNotFoundError, PermissionError, IsADirectoryError,
                                                 NotADirectoryError, FileExistsError, ValueError, TypeError,
                                                 OSError)}


def error_to_wire(exc: BaseException) -> dict:
    """A page-side exception as JSON-safe data: its type's name, message and attributes."""
    attrs = {}
    for name in _ERROR_ATTRS:
        value = getattr(exc, name, None)
        if isinstance(value, (str, int, float, bytes, bytearray, list)):
            attrs[name] = value
    return {"type": type(exc).__name__, "message": str(exc), "attrs": encode(attrs),
            "traceback": "".join(traceback.format_exception(exc))}


def error_from_wire(error: dict) -> BaseException:
    """The same pyapptron (or builtin) exception type back on the host, with its attributes."""
    name, message, attrs = error.get("type", "BrowserError"), error.get("message", ""), decode(error.get("attrs") or {})
    if name == "TimeoutExpired":
        return errors.TimeoutExpired(attrs.get("cmd"), attrs.get("timeout"), attrs.get("output"), attrs.get("stderr"))
    if name == "CalledProcessError":
        return errors.CalledProcessError(attrs.get("returncode"), attrs.get("cmd"), attrs.get("output"),
                                         attrs.get("stderr"))
    if name == "WaitTimeout":
        return errors.WaitTimeout(message, attrs.get("buffer") or b"")
    if name == "PersistDamaged":
        return errors.PersistDamaged(message, layer=attrs.get("layer"), path=attrs.get("path"))
    if name == "IncompleteBuild":
        return errors.IncompleteBuild(message, attrs.get("missing"))
    if attrs.get("guest_errno") is not None:  # an OSError from the guest, in Linux numbering
        return errors.guest_os_error(attrs["guest_errno"], attrs.get("guest_message") or message, attrs.get("filename"))
    if name in _BUILTIN_ERRORS:
        return _BUILTIN_ERRORS[name](message)
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.PyapptronError):
        return cls(message)
    return errors.BrowserError(f"{name}: {message}\n{error.get('traceback', '')}")
