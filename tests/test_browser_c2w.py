"""In real headless Chromium: what only the c2w backend does.

Exec, files, the console and bad options of the x86_64 images ("debian-x86_64",
"agent-x86_64") are the same on every engine: tests/test_machine_behaviour.py runs them
on both. Here: the WASI probe program (emulators/c2w/wasi_probe.c, built by the asset
command) as a user's own module, boot("c2w", wasm=...), which exercises our WASI host:
stdin, stdout, stderr, preopens, poll timeouts, exit statuses, a module in chunks; the
options only a user's module takes; and the cross-origin isolation c2w needs.
"""

import pytest

import pyapptron
from pyapptron.host.browser import RemoteSession
from pyapptron.host.server import PageServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page(pyapptron_browser, pyapptron_server):
    """A page with no machine of its own, for the probe and option tests."""
    return RemoteSession(pyapptron_browser, pyapptron_server.url)


def test_a_user_modules_options_given_to_an_image_raise_invalid_option(page):
    with pytest.raises(pyapptron.InvalidOption, match="for a user's module"):
        page.boot("c2w", args=["-c", "true"])


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
await vm.console.wait_for(rb"poll: waiting up to 20000 ms", timeout=30)
started = asyncio.get_running_loop().time()
vm.console.send(b"x")
await vm.console.wait_for(rb"poll: readable", timeout=30)
woke = asyncio.get_running_loop().time() - started
await vm.shutdown()
result = [timed, woke]
""")
    timed, woke = result
    ms = int(timed.split("timeout after ")[1].split(" ms")[0])
    assert timed.startswith("poll: waiting up to 300 ms\npoll: timeout after") and 250 <= ms < 5000
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
