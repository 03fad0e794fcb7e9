"""Unit tests (CPython): bad input to boot() and run() fails early with typed, helpful errors."""

import asyncio

import pytest

import pyapptron
from pyapptron.assets import Assets
from pyapptron.backends.v86 import V86Backend


def boot(*args, **kwargs):
    return asyncio.run(pyapptron.boot(*args, **kwargs))


def test_unknown_emulator_lists_the_available_ones():
    with pytest.raises(pyapptron.UnknownEmulator, match="available: c2w, qemu-wasm, v86"):
        boot("qemu-nonexistent")


@pytest.mark.parametrize("kwargs, match", [
    ({"memory_mib": "128"}, "memory_mib must be an integer"),
    ({"memory_mib": True}, "memory_mib must be an integer"),
    ({"timeout": -1}, "timeout must be a positive"),
    ({"colour": "blue"}, "no option 'colour'; options: image, memory_mib"),
    ({"cmdline_extra": 3}, "option 'cmdline_extra' must be str"),
    ({"image": 3}, "image must be an image name"),
])
def test_bad_boot_options_raise_invalid_option(kwargs, match):
    with pytest.raises(pyapptron.InvalidOption, match=match):
        boot("v86", **kwargs)


@pytest.mark.parametrize("emulator, kwargs, match", [
    ("c2w", {"wasm": 3}, "option 'wasm' must be str, bytes, bytearray, memoryview, list or tuple, not 3"),
    ("c2w", {"wasm": {"url": "x"}}, "option 'wasm' must be str, bytes"),
    ("qemu-wasm", {"build": "/q/", "kernel": 3.5}, "option 'kernel' must be str, bytes, bytearray or memoryview"),
    ("qemu-wasm", {"build": "/q/", "initrd": object()}, "option 'initrd' must be str, bytes"),
    ("qemu-wasm", {"build": "/q/", "disk": {"a": b""}}, "option 'disk' must be str, .* list or tuple"),
    ("qemu-wasm", {"build": "/q/", "prompt": 3}, "option 'prompt' must be str, bytes or None, not 3"),
])
def test_backend_options_of_the_wrong_type_are_refused_by_name(emulator, kwargs, match):
    with pytest.raises(pyapptron.InvalidOption, match=match):
        boot(emulator, **kwargs)


@pytest.mark.parametrize("emulator, kwargs", [
    ("c2w", {"wasm": memoryview(b"\0asm")}), ("c2w", {"wasm": ["a.wasm", "b.wasm"]}), ("c2w", {"wasm": "m.wasm"}),
    ("qemu-wasm", {"build": "/q/", "kernel": bytearray(b"k"), "disk": [b"d", "/pack/d2"], "prompt": None}),
])
def test_backend_options_of_an_accepted_type_pass_the_check(emulator, kwargs):
    # Past every option check, the next step is loading the assets: that needs a browser.
    with pytest.raises(pyapptron.NotSupported, match="^this needs a browser"):
        boot(emulator, **kwargs)


class PageBytes:
    """What a page's Uint8Array is in Pyodide: a JsProxy whose to_bytes() copies it."""

    def __init__(self, data):
        self.data = data

    def to_bytes(self):
        return self.data


def test_a_pages_byte_array_is_checked_as_bytes(monkeypatch):
    monkeypatch.setattr(pyapptron._browser, "from_page", lambda v: v.to_bytes() if isinstance(v, PageBytes) else v)
    with pytest.raises(pyapptron.NotSupported, match="^this needs a browser"):
        boot("qemu-wasm", build="/q/", kernel=PageBytes(b"kernel"))
    with pytest.raises(pyapptron.InvalidOption, match="option 'kernel' must be"):
        boot("qemu-wasm", build="/q/", kernel=object())  # any other JS (or Python) value is refused


@pytest.mark.parametrize("emulator, persist, network", [("v86", True, True), ("c2w", True, True),
                                                       ("qemu-wasm", False, False)])
def test_unknown_option_lists_every_keyword_boot_takes_for_that_emulator(emulator, persist, network):
    with pytest.raises(pyapptron.InvalidOption) as info:
        boot(emulator, colour="blue")
    known = str(info.value).split("options: ", 1)[1].split(", ")
    common = ["image", "memory_mib", "timeout", "assets_url", "resume", "cold"]
    backend = list(pyapptron.backend_class(emulator).options)
    assert known == [*common[:4], *(["persist"] if persist else []), *(["network"] if network else []),
                     *common[4:], *backend]


@pytest.mark.parametrize("value, expected", [
    (True, pyapptron.Network()),
    ("host-only", pyapptron.Network(internet=False)),
    ("wisp://relay.example:4000/w/", pyapptron.Network(relay="wisp://relay.example:4000/w/")),
    (pyapptron.Network(host_ports=[8080, 80, 80]), pyapptron.Network(host_ports=(80, 8080))),
    (False, None), (None, None),
])
def test_network_option_forms(value, expected):
    assert pyapptron.Network.from_option(value) == expected


@pytest.mark.parametrize("value, match", [
    ("yes", "network='yes': use True, False"),
    ("ws://relay/", "use True, False"),
    (pyapptron.Network, "use True, False"),
])
def test_bad_network_option_says_what_it_takes(value, match):
    with pytest.raises(pyapptron.InvalidOption, match=match):
        boot("v86", network=value)


@pytest.mark.parametrize("kwargs, match", [
    ({"host_ports": 8080}, "takes a list of port numbers"),
    ({"host_ports": [0]}, "not a port number"),
    ({"host_ports": ["80"]}, "not a port number"),
    ({"internet": "no"}, "takes True or False"),
    ({"relay": "https://relay/"}, "Wisp relay's URL"),
])
def test_bad_network_fields_say_what_they_take(kwargs, match):
    with pytest.raises(pyapptron.InvalidOption, match=match):
        pyapptron.Network(**kwargs)


@pytest.mark.parametrize("emulator", ["qemu-wasm"])
def test_engines_without_a_network_refuse_network(emulator):
    with pytest.raises(pyapptron.NotSupported, match=f"{emulator} has no network yet"):
        boot(emulator, network=True)


def test_v86_network_card_relay_and_resolver_carry_the_policy():
    files = {p: {} for p in ["v86/libv86.mjs", "v86/v86.wasm", "bios/seabios.bin", "bios/vgabios.bin",
                             "images/minimal/bzImage"]}
    spec = {"name": "minimal", "kernel": "bzImage", "cmdline": "console=ttyS0", "agent": "virtio-console0"}
    net = pyapptron.Network(internet=False, host_ports=[8000], relay="wisp://127.0.0.1:5000/s3cret/")
    backend = V86Backend(Assets("http://h/assets/", {"files": files}), spec, network=net)
    options = backend.emulator_options()
    assert options["net_device"] == {"type": "virtio", "dns_method": "doh", "doh_server": "dns.pyapptron.internal",
                                     "relay_url": "wisp://127.0.0.1:5000/s3cret/?internet=0&private=0&ports=8000"}
    assert options["dns_url"] == "http://127.0.0.1:5000/s3cret/dns-query?internet=0&private=0&ports=8000"
    assert "pyapptron.net=dhcp" in options["cmdline"].split() and backend.capabilities.network
    # a snapshot binds the card, not the relay (its port and secret change every run)
    other = V86Backend(Assets("http://h/assets/", {"files": files}), spec,
                       network=pyapptron.Network(relay="wisps://elsewhere/x/"))
    assert backend.snapshot_binding() == other.snapshot_binding()
    assert other.emulator_options()["dns_url"] == "https://elsewhere/x/dns-query?internet=1&private=0"
    plain = V86Backend(Assets("http://h/assets/", {"files": files}), spec)
    assert plain.snapshot_binding() != backend.snapshot_binding() and not plain.capabilities.network


def test_invalid_option_is_also_a_value_error():
    assert issubclass(pyapptron.InvalidOption, ValueError)
    assert issubclass(pyapptron.InvalidOption, pyapptron.PyapptronError)


@pytest.mark.parametrize("assets_url", ["http://127.0.0.1:1/assets/", None])
def test_outside_a_browser_boot_says_how_to_get_one(assets_url):
    with pytest.raises(pyapptron.NotSupported, match="^this needs a browser: run it inside Pyodide .*"
                                                     "python -m pyapptron run -- CMD"):
        boot("v86", assets_url=assets_url)


INDEX = {"files": {"images/minimal/image.json": {}, "images/agent/image.json": {}, "v86/libv86.mjs": {}}}


def test_unknown_image_lists_the_built_ones():
    assets = Assets("http://x/assets", INDEX)
    assert assets.images("v86") == ["agent", "minimal"]
    with pytest.raises(pyapptron.ImageNotFound, match="no image 'huge'.*available: agent, minimal"):
        asyncio.run(assets.image("v86", "huge"))


def test_missing_asset_names_the_build_command():
    assets = Assets("http://x/assets/", INDEX)
    with pytest.raises(pyapptron.AssetsMissing, match="python emulators/build.py"):
        assets.require("bios/seabios.bin")


def test_v86_memory_range_is_checked_with_the_reason():
    with pytest.raises(pyapptron.InvalidOption, match="64 MiB"):
        V86Backend(Assets("http://x/", INDEX), {"name": "minimal"}, memory_mib=64)


def test_v86_reports_capabilities_from_the_image():
    backend = V86Backend(Assets("http://x/", INDEX), {"name": "minimal", "arch": "i686", "agent": "virtio-console0"})
    caps = backend.capabilities
    assert (caps.arch, caps.exec, caps.files, caps.console, caps.snapshot) == ("i686", True, True, True, True)


def test_v86_options_point_at_the_built_assets():
    files = {p: {} for p in ["v86/libv86.mjs", "v86/v86.wasm", "v86/adapter.mjs", "bios/seabios.bin",
                             "bios/vgabios.bin", "images/minimal/bzImage", "images/minimal/initrd.img"]}
    spec = {"name": "minimal", "kernel": "bzImage", "initrd": "initrd.img", "cmdline": "console=ttyS0", "memory_mib": 128}
    backend = V86Backend(Assets("http://h/assets/", {"files": files}), spec, cmdline_extra="debug")
    options = backend.emulator_options()
    assert options["bzimage"] == {"url": "http://h/assets/images/minimal/bzImage"}
    assert options["initrd"] == {"url": "http://h/assets/images/minimal/initrd.img"}
    # the init binds the default persisted paths from the 9p tree (so snapshots have them)
    assert options["cmdline"] == "console=ttyS0 pyapptron.persist=/persist,/root,/root/.cache/pip,/root/.local," \
        "/root/.npm,/usr/local,/var/cache/apk,/var/cache/apt/archives debug"
    assert options["memory_size"] == 128 * 1024 * 1024
    assert options["virtio_console"] is True  # the agent's channel
    del files["bios/seabios.bin"]
    with pytest.raises(pyapptron.AssetsMissing, match="bios/seabios.bin"):
        backend.emulator_options()


@pytest.mark.parametrize("memory_mib", [128, 512, 2048])
def test_v86_agent_rings_sit_in_reserved_ram_below_the_top_with_the_doorbell_above(memory_mib):
    files = {p: {} for p in ["v86/libv86.mjs", "v86/v86.wasm", "bios/seabios.bin", "bios/vgabios.bin",
                             "images/minimal/bzImage"]}
    spec = {"name": "minimal", "kernel": "bzImage", "cmdline": "console=ttyS0", "agent": "virtio-console0"}
    backend = V86Backend(Assets("http://h/assets/", {"files": files}), spec, memory_mib=memory_mib)
    options = backend.emulator_options()
    base, doorbell = options["hostchan"]["base"], options["hostchan"]["doorbell"]
    mib = 1024 * 1024
    # above the initrd v86 loads at 64 MiB, clear of SeaBIOS's tables at the top
    assert 80 * mib <= base and base + 4 * mib <= memory_mib * mib - 4 * mib
    assert doorbell >= memory_mib * mib and doorbell % (128 * 1024) == 0
    # the kernel leaves the region alone, and the agent is told where it is
    assert f"memmap=4M${base:#x}" in options["cmdline"].split()
    assert f"pyapptron.agent=hostchan@{base:#x},{doorbell:#x}:/dev/hvc0" in options["cmdline"].split()
    # a snapshot is bound to that command line (a state's agent has the rings mapped)
    assert f"memmap=4M${base:#x}" in backend.snapshot_binding()["cmdline"]
    # an image without an agent gets neither
    plain = V86Backend(Assets("http://h/assets/", {"files": files}), {**spec, "agent": None}).emulator_options()
    assert "hostchan" not in plain and "memmap" not in plain["cmdline"]


def test_v86_image_with_a_9p_root_gets_its_index_and_content_urls():
    files = {p: {} for p in ["v86/libv86.mjs", "v86/v86.wasm", "bios/seabios.bin", "bios/vgabios.bin",
                             "images/minimal/bzImage", "images/minimal/initrd.img", "images/agent/fs.json.gz"]}
    spec = {"name": "agent", "kernel": "../minimal/bzImage", "initrd": "../minimal/initrd.img",
            "cmdline": "console=ttyS0 pyapptron.root=host9p", "memory_mib": 512,
            "rootfs": {"basefs": "fs.json.gz", "baseurl": "fs/"}}
    options = V86Backend(Assets("http://h/assets/", {"files": files}), spec).emulator_options()
    # the kernel and initramfs are shared with the minimal image
    assert options["bzimage"] == {"url": "http://h/assets/images/minimal/bzImage"}
    assert options["initrd"] == {"url": "http://h/assets/images/minimal/initrd.img"}
    assert options["filesystem"] == {"basefs": "http://h/assets/images/agent/fs.json.gz",
                                     "baseurl": "http://h/assets/images/agent/fs/"}
    assert options["memory_size"] == 512 * 1024 * 1024
    del files["images/agent/fs.json.gz"]
    with pytest.raises(pyapptron.AssetsMissing, match="fs.json.gz"):
        V86Backend(Assets("http://h/assets/", {"files": files}), spec).emulator_options()
