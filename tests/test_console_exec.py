"""Console-framed exec (pyapptron.console_exec) against real shells on a real pty.

The guest side of a QEMU-Wasm machine without the agent is a shell on a serial
console; here that is dash (/bin/sh) and busybox's ash on a pseudo-terminal with
the kernel's line discipline: echo on, CR LF on output, ^C raising SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import pty
import shutil
import subprocess

import pytest

from pyapptron.console import Console
from pyapptron.console_exec import ConsoleExec, shell_line
from pyapptron.errors import InvalidOption, MachineClosed

SHELLS = [s for s in ("/bin/sh", shutil.which("busybox")) if s]


async def _shell_console(shell: str):
    master, slave = pty.openpty()
    argv = [shell] if not shell.endswith("busybox") else [shell, "sh"]
    proc = subprocess.Popen(argv + ["-i"], stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={"PS1": "~ # ", "PATH": os.environ["PATH"], "TERM": "dumb"},
                            preexec_fn=lambda: __import__("fcntl").ioctl(0, __import__("termios").TIOCSCTTY, 0))
    os.close(slave)
    console = Console(lambda data: os.write(master, data))
    loop = asyncio.get_running_loop()

    def readable():
        try:
            data = os.read(master, 65536)
        except OSError:
            data = b""
        if data:
            console.feed(data)
        else:
            loop.remove_reader(master)

    loop.add_reader(master, readable)

    def close():
        loop.remove_reader(master)
        proc.kill()
        proc.wait()
        os.close(master)

    return console, close


@pytest.fixture(params=SHELLS, ids=os.path.basename)
def on_shell(request):
    """on_shell(async fn(runner)): runs fn against a fresh shell on a pty."""

    def run(fn, *args):
        async def main():
            console, close = await _shell_console(request.param)
            try:
                runner = ConsoleExec(console)
                await runner.wait_ready(10)
                return await fn(runner, *args)
            finally:
                close()

        return asyncio.run(main())

    return run


def test_output_and_status_come_back_through_a_real_shell(on_shell):
    async def check(shell):
        status, out, timed_out = await shell.run("echo hello; echo oops >&2; exit 3")
        assert (status, out, timed_out) == (3, b"hello\noops\n", False)

    on_shell(check)


def test_argv_lists_are_quoted_so_spaces_and_quotes_survive(on_shell):
    async def check(shell):
        status, out, _ = await shell.run(["printf", "%s|", "a b", "it's", "$HOME", "*"])
        assert status == 0
        assert out == b"a b|it's|$HOME|*|"

    on_shell(check)


def test_cwd_and_env_apply_to_the_command_only(on_shell, tmp_path):
    async def check(shell, tmp_path):
        status, out, _ = await shell.run("pwd; echo $GREETING-$HOME", cwd=str(tmp_path), env={"GREETING": "hi"})
        assert status == 0
        assert out == f"{tmp_path}\nhi-\n".encode()
        status, out, _ = await shell.run("pwd")
        assert out != f"{tmp_path}\n".encode()

    on_shell(check, tmp_path)


def test_a_command_cannot_change_the_shell_that_runs_the_next_one(on_shell):
    async def check(shell):
        await shell.run("cd /; X=1; exit 7")
        status, out, _ = await shell.run("echo [$X]")
        assert (status, out) == (0, b"[]\n")

    on_shell(check)


def test_output_without_a_final_newline_and_a_large_output(on_shell):
    async def check(shell):
        status, out, _ = await shell.run("printf abc")
        assert (status, out) == (0, b"abc")
        status, out, _ = await shell.run("i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done")
        lines = out.decode().splitlines()
        assert status == 0 and len(lines) == 3000 and lines[-1] == "line-2999"

    on_shell(check)


def test_multi_line_commands_and_comments(on_shell):
    async def check(shell):
        status, out, _ = await shell.run("echo one\necho two # a comment")
        assert (status, out) == (0, b"one\ntwo\n")

    on_shell(check)


def test_a_command_the_shell_cannot_parse_fails_instead_of_hanging(on_shell):
    async def check(shell):
        for broken in ("echo 'unterminated", "( echo", "if true; then"):
            status, out, timed_out = await shell.run(broken, timeout=10)
            assert status == 2 and not timed_out and b"sh: " in out
        status, out, _ = await shell.run("echo fine")
        assert (status, out) == (0, b"fine\n")

    on_shell(check)


def test_a_timeout_interrupts_the_command_and_the_shell_stays_usable(on_shell):
    async def check(shell):
        status, out, timed_out = await shell.run("echo started; sleep 30", timeout=1)
        assert (status, out, timed_out) == (130, b"started\n", True)  # without the prompt or the status line
        status, out, _ = await shell.run("echo still here")
        assert (status, out) == (0, b"still here\n")

    on_shell(check)


def test_a_lost_interrupt_is_sent_again_and_the_status_waits_for_the_prompt(on_shell):
    # The first ^C does not end this command, as when it lands between fork and exec (the
    # new program never sees it). A status line typed then would sit behind the command.
    async def check(shell):
        # (exec: no subshell between, which a ^C would end: the whole job is this sh)
        command = "trap 'trap - INT' INT; echo started; sleep 30; echo survived; sleep 30"
        status, out, timed_out = await shell.run(["exec", "sh", "-c", command], timeout=1)
        assert (status, out, timed_out) == (130, b"started\n^Csurvived\n", True)
        status, out, _ = await shell.run("echo still here")
        assert (status, out) == (0, b"still here\n")

    on_shell(check)


def test_a_status_line_the_shell_discards_is_typed_again_at_its_next_prompt():
    # A scripted shell (pure logic): it drops the first status line (as a shell that read
    # it just as a ^C arrived would) and prompts again; the second one runs.
    async def main():
        typed = []

        def shell(data: bytes) -> None:
            typed.append(data)
            loop = asyncio.get_running_loop()
            if data.startswith(b"printf '\\036S"):
                token = data.split()[2].rstrip(b";")
                loop.call_soon(console.feed, b"\x1eS" + token + b"\x1e\r\nstarted\r\n")
            elif data == b"\x03":
                loop.call_soon(console.feed, b"^C\r\n# ")
            elif sum(t.endswith(b" 130\r") for t in typed) == 1:
                loop.call_soon(console.feed, b"\r\n# ")  # discarded
            else:
                token = data.split()[2]
                loop.call_soon(console.feed, b"\x1eE" + token + b":130\x1e\r\n# ")

        console = Console(shell)
        status, out, timed_out = await ConsoleExec(console).run("sleep 30", timeout=0.1)
        assert (status, out, timed_out) == (130, b"started\n", True)
        assert typed.count(b"\x03") == 1 and sum(t.endswith(b" 130\r") for t in typed) == 2

    asyncio.run(main())


def test_commands_from_several_tasks_run_one_after_another(on_shell):
    async def check(shell):
        results = await asyncio.gather(*(shell.run(f"echo {i}; exit {i}") for i in range(5)))
        assert [(s, o) for s, o, _ in results] == [(i, f"{i}\n".encode()) for i in range(5)]

    on_shell(check)


def test_closing_the_machine_ends_a_waiting_command(on_shell):
    async def check(shell):
        task = asyncio.ensure_future(shell.run("sleep 30"))
        await asyncio.sleep(0.3)
        shell.close(MachineClosed("gone"))
        with pytest.raises(MachineClosed):
            await task
        with pytest.raises(MachineClosed):
            await shell.run("true")


    on_shell(check)


def test_the_typed_line_never_holds_the_raw_marker_bytes():
    line = shell_line(["echo", "x"], "abcd")
    assert "\x1e" not in line and "abcd" in line
    assert line.startswith("printf '\\036S%s\\036\\n' abcd; ( echo x ) </dev/null 2>&1; ")


def test_control_characters_and_bad_arguments_are_refused_with_a_clear_error():
    for bad in ("echo \x03", "printf '\x1e'", ""):
        with pytest.raises(InvalidOption):
            shell_line(bad, "t")
    with pytest.raises(InvalidOption, match="env"):
        shell_line("true", "t", env={"BAD-NAME": "x"})
    with pytest.raises(InvalidOption):
        shell_line([], "t")
