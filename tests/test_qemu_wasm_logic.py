"""The qemu-wasm backend's pure logic in CPython: QEMU's command line, what a build
directory must hold, and the report of what is missing from one."""

import asyncio
from pathlib import Path

import pytest

from pyapptron import IncompleteBuild, InvalidOption
from pyapptron.backends import qemu_wasm
from pyapptron.console_exec import DEFAULT_PROMPT
from pyapptron.exec_strategy import ConsoleShellExec
from pyapptron.backends.qemu_wasm import QemuWasmBackend, parse_package, qemu_arguments, referenced_files

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "build" / "assets" / "qemu_wasm" / "standin"
BUILD = "http://host/build/"


class FakeAssets:
    def require(self, path):
        return "http://host/assets/" + path


def backend(**options):
    options.setdefault("build", BUILD)
    return QemuWasmBackend(FakeAssets(), None, options.pop("memory_mib", None), **options)


def test_the_command_line_is_the_one_qemu_wasm_pages_use():
    assert qemu_arguments(kernel="/pack/bzImage") == [
        "-nographic", "-m", "512M", "-accel", "tcg,tb-size=500", "-L", "/pack/", "-nic", "none",
        "-kernel", "/pack/bzImage", "-append", "console=ttyS0",
    ]
    args = qemu_arguments(kernel="/k", initrd="/i", disks=["/d0", "/d1"], append=" root=/dev/vda ", memory_mib=256,
                          share="/share", extra=["-smp", "2"])
    assert args[args.index("-initrd") + 1] == "/i"
    assert args[args.index("-append") + 1] == "console=ttyS0 root=/dev/vda"
    assert "id=disk1,file=/d1,format=raw,if=virtio" in args
    assert "local,path=/share,mount_tag=share0,security_model=passthrough,id=share0" in args
    assert args[-2:] == ["-smp", "2"] and "256M" in args


def test_the_main_script_names_its_wasm_and_worker():
    assert referenced_files('var wasmBinaryFile = "qemu-system-x86_64.wasm"; new Worker("qemu-system-x86_64.worker.js")') == {
        "wasm": "qemu-system-x86_64.wasm", "worker": "qemu-system-x86_64.worker.js"}
    # Emscripten >= 3.1.58 has no separate worker script.
    assert referenced_files("findWasmBinary(){return locateFile('qemu-system-aarch64.wasm')}")["worker"] is None


@pytest.mark.skipif(not STANDIN.is_dir(), reason="the asset step qemu-wasm has not run")
def test_the_stand_in_build_parses_like_a_qemu_wasm_build():
    assert referenced_files((STANDIN / "out.js").read_text()) == {
        "wasm": "qemu-system-x86_64.wasm", "worker": "qemu-system-x86_64.worker.js"}
    assert parse_package((STANDIN / "load-rom.js").read_text()) == ("load-rom.data", ["/pack/bios-256k.bin"])


def test_a_file_packager_script_is_recognised_or_refused():
    script = ("var REMOTE_PACKAGE_BASE = 'load-kernel.data'; ... function runWithFS() {} "
              'loadPackage({"files": [{"filename": "/pack/bzImage", "start": 0, "end": 5}], '
              '"remote_package_size": 5});\n})();')
    assert parse_package(script) == ("load-kernel.data", ["/pack/bzImage"])
    with pytest.raises(ValueError, match="not a file_packager script"):
        parse_package("console.log('hello')")


def test_options_are_checked_before_anything_is_fetched():
    with pytest.raises(InvalidOption, match="needs build=URL"):
        QemuWasmBackend(FakeAssets(), None, kernel="/k")
    with pytest.raises(InvalidOption, match="boots a kernel"):
        backend()
    with pytest.raises(InvalidOption, match="out of range"):
        backend(kernel="/k", memory_mib=8)
    with pytest.raises(InvalidOption, match="main="):
        backend(kernel="/k", main="dir/out.js")
    with pytest.raises(InvalidOption, match="packages="):
        backend(kernel="/k", packages=["load.data"])
    with pytest.raises(InvalidOption, match="replaces the whole QEMU command line"):
        backend(kernel="/k", arguments=["-kernel", "/k"])
    with pytest.raises(InvalidOption, match="absolute path"):
        backend(kernel="/k", files={"relative": b"x"})
    assert backend(kernel="/k", prompt=None).capabilities.exec is False
    assert backend(kernel="/k").capabilities.as_dict() == {
        "arch": "x86_64", "exec": True, "files": False, "console": True, "snapshot": False, "network": False,
        "persist": False}


def _plan(b, served: dict[str, str | None]):
    """b._plan() against a fake web server: {url: body text, or None for a 404}."""

    async def probe(urls, text=False):
        return {u: ((200, served[u] if text else None) if served.get(u, None) is not None else (404, None))
                for u in urls}

    original = qemu_wasm._browser.probe_urls
    qemu_wasm._browser.probe_urls = probe
    try:
        return asyncio.run(b._plan())
    finally:
        qemu_wasm._browser.probe_urls = original


MAIN = 'export default Module; var f = "qemu-system-x86_64.wasm"; var w = "qemu-system-x86_64.worker.js";'
ROM = ("REMOTE_PACKAGE_BASE = 'load-rom.data'; loadPackage({\"files\": [{\"filename\": \"/pack/bios-256k.bin\"}]});\n}")


def test_a_complete_build_gives_the_adapter_its_plan():
    served = {BUILD + "out.js": MAIN, BUILD + "qemu-system-x86_64.wasm": "", BUILD + "qemu-system-x86_64.worker.js": "",
              BUILD + "load-rom.js": ROM, BUILD + "load-rom.data": "", "kernels/bzImage": ""}
    plan = _plan(backend(packages=["load-rom.js"], kernel="kernels/bzImage", disk=b"disk bytes"), served)
    assert plan["packages"] == [BUILD + "load-rom.js"]
    assert plan["files"] == {"/pack/bzImage": "kernels/bzImage", "/pack/disk.img": b"disk bytes"}
    args = plan["arguments"]
    assert args[args.index("-kernel") + 1] == "/pack/bzImage"
    assert "id=disk0,file=/pack/disk.img,format=raw,if=virtio" in args


def test_vm_run_goes_through_the_console_shell_since_the_guest_has_no_agent():
    strategy = backend(kernel="/pack/bzImage").exec_strategy(console=None, agent=None)
    assert isinstance(strategy, ConsoleShellExec)
    assert strategy.shell.prompt == DEFAULT_PROMPT


def test_everything_missing_from_a_build_is_named_at_once():
    served = {BUILD + "out.js": MAIN, BUILD + "load-rom.js": ROM}
    with pytest.raises(IncompleteBuild) as err:
        _plan(backend(packages=["load-rom.js", "load-gone.js"], kernel="/pack/bzImage"), served)
    missing = err.value.missing
    assert "load-gone.js (a package; HTTP 404)" in missing
    assert "qemu-system-x86_64.wasm (loaded by out.js) (HTTP 404)" in missing
    assert "qemu-system-x86_64.worker.js (its pthread worker) (HTTP 404)" in missing
    assert "load-rom.data (the data of load-rom.js) (HTTP 404)" in missing
    assert any(m.startswith("kernel='/pack/bzImage', which no package or files= provides") for m in missing)
    assert "README" in str(err.value)


def test_a_classic_script_build_and_a_missing_bios_are_explained():
    served = {BUILD + "out.js": 'var f = "x.wasm";', BUILD + "x.wasm": ""}
    with pytest.raises(IncompleteBuild) as err:
        _plan(backend(kernel=b"kernel"), served)
    text = str(err.value)
    assert "is not an ES module" in text and "-sEXPORT_ES6=1" in text
    assert "bios-256k.bin in -L /pack/" in text


def test_serve_mounts_a_build_directory_beside_the_page(tmp_path):
    from pyapptron.host.cli import parse_mounts

    assert parse_mounts([f"/qemu={tmp_path}"]) == {"/qemu/": tmp_path.resolve()}
    for bad in ("qemu=/tmp", f"/assets/={tmp_path}", "/qemu/=/no/such/dir", "/qemu/"):
        with pytest.raises(SystemExit, match="--mount"):
            parse_mounts([bad])
