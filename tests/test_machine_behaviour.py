"""In real headless Chromium: what every engine's Machine does, the same on each.

The module's machine is parametrized over the engines: v86 (`minimal`, i686) and c2w
(x86_64 through WASI: `debian-x86_64` with a busybox initramfs, `agent-x86_64` with a
Debian root on a lazily read disk). Each is the machine its page booted into the page's
terminal (``web/index.html?emulator=...&image=...``), so the same VM answers run(), the
file calls, the console and typing into the terminal. One boot per engine for the whole
module; every test leaves the machine usable.

What only one engine has stays in its own module: tests/test_browser_v86.py (a 9p root,
lifetime with snapshot resumes), tests/test_browser_c2w.py (a user's WASI module, the
cross-origin isolation c2w needs), and the snapshot and persist modules.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from dataclasses import dataclass

import pytest
from selenium.webdriver.common.by import By

import pyapptron
from pyapptron.host.browser import RemoteSession, terminal_text

pytestmark = pytest.mark.browser


@dataclass(frozen=True)
class Engine:
    emulator: str
    image: str
    capabilities: dict
    uname_m: bytes
    elf_class: bytes  # /bin/sh's ELF class byte: 1 = 32-bit, 2 = 64-bit
    elf_machine: bytes  # e_machine: 0x03 = i386, 0x3e = x86-64
    kernel_release: str  # a regex uname -r matches
    too_little_memory_mib: int
    # How much data the bulk tests move: what each engine moves in CI time (c2w's Bochs
    # is several times slower than v86 per byte through the channel).
    big_output: int
    stdin_echo: int
    blob: int
    mixed: int
    slow_timeout: float = 120


V86_CAPS = {"arch": "i686", "exec": True, "files": True, "console": True, "snapshot": True,
            "network": False, "persist": False}
C2W_CAPS = {"arch": "x86_64", "exec": True, "files": True, "console": True, "snapshot": True,
            "network": False, "persist": False}
ENGINES = {
    "v86-minimal": Engine("v86", "minimal", V86_CAPS, b"i686\n", b"\x01", b"\x03\x00", r".*-686",
                          too_little_memory_mib=16, big_output=6_000_000, stdin_echo=1 << 20, blob=40000,
                          mixed=150_000),
    "c2w-debian-x86_64": Engine("c2w", "debian-x86_64", C2W_CAPS, b"x86_64\n", b"\x02", b"\x3e\x00", r".*-amd64",
                                too_little_memory_mib=64, big_output=1_000_000, stdin_echo=1 << 18, blob=10000,
                                mixed=20_000),
    "c2w-agent-x86_64": Engine("c2w", "agent-x86_64", C2W_CAPS, b"x86_64\n", b"\x02", b"\x3e\x00", r".*-amd64",
                               too_little_memory_mib=64, big_output=1_000_000, stdin_echo=1 << 18, blob=10000,
                               mixed=20_000),
}


@pytest.fixture(scope="module", params=list(ENGINES))
def engine(request) -> Engine:
    return ENGINES[request.param]


@pytest.fixture(scope="module")
def session(engine, pyapptron_browser, pyapptron_server):
    """The page with the engine's machine booted into its terminal."""
    return RemoteSession(pyapptron_browser, pyapptron_server.url
                         + f"web/index.html?emulator={engine.emulator}&image={engine.image}", autoboot=True)


@pytest.fixture(scope="module")
def vm(session):
    # Named `vm` so that the plugin's report of a failed test shows this machine's console.
    return session.page_machine()


# -- boot ------------------------------------------------------------------------------
def test_boot_reports_the_engines_capabilities_and_architecture(vm, engine):
    assert vm.capabilities.as_dict() == engine.capabilities
    r = vm.run("uname -m; echo oops >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, engine.uname_m, b"oops\n")


def test_the_guest_runs_binaries_of_the_engines_architecture(vm, engine):
    # /bin/sh is an ELF of the guest's architecture (class at byte 4, e_machine at 18).
    header = vm.read_file("/bin/sh")[:20]
    assert header[:4] == b"\x7fELF"
    assert (header[4:5], header[18:20]) == (engine.elf_class, engine.elf_machine)
    r = vm.run(["sh", "-c", "echo $((1 << 40))"])
    assert r.stdout == b"1099511627776\n"  # 64-bit shell arithmetic
    release = vm.run("uname -r").stdout.decode()
    assert re.fullmatch(engine.kernel_release + "\n", release), f"kernel release {release!r}"


# -- run -------------------------------------------------------------------------------
def test_output_without_trailing_newline_is_exact(vm):
    assert vm.run("printf abc").stdout == b"abc"
    assert vm.run("printf ''").stdout == b""


def test_binary_output_with_nul_and_ff_is_exact(vm):
    r = vm.run("printf '\\000\\377\\000x\\377'")
    assert r.stdout == b"\x00\xff\x00x\xff"
    every_byte = bytes(range(256))
    vm.write_file("/tmp/all.bin", every_byte)
    assert vm.run(["cat", "/tmp/all.bin"]).stdout == every_byte


def test_output_that_looks_like_protocol_frames_or_markers_is_just_data(vm):
    tricky = b"\xa5\x5a\x83\x00\x01\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00@@1@@ EXIT 0\n"
    vm.write_file("/tmp/tricky", tricky)
    r = vm.run("cat /tmp/tricky; cat /tmp/tricky >&2")
    assert (r.stdout, r.stderr, r.returncode) == (tricky, tricky, 0)


def test_megabytes_of_output_arrive_whole(vm, engine):
    r = vm.run(f"head -c {engine.big_output} /dev/urandom > /tmp/big && cat /tmp/big && sha256sum /tmp/big >&2",
               timeout=engine.slow_timeout)
    assert len(r.stdout) == engine.big_output
    assert r.stderr.split()[0].decode() == hashlib.sha256(r.stdout).hexdigest()


def test_quotes_newlines_and_argv_lists(vm):
    script = "a='it'\"'\"'s'\nb=\"two words\"\necho \"$a|$b\"\n"
    assert vm.run(script).stdout == b"it's|two words\n"
    r = vm.run(["printf", "%s|", "with space", "quote'\"", "new\nline", "$HOME"])
    assert r.stdout == b"with space|quote'\"|new\nline|$HOME|"


def test_stdin_from_input_arrives_exactly(vm, engine):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    digest = vm.run("sha256sum", input=data, timeout=engine.slow_timeout).stdout.split()[0].decode()
    assert digest == hashlib.sha256(data).hexdigest()
    echo = data[:engine.stdin_echo]
    assert vm.run("cat", input=echo, timeout=engine.slow_timeout).stdout == echo
    assert vm.run("wc -l", input="a\nb\nc\n").stdout.strip() == b"3"


def test_cwd_env_and_text(vm):
    r = vm.run("pwd; echo $FOO; echo ${HOME:-unset}", cwd="/tmp", env={"FOO": "bar", "PATH": "/bin:/usr/bin"},
               text=True)
    assert r.stdout == "/tmp\nbar\nunset\n"
    r = vm.run("pwd; echo $FOO", cwd="/tmp", env={"FOO": "bar", "PATH": "/bin:/sbin"}, text=True)
    assert r.stdout == "/tmp\nbar\n"
    assert vm.run("pwd").stdout == b"/root\n"


def test_exit_codes_and_signals(vm):
    assert vm.run("exit 255").returncode == 255
    assert vm.run("kill -9 $$").returncode == -9


def test_timeout_kills_the_command_keeps_partial_output_and_the_vm_usable(vm):
    with pytest.raises(pyapptron.TimeoutExpired) as info:
        vm.run("echo started; sleep 60 & wait", timeout=2)
    assert isinstance(info.value, subprocess.TimeoutExpired)
    assert info.value.stdout == b"started\n"
    assert vm.run("echo still here").stdout == b"still here\n"
    ps = vm.run("ps")
    assert ps.returncode == 0 and b"sleep 60" not in ps.stdout  # the whole process group is gone


def test_concurrent_runs_do_not_mix_outputs(session, vm):
    result = session.python(f"""
import asyncio
m = machines[{vm.id}]
rs = await asyncio.gather(*(m.run(f"for i in 1 2 3 4 5; do echo job{{n}}; done; exit {{n}}") for n in range(12)))
result = [[r.returncode, r.stdout.decode()] for r in rs]
""")
    assert result == [[n, f"job{n}\n" * 5] for n in range(12)]


def test_concurrent_mixed_traffic_keeps_every_byte(session, vm, engine):
    """Writes, stdin and reads of several requests at once share the channel's window:
    nothing may be dropped, reordered or mixed (v86 drops input past the guest's buffers)."""
    result = session.python(f"""
import asyncio, hashlib, random
m = machines[{vm.id}]
async def worker(n):
    data = random.Random(n).randbytes({engine.mixed} + n * 7919)
    await m.write_file(f"/tmp/mix{{n}}", data)
    echoed = await m.run(["cat"], input=data)
    back = await m.read_file(f"/tmp/mix{{n}}")
    digest = (await m.run(["sha256sum", f"/tmp/mix{{n}}"])).stdout.split()[0].decode()
    return echoed.stdout == data and back == data and digest == hashlib.sha256(data).hexdigest()
result = await asyncio.gather(*(worker(n) for n in range(8)))
""")
    assert result == [True] * 8


def test_missing_program_and_bad_cwd_raise_file_not_found(vm):
    with pytest.raises(FileNotFoundError):
        vm.run(["definitely-not-a-program"])
    with pytest.raises(FileNotFoundError):
        vm.run("true", cwd="/no/such/dir")
    assert vm.run("definitely-not-a-program").returncode == 127  # through the shell


def test_check_raises_called_process_error(vm):
    with pytest.raises(pyapptron.CalledProcessError) as info:
        vm.run("echo no >&2; exit 4", check=True)
    assert (info.value.returncode, info.value.stderr) == (4, b"no\n")


@pytest.mark.parametrize("kwargs, match", [
    ({"args": []}, "shell string or a non-empty list"),
    ({"args": "true", "timeout": 0}, "timeout must be a positive"),
    ({"args": "true", "timeout": "soon"}, "timeout must be a positive"),
])
def test_bad_run_arguments_raise_invalid_option(vm, kwargs, match):
    with pytest.raises(pyapptron.InvalidOption, match=match):
        vm._call("run", **kwargs)


# -- files -----------------------------------------------------------------------------
def test_write_read_round_trip_including_binary(vm, engine):
    vm.write_file("/root/hello.txt", b"hi")
    assert vm.read_file("/root/hello.txt") == b"hi"
    blob = hashlib.sha256(b"seed").digest() * engine.blob  # 1.28 MB on v86, 320 kB on c2w
    for path in ("/tmp/blob", "/root/blob"):
        vm.write_file(path, blob, mode=0o600)
        assert vm.read_file(path) == blob
        assert vm.run(["stat", "-c", "%a", path]).stdout == b"600\n"
    assert {e.name for e in vm.list_dir("/root")} >= {"hello.txt", "blob"}
    vm.write_file("/tmp/empty", b"")
    assert vm.read_file("/tmp/empty") == b""


def test_the_agent_talks_over_the_shared_memory_rings(vm):
    """Every engine's agent maps its rings through /dev/mem (files move at tens of MB/s);
    the agent is the parent of the shell that runs this."""
    maps = vm.run("cat /proc/$PPID/maps").stdout.decode()
    assert "/dev/mem" in maps, maps


def test_missing_paths_raise_file_not_found(vm):
    with pytest.raises(FileNotFoundError):
        vm.read_file("/no/such/file")
    with pytest.raises(FileNotFoundError):
        vm.write_file("/no/such/dir/file", b"x")
    with pytest.raises(FileNotFoundError):
        vm.list_dir("/no/such/dir")
    with pytest.raises(IsADirectoryError):
        vm.read_file("/etc")


def test_list_dir_describes_entries(vm):
    vm.run("mkdir -p /tmp/ls/sub && printf 12345 > /tmp/ls/f && ln -sf f /tmp/ls/link")
    entries = {e.name: e for e in vm.list_dir("/tmp/ls")}
    assert set(entries) == {"sub", "f", "link"}
    assert entries["sub"].is_dir() and entries["link"].is_symlink()
    assert entries["f"].is_file() and entries["f"].size == 5


def test_bad_file_arguments_raise_invalid_option(vm):
    with pytest.raises(pyapptron.InvalidOption, match="data must be bytes or str"):
        vm._call("write_file", path="/tmp/x", data=123)
    with pytest.raises(pyapptron.InvalidOption, match="non-empty string"):
        vm._call("read_file", path="")


# -- the console and the page's terminal ---------------------------------------------------
def test_console_prompt_typing_and_exec_stays_off_the_console(vm):
    vm.console.wait_for(rb"\$ |# ", timeout=30)
    vm.run("echo exec-output-should-not-show")
    vm.console.sendline("echo typed-$((6*7))")
    vm.console.wait_for(rb"typed-42", timeout=10)
    assert b"exec-output-should-not-show" not in vm.console.transcript


def test_console_wait_for_times_out_with_the_output_seen(vm):
    vm.console.sendline("echo seen-$((6*9)); echo tail-$((6*9))")  # the typed line's echo has neither
    vm.console.wait_for(rb"seen-54", timeout=30)
    with pytest.raises(pyapptron.WaitTimeout) as info:
        vm.console.wait_for("this-text-never-appears", timeout=2)
    assert b"tail-54" in info.value.buffer  # what the console printed meanwhile, for the user to see


def test_the_terminal_answers_typing(session, vm):
    driver = session.browser.driver
    driver.find_element(By.CSS_SELECTOR, "#terminal textarea").send_keys("echo typed-$((6*8))\n")
    deadline = time.monotonic() + 30
    while "typed-48" not in terminal_text(driver):
        assert time.monotonic() < deadline, f"the shell never answered on the terminal; it shows:\n" \
                                            f"{terminal_text(driver)}"
        time.sleep(0.1)  # polling the screen, not waiting a fixed time


# -- bad options -----------------------------------------------------------------------
def test_bad_boot_options_name_what_is_available(session, engine):
    with pytest.raises(pyapptron.ImageNotFound, match=f"available: .*{engine.image}"):
        session.boot(engine.emulator, "no-such-image")
    with pytest.raises(pyapptron.UnknownEmulator, match="available: c2w, qemu-wasm, v86"):
        session.boot("no-such-emulator")
    for memory_mib in (engine.too_little_memory_mib, 4096):
        with pytest.raises(pyapptron.InvalidOption, match=f"memory_mib={memory_mib} is out of range for "
                                                          f"{engine.emulator}"):
            session.boot(engine.emulator, engine.image, memory_mib=memory_mib)
