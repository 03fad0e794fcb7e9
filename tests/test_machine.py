"""Unit tests (CPython) of Machine's logic over a scripted backend: timeouts, cancellation, shutdown."""

import asyncio
import struct

import pytest

from pyapptron import agent as A
from pyapptron.errors import BootError, InvalidOption, MachineClosed, NotSupported, SnapshotCorrupt, TimeoutExpired
from pyapptron import errors as pyapptron_errors
from pyapptron import snapshots
from pyapptron.testing import ScriptedBackend, exits
from pyapptron.testing import scripted_machine as booted


def test_boot_that_never_gets_ready_raises_boot_error_and_releases_the_emulator():
    backend = ScriptedBackend(hello=False)

    async def main():
        with pytest.raises(BootError, match="not ready within 0.05 s.*login# "):
            await booted(backend, timeout=0.05)
    asyncio.run(main())
    assert backend.stopped


def test_a_guest_that_reports_a_failed_boot_fails_boot_at_once_with_its_reason():
    class FailingGuest(ScriptedBackend):
        async def start(self, on_console, on_agent, resume=None):
            await super().start(on_console, on_agent, resume)
            # in two chunks, as a console batches it: the reason is the whole line
            on_console(b"\r\npyapptron: boot failed: cannot mount the ")
            await asyncio.sleep(0)
            on_console(b"root file system 'x'\r\n# ")

    backend = FailingGuest(hello=False)

    async def main():
        started = asyncio.get_running_loop().time()
        with pytest.raises(BootError, match="the guest could not boot: cannot mount the root file system 'x'$"):
            await booted(backend, timeout=30)
        assert asyncio.get_running_loop().time() - started < 5  # not the boot timeout
    asyncio.run(main())
    assert backend.stopped


def test_run_timeout_kills_and_reports_partial_output(caplog):
    backend = ScriptedBackend(exits(None, b"partial"))

    async def main():
        vm = await booted(backend)
        with pytest.raises(TimeoutExpired) as info:
            await vm.run("sleep 100", timeout=0.05)
        assert info.value.stdout == b"partial" and info.value.timeout == 0.05
        assert backend.signals  # SIGNAL 9 went to the guest
    asyncio.run(main())
    assert not [r for r in caplog.records if r.name == "pyapptron.exec_strategy"]  # the kill worked: nothing to say


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


def test_a_timeout_on_a_wedged_channel_still_returns_and_logs_that_the_kill_failed(caplog):
    class Wedged(ScriptedBackend):
        def write_agent(self, chunk):
            pass  # never returns credit, never answers

    backend = Wedged()

    async def main():
        vm = await booted(backend)
        import pyapptron.exec_strategy as M
        M.KILL_GRACE_S, saved = 0.05, M.KILL_GRACE_S
        try:
            for _ in range(16):  # use up the window so SIGNAL would wait for credit forever
                asyncio.ensure_future(vm.run("x"))
            with pytest.raises(TimeoutExpired):
                await asyncio.wait_for(vm.run("sleep 100", timeout=0.05), 2)
        finally:
            M.KILL_GRACE_S = saved
    asyncio.run(main())
    [record] = [r for r in caplog.records if r.name == "pyapptron.exec_strategy"]
    assert record.levelname == "WARNING"
    assert "sending SIGKILL to the guest command (agent request " in record.getMessage()
    assert "may still be running" in record.getMessage()


def test_a_killed_command_whose_exit_never_comes_is_logged_with_what_was_tried(caplog):
    backend = ScriptedBackend(exits(None), exit_on_signal=False)

    async def main():
        vm = await booted(backend)
        import pyapptron.exec_strategy as M
        M.KILL_GRACE_S, saved = 0.05, M.KILL_GRACE_S
        try:
            with pytest.raises(TimeoutExpired):
                await vm.run("sleep 100", timeout=0.05)
        finally:
            M.KILL_GRACE_S = saved
        assert backend.signals
    asyncio.run(main())
    [record] = [r for r in caplog.records if r.name == "pyapptron.exec_strategy"]
    assert "waiting for the exit of the guest command" in record.getMessage()
    assert "TimeoutError" in record.getMessage() and "may still be running" in record.getMessage()


# -- resume and snapshot --------------------------------------------------------------

def _resume(fallback_cold=False):
    import base64
    meta = {"format": 1, "binding": {"emulator": "scripted"}, "console_tail": base64.b64encode(b"root# ").decode()}
    return snapshots.Resume("snapshot 'x'", meta, b"payload", fallback_cold=fallback_cold)


def _exec_argv(frame):
    payload = frame.payload
    (argc,) = struct.unpack_from("<I", payload, 4)
    offset, argv = 8, []
    for _ in range(argc):
        value, offset = A.decode_str(payload, offset)
        argv.append(value.decode())
    return argv


def test_resume_says_hello_to_the_agent_then_sets_clock_and_entropy_before_returning():
    import time
    backend = ScriptedBackend(exits(0))

    async def main():
        vm = await booted(backend, resume=_resume())
        return vm
    before = time.time()
    vm = asyncio.run(main())
    assert backend.resumed and vm.resumed_from == "snapshot 'x'"
    assert backend.frames[0].type == A.T_HELLO  # the resumed agent talked to another host
    execs = [f for f in backend.frames if f.type == A.T_EXEC]
    argv = _exec_argv(execs[0])
    assert argv[:2] == ["pyapptron-agent", "--resumed"]
    assert before - 1 <= float(argv[2]) <= time.time() + 1  # the host's clock, not the snapshot's
    stdin = b"".join(f.payload for f in backend.frames if f.type == A.T_STDIN and f.id == execs[0].id)
    assert len(stdin) == 512  # fresh entropy for this machine alone
    assert vm.console.transcript == b"root# "  # the terminal shows what it showed when saved


def test_damaged_boot_snapshot_warns_and_boots_cold():
    backend = ScriptedBackend(exits(0), damaged_snapshot=True)
    with pytest.warns(RuntimeWarning, match="damaged.*booting cold"):
        vm = asyncio.run(booted(backend, resume=_resume(fallback_cold=True)))
    assert backend.starts == 2 and vm.resumed_from is None
    assert vm.console.transcript == b"login# "


def test_damaged_chosen_snapshot_raises_snapshot_corrupt_and_stops_the_emulator():
    backend = ScriptedBackend(exits(0), damaged_snapshot=True)
    with pytest.raises(SnapshotCorrupt, match="snapshot 'x' cannot be resumed.*cold=True"):
        asyncio.run(booted(backend, resume=_resume()))
    assert backend.stopped


def test_snapshot_to_bytes_carries_the_binding_and_the_console():
    backend = ScriptedBackend(exits(0))

    async def main():
        vm = await booted(backend)
        return await vm.snapshot(to_bytes=True)
    meta, payload = snapshots.unpack(asyncio.run(main()))
    assert bytes(payload) == b"STATE"
    assert meta["binding"] == backend.snapshot_binding() and meta["state_bytes"] == 1000
    assert meta["console_tail"]  # b"login# "
    execs = [_exec_argv(f) for f in backend.frames if f.type == A.T_EXEC]
    assert ["sync"] in execs  # what the guest wrote is in the state, not in flight


def test_snapshot_refuses_a_name_and_to_bytes_together_and_bad_names():
    backend = ScriptedBackend(exits(0))

    async def main():
        vm = await booted(backend)
        with pytest.raises(InvalidOption, match="not both"):
            await vm.snapshot("a", to_bytes=True)
        with pytest.raises(InvalidOption, match="snapshot name"):
            await vm.snapshot("a/b")
    asyncio.run(main())


def test_snapshot_needs_the_capability():
    backend = ScriptedBackend(exec_capable=False)

    async def main():
        vm = await booted(backend)
        with pytest.raises(NotSupported, match="snapshot"):
            await vm.snapshot(to_bytes=True)
    asyncio.run(main())


def test_restore_in_place_fails_running_commands_and_fixes_up_the_restored_guest():
    from pyapptron.errors import AgentError
    backend = ScriptedBackend(exits(None))  # commands never finish on their own

    async def main():
        vm = await booted(backend)
        data = snapshots.pack({"format": 1, "binding": backend.snapshot_binding(), "console_tail": ""}, b"P")
        running = asyncio.ensure_future(vm.run("sleep 100"))
        await asyncio.sleep(0.05)
        backend.answer = exits(0)
        hellos = sum(f.type == A.T_HELLO for f in backend.frames)
        await vm.restore(data)
        with pytest.raises(AgentError, match="restored to the snapshot"):
            await running
        assert sum(f.type == A.T_HELLO for f in backend.frames) == hellos + 1
        assert _exec_argv([f for f in backend.frames if f.type == A.T_EXEC][-1])[:2] == ["pyapptron-agent", "--resumed"]
        assert vm.resumed_from == "the snapshot (bytes)"
        assert (await vm.run("true")).returncode == 0
        with pytest.raises(pyapptron_errors.SnapshotMismatch):
            await vm.restore(snapshots.pack({"format": 1, "binding": {"image": "other"}}, b"P"))
    asyncio.run(main())
