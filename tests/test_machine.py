"""Unit tests (CPython) of Machine's logic over a scripted backend: timeouts, cancellation, shutdown."""

import asyncio
import struct

import pytest

from pyapptron import agent as A
from pyapptron.backends import Backend, Capabilities
from pyapptron.errors import BootError, MachineClosed, NotSupported, TimeoutExpired
from pyapptron.machine import Machine


class ScriptedBackend(Backend):
    """A backend whose 'guest' is a Python function answering agent frames."""

    name = "scripted"

    def __init__(self, answer=None, hello=True, exec_capable=True):
        self.capabilities = Capabilities("i686", exec_capable, exec_capable, True, False, False)
        self.answer = answer
        self.hello = hello
        self.decoder = A.FrameDecoder()
        self.stopped = False
        self.signals = []

    async def start(self, on_console, on_agent):
        self.on_agent = on_agent
        on_console(b"login# ")
        if self.hello:
            on_agent(A.encode_frame(A.T_HELLO, 0, struct.pack("<III", 1, 15, 4096)))

    def write_console(self, data):
        pass

    def write_agent(self, chunk):
        for frame in self.decoder.feed(chunk):
            loop = asyncio.get_running_loop()
            loop.call_soon(self.on_agent, A.encode_frame(A.T_WINDOW, 0, struct.pack("<I", 1)))
            if frame.type == A.T_SIGNAL:
                self.signals.append(frame.id)
                loop.call_soon(self.on_agent, A.encode_frame(A.T_EXIT, frame.id, struct.pack("<i", -9)))
            elif self.answer:
                for reply in self.answer(frame):
                    loop.call_soon(self.on_agent, reply)

    async def stop(self):
        self.stopped = True


def exits(status, out=b""):
    def answer(frame):
        if frame.type == A.T_EXEC:
            if out:
                yield A.encode_frame(A.T_STDOUT, frame.id, out)
            if status is not None:
                yield A.encode_frame(A.T_EXIT, frame.id, struct.pack("<i", status))
    return answer


async def booted(backend, timeout=1.0):
    vm = Machine(backend, emulator="scripted", image="test")
    await vm._start(timeout)
    return vm


def test_boot_that_never_gets_ready_raises_boot_error_and_releases_the_emulator():
    backend = ScriptedBackend(hello=False)

    async def main():
        with pytest.raises(BootError, match="not ready within 0.05 s.*login# "):
            await booted(backend, timeout=0.05)
    asyncio.run(main())
    assert backend.stopped


def test_run_timeout_kills_and_reports_partial_output():
    backend = ScriptedBackend(exits(None, b"partial"))

    async def main():
        vm = await booted(backend)
        with pytest.raises(TimeoutExpired) as info:
            await vm.run("sleep 100", timeout=0.05)
        assert info.value.stdout == b"partial" and info.value.timeout == 0.05
        assert backend.signals  # SIGNAL 9 went to the guest
    asyncio.run(main())


def test_cancelling_a_run_kills_the_guest_command():
    backend = ScriptedBackend(exits(None))

    async def main():
        vm = await booted(backend)
        task = asyncio.ensure_future(vm.run("sleep 100"))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert backend.signals
    asyncio.run(main())


def test_shutdown_fails_runs_in_flight_and_later_calls_say_machine_closed():
    backend = ScriptedBackend(exits(None))

    async def main():
        vm = await booted(backend)
        task = asyncio.ensure_future(vm.run("sleep 100"))
        await asyncio.sleep(0.02)
        async with vm:
            pass
        with pytest.raises(MachineClosed):
            await task
        with pytest.raises(MachineClosed, match="boot a new one"):
            await vm.run("true")
        await vm.shutdown()  # twice is fine
    asyncio.run(main())
    assert backend.stopped


def test_text_and_check_follow_subprocess():
    backend = ScriptedBackend(exits(0, "héllo\n".encode()))

    async def main():
        vm = await booted(backend)
        r = await vm.run(["echo"], text=True)
        assert (r.args, r.returncode, r.stdout, r.stderr) == (["echo"], 0, "héllo\n", "")
        assert "exit" in r._repr_html_()
    asyncio.run(main())


def test_a_machine_without_an_agent_refuses_exec_clearly():
    backend = ScriptedBackend(exec_capable=False)

    async def main():
        vm = await booted(backend)
        with pytest.raises(NotSupported, match="no exec capability"):
            await vm.run("true")
    asyncio.run(main())


def test_a_timeout_on_a_wedged_channel_still_returns():
    class Wedged(ScriptedBackend):
        def write_agent(self, chunk):
            pass  # never returns credit, never answers

    backend = Wedged()

    async def main():
        vm = await booted(backend)
        import pyapptron.machine as M
        M.KILL_GRACE_S, saved = 0.05, M.KILL_GRACE_S
        try:
            for _ in range(16):  # use up the window so SIGNAL would wait for credit forever
                asyncio.ensure_future(vm.run("x"))
            with pytest.raises(TimeoutExpired):
                await asyncio.wait_for(vm.run("sleep 100", timeout=0.05), 2)
        finally:
            M.KILL_GRACE_S = saved
    asyncio.run(main())
