"""Unit tests (CPython) of snapshots' pure logic: the byte format, names, what a
snapshot is bound to, and boot()'s resume/cold options."""

import asyncio

import pytest

import pyapptron
from pyapptron import snapshots
from pyapptron.assets import Assets
from pyapptron.backends.v86 import V86Backend
from pyapptron.errors import InvalidOption, SnapshotCorrupt, SnapshotMismatch
from pyapptron.persist import Persist

META = {"format": 1, "binding": {"emulator": "v86", "image": "minimal", "memory_mib": 128}}


def test_pack_and_unpack_round_trip():
    meta, payload = snapshots.unpack(snapshots.pack(META, b"\x1f\x8bstate"))
    assert meta == META and bytes(payload) == b"\x1f\x8bstate"


@pytest.mark.parametrize("data, match", [
    (b"", "not a pyapptron snapshot"),
    (b"PK\x03\x04" + b"\0" * 40, "not a pyapptron snapshot"),
    (snapshots.MAGIC + b"\xff\xff\xff\x00" + b"{}", "length is out of range"),
    (snapshots.MAGIC + b"\x03\x00\x00\x00{x}", "header is damaged"),
    (snapshots.pack({"format": 99, "binding": {}}, b""), "not format 1"),
])
def test_bytes_that_are_not_a_snapshot_are_refused_as_corrupt(data, match):
    with pytest.raises(SnapshotCorrupt, match=match):
        snapshots.unpack(data)


@pytest.mark.parametrize("name", ["", " x", "a/b", "tab\there", "x" * 201, 3, None])
def test_bad_snapshot_names_are_refused(name):
    with pytest.raises(InvalidOption, match="snapshot name"):
        snapshots.check_name(name)


def test_a_mismatch_names_what_differs():
    made = {"emulator": "v86", "image": "minimal", "memory_mib": 128, "config": "a"}
    assert snapshots.mismatch(made, dict(made)) is None
    why = snapshots.mismatch(made, {**made, "memory_mib": 256, "config": "b"})
    assert "memory_mib: snapshot 128, this boot 256" in why
    assert "assets were rebuilt" in why
    with pytest.raises(SnapshotMismatch, match="snapshot 'x' cannot resume here: image: snapshot 'minimal', "
                                               "this boot 'agent'.*cold=True"):
        snapshots.check_binding({"binding": made}, {**made, "image": "agent"}, "snapshot 'x'")


FILES = ["v86/libv86.mjs", "v86/v86.wasm", "bios/seabios.bin", "bios/vgabios.bin",
         "images/minimal/bzImage", "images/minimal/initrd.img"]
SPEC = {"name": "minimal", "kernel": "bzImage", "initrd": "initrd.img", "cmdline": "console=ttyS0",
        "memory_mib": 128, "agent": "virtio-console0"}


def binding(base="http://h/assets/", sha=None, **kwargs):
    files = {p: {"sha256": (sha or {}).get(p, "0" * 64)} for p in FILES}
    index = {"files": files, "versions": {"npm": {"v86": "0.5.462"}}}
    return V86Backend(Assets(base, index), dict(SPEC), **kwargs).snapshot_binding()


def test_binding_follows_the_machine_not_where_it_is_served_or_what_it_persists():
    first = binding()
    assert first["emulator_version"] == "0.5.462" and first["image"] == "minimal"
    assert binding(base="http://127.0.0.1:9999/other/") == first  # the origin is not the machine
    assert binding(persist=Persist()) == first  # persisted paths are bound at resume, not in the state
    assert binding(memory_mib=256)["memory_mib"] == 256
    assert binding(cmdline_extra="debug")["cmdline"] == (
        "console=ttyS0 memmap=4M$0x7800000 pyapptron.agent=hostchan@0x7800000,0xfd000000:/dev/hvc0 debug")
    rebuilt = binding(sha={"images/minimal/initrd.img": "1" * 64})
    assert rebuilt["config"] != first["config"]  # a rebuilt initrd makes old snapshots stale


def test_v86_resume_fixups_follow_the_image_and_persist():
    assets = Assets("http://h/", {"files": {p: {} for p in FILES}})
    assert V86Backend(assets, dict(SPEC)).resume_fixups() == ([], None)
    # default layers: the minimal image's init binds them on every boot, so a snapshot has them
    assert V86Backend(assets, dict(SPEC), persist=Persist()).resume_fixups() == ([], None)
    flags, shell = V86Backend(assets, dict(SPEC), persist=Persist(paths={"work": "/srv/work"})).resume_fixups()
    assert flags == [] and "mount --bind \"/mnt/host$d\"" in shell and "/srv/work" in shell
    rooted = {**SPEC, "name": "agent", "rootfs": {"basefs": "fs.json.gz", "baseurl": "fs/"}}
    assert V86Backend(assets, rooted, persist=Persist()).resume_fixups() == (["--drop-caches"], None)


def test_v86_resume_with_a_network_renews_the_lease_after_the_persisted_binds():
    from pyapptron.network import Network

    assets = Assets("http://h/", {"files": {p: {} for p in FILES}})
    net = Network(internet=False, relay="wisp://127.0.0.1:1/s/")
    flags, shell = V86Backend(assets, dict(SPEC), network=net).resume_fixups()
    assert flags == [] and shell.startswith("{ ! command -v udhcpc >/dev/null || udhcpc -i eth0 -q -n -t 5")
    flags, shell = V86Backend(assets, dict(SPEC), network=net,
                              persist=Persist(paths={"work": "/srv/work"})).resume_fixups()
    assert shell.index("mount --bind") < shell.index("udhcpc") and " && " in shell


@pytest.mark.parametrize("kwargs, match", [
    ({"cold": True, "resume": "x"}, "contradict"),
    ({"cold": "yes"}, "cold must be True or False"),
    ({"resume": 3}, "resume must be a snapshot name"),
])
def test_bad_resume_options_raise_invalid_option(kwargs, match):
    with pytest.raises(InvalidOption, match=match):
        asyncio.run(pyapptron.boot("v86", **kwargs))


def test_snapshot_info_from_meta():
    info = snapshots.SnapshotInfo.from_meta({**META, "created": 5, "state_bytes": 9, "name": "n"}, 3)
    assert (info.name, info.image, info.memory_mib, info.size, info.state_bytes) == ("n", "minimal", 128, 3, 9)
    assert snapshots.default_name("agent", now=0) == "agent-19700101-000000"


def _backend():
    files = {p: {"sha256": "0" * 64} for p in FILES + ["images/minimal/boot.snapshot"]}
    return V86Backend(Assets("http://h/assets/", {"files": files, "versions": {}}), dict(SPEC))


def test_an_image_without_a_boot_snapshot_boots_cold_with_a_warning():
    backend = _backend()
    with pytest.warns(RuntimeWarning, match="boot snapshot of image 'minimal' cannot be used.*booting cold"):
        assert asyncio.run(snapshots.shipped(backend, backend.assets, dict(SPEC))) is None


def test_a_stale_or_damaged_boot_snapshot_boots_cold_with_a_warning(monkeypatch):
    backend = _backend()
    spec = {**SPEC, "snapshot": {"file": "boot.snapshot"}}
    fetched = {}

    async def fetch_buffer(url):
        fetched["url"] = url
        return fetched["data"]
    monkeypatch.setattr(snapshots._browser, "fetch_buffer", fetch_buffer)
    stale = {**backend.snapshot_binding(), "config": "made-from-older-assets"}
    fetched["data"] = snapshots.pack({"format": 1, "binding": stale}, b"x")
    with pytest.warns(RuntimeWarning, match="assets were rebuilt.*booting cold"):
        assert asyncio.run(snapshots.shipped(backend, backend.assets, spec)) is None
    assert fetched["url"] == "http://h/assets/images/minimal/boot.snapshot"
    fetched["data"] = b"garbage"
    with pytest.warns(RuntimeWarning, match="not a pyapptron snapshot"):
        assert asyncio.run(snapshots.shipped(backend, backend.assets, spec)) is None
    fetched["data"] = snapshots.pack({"format": 1, "binding": backend.snapshot_binding()}, b"x")
    resume = asyncio.run(snapshots.shipped(backend, backend.assets, spec))
    assert resume.fallback_cold is True and resume.label == "boot snapshot of image 'minimal'"
    assert bytes(resume.payload) == b"x"  # the buffer past the header, handed on as it is
