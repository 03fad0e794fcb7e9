"""Snapshots in real Chromium: the boot snapshot each image ships, vm.snapshot() into
IndexedDB or bytes, boot(resume=...), and what a resume must fix or refuse.

One browser profile (so one IndexedDB) and one origin for the module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from pyapptron.errors import SnapshotCorrupt, SnapshotMismatch, SnapshotNotFound
from pyapptron.host.browser import Browser, BrowserConfig, RemoteSession
from pyapptron.host.server import PageServer

pytestmark = pytest.mark.browser

PROMPT = rb"root@pyapptron[^\r\n]*# "


@dataclass(frozen=True)
class Engine:
    """What the shared snapshot tests need to know of one engine's small image."""

    emulator: str
    image: str
    arch: bytes  # uname -m
    memory_mib: int  # the image's default
    other_image: str  # another image of the same engine
    prompt: bytes

    def __str__(self) -> str:
        return f"{self.emulator}-{self.image}"


ENGINES = [Engine("v86", "minimal", b"i686", 128, "agent", PROMPT),
           Engine("c2w", "debian-x86_64", b"x86_64", 256, "agent-x86_64", rb"guest64:~# ")]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with PageServer() as server, Browser(BrowserConfig(profile_dir=str(tmp_path_factory.mktemp("profile")))) as b:
        yield RemoteSession(b, server.url)


@pytest.fixture(scope="module", params=ENGINES, ids=str)
def engine(request) -> Engine:
    return request.param


@pytest.fixture(scope="module")
def resumed(session, engine):
    """A VM of the engine's small image resumed from its boot snapshot (the default boot)."""
    vm = session.boot(engine.emulator, engine.image)
    yield vm
    vm.shutdown()


def test_default_boot_resumes_the_shipped_snapshot_and_answers_at_once(engine, resumed):
    assert resumed.resumed_from == f"boot snapshot of image {engine.image!r}"
    assert resumed.capabilities.snapshot is True
    r = resumed.run("uname -m")
    assert (r.returncode, r.stdout) == (0, engine.arch + b"\n")
    # The terminal shows the prompt the snapshot was taken at, and typing reaches the shell.
    resumed.console.wait_for(engine.prompt, timeout=5)
    resumed.console.sendline("echo typed-$((6*7))")
    resumed.console.wait_for(rb"typed-42", timeout=30)


def test_resumed_guest_clock_is_the_hosts_not_the_snapshots(resumed):
    # The shipped snapshot was made when the assets were built, maybe days ago.
    guest = int(resumed.run("date +%s").stdout)
    assert abs(guest - time.time()) < 30


def test_two_vms_resumed_from_one_snapshot_get_different_random_bytes(session, engine, resumed):
    other = session.boot(engine.emulator, engine.image)
    try:
        assert other.resumed_from == resumed.resumed_from
        cmd = "head -c 32 /dev/urandom | od -An -tx1"
        first, second = resumed.run(cmd).stdout, other.run(cmd).stdout
        assert len(first.split()) == 32 and first != second
    finally:
        other.shutdown()


def test_snapshot_then_change_then_resume_brings_the_earlier_state_back(session, engine, resumed):
    resumed.run("echo before > /tmp/state; echo kept > /root/kept; sleep 1000 & echo $! > /tmp/sleeper")
    data = resumed.snapshot(to_bytes=True)
    resumed.run("echo after > /tmp/state; rm /root/kept")
    vm = session.boot(engine.emulator, engine.image, resume=data)
    try:
        assert vm.resumed_from == "the snapshot (bytes)"
        assert vm.read_file("/tmp/state") == b"before\n"  # RAM
        assert vm.read_file("/root/kept") == b"kept\n"  # its files (v86: the 9p tree, in the state too)
        assert vm.run("kill -0 $(cat /tmp/sleeper)").returncode == 0  # and its processes
    finally:
        vm.shutdown()
    assert resumed.read_file("/tmp/state") == b"after\n"  # the original machine is untouched


def test_named_snapshots_are_kept_in_indexeddb_listed_resumed_and_deleted(session, engine, resumed):
    name = f"t-named-{engine}"
    resumed.run("echo named > /tmp/which")
    info = resumed.snapshot(name)
    assert (info.name, info.image, info.memory_mib) == (name, engine.image, engine.memory_mib)
    assert 0 < info.size < info.state_bytes  # compressed
    listed = session.python("result = [s.name for s in await pyapptron.snapshots.list()]")
    assert name in listed
    vm = session.boot(engine.emulator, engine.image, resume=name)
    try:
        assert vm.read_file("/tmp/which") == b"named\n"
    finally:
        vm.shutdown()
    session.python(f"await pyapptron.snapshots.delete({name!r})")
    with pytest.raises(SnapshotNotFound, match=f"no snapshot {name!r}.*snapshots.list"):
        session.boot(engine.emulator, engine.image, resume=name)


def test_a_snapshot_from_another_configuration_is_refused_with_the_reason(session, engine, resumed):
    data = resumed.snapshot(to_bytes=True)
    other_memory = engine.memory_mib * 2
    with pytest.raises(SnapshotMismatch, match=f"memory_mib: snapshot {engine.memory_mib}, this boot {other_memory}"):
        session.boot(engine.emulator, engine.image, memory_mib=other_memory, resume=data)
    with pytest.raises(SnapshotMismatch, match=f"image: snapshot {engine.image!r}, this boot {engine.other_image!r}"):
        session.boot(engine.emulator, engine.other_image, resume=data)
    other = next(e for e in ENGINES if e.emulator != engine.emulator)
    with pytest.raises(SnapshotMismatch, match=f"emulator: snapshot {engine.emulator!r}, this boot {other.emulator!r}"):
        session.boot(other.emulator, other.image, resume=data)


def test_a_corrupt_snapshot_is_refused_and_a_cold_boot_still_works(session, engine, resumed):
    data = bytearray(resumed.snapshot(to_bytes=True))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    with pytest.raises(SnapshotCorrupt, match="cannot be resumed: its state does not decompress"):
        session.boot(engine.emulator, engine.image, resume=bytes(data))
    with pytest.raises(SnapshotCorrupt, match="not a pyapptron snapshot"):
        session.boot(engine.emulator, engine.image, resume=b"hello")
    vm = session.boot(engine.emulator, engine.image, cold=True)
    try:
        assert vm.resumed_from is None
        assert vm.run("true").returncode == 0
    finally:
        vm.shutdown()


def test_restore_in_place_goes_back_and_keeps_the_console(engine, resumed):
    name = f"t-restore-{engine}"
    resumed.run("echo one > /tmp/state")
    resumed.snapshot(name)
    resumed.run("echo two > /tmp/state")
    try:
        resumed.restore(name)
        assert resumed.resumed_from == f"snapshot {name!r}"
        assert resumed.run("cat /tmp/state").stdout == b"one\n"
        resumed.console.sendline("echo after-restore-$((6*7))")
        resumed.console.wait_for(rb"after-restore-42", timeout=30)
    finally:
        resumed.session.python(f"await pyapptron.snapshots.delete({name!r})")


def test_persisted_files_after_a_resume_come_from_the_store_not_the_snapshot(session, engine):
    store = f"snap-min-{engine.emulator}"
    vm = session.boot(engine.emulator, engine.image, persist=store)
    vm.run("echo old > /persist/a; echo soon-gone > /persist/gone; echo in-ram > /tmp/ram")
    data = vm.snapshot(to_bytes=True)  # syncs the store first
    vm.run("echo new > /persist/a; rm /persist/gone; echo added > /persist/added")
    vm.persist.sync()
    vm.shutdown()
    vm = session.boot(engine.emulator, engine.image, persist=store, resume=data)
    try:
        assert vm.read_file("/tmp/ram") == b"in-ram\n"  # the snapshot's machine...
        assert vm.run("cat /persist/a /persist/added; ls /persist").stdout == b"new\nadded\na\nadded\n"  # ...the store's files
    finally:
        vm.shutdown()


def test_agent_image_resumes_by_default_and_its_cached_root_shows_the_store(session):
    vm = session.boot("v86", "agent", persist="snap-agent")
    try:
        assert vm.resumed_from == "boot snapshot of image 'agent'"
        r = vm.run("uname -m; zsh -c 'echo $ZSH_VERSION'")
        assert r.returncode == 0 and r.stdout.startswith(b"i686\n5.")
        vm.run("echo v1 > /persist/x")
        data = vm.snapshot(to_bytes=True)
        vm.run("echo v2 > /persist/x")
        vm.persist.sync()
    finally:
        vm.shutdown()
    vm = session.boot("v86", "agent", persist="snap-agent", resume=data)
    try:
        # The guest had /persist/x (v1) cached on its 9p root (cache=loose): it must read v2.
        assert vm.run(["cat", "/persist/x"]).stdout == b"v2\n"
    finally:
        vm.shutdown()


def test_restore_in_place_goes_back_keeps_the_console_and_takes_layers_from_the_store(session, engine):
    vm = session.boot(engine.emulator, engine.image, persist=f"snap-restore-{engine.emulator}")
    try:
        vm.run("echo one > /tmp/state; echo p1 > /persist/p")
        vm.snapshot("t-restore")
        vm.run("echo two > /tmp/state; echo p2 > /persist/p")  # not synced yet: restore syncs first
        vm.restore("t-restore")
        assert vm.resumed_from == "snapshot 't-restore'"
        assert vm.run("cat /tmp/state /persist/p").stdout == b"one\np2\n"
        vm.console.sendline("echo after-restore-$((6*7))")
        vm.console.wait_for(rb"after-restore-42", timeout=30)
    finally:
        vm.shutdown()
        session.python("await pyapptron.snapshots.delete('t-restore')")
