"""Unit tests (CPython): requests into pyapptron.remote and typed errors back out to the host."""

import asyncio
import json

import pytest

import pyapptron
from pyapptron import _wire, remote
from pyapptron.errors import TimeoutExpired, guest_os_error
from pyapptron.host.browser import _raise


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


def test_unknown_ops_and_machines_are_typed_errors():
    assert handle({"op": "fly"})["error"]["type"] == "InvalidOption"
    assert handle({"op": "run", "vm": 999, "args": {"args": "true"}})["error"]["type"] == "MachineClosed"
