"""Unit tests (CPython): requests into pyapptron.remote, Machine's surface described once
(pyapptron.surface) and its values rebuilt on the host, typed errors back out."""

import asyncio
import inspect
import json
import re
import time
import types
from types import SimpleNamespace

import pytest

import pyapptron
from pyapptron import _wire, remote, surface
from pyapptron.agent import DirEntry
from pyapptron.console import Console
from pyapptron.errors import PersistDamaged, TimeoutExpired, WaitTimeout, guest_os_error
from pyapptron.host.browser import RemoteConsole, RemoteMachine, RemotePersist
from pyapptron.persist import LayerUsage, Persist, PersistedFiles, SyncResult
from pyapptron.snapshots import SnapshotInfo


def handle(request: dict) -> dict:
    return json.loads(asyncio.run(remote.handle(json.dumps(request))))


def raise_from(error: dict):
    """What RemoteSession.request does with an error answer."""
    raise surface.error_from_wire(error)


def across(op: surface.Op, value, target=None, proxy=None):
    """A page-side result as the host gets it: to plain data, through JSON, rebuilt."""
    plain = _wire.decode(json.loads(json.dumps(_wire.encode(op.result_to_wire(value, target)))))
    return op.result_from_wire(plain, proxy)


def test_bytes_survive_the_json_wire_nested():
    value = {"a": [b"\x00\xff", {"b": b""}], "c": "text", "d": 3}
    assert _wire.decode(json.loads(json.dumps(_wire.encode(value)))) == value


@pytest.mark.parametrize("value", [
    {"b64": "aGk="},  # a dict of the caller's, shaped like the bytes tag
    {"dict": {"b64": "aGk="}},  # ... and like the escape itself
    {"dict": b"\x00"}, {"b64": b"hi"}, [{"b64": "x"}, b"x"], {"b64": "aGk=", "other": 1},
])
def test_dicts_shaped_like_tagged_values_come_back_as_the_same_dicts(value):
    assert _wire.decode(json.loads(json.dumps(_wire.encode(value)))) == value


class RecordingMachine:
    """Stands in for a Machine in the page: records what run() was given."""

    closed = False

    def __init__(self):
        self.kwargs = None

    async def run(self, **kwargs):
        self.kwargs = kwargs
        return pyapptron.CompletedProcess(kwargs["args"], 0, b"", b"")


def test_run_env_shaped_like_bytes_reaches_the_page_as_a_dict(monkeypatch):
    vm = RecordingMachine()
    monkeypatch.setitem(remote._machines, 77, vm)
    request = {"op": "run", "vm": 77, "args": _wire.encode({"args": "env", "env": {"b64": "aGk="}})}
    assert "ok" in handle(json.loads(json.dumps(request)))
    assert vm.kwargs["env"] == {"b64": "aGk="}


def test_page_side_errors_come_back_as_the_same_type():
    answer = handle({"op": "boot", "args": {"emulator": "nope"}})
    with pytest.raises(pyapptron.UnknownEmulator, match="available: c2w, qemu-wasm, v86"):
        raise_from(answer["error"])


def test_timeout_expired_keeps_the_partial_output_across_the_wire():
    exc = TimeoutExpired("sleep 9", 1.5, b"partial\x00", b"err")
    answer = surface.error_to_wire(exc)
    with pytest.raises(TimeoutExpired) as info:
        raise_from(json.loads(json.dumps(answer)))
    assert (info.value.stdout, info.value.stderr, info.value.timeout) == (b"partial\x00", b"err", 1.5)


def test_guest_errors_keep_their_linux_errno_meaning():
    answer = surface.error_to_wire(guest_os_error(2, "No such file or directory", "/nope"))
    with pytest.raises(FileNotFoundError) as info:
        raise_from(json.loads(json.dumps(answer)))
    assert info.value.filename == "/nope" and "in the guest" in str(info.value)


def test_python_op_runs_like_notebook_cells_with_top_level_await():
    assert handle({"op": "python", "args": {"code": "import asyncio\nx = 20\nawait asyncio.sleep(0)"}}) == {"ok": None}
    assert handle({"op": "python", "args": {"code": "result = x + 22"}}) == {"ok": 42}


def test_cancellation_and_exits_propagate_instead_of_coming_back_as_errors():
    async def main():
        started = remote._namespace["started"] = asyncio.Event()
        code = "started.set()\nawait asyncio.sleep(60)"
        task = asyncio.ensure_future(remote.handle(json.dumps({"op": "python", "args": {"code": code}})))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
    asyncio.run(main())
    for name, exc in (("KeyboardInterrupt", KeyboardInterrupt), ("SystemExit", SystemExit),
                      ("asyncio.CancelledError", asyncio.CancelledError)):
        with pytest.raises(exc):
            handle({"op": "python", "args": {"code": f"import asyncio\nraise {name}"}})
    assert handle({"op": "python", "args": {"code": "raise ValueError('bad')"}})["error"]["type"] == "ValueError"


def test_unknown_ops_and_machines_are_typed_errors():
    assert handle({"op": "fly"})["error"]["type"] == "InvalidOption"
    assert handle({"op": "run", "vm": 999, "args": {"args": "true"}})["error"]["type"] == "MachineClosed"


CONSOLE_ONLY = {"arch": "x86_64", "exec": False, "files": False, "console": True, "snapshot": False, "network": False}


def test_wait_quiet_is_one_request_the_page_answers_once_the_console_stops_printing():
    vm = SimpleNamespace(console=Console(lambda b: None), closed=False)
    remote._machines[777] = vm
    try:
        async def chatter(for_s: float, seconds: float, timeout: float):
            loop = asyncio.get_running_loop()
            until, fed = loop.time() + for_s, []

            def feed():
                vm.console.feed(b"tick\n")
                fed.append(time.monotonic())
                if loop.time() < until:
                    loop.call_later(0.02, feed)

            feed()
            request = {"op": "console.wait_quiet", "vm": 777, "args": {"seconds": seconds, "timeout": timeout}}
            return json.loads(await remote.handle(json.dumps(request))), fed

        answer, fed = asyncio.run(chatter(0.3, seconds=0.2, timeout=5))
        assert answer == {"ok": None} and time.monotonic() - fed[-1] >= 0.2
        answer, _ = asyncio.run(chatter(5, seconds=0.2, timeout=0.3))
        with pytest.raises(WaitTimeout, match="tick"):
            raise surface.error_from_wire(answer["error"])

        # The host's RemoteConsole asks for exactly that op, with the arguments Console takes.
        RemoteMachine(InPageSession(), {"vm": 777, "capabilities": CONSOLE_ONLY}).console.wait_quiet(0.05, timeout=5)
    finally:
        del remote._machines[777]


class InPageSession:
    """A RemoteSession whose 'page' is remote.handle in this process."""

    def request(self, op, vm=None, **args):
        answer = json.loads(asyncio.run(remote.handle(json.dumps({"op": op, "vm": vm, "args": _wire.encode(args)}))))
        if "error" in answer:
            raise surface.error_from_wire(answer["error"])
        return _wire.decode(answer["ok"])


def test_expect_crosses_the_wire_with_pexpects_meaning():
    from pyapptron.console import EOF, TIMEOUT

    vm = SimpleNamespace(console=Console(lambda b: None), closed=False)
    remote._machines[778] = vm
    try:
        console = RemoteMachine(InPageSession(), {"vm": 778, "capabilities": CONSOLE_ONLY}).console
        vm.console.feed(b"Password: x Continue? [y/n] ")
        assert console.expect([re.compile(rb"CONTINUE\? (\[y/n\])", re.I), rb"Password: "], timeout=1) == 1
        assert (console.before, console.after, console.match.group(0)) == (b"", b"Password: ", b"Password: ")
        assert console.expect_exact(["[y/n]", EOF], timeout=1) == 0 and console.before == b"x Continue? "
        assert console.expect([rb"never", TIMEOUT], timeout=0.05) == 1
        assert (console.after, console.match) == (TIMEOUT, TIMEOUT)
        vm.console.close("gone")
        assert console.expect([rb"never", EOF], timeout=1) == 1 and console.after is EOF
    finally:
        del remote._machines[778]


# -- the description -----------------------------------------------------------------------
PROXIES = {"machine": RemoteMachine, "console": RemoteConsole, "persist": RemotePersist}


def a_persisted_files() -> PersistedFiles:
    return PersistedFiles(Persist(), types.SimpleNamespace(restored={}))


@pytest.mark.parametrize("op", surface.OPS, ids=lambda op: op.wire)
def test_every_operation_names_something_its_target_has(op):
    target = surface.TARGETS[op.target]
    if op.is_property:
        instance = a_persisted_files() if target is PersistedFiles else Console(lambda data: None)
        assert hasattr(instance, op.method)
    else:
        assert inspect.iscoroutinefunction(getattr(target, op.method)) or callable(getattr(target, op.method))


@pytest.mark.parametrize("op", [op for op in surface.OPS if not op.is_property], ids=lambda op: op.wire)
def test_host_proxies_take_the_same_arguments_as_machine(op):
    proxy_method = getattr(PROXIES[op.target], op.method)
    assert inspect.signature(proxy_method) == inspect.signature(getattr(surface.TARGETS[op.target], op.method))
    assert proxy_method.__doc__ == op.doc()


def test_every_public_machine_coroutine_is_on_the_surface():
    public = {name for name, value in vars(pyapptron.Machine).items()
              if not name.startswith("_") and inspect.iscoroutinefunction(value)}
    assert public <= {op.method for op in surface.ops_on("machine")}


def test_wire_names_are_unique_and_name_their_target():
    assert len(surface.BY_WIRE) == len(surface.OPS)
    assert surface.BY_WIRE["run"].target == "machine"
    assert surface.BY_WIRE["console.wait_for"].method == "wait_for"
    assert surface.BY_WIRE["persist.sync"].target == "persist"


# -- values rebuilt on the host as Machine returns them -------------------------------------------
def test_run_comes_back_as_completed_process_with_bytes_or_text():
    op = surface.BY_WIRE["run"]
    raw = across(op, pyapptron.CompletedProcess(["cat"], 3, b"\x00\xff", b"err"))
    assert isinstance(raw, pyapptron.CompletedProcess)
    assert (raw.args, raw.returncode, raw.stdout, raw.stderr) == (["cat"], 3, b"\x00\xff", b"err")
    assert across(op, pyapptron.CompletedProcess("echo", 0, "text\n", "")).stdout == "text\n"


def test_list_dir_snapshot_and_persist_results_are_their_types():
    entry = DirEntry("f", "file", 5, 0o100644, 1700000000)
    assert across(surface.BY_WIRE["list_dir"], [entry]) == [entry]
    info = SnapshotInfo("s", "v86", "minimal", 128, 1.5, 10, 20)
    assert across(surface.BY_WIRE["snapshot"], info) == info
    assert across(surface.BY_WIRE["snapshot"], b"PYAPPTRON-SNAP") == b"PYAPPTRON-SNAP"
    synced = SyncResult(files=2, bytes=10, written_bytes=4, seconds=0.5)
    assert across(surface.BY_WIRE["persist.sync"], synced) == synced
    usage = {"store": "default", "origin": {"quota": 1}, "layers": {"home": LayerUsage(1, 2, ("/root",), None)}}
    assert across(surface.BY_WIRE["persist.usage"], usage) == usage
    damaged = across(surface.BY_WIRE["persist.damaged"], [PersistDamaged("bad", layer="home", path="/root/x")])
    assert isinstance(damaged[0], PersistDamaged) and (str(damaged[0]), damaged[0].layer, damaged[0].path) == (
        "bad", "home", "/root/x")


def test_restore_updates_resumed_from_on_the_host_proxy():
    vm, proxy = types.SimpleNamespace(resumed_from="snapshot 'x'"), types.SimpleNamespace(resumed_from=None)
    assert across(surface.BY_WIRE["restore"], None, target=vm, proxy=proxy) is None
    assert proxy.resumed_from == "snapshot 'x'"


def test_capabilities_come_back_as_the_dataclass():
    caps = pyapptron.Capabilities("i686", True, True, True, True, False)
    vm = types.SimpleNamespace(capabilities=caps, resumed_from=None, emulator="v86", image="minimal")
    info = json.loads(json.dumps(surface.machine_info(vm, 1, 0.5)))
    assert surface.capabilities_from_wire(info["capabilities"]) == caps


def test_a_console_match_reads_like_re_match_and_sets_before_after_match():
    console = Console(lambda data: None)
    console.feed(b"booting...\r\nlogin: root\r\n# rest")
    pattern = re.compile(rb"(?P<user>\w+)\r\n(#)( x)?")
    original = asyncio.run(console.wait_for(pattern))
    host_console = types.SimpleNamespace()
    m = across(surface.BY_WIRE["console.wait_for"], original, proxy=host_console)
    assert m.group(0) == original.group(0) and m.group(1, 2) == original.group(1, 2) and m["user"] == b"root"
    assert (m.start(), m.end(), m.span(2), m.start("user")) == (original.start(), original.end(),
                                                                original.span(2), original.start("user"))
    assert m.groups() == original.groups() and m.groups(b"-") == original.groups(b"-")
    assert m.groupdict() == original.groupdict() and m.re.pattern == pattern.pattern
    assert (m.lastindex, m.lastgroup) == (original.lastindex, original.lastgroup)
    assert (host_console.before, host_console.after, host_console.match) == (console.before, console.after, m)
    with pytest.raises(IndexError):
        m.group(4)


def test_a_compiled_pattern_travels_with_its_flags():
    op = surface.BY_WIRE["console.wait_for"]
    sent = _wire.decode(json.loads(json.dumps(_wire.encode(op.args_to_wire(
        {"pattern": re.compile(rb"login", re.I), "timeout": 5})))))
    received = op.args_from_wire(sent)
    assert received["pattern"].pattern == b"login" and received["pattern"].flags & re.I and received["timeout"] == 5


def test_console_requests_reach_the_machines_console_in_the_page(monkeypatch):
    sent = []
    machine = types.SimpleNamespace(console=Console(sent.append), closed=False)
    monkeypatch.setitem(remote._machines, 78, machine)
    assert handle({"op": "console.sendline", "vm": 78, "args": {"line": "ls"}}) == {"ok": None}
    assert sent == [b"ls\r"]
    machine.console.feed(b"$ ls\r\nfile\r\n$ ")
    answer = handle({"op": "console.wait_for", "vm": 78, "args": {"pattern": "file", "timeout": 1}})
    assert _wire.decode(answer["ok"])["string"] == b"$ ls\r\nfile"
    assert _wire.decode(handle({"op": "console.transcript", "vm": 78})["ok"]) == b"$ ls\r\nfile\r\n$ "


def test_a_machine_shut_down_by_a_request_is_forgotten(monkeypatch):
    class Closing:
        closed = False

        async def shutdown(self):
            self.closed = True

    monkeypatch.setitem(remote._machines, 79, Closing())
    assert handle({"op": "shutdown", "vm": 79}) == {"ok": None}
    assert handle({"op": "run", "vm": 79, "args": {"args": "true"}})["error"]["type"] == "MachineClosed"
