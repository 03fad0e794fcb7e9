"""The page side of remote control: JSON requests in, JSON answers out.

A CPython process that drives a browser (the CLI's `run`, the pytest fixture, bench)
sends requests over a WebSocket the page dials (or through WebDriver); `handle()` runs
each against real Machines in this page, several at once. Machine's operations are
the ones pyapptron.surface describes; values travel as pyapptron._wire encodes them
(bytes as {"b64": ...}); errors come back typed, with their attributes.
"""

from __future__ import annotations

import ast
import itertools
import json
import time

import pyapptron

from . import _browser, surface
from ._wire import decode, encode

_machines: dict[int, pyapptron.Machine] = {}
_ids = itertools.count(1)


def _register(vm: pyapptron.Machine, boot_seconds: float | None) -> dict:
    for vm_id, known in _machines.items():
        if known is vm:
            break
    else:
        vm_id = next(_ids)
        _machines[vm_id] = vm
    return surface.machine_info(vm, vm_id, boot_seconds)


async def _op_boot(args):
    started = time.perf_counter()
    if isinstance(args.get("persist"), dict):
        args["persist"] = pyapptron.Persist(**args["persist"])
    vm = await pyapptron.boot(**args)
    return _register(vm, time.perf_counter() - started)


async def _op_page_machine(args):
    """The machine the page booted for its own terminal, made reachable by id."""
    vm = _browser.page_machine()
    if vm is None or vm.closed:
        raise pyapptron.MachineClosed("this page has not booted a machine of its own (open it without ?autoboot=0)")
    return _register(vm, vm.boot_seconds)


def _forget(vm_id: int) -> None:
    """A machine that was shut down is no longer reachable by its id."""
    vm = _machines.get(vm_id)
    if vm is not None and vm.closed:
        del _machines[vm_id]


_namespace: dict = {}


async def _op_python(args):
    """Run Python in the page like a notebook cell (one shared namespace); returns `result`."""
    namespace = _namespace
    namespace.update(pyapptron=pyapptron, machines=_machines)
    namespace.pop("result", None)
    code = compile(args["code"], "<remote>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    coro = eval(code, namespace)
    if coro is not None:
        await coro
    return namespace.get("result")


async def handle(request_json: str) -> str:
    """One request: {"op": ..., "vm": id?, "args": {...}} -> {"ok": value} | {"error": {...}}."""
    try:
        request = json.loads(request_json)
        op = request["op"]
        args = decode(request.get("args") or {})
        if op == "boot":
            value = await _op_boot(args)
        elif op == "page_machine":
            value = await _op_page_machine(args)
        elif op == "python":
            value = await _op_python(args)
        elif op in surface.BY_WIRE:
            vm_id = request.get("vm")
            vm = _machines.get(vm_id)
            if vm is None:
                raise pyapptron.MachineClosed(f"no machine {vm_id!r} in this page (shut down?)")
            try:
                value = await surface.perform(surface.BY_WIRE[op], vm, args)
            finally:
                _forget(vm_id)
        else:
            raise pyapptron.InvalidOption(f"unknown remote op {op!r}")
        return json.dumps({"ok": encode(value)})
    # Every failure goes back to the caller; cancellation, KeyboardInterrupt and SystemExit
    # are not failures of the request and propagate.
    except Exception as exc:
        return json.dumps({"error": surface.error_to_wire(exc)})
