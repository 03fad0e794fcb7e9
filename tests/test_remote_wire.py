"""Unit tests (CPython): requests into pyapptron.remote and typed errors back out to the host."""

import asyncio
import json
import time
from types import SimpleNamespace

import pytest

import pyapptron
from pyapptron import _wire, remote
from pyapptron.console import Console
from pyapptron.errors import TimeoutExpired, WaitTimeout, guest_os_error
from pyapptron.host.browser import RemoteMachine, _raise


def handle(request: dict) -> dict:
    return json.loads(asyncio.run(remote.handle(json.dumps(request))))


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
        _raise(answer["error"])


def test_timeout_expired_keeps_the_partial_output_across_the_wire():
    exc = TimeoutExpired("sleep 9", 1.5, b"partial\x00", b"err")
    answer = remote._error(exc)
    with pytest.raises(TimeoutExpired) as info:
        _raise(json.loads(json.dumps(answer)))
    assert (info.value.stdout, info.value.stderr, info.value.timeout) == (b"partial\x00", b"err", 1.5)


def test_guest_errors_keep_their_linux_errno_meaning():
    answer = remote._error(guest_os_error(2, "No such file or directory", "/nope"))
    with pytest.raises(FileNotFoundError) as info:
        _raise(json.loads(json.dumps(answer)))
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


def test_wait_quiet_is_one_request_the_page_answers_once_the_console_stops_printing():
    vm = SimpleNamespace(console=Console(lambda b: None))
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
            request = {"op": "wait_quiet", "vm": 777, "args": {"seconds": seconds, "timeout": timeout}}
            return json.loads(await remote.handle(json.dumps(request))), fed

        answer, fed = asyncio.run(chatter(0.3, seconds=0.2, timeout=5))
        assert answer == {"ok": None} and time.monotonic() - fed[-1] >= 0.2
        answer, _ = asyncio.run(chatter(5, seconds=0.2, timeout=0.3))
        with pytest.raises(WaitTimeout, match="tick"):
            _raise(answer["error"])

        # The host's RemoteConsole asks for exactly that op, with the arguments Console takes.
        class Session:
            def request(self, op, vm=None, **args):
                answer = json.loads(asyncio.run(remote.handle(json.dumps(
                    {"op": op, "vm": vm, "args": _wire.encode(args)}))))
                if "error" in answer:
                    _raise(answer["error"])
                return _wire.decode(answer["ok"])

        RemoteMachine(Session(), 777, {}).console.wait_quiet(0.05, timeout=5)
    finally:
        del remote._machines[777]
