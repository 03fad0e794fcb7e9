"""In real headless Chromium: the qemu-wasm backend, driving a stand-in build.

No QEMU-Wasm can be built here (it needs an Emscripten newer than Debian's 3.1.6), so
the asset step builds a stand-in with Debian's emscripten (emulators/qemu_wasm/
standin/qemu_standin.c) that keeps QEMU-Wasm's Module contract: an -sMODULARIZE
-sEXPORT_ES6 module whose main() runs in a pthread, QEMU's argument syntax and
messages, file_packager packages (load-rom.js, load-kernel.js) unpacked into /pack,
preRun writes, the console on xterm-pty's openpty() slave, and an exit status. What
these tests prove is pyapptron's side of that contract, end to end: the adapter, the
file-set check, the command line, console-framed vm.run. A real QEMU boot was not run.
"""

import zlib

import pytest

import pyapptron
from pyapptron.host.browser import RemoteSession
from pyapptron.host.server import PageServer

pytestmark = pytest.mark.browser

PACKAGES = ["load-rom.js", "load-kernel.js"]
KERNEL = "/pack/standin-kernel.bin"


@pytest.fixture(scope="module")
def session(pyapptron_browser, pyapptron_server):
    return RemoteSession(pyapptron_browser, pyapptron_server.url + "web/index.html", autoboot=False)


@pytest.fixture(scope="module")
def build_url(pyapptron_server):
    return pyapptron_server.url + "assets/qemu_wasm/standin/"


@pytest.fixture(scope="module")
def vm(session, build_url):
    # Released with the page: the last tests take the browser to other pages.
    return session.boot("qemu-wasm", build=build_url, packages=PACKAGES, kernel=KERNEL, append="quiet")


def test_boot_gives_a_machine_with_exec_over_the_console(vm):
    assert vm.capabilities.as_dict() == {
        "arch": "x86_64", "exec": True, "files": False, "console": True, "snapshot": False,
        "network": False, "persist": False,
    }
    r = vm.run("uname -m; echo oops >&2; exit 3")
    # Over the console stdout and stderr arrive merged, as a terminal shows them.
    assert (r.returncode, r.stdout, r.stderr) == (3, b"x86_64\noops\n", b"")


def test_the_module_got_the_command_line_and_the_packages(vm):
    boot_log = vm.console.transcript.decode()
    assert "Command line: console=ttyS0 quiet" in boot_log
    assert "Memory: 512M" in boot_log
    kernel = vm.run(["crc32", KERNEL, "/pack/bios-256k.bin"], text=True).stdout.split()
    assert kernel[1] == KERNEL and kernel[3] == "/pack/bios-256k.bin"
    assert vm.run(["ls", "/pack"], text=True).stdout == "bios-256k.bin\nstandin-kernel.bin\n"


def test_run_options_and_errors_follow_subprocess(vm):
    r = vm.run(["printf", "%s|", "a b", "it's", "$HOME"], text=True)
    assert r.stdout == "a b|it's|$HOME|"
    assert vm.run("pwd", cwd="/pack", text=True).stdout == "/pack\n"
    assert vm.run("env", env={"ONLY": "this"}, text=True).stdout == "ONLY=this\n"
    with pytest.raises(pyapptron.CalledProcessError) as err:
        vm.run("false", check=True)
    assert err.value.returncode == 1
    assert vm.run("no-such-command").returncode == 127
    with pytest.raises(pyapptron.NotSupported, match="input= needs a guest with pyapptron's agent"):
        vm.run("cat", input=b"x")
    with pytest.raises(pyapptron.NotSupported, match="files"):
        vm.read_file("/pack/bios-256k.bin")


def test_a_timeout_interrupts_the_command_and_the_machine_stays_usable(vm):
    with pytest.raises(pyapptron.TimeoutExpired) as err:
        vm.run("echo started; sleep 60", timeout=1)
    assert err.value.stdout == b"started\n"
    assert vm.run("echo after").stdout == b"after\n"


def test_kernel_initrd_and_disk_as_urls_and_bytes_are_written_into_pack(session, build_url):
    kernel = bytes(range(256)) * 64
    disk = b"\x55\xaa" * 50000
    result = session.python(f"""
import pyapptron
from pyapptron import _browser
vm = await pyapptron.boot("qemu-wasm", build={build_url!r}, packages=["load-rom.js"],
                          kernel={kernel!r}, initrd={build_url!r} + "load-kernel.data", disk=[{disk!r}],
                          memory_mib=256, files={{"/etc/motd": b"hello from files=\\n"}})
out = (await vm.run("crc32 /pack/vmlinuz /pack/load-kernel.data /pack/disk.img; cat /etc/motd", text=True)).stdout
log = vm.console.transcript.decode()
await vm.shutdown()
result = [out, log]
""")
    out, log = result
    lines = out.splitlines()
    assert lines[0].split() == [f"{zlib.crc32(kernel):08x}", "/pack/vmlinuz"]
    assert lines[2].split() == [f"{zlib.crc32(disk):08x}", "/pack/disk.img"]
    assert lines[3] == "hello from files="
    assert "Memory: 256M" in log and "initrd: /pack/load-kernel.data" in log


def test_a_shared_directory_is_exported_over_virtfs(session, build_url):
    result = session.python(f"""
import pyapptron
vm = await pyapptron.boot("qemu-wasm", build={build_url!r}, packages={PACKAGES!r}, kernel={KERNEL!r},
                          share={{"hello.txt": b"shared\\n"}})
out = (await vm.run("mount -t 9p -o trans=virtio share0 /mnt && cat /mnt/hello.txt", text=True)).stdout
log = vm.console.transcript.decode()
await vm.shutdown()
result = [out, log]
""")
    out, log = result
    assert out == "shared\n"
    assert "9pnet: mount tag share0 (exported from /share)" in log


def test_the_guest_powering_off_ends_the_machine_with_its_status(session, build_url):
    result = session.python(f"""
import pyapptron
vm = await pyapptron.boot("qemu-wasm", build={build_url!r}, packages={PACKAGES!r}, kernel={KERNEL!r})
vm.console.sendline("exit 42")
code = await vm.wait(timeout=30)
try:
    await vm.run("true")
    after = None
except pyapptron.MachineClosed as exc:
    after = str(exc)
await vm.shutdown()
result = [code, vm.returncode, after]
""")
    assert result[0] == 42 and result[1] == 42
    assert "exit status 42" in result[2]


def test_the_terminal_side_types_into_the_guest_shell(vm):
    vm.console.sendline("echo typed-$((1))")  # the stand-in's shell has no arithmetic: it echoes as is
    vm.console.wait_for(r"typed-\$\(\(1\)\)\r\n")


def test_an_incomplete_build_names_every_missing_file(session, build_url):
    with pytest.raises(pyapptron.IncompleteBuild) as err:
        session.boot("qemu-wasm", build=build_url, packages=["load-rom.js", "load-missing.js"],
                     kernel="/pack/no-such-kernel")
    message = str(err.value)
    assert "load-missing.js (a package; HTTP 404)" in message
    assert "kernel='/pack/no-such-kernel', which no package or files= provides" in message
    with pytest.raises(pyapptron.IncompleteBuild, match=r"out\.js \(the main script; HTTP 404\)"):
        session.boot("qemu-wasm", build=build_url + "nowhere/", kernel=KERNEL)
    with pytest.raises(pyapptron.IncompleteBuild, match="bios-256k.bin in -L /pack/"):
        session.boot("qemu-wasm", build=build_url, packages=["load-kernel.js"], kernel=KERNEL)
    with pytest.raises(pyapptron.IncompleteBuild, match="HTTP 404"):
        session.boot("qemu-wasm", build=build_url, packages=PACKAGES, kernel="images/missing-kernel")


def test_qemu_rejecting_its_command_line_is_a_boot_error_with_its_message(session, build_url):
    with pytest.raises(pyapptron.BootError, match="-bogus: invalid option"):
        session.boot("qemu-wasm", build=build_url, packages=PACKAGES, kernel=KERNEL, args=["-bogus"])


def test_bad_options_raise_invalid_option(session, build_url):
    with pytest.raises(pyapptron.InvalidOption, match="needs build=URL"):
        session.boot("qemu-wasm", kernel=KERNEL)
    with pytest.raises(pyapptron.InvalidOption, match="boots a kernel"):
        session.boot("qemu-wasm", build=build_url)
    with pytest.raises(pyapptron.InvalidOption, match="out of range for qemu-wasm"):
        session.boot("qemu-wasm", build=build_url, kernel=KERNEL, memory_mib=4096)


def test_the_backend_is_listed(session):
    assert "qemu-wasm" in session.python("import pyapptron\nresult = pyapptron.available_emulators()")


# Last: these take the browser to other pages.
def test_the_terminal_page_boots_a_build_named_in_its_query(pyapptron_browser, pyapptron_server):
    from pyapptron.host.browser import terminal_text

    url = (pyapptron_server.url + "web/index.html?emulator=qemu-wasm&build=/assets/qemu_wasm/standin/"
           "&packages=load-rom.js,load-kernel.js&kernel=/pack/standin-kernel.bin&append=from-the-page")
    page = RemoteSession(pyapptron_browser, url, autoboot=True)
    vm = page.page_machine()
    assert vm.run("uname -m").stdout == b"x86_64\n"
    text = terminal_text(pyapptron_browser.driver)
    assert "Command line: console=ttyS0 from-the-page" in text and "~ #" in text


def test_a_page_without_cross_origin_isolation_gets_a_clear_error(pyapptron_browser, build_url):
    with PageServer(0, isolated=False) as server:
        plain = RemoteSession(pyapptron_browser, server.url)
        with pytest.raises(pyapptron.NotIsolated, match="Cross-Origin-Embedder-Policy: require-corp"):
            plain.boot("qemu-wasm", build=server.url + "assets/qemu_wasm/standin/", packages=PACKAGES,
                       kernel=KERNEL)
