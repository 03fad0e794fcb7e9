"""Snapshots in real Chromium: the boot snapshot each image ships, vm.snapshot() into
IndexedDB or bytes, boot(resume=...), and what a resume must fix or refuse.

One browser profile (so one IndexedDB) and one origin for the module.
"""

from __future__ import annotations

import time

import pytest

from pyapptron.errors import SnapshotCorrupt, SnapshotMismatch, SnapshotNotFound
from pyapptron.host.browser import Browser, BrowserConfig, RemoteSession
from pyapptron.host.server import PageServer

pytestmark = pytest.mark.browser

PROMPT = rb"root@pyapptron[^\r\n]*# "


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with PageServer() as server, Browser(BrowserConfig(profile_dir=str(tmp_path_factory.mktemp("profile")))) as b:
        yield RemoteSession(b, server.url)


@pytest.fixture(scope="module")
def resumed(session):
    """A minimal VM resumed from the image's boot snapshot (the default boot)."""
    vm = session.boot("v86", "minimal")
    yield vm
    vm.shutdown()


def test_default_boot_resumes_the_shipped_snapshot_and_answers_at_once(resumed):
    assert resumed.resumed_from == "boot snapshot of image 'minimal'"
    assert resumed.capabilities.snapshot is True
    r = resumed.run("uname -m")
    assert (r.returncode, r.stdout) == (0, b"i686\n")
    # The terminal shows the prompt the snapshot was taken at, and typing reaches the shell.
    resumed.console.wait_for(PROMPT, timeout=5)
    resumed.console.sendline("echo typed-$((6*7))")
    resumed.console.wait_for(rb"typed-42", timeout=10)


def test_resumed_guest_clock_is_the_hosts_not_the_snapshots(resumed):
    # The shipped snapshot was made when the assets were built, maybe days ago.
    guest = int(resumed.run("date +%s").stdout)
    assert abs(guest - time.time()) < 30


def test_two_vms_resumed_from_one_snapshot_get_different_random_bytes(session, resumed):
    other = session.boot("v86", "minimal")
    try:
        assert other.resumed_from == resumed.resumed_from
        cmd = "head -c 32 /dev/urandom | od -An -tx1"
        first, second = resumed.run(cmd).stdout, other.run(cmd).stdout
        assert len(first.split()) == 32 and first != second
    finally:
        other.shutdown()


def test_snapshot_then_change_then_resume_brings_the_earlier_state_back(session, resumed):
    resumed.run("echo before > /tmp/state; echo kept > /root/in-9p-tree; sleep 1000 & echo $! > /tmp/sleeper")
    data = resumed.snapshot(to_bytes=True)
    resumed.run("echo after > /tmp/state; rm /root/in-9p-tree")
    vm = session.boot("v86", "minimal", resume=data)
    try:
        assert vm.resumed_from == "the snapshot (bytes)"
        assert vm.read_file("/tmp/state") == b"before\n"  # RAM
        assert vm.read_file("/root/in-9p-tree") == b"kept\n"  # v86's 9p tree is in the state too
        assert vm.run("kill -0 $(cat /tmp/sleeper)").returncode == 0  # and its processes
    finally:
        vm.shutdown()
    assert resumed.read_file("/tmp/state") == b"after\n"  # the original machine is untouched


def test_named_snapshots_are_kept_in_indexeddb_listed_resumed_and_deleted(session, resumed):
    resumed.run("echo named > /tmp/which")
    info = resumed.snapshot("t-named")
    assert (info.name, info.image, info.memory_mib) == ("t-named", "minimal", 128)
    assert 0 < info.size < info.state_bytes  # compressed
    listed = session.python("result = [s.name for s in await pyapptron.snapshots.list()]")
    assert "t-named" in listed
    vm = session.boot("v86", "minimal", resume="t-named")
    try:
        assert vm.read_file("/tmp/which") == b"named\n"
    finally:
        vm.shutdown()
    session.python("await pyapptron.snapshots.delete('t-named')")
    with pytest.raises(SnapshotNotFound, match="no snapshot 't-named'.*snapshots.list"):
        session.boot("v86", "minimal", resume="t-named")


def test_a_snapshot_from_another_configuration_is_refused_with_the_reason(session, resumed):
    data = resumed.snapshot(to_bytes=True)
    with pytest.raises(SnapshotMismatch, match="memory_mib: snapshot 128, this boot 256"):
        session.boot("v86", "minimal", memory_mib=256, resume=data)
    with pytest.raises(SnapshotMismatch, match="image: snapshot 'minimal', this boot 'agent'"):
        session.boot("v86", "agent", resume=data)


def test_a_corrupt_snapshot_is_refused_and_a_cold_boot_still_works(session, resumed):
    data = bytearray(resumed.snapshot(to_bytes=True))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    with pytest.raises(SnapshotCorrupt, match="cannot be resumed: its state does not decompress"):
        session.boot("v86", "minimal", resume=bytes(data))
    with pytest.raises(SnapshotCorrupt, match="not a pyapptron snapshot"):
        session.boot("v86", "minimal", resume=b"hello")
    vm = session.boot("v86", "minimal", cold=True)
    try:
        assert vm.resumed_from is None
        assert vm.run("true").returncode == 0
    finally:
        vm.shutdown()


def test_persisted_files_after_a_resume_come_from_the_store_not_the_snapshot(session):
    vm = session.boot("v86", "minimal", persist="snap-min")
    vm.run("echo old > /persist/a; echo soon-gone > /persist/gone; echo in-ram > /tmp/ram")
    data = vm.snapshot(to_bytes=True)  # syncs the store first
    vm.run("echo new > /persist/a; rm /persist/gone; echo added > /persist/added")
    vm.persist.sync()
    vm.shutdown()
    vm = session.boot("v86", "minimal", persist="snap-min", resume=data)
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


def test_restore_in_place_goes_back_keeps_the_console_and_takes_layers_from_the_store(session):
    vm = session.boot("v86", "minimal", persist="snap-restore")
    try:
        vm.run("echo one > /tmp/state; echo p1 > /persist/p")
        vm.snapshot("t-restore")
        vm.run("echo two > /tmp/state; echo p2 > /persist/p")  # not synced yet: restore syncs first
        vm.restore("t-restore")
        assert vm.resumed_from == "snapshot 't-restore'"
        assert vm.run("cat /tmp/state /persist/p").stdout == b"one\np2\n"
        vm.console.sendline("echo after-restore-$((6*7))")
        vm.console.wait_for(rb"after-restore-42", timeout=10)
    finally:
        vm.shutdown()
        session.python("await pyapptron.snapshots.delete('t-restore')")
