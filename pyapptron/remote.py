"""The page side of remote control: JSON requests in, JSON answers out.

A CPython process that drives a browser (the CLI's `run`, the pytest fixture, bench)
sends requests through WebDriver; `handle()` runs them against real Machines in this
page. Values travel as pyapptron._wire encodes them (bytes as {"b64": ...}); errors
come back typed, with their attributes.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import time
import traceback

import pyapptron

from . import _browser
from ._wire import decode, encode

_machines: dict[int, pyapptron.Machine] = {}
_ids = itertools.count(1)


def _error(exc: Exception) -> dict:
    attrs = {}
    for name in ("returncode", "timeout", "cmd", "output", "stderr", "filename", "buffer",
                 "guest_errno", "guest_message", "strerror"):
        if hasattr(exc, name):
            value = getattr(exc, name)
            if isinstance(value, (str, int, float, bytes, bytearray, list, type(None))):
                attrs[name] = value
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "attrs": encode(attrs),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _register(vm: pyapptron.Machine, boot_seconds: float | None) -> dict:
    for vm_id, known in _machines.items():
        if known is vm:
            break
    else:
        vm_id = next(_ids)
        _machines[vm_id] = vm
    return {"vm": vm_id, "boot_seconds": boot_seconds, "capabilities": vm.capabilities.as_dict(),
            "resumed_from": vm.resumed_from, "emulator": vm.emulator, "image": vm.image}


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


async def _op_run(vm, args):
    r = await vm.run(**args)
    return {"args": r.args, "returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr}


async def _op_list_dir(vm, args):
    return [e.__dict__ for e in await vm.list_dir(**args)]


async def _op_wait_for(vm, args):
    m = await vm.console.wait_for(args["pattern"], args.get("timeout"))
    return {"match": m.group(0), "before": vm.console.before}


async def _op_wait_quiet(vm, args):
    await vm.console.wait_quiet(**args)


async def _op_send(vm, args):
    vm.console.send(args["data"])


async def _op_transcript(vm, args):
    return vm.console.transcript


async def _op_shutdown(vm, args):
    await vm.shutdown()
    for key, value in list(_machines.items()):
        if value is vm:
            del _machines[key]


async def _op_read_file(vm, args):
    return await vm.read_file(**args)


async def _op_write_file(vm, args):
    await vm.write_file(**args)


async def _op_snapshot(vm, args):
    saved = await vm.snapshot(**args)
    return saved if isinstance(saved, bytes) else dataclasses.asdict(saved)


async def _op_restore(vm, args):
    await vm.restore(**args)
    return {"resumed_from": vm.resumed_from}


async def _op_persist(vm, args):
    """vm.persist.<method>(...) with plain-data answers."""
    persist = vm.persist
    method = args["method"]
    if method == "sync":
        return dataclasses.asdict(await persist.sync())
    if method == "usage":
        usage = await persist.usage()
        usage["layers"] = {k: dataclasses.asdict(v) for k, v in usage["layers"].items()}
        return usage
    if method == "export":
        return await persist.export()
    if method == "import_":
        return await persist.import_(args["data"])
    if method == "reset":
        return await persist.reset(args["layer"])
    if method == "state":
        return {"restored": persist.restored, "store": persist.store,
                "damaged": [{"message": str(e), "layer": e.layer, "path": e.path} for e in persist.damaged],
                "auto_sync_errors": [str(e) for e in persist.auto_sync_errors]}
    raise pyapptron.InvalidOption(f"unknown persist method {method!r}")


_VM_OPS = {
    "persist": _op_persist, "snapshot": _op_snapshot, "restore": _op_restore,
    "run": _op_run, "read_file": _op_read_file, "write_file": _op_write_file,
    "list_dir": _op_list_dir, "wait_for": _op_wait_for, "wait_quiet": _op_wait_quiet, "send": _op_send,
    "transcript": _op_transcript, "shutdown": _op_shutdown,
}


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
        elif op in _VM_OPS:
            vm = _machines.get(request.get("vm"))
            if vm is None:
                raise pyapptron.MachineClosed(f"no machine {request.get('vm')!r} in this page (shut down?)")
            value = await _VM_OPS[op](vm, args)
        else:
            raise pyapptron.InvalidOption(f"unknown remote op {op!r}")
        return json.dumps({"ok": encode(value)})
    # Every failure goes back to the caller; cancellation, KeyboardInterrupt and SystemExit
    # are not failures of the request and propagate.
    except Exception as exc:
        return json.dumps({"error": _error(exc)})
