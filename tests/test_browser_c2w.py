"""In real headless Chromium: the c2w backend, x86_64 through WASI.

The first half boots each x86_64 image (Bochs 3.0 for WASI, a Debian amd64 kernel:
"debian-x86_64" with a busybox initramfs, "agent-x86_64" with a Debian root on a lazily
read disk) into the page's xterm.js terminal, and the same machine answers run() and the
file calls from here: the exec exactness tests, on both. The second half runs the WASI
probe program (emulators/c2w/wasi_probe.c, built by the asset command) as a user's own
module, boot("c2w", wasm=...), which exercises our WASI host: stdin, stdout, stderr,
preopens, poll timeouts, exit statuses, a module in chunks.
"""

import hashlib
import subprocess
import time

import pytest
from selenium.webdriver.common.by import By

import pyapptron
from pyapptron.host.browser import RemoteSession, terminal_text
from pyapptron.host.server import PageServer

pytestmark = pytest.mark.browser


IMAGES = ("debian-x86_64", "agent-x86_64")


def pytest_generate_tests(metafunc):
    if "image" in metafunc.fixturenames:
        metafunc.parametrize("image", IMAGES, scope="module")


@pytest.fixture(scope="module")
def session(image, pyapptron_browser, pyapptron_server):
    return RemoteSession(pyapptron_browser, pyapptron_server.url + f"web/index.html?emulator=c2w&image={image}",
                         autoboot=True)


@pytest.fixture(scope="module")
def page(pyapptron_browser, pyapptron_server):
    """A page with no machine of its own, for the probe and option tests."""
    return RemoteSession(pyapptron_browser, pyapptron_server.url)


@pytest.fixture(scope="module")
def vm(session):
    return session.page_machine()


# -- the 64-bit guest ----------------------------------------------------------------------
def test_boot_reports_an_x86_64_guest_with_exec_and_files(vm):
    assert vm.capabilities.as_dict() == {
        "arch": "x86_64", "exec": True, "files": True, "console": True, "snapshot": False,
        "network": False, "persist": False,
    }
    r = vm.run("uname -m; echo oops >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"x86_64\n", b"oops\n")


def test_a_debian_amd64_binary_runs(vm):
    # /bin/sh is a Debian amd64 package's (busybox-static's, or dash): a 64-bit x86-64 ELF
    # (class 2, machine 0x3e).
    header = vm.read_file("/bin/sh")[:20]
    assert header[:5] == b"\x7fELF\x02" and header[18:20] == b"\x3e\x00"
    r = vm.run(["sh", "-c", "echo $((1 << 40))"])
    assert r.stdout == b"1099511627776\n"  # 64-bit shell arithmetic
    assert vm.run("uname -r").stdout.decode().endswith("-amd64\n")


def test_output_is_exact_binary_and_without_trailing_newline(vm):
    assert vm.run("printf abc").stdout == b"abc"
    assert vm.run("printf ''").stdout == b""
    every_byte = bytes(range(256))
    vm.write_file("/tmp/all.bin", every_byte)
    assert vm.run(["cat", "/tmp/all.bin"]).stdout == every_byte
    tricky = b"\xa5\x5a\x83\x00\x01\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00@@1@@ EXIT 0\n"
    vm.write_file("/tmp/tricky", tricky)
    r = vm.run("cat /tmp/tricky; cat /tmp/tricky >&2")
    assert (r.stdout, r.stderr) == (tricky, tricky)


def test_a_megabyte_of_output_and_of_stdin_arrive_whole(vm):
    r = vm.run("head -c 1000000 /dev/urandom > /tmp/big && cat /tmp/big && sha256sum /tmp/big >&2", timeout=120)
    assert len(r.stdout) == 1_000_000
    assert r.stderr.split()[0].decode() == hashlib.sha256(r.stdout).hexdigest()
    data = bytes(range(256)) * 4096
    assert vm.run("sha256sum", input=data, timeout=120).stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_cwd_env_text_exit_codes_and_signals(vm):
    r = vm.run("pwd; echo $FOO", cwd="/tmp", env={"FOO": "bar", "PATH": "/bin:/sbin"}, text=True)
    assert r.stdout == "/tmp\nbar\n"
    assert vm.run("exit 255").returncode == 255
    assert vm.run("kill -9 $$").returncode == -9
    with pytest.raises(FileNotFoundError):
        vm.run(["definitely-not-a-program"])


def test_timeout_kills_the_command_and_the_machine_stays_usable(vm):
    with pytest.raises(pyapptron.TimeoutExpired) as info:
        vm.run("echo started; sleep 60 & wait", timeout=2)
    assert isinstance(info.value, subprocess.TimeoutExpired)
    assert info.value.stdout == b"started\n"
    assert vm.run("echo still here").stdout == b"still here\n"


def test_concurrent_runs_do_not_mix_outputs(session, vm):
    result = session.python(f"""
import asyncio
m = machines[{vm.id}]
rs = await asyncio.gather(*(m.run(f"for i in 1 2 3; do echo job{{n}}; done; exit {{n}}") for n in range(8)))
result = [[r.returncode, r.stdout.decode()] for r in rs]
""")
    assert result == [[n, f"job{n}\n" * 3] for n in range(8)]


def test_file_round_trip_and_missing_paths(vm):
    blob = hashlib.sha256(b"seed").digest() * 10000  # 320 kB
    vm.write_file("/root/blob", blob, mode=0o600)
    assert vm.read_file("/root/blob") == blob
    assert vm.run("stat -c %a /root/blob").stdout == b"600\n"
    assert {e["name"] if isinstance(e, dict) else e.name for e in vm.list_dir("/root")} >= {"blob"}
    with pytest.raises(FileNotFoundError):
        vm.read_file("/no/such/file")
    with pytest.raises(FileNotFoundError):
        vm.write_file("/no/such/dir/file", b"x")


def test_the_terminal_answers_typing(session, vm):
    driver = session.browser.driver
    driver.find_element(By.CSS_SELECTOR, "#terminal textarea").send_keys("echo typed-$((6*7))\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "typed-42" in terminal_text(driver):
            return
        time.sleep(0.1)
    raise AssertionError("the shell never answered on the terminal; it shows:\n" + terminal_text(driver))


def test_bad_options_raise_invalid_option(page):
    with pytest.raises(pyapptron.InvalidOption, match="out of range for c2w"):
        page.boot("c2w", memory_mib=64)
    with pytest.raises(pyapptron.InvalidOption, match="out of range for c2w"):
        page.boot("c2w", "agent-x86_64", memory_mib=4096)
    with pytest.raises(pyapptron.InvalidOption, match="for a user's module"):
        page.boot("c2w", args=["-c", "true"])
    with pytest.raises(pyapptron.ImageNotFound, match="agent-x86_64"):
        page.boot("c2w", "no-such-image")


# -- a user's own WASI module: the probe -------------------------------------------------
PROBE = """
import asyncio, pyapptron
from pyapptron import _browser
probe_url = _browser.default_assets_url() + "c2w/probe.wasm"
async def probe(**options):
    vm = await pyapptron.boot("c2w", wasm=options.pop("wasm", probe_url), **options)
    await vm.console.wait_for(rb"probe> ", timeout=30)
    return vm
async def say(vm, line, until=rb"probe> "):
    vm.console.send(line.encode() + b"\\n")  # a program's stdin, not a terminal: no Enter = CR
    await vm.console.wait_for(until, timeout=30)
    return vm.console.before.replace(b"\\r", b"").decode()
"""


def test_the_probe_talks_over_stdin_stdout_and_stderr(page):
    result = page.python(PROBE + """
vm = await probe(args=["one", "two words"], env={"GREETING": "hello"})
caps = vm.capabilities.as_dict()
out = [await say(vm, "echo hi there"), await say(vm, "err to stderr"), await say(vm, "args"),
       await say(vm, "env GREETING"), await say(vm, "env MISSING")]
vm.console.sendeof()
await vm.console.wait_for(rb"probe: eof", timeout=30)
code = await vm.wait(timeout=30)
await vm.shutdown()
result = [caps, out, code, vm.returncode]
""")
    caps, out, code, returncode = result
    assert caps == {"arch": "x86_64", "exec": False, "files": False, "console": True, "snapshot": False,
                    "network": False, "persist": False}
    # The console echoes nothing itself: what comes back is the program's own output.
    assert out == ["hi there\n", "to stderr\n", "c2w\none\ntwo words\n", "hello\n", "(unset)\n"]
    assert (code, returncode) == (0, 0)


def test_the_probe_reads_and_writes_preopened_directories(page):
    result = page.python(PROBE + """
vm = await probe(files={"/share/in.txt": b"from the host\\n", "/share/sub/deep.bin": bytes(range(256))},
                 preopens=["/share"])
out = [await say(vm, "cat /share/in.txt"), await say(vm, "ls /share"),
       await say(vm, "write /share/out.txt written by wasm"), await say(vm, "cat /share/out.txt"),
       await say(vm, "cat /etc/passwd")]
await vm.shutdown()
result = out
""")
    assert result[0] == "from the host\n"
    assert result[1] == "in.txt\nsub\n"
    assert result[2] == "wrote /share/out.txt\n"
    assert result[3] == "written by wasm"
    assert result[4].startswith("cat: /etc/passwd: ")  # outside every preopen: wasi-libc refuses it


def test_poll_times_out_or_wakes_on_input(page):
    result = page.python(PROBE + """
vm = await probe()
timed = await say(vm, "poll 300")
vm.console.send(b"poll 20000\\n")
await asyncio.sleep(0.5)
started = asyncio.get_running_loop().time()
vm.console.send(b"x")
await vm.console.wait_for(rb"poll: readable", timeout=30)
woke = asyncio.get_running_loop().time() - started
await vm.shutdown()
result = [timed, woke]
""")
    timed, woke = result
    ms = int(timed.split("after ")[1].split(" ms")[0])
    assert timed.startswith("poll: timeout after") and 250 <= ms < 5000
    assert woke < 5  # input ends the 20 s wait at once


def test_exit_status_ends_the_console_and_a_module_in_chunks_runs(page):
    result = page.python(PROBE + """
vm = await probe()
vm.console.send(b"exit 7\\n")
code = await vm.wait(timeout=30)
try:
    await vm.console.wait_for(rb"never", timeout=5)
    eof = None
except pyapptron.ConsoleEOF as exc:
    eof = str(exc)
await vm.shutdown()
# The same module as two chunks, concatenated in order, and as bytes.
wasm = await _browser.fetch_bytes(probe_url)
half = len(wasm) // 2
import js
from pyodide.ffi import to_js
urls = [js.URL.createObjectURL(js.Blob.new(to_js([to_js(part)]))) for part in (wasm[:half], wasm[half:])]
vm2 = await probe(wasm=urls)
chunked = await say(vm2, "echo chunked")
await vm2.shutdown()
vm3 = await probe(wasm=wasm, args=["-x"])
as_bytes = await say(vm3, "args")
await vm3.shutdown()
try:
    await pyapptron.boot("c2w", wasm=b"not a module")
    bad = None
except pyapptron.InvalidOption as exc:
    bad = str(exc)
result = [code, eof, chunked, as_bytes, bad]
""")
    code, eof, chunked, as_bytes, bad = result
    assert code == 7
    assert "exited with status 7" in eof
    assert chunked == "chunked\n"
    assert as_bytes == "c2w\n--\n-x\n"  # a command that starts with a dash follows "--"
    assert "not a WebAssembly module" in bad


# Last: it takes the browser to another page.
def test_a_page_without_cross_origin_isolation_gets_a_clear_error(pyapptron_browser):
    with PageServer(0, isolated=False) as server:
        plain = RemoteSession(pyapptron_browser, server.url)
        with pytest.raises(pyapptron.NotIsolated, match="Cross-Origin-Embedder-Policy: require-corp"):
            plain.boot("c2w")
