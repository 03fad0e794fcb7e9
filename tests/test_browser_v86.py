"""In real headless Chromium: boot the minimal v86 image, then exec, files and console.

One VM is booted for the module (the `vm` fixture); every test leaves it usable.
"""

import hashlib
import subprocess

import pytest

import pyapptron

pytestmark = pytest.mark.browser


# -- boot ------------------------------------------------------------------------------
def test_boot_reports_capabilities_and_a_32bit_guest(vm):
    assert vm.capabilities.as_dict() == {
        "arch": "i686", "exec": True, "files": True, "console": True, "snapshot": True, "network": False, "persist": False,
    }
    r = vm.run("uname -m; echo oops >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"i686\n", b"oops\n")


# -- run -----------------------------------------------------------------------------
def test_output_without_trailing_newline_is_exact(vm):
    assert vm.run("printf abc").stdout == b"abc"
    assert vm.run("printf ''").stdout == b""


def test_binary_output_with_nul_and_ff_is_exact(vm):
    r = vm.run("printf '\\000\\377\\000x\\377'")
    assert r.stdout == b"\x00\xff\x00x\xff"
    every_byte = bytes(range(256))
    vm.write_file("/tmp/all.bin", every_byte)
    assert vm.run(["cat", "/tmp/all.bin"]).stdout == every_byte


def test_many_megabytes_of_output_arrive_whole(vm):
    r = vm.run("head -c 6000000 /dev/urandom > /tmp/big && cat /tmp/big && sha256sum /tmp/big >&2")
    assert len(r.stdout) == 6_000_000
    assert r.stderr.split()[0].decode() == hashlib.sha256(r.stdout).hexdigest()


def test_output_that_looks_like_protocol_frames_or_markers_is_just_data(vm):
    tricky = b"\xa5\x5a\x83\x00\x01\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00@@1@@ EXIT 0\n"
    vm.write_file("/tmp/tricky", tricky)
    r = vm.run("cat /tmp/tricky; cat /tmp/tricky >&2")
    assert (r.stdout, r.stderr, r.returncode) == (tricky, tricky, 0)


def test_quotes_newlines_and_argv_lists(vm):
    script = "a='it'\"'\"'s'\nb=\"two words\"\necho \"$a|$b\"\n"
    assert vm.run(script).stdout == b"it's|two words\n"
    r = vm.run(["printf", "%s|", "with space", "quote'\"", "new\nline", "$HOME"])
    assert r.stdout == b"with space|quote'\"|new\nline|$HOME|"


def test_stdin_from_input_arrives_exactly(vm):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    r = vm.run("cat", input=data)
    assert r.stdout == data
    assert vm.run("wc -l", input="a\nb\nc\n").stdout.strip() == b"3"


def test_cwd_env_and_text(vm):
    r = vm.run("pwd; echo $FOO; echo ${HOME:-unset}", cwd="/tmp", env={"FOO": "bar", "PATH": "/bin:/usr/bin"}, text=True)
    assert r.stdout == "/tmp\nbar\nunset\n"
    assert vm.run("pwd").stdout == b"/root\n"


def test_exit_codes_and_signals(vm):
    assert vm.run("exit 255").returncode == 255
    assert vm.run("kill -9 $$").returncode == -9


def test_timeout_kills_the_command_keeps_partial_output_and_the_vm_usable(vm):
    with pytest.raises(pyapptron.TimeoutExpired) as info:
        vm.run("echo started; sleep 60 & wait", timeout=1.5)
    assert isinstance(info.value, subprocess.TimeoutExpired)
    assert info.value.stdout == b"started\n"
    assert vm.run("echo still here").stdout == b"still here\n"
    assert b"sleep 60" not in vm.run("ps").stdout  # the whole process group is gone


def test_concurrent_runs_do_not_mix_outputs(pyapptron_session, vm):
    result = pyapptron_session.python(f"""
import asyncio
m = machines[{vm.id}]
rs = await asyncio.gather(*(m.run(f"for i in 1 2 3 4 5; do echo job{{n}}; done; exit {{n}}") for n in range(12)))
result = [[r.returncode, r.stdout.decode()] for r in rs]
""")
    assert result == [[n, f"job{n}\n" * 5] for n in range(12)]


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
def test_write_read_round_trip_including_binary(vm):
    vm.write_file("/root/hello.txt", b"hi")
    assert vm.read_file("/root/hello.txt") == b"hi"
    blob = hashlib.sha256(b"seed").digest() * 40000  # 1.28 MB
    vm.write_file("/tmp/blob", blob, mode=0o600)
    assert vm.read_file("/tmp/blob") == blob
    assert vm.run("stat -c %a /tmp/blob").stdout == b"600\n"
    vm.write_file("/tmp/empty", b"")
    assert vm.read_file("/tmp/empty") == b""


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


# -- console ---------------------------------------------------------------------------
def test_console_prompt_typing_and_exec_stays_off_the_console(vm):
    vm.console.wait_for(rb"\$ |# ", timeout=30)
    vm.run("echo exec-output-should-not-show")
    vm.console.sendline("echo typed-$((6*7))")
    vm.console.wait_for(rb"typed-42", timeout=10)
    assert b"exec-output-should-not-show" not in vm.console.transcript


def test_console_wait_for_times_out_with_the_output_seen(vm):
    with pytest.raises(pyapptron.WaitTimeout):
        vm.console.wait_for("this-text-never-appears", timeout=0.5)


# -- lifetime ---------------------------------------------------------------------------
def test_boot_errors_name_what_is_available(pyapptron_session):
    with pytest.raises(pyapptron.ImageNotFound, match="available: .*minimal"):
        pyapptron_session.boot("v86", "no-such-image")
    with pytest.raises(pyapptron.UnknownEmulator, match="available: c2w, qemu-wasm, v86"):
        pyapptron_session.boot("no-such-emulator")
    with pytest.raises(pyapptron.InvalidOption, match="memory_mib"):
        pyapptron_session.boot("v86", "minimal", memory_mib=16)


def test_async_with_shuts_down_and_a_closed_machine_says_so(pyapptron_session):
    result = pyapptron_session.python("""
async with await pyapptron.boot("v86", "minimal") as m:
    out = (await m.run("echo inside")).stdout
try:
    await m.run("true")
    closed = "no error"
except pyapptron.MachineClosed as exc:
    closed = str(exc)
result = [out.decode(), closed, m.closed]
""")
    assert result[0] == "inside\n" and "shut down" in result[1] and result[2] is True


def test_concurrent_mixed_traffic_keeps_every_byte(pyapptron_session, vm):
    """Writes, stdin and reads of several requests at once share the channel's window:
    nothing may be dropped, reordered or mixed (v86 drops input past the guest's buffers)."""
    result = pyapptron_session.python(f"""
import asyncio, hashlib, random
m = machines[{vm.id}]
async def worker(n):
    data = random.Random(n).randbytes(150_000 + n * 7919)
    await m.write_file(f"/tmp/mix{{n}}", data)
    echoed = await m.run(["cat"], input=data)
    back = await m.read_file(f"/tmp/mix{{n}}")
    digest = (await m.run(["sha256sum", f"/tmp/mix{{n}}"])).stdout.split()[0].decode()
    return echoed.stdout == data and back == data and digest == hashlib.sha256(data).hexdigest()
result = await asyncio.gather(*(worker(n) for n in range(8)))
""")
    assert result == [True] * 8


def test_a_9p_root_that_cannot_be_mounted_fails_the_boot_with_the_reason(pyapptron_session):
    """An image whose root files are not served must not come up as the bare initramfs."""
    with pytest.raises(pyapptron.BootError, match="cannot mount the root file system 'nosuchtag'"):
        pyapptron_session.boot("v86", "minimal", cmdline_extra="pyapptron.root=nosuchtag", timeout=45)
