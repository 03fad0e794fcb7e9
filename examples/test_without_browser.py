"""For test authors: unit-test your own code that drives a Machine, with no browser and no
emulator. `pyapptron.testing.ScriptedBackend` plays the guest: here a Python function
answers each command. Run with `python -m pytest examples/test_without_browser.py`
(a plain CPython; it takes well under a second).
"""

import asyncio

import pytest

import pyapptron
from pyapptron.testing import ScriptedBackend, commands, scripted_machine


# -- the code under test: what a user's application does with a machine -------------------
async def installed_python(vm) -> tuple[int, int] | None:
    """The guest's Python version, or None when it has none."""
    r = await vm.run(["python3", "-c", "import sys; print(*sys.version_info[:2])"], text=True)
    if r.returncode == 127:
        return None
    major, minor = r.stdout.split()
    return int(major), int(minor)


async def count_lines(vm, path: str) -> int:
    """How many lines a guest file has; CalledProcessError when the guest cannot read it."""
    r = await vm.run(["wc", "-l", path], check=True)
    return int(r.stdout.split()[0])


# -- a scripted guest ------------------------------------------------------------------
GUEST_FILES = {"/etc/hosts": b"127.0.0.1 localhost\n::1 localhost\n"}


def guest_with(python_version):
    """A guest with that Python version (None: without Python) and the files above."""
    def guest(cmd):
        if cmd.argv[0] == "python3":
            if python_version is None:
                return 127, b"", b"sh: python3: not found\n"
            return 0, f"{python_version[0]} {python_version[1]}\n".encode(), b""
        if cmd.argv[:2] == ["wc", "-l"]:
            path = cmd.argv[2]
            if path not in GUEST_FILES:
                return 1, b"", f"wc: {path}: No such file or directory\n".encode()
            lines = GUEST_FILES[path].count(b"\n")
            return 0, f"{lines} {path}\n".encode(), b""
        raise FileNotFoundError(2, "No such file or directory")  # run() raises it, as subprocess does
    return guest


def run(coroutine_function, backend):
    async def main():
        vm = await scripted_machine(backend)
        async with vm:  # shuts the machine down at the end
            return await coroutine_function(vm)
    return asyncio.run(main())


def test_installed_python_reads_the_version_the_guest_prints():
    assert run(installed_python, ScriptedBackend(commands(guest_with((3, 11))))) == (3, 11)


def test_installed_python_is_none_when_the_guest_has_no_python():
    assert run(installed_python, ScriptedBackend(commands(guest_with(None)))) is None


def test_count_lines_counts_what_wc_prints():
    assert run(lambda vm: count_lines(vm, "/etc/hosts"), ScriptedBackend(commands(guest_with(None)))) == 2


def test_count_lines_raises_called_process_error_with_the_guest_stderr():
    with pytest.raises(pyapptron.CalledProcessError) as info:
        run(lambda vm: count_lines(vm, "/no/such/file"), ScriptedBackend(commands(guest_with(None))))
    assert (info.value.returncode, info.value.stderr) == (1, b"wc: /no/such/file: No such file or directory\n")


def test_a_program_the_guest_lacks_raises_file_not_found():
    with pytest.raises(FileNotFoundError):
        run(lambda vm: vm.run(["no-such-program"]), ScriptedBackend(commands(guest_with(None))))


def test_the_backend_records_what_the_host_asked_for():
    backend = ScriptedBackend(commands(lambda cmd: (0, cmd.stdin.upper(), b"")))
    out = run(lambda vm: vm.run(["tr", "a-z", "A-Z"], input=b"shout", env={"LANG": "C"}, cwd="/tmp"), backend)
    assert out.stdout == b"SHOUT"
    # Every frame the host sent is kept: the EXEC, its stdin, the end of its stdin.
    assert [f.type for f in backend.frames][-3:] == [0x10, 0x11, 0x12]
