"""The c2w backend's pure logic, in CPython: argv building, option checks, the image's
bochsrc and file list (what reaches the worker)."""

import pytest

import pyapptron
from pyapptron.assets import Assets
from pyapptron.backends.c2w import C2WBackend, c2w_argv, check_files

IMAGE = {
    "name": "debian-x86_64", "emulator": "c2w", "arch": "x86_64", "agent": "/dev/ttyS1", "agent_fd": 4,
    "wasm": "../../c2w/bochs.wasm", "args": ["bochs", "-q", "-f", "/bochsrc.txt"], "env": ["BXSHARE=/bios"],
    "files": {"/bochsrc.txt": "bochsrc.txt", "/kernel.bin": "kernel.bin.gz", "/disk.img": "disk.img"},
    "inflate": ["/kernel.bin"], "bochsrc_body": "romimage: file=/bios/BIOS-bochs-latest\n",
    "memory_mib": 256, "min_megs": 193,
}
FILES = ["c2w/bochs.wasm", "c2w/worker.mjs", "c2w/adapter.mjs", "images/debian-x86_64/image.json",
         "images/debian-x86_64/bochsrc.txt", "images/debian-x86_64/kernel.bin.gz", "images/debian-x86_64/disk.img"]
ASSETS = Assets("http://x/assets/", {"files": {f: {"size": 1, "sha256": "0"} for f in FILES}})


def test_argv_puts_container2wasm_flags_before_the_command():
    assert c2w_argv(args=["uname", "-a"]) == ["c2w", "uname", "-a"]
    assert c2w_argv(entrypoint="/bin/sh", no_stdin=True, net="browser", mac="02:00:00:00:00:01",
                    args=["-c", "echo hi"]) == [
        "c2w", "-entrypoint", "/bin/sh", "-no-stdin", "--net=browser", "--mac", "02:00:00:00:00:01",
        "--", "-c", "echo hi"]
    assert c2w_argv() == ["c2w"]


def test_the_image_gets_its_own_bochsrc_with_the_memory_size_and_the_agent_channel():
    b = C2WBackend(ASSETS, IMAGE, 512)
    files = b.options["files"]
    assert files["/bochsrc.txt"] == b"megs: 512\nromimage: file=/bios/BIOS-bochs-latest\n"
    assert files["/kernel.bin"] == {"url": "http://x/assets/images/debian-x86_64/kernel.bin.gz", "inflate": True}
    assert files["/disk.img"] == "http://x/assets/images/debian-x86_64/disk.img"
    assert b.options["wasm"] == "http://x/assets/c2w/bochs.wasm"
    assert b.options["channels"] == {"console": {"in": 0, "out": 1}, "agent": {"in": 4, "out": 4}}
    assert b.capabilities.arch == "x86_64" and b.capabilities.exec and not b.capabilities.snapshot
    assert C2WBackend(ASSETS, IMAGE).memory_mib == 256


def test_a_lazy_root_disk_and_the_shared_memory_channel_reach_the_worker():
    image = dict(IMAGE, name="agent-x86_64", hostchan=True, memory_mib=2048,
                 lazy={"/rootfs.img": {"size": 1 << 20, "chunk": 1 << 18, "base": "fs/",
                                       "chunks": ["00ff", None, "00ff", "abcd"]}})
    assets = Assets("http://x/assets/", {"files": {f.replace("debian-x86_64", "agent-x86_64"): {}
                                                   for f in FILES}})
    b = C2WBackend(assets, image)
    assert b.memory_mib == 2048
    assert b.options["lazy"] == {"/rootfs.img": {"size": 1 << 20, "chunk": 1 << 18,
                                                 "base": "http://x/assets/images/agent-x86_64/fs/",
                                                 "chunks": ["00ff", None, "00ff", "abcd"]}}
    assert "/rootfs.img" not in b.options["files"]  # never fetched whole
    assert b.options["hostchan"] == {"channel": "agent", "wake_fd": 4}
    assert "hostchan" not in C2WBackend(ASSETS, IMAGE).options  # an image without the rings: the serial line


def test_a_network_gives_the_image_an_e1000_on_the_page_network_stack():
    assets = Assets("http://x/assets/", {"files": {f: {} for f in FILES + ["v86/libv86.mjs", "v86/v86.wasm",
                                                                            "v86/network.mjs"]}})
    net = pyapptron.Network(internet=False, host_ports=[8000], relay="wisp://127.0.0.1:5000/s3cret/")
    image = dict(IMAGE, network=True)
    b = C2WBackend(assets, image, network=net)
    bochsrc = b.options["files"]["/bochsrc.txt"].decode().splitlines()
    assert bochsrc[-2:] == ["pci: enabled=1, chipset=i440fx, slot1=e1000",
                            "e1000: enabled=1, mac=52:54:00:12:34:56, ethmod=pyapptron"]
    assert b.options["network"] == {
        "libv86_url": "http://x/assets/v86/libv86.mjs", "wasm_path": "http://x/assets/v86/v86.wasm",
        "stack_url": "http://x/assets/v86/network.mjs",
        "net_device": {"dns_method": "doh", "doh_server": "dns.pyapptron.internal",
                       "relay_url": "wisp://127.0.0.1:5000/s3cret/?internet=0&private=0&ports=8000"},
        "dns_url": "http://127.0.0.1:5000/s3cret/dns-query?internet=0&private=0&ports=8000"}
    assert b.capabilities.network
    plain = C2WBackend(assets, image)
    assert "network" not in plain.options and not plain.capabilities.network
    assert "e1000" not in plain.options["files"]["/bochsrc.txt"].decode()


def test_an_image_built_without_the_cards_driver_refuses_a_network():
    net = pyapptron.Network(relay="wisp://127.0.0.1:5000/s3cret/")
    with pytest.raises(pyapptron.NotSupported, match="has no driver for the network card .* rebuild it"):
        C2WBackend(ASSETS, IMAGE, network=net)


def test_a_users_module_takes_its_own_net_option_not_network():
    net = pyapptron.Network(relay="wisp://127.0.0.1:5000/s3cret/")
    with pytest.raises(pyapptron.InvalidOption, match="container2wasm module .* brings its own networking: pass its net="):
        C2WBackend(ASSETS, None, wasm="/out.wasm", network=net)


@pytest.mark.parametrize("memory", [64, 192, 4096])
def test_memory_out_of_range_says_the_range(memory):
    with pytest.raises(pyapptron.InvalidOption, match="use 193 to 2048"):
        C2WBackend(ASSETS, IMAGE, memory)


def test_a_users_module_has_a_console_and_no_agent():
    b = C2WBackend(ASSETS, None, wasm="/out.wasm", args=["ls"], env={"A": "1"},
                   files={"/share/x": b"1", "/share/y": "http://h/y"}, preopens=["/share"])
    assert b.options["args"] == ["c2w", "ls"]
    assert b.options["env"] == ["A=1"]
    assert b.options["preopens"] == ["/share"]
    assert b.options["channels"] == {"console": {"in": 0, "out": 1, "blocking": True}}
    assert (b.capabilities.exec, b.capabilities.files, b.capabilities.console) == (False, False, True)
    assert b.console_has_eof
    assert C2WBackend(ASSETS, None, wasm=b"\0asm\1\0\0\0", files={"/a": b""}).options["preopens"] == ["/"]
    assert C2WBackend(ASSETS, None, wasm=["/a.00", "/a.01"]).options["wasm"] == ["/a.00", "/a.01"]


@pytest.mark.parametrize("kwargs, match", [
    ({"wasm": b"MZ not wasm"}, "not a WebAssembly module"),
    ({"wasm": []}, "URLs of the module.s chunks"),
    ({"wasm": ["/a", 3]}, "chunks"),
    ({"wasm": "/a.wasm", "memory_mib": 512}, "sizes its own memory"),
    ({"wasm": "/a.wasm", "preopens": ["share"]}, "absolute directory"),
    ({"wasm": "/a.wasm", "env": {"A=B": "c"}}, "env must map"),
    ({"wasm": "/a.wasm", "args": ["ok", 3]}, "list of strings"),
    ({"wasm": "/a.wasm", "files": {"rel/path": b""}}, "absolute file path"),
    ({"wasm": "/a.wasm", "files": {"/x": 3}}, "bytes or a URL"),
])
def test_bad_module_options_raise_invalid_option(kwargs, match):
    with pytest.raises(pyapptron.InvalidOption, match=match):
        C2WBackend(ASSETS, None, **kwargs)


def test_module_options_are_refused_on_the_image():
    with pytest.raises(pyapptron.InvalidOption, match="for a user's module"):
        C2WBackend(ASSETS, IMAGE, args=["x"])
    with pytest.raises(pyapptron.InvalidOption, match="preopens= is for a user's module"):
        C2WBackend(ASSETS, IMAGE, preopens=["/x"])


def test_files_are_normalised_and_checked():
    assert check_files({"/a//b/./c": b"x"}) == {"/a/b/c": b"x"}
    with pytest.raises(pyapptron.InvalidOption, match="absolute file path"):
        check_files({"/a/../etc/passwd": b""})
    with pytest.raises(pyapptron.InvalidOption):
        check_files(["/a"])


def test_boot_picks_the_backends_default_image_and_needs_none_for_a_module():
    assert C2WBackend.default_image == "debian-x86_64"
    assert C2WBackend.needs_image({"wasm": "/a.wasm"}) is False
    assert C2WBackend.needs_image({}) is True
    assert "c2w" in pyapptron.available_emulators()


def test_each_emulator_lists_only_its_own_images():
    index = {"images": {"minimal": {"emulator": "v86"}, "debian-x86_64": {"emulator": "c2w"}},
             "files": {"images/minimal/image.json": {}, "images/debian-x86_64/image.json": {}}}
    assets = Assets("http://x/assets/", index)
    assert assets.images("v86") == ["minimal"]
    assert assets.images("c2w") == ["debian-x86_64"]


STATE_IMAGE = dict(IMAGE, state=True, bochsrc_body=(
    "romimage: file=/bios/BIOS-bochs-latest\n"
    "ata0-master: type=disk, path=/disk.img, mode=flat, cylinders=1, heads=16, spt=63\n"
    "ata0-slave: type=disk, path=/rootfs.img, mode=flat, heads=16, spt=63\n"
    "optramimage1: file=/kernel.bin, address=0x1000000\n"),
    lazy={"/rootfs.img": {"size": 1 << 20, "chunk": 1 << 18, "base": "fs/", "chunks": ["00ff", None, None, None]}})


def test_an_image_with_the_agent_and_a_bochs_that_saves_can_snapshot():
    b = C2WBackend(ASSETS, STATE_IMAGE)
    assert b.capabilities.snapshot
    # The small disk travels whole in a state, the lazy one as its written chunks; a
    # restore does not load the kernel into RAM.
    assert b.options["state"] == {"keep": ["/disk.img"], "skip_on_restore": ["/kernel.bin"]}
    assert not C2WBackend(ASSETS, IMAGE).capabilities.snapshot  # built before Bochs could save
    assert not C2WBackend(ASSETS, dict(STATE_IMAGE, agent=None)).capabilities.snapshot


def test_a_snapshot_is_bound_to_the_module_the_files_the_memory_and_the_network_card():
    def binding(assets=ASSETS, memory=None, network=None, image=STATE_IMAGE):
        return C2WBackend(assets, image, memory, network=network).snapshot_binding()

    made = binding()
    assert made == binding()
    assert made["emulator"] == "c2w" and made["image"] == "debian-x86_64" and made["memory_mib"] == 256
    assert pyapptron.snapshots.mismatch(made, binding(memory=512)) == "memory_mib: snapshot 256, this boot 512"
    rebuilt = Assets("http://x/assets/", {"files": {f: {"size": 1, "sha256": "1" if f.endswith(".wasm") else "0"}
                                                    for f in FILES}})
    assert "emulator version" in pyapptron.snapshots.mismatch(made, binding(assets=rebuilt))
    other_disk = dict(STATE_IMAGE, lazy={"/rootfs.img": dict(STATE_IMAGE["lazy"]["/rootfs.img"], chunks=["0100"] * 4)})
    assert "files and options" in pyapptron.snapshots.mismatch(made, binding(image=other_disk))
    # The same guest at another URL is the same machine.
    moved = Assets("https://elsewhere/a/", ASSETS.index)
    assert binding(assets=moved) == made


def test_a_module_without_the_agent_refuses_to_snapshot():
    b = C2WBackend(ASSETS, None, wasm=b"\0asm\1\0\0\0")
    with pytest.raises(pyapptron.NotSupported):
        b.snapshot_binding()


def test_a_snapshot_made_with_the_network_card_needs_one_and_any_relay_will_do():
    assets = Assets("http://x/assets/", {"files": {f: {} for f in FILES + ["v86/libv86.mjs", "v86/v86.wasm",
                                                                          "v86/network.mjs"]}})
    image = dict(STATE_IMAGE, network=True)
    with_card = C2WBackend(assets, image, network=pyapptron.Network(relay="wisp://127.0.0.1:5000/a/")).snapshot_binding()
    assert C2WBackend(assets, image, network=pyapptron.Network(relay="wisp://127.0.0.1:6000/b/")).snapshot_binding() == with_card
    assert pyapptron.snapshots.mismatch(with_card, C2WBackend(assets, image).snapshot_binding())


def test_persist_holds_the_store_in_the_page_and_leaves_the_snapshot_binding_alone():
    kept = pyapptron.Persist("proj")
    b = C2WBackend(ASSETS, STATE_IMAGE, persist=kept)
    assert b.capabilities.persist and b.options["persist"] == {"store": "proj"}
    # The layers come from the store after a resume: a snapshot made without persist fits.
    assert b.snapshot_binding() == C2WBackend(ASSETS, STATE_IMAGE).snapshot_binding()
    assert not C2WBackend(ASSETS, STATE_IMAGE).capabilities.persist


def test_persist_needs_the_guest_agent():
    with pytest.raises(pyapptron.NotSupported, match="no guest agent"):
        C2WBackend(ASSETS, dict(STATE_IMAGE, agent=None), persist=pyapptron.Persist())
    with pytest.raises(pyapptron.NotSupported, match="container2wasm module"):
        C2WBackend(ASSETS, None, wasm="/out.wasm", persist=pyapptron.Persist())
