"""In real headless Chromium: the two agent images, the same userland on two engines.

- "agent": Debian bookworm i386 on v86, root on v86's 9p device;
- "agent-x86_64": Debian bookworm amd64 on the c2w engine (Bochs for WASI), root a
  squashfs disk read lazily, with Node 22, Claude Code, Bun and Gemini CLI.

One VM per image: the page boots it into its xterm.js terminal, and the same machine
answers run()/read_file() from here, so the terminal tests see what a user sees and the
exec tests check the userland a program gets. Every test runs on both images unless it
is marked for one (@only), e.g. the x86_64 agent tools.
"""

import hashlib
import json
import os
import re
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from pyapptron.host.browser import RemoteSession, terminal_text

pytestmark = pytest.mark.browser

PROMPT = "root@pyapptron"
ASSETS = Path(__file__).resolve().parent.parent / "build" / "assets"
# What differs between the images: the page query, and what their programs report.
IMAGES = {
    "agent-x86_64": {"query": "emulator=c2w&image=agent-x86_64", "arch": "x86_64", "node": ("v22.", "x64"),
                     "bits": 64},
    "agent": {"query": "image=agent", "arch": "i686", "node": ("v18.", "ia32"), "bits": 32},
}


def only(*names):
    """Run this test on these images only (the others do not have what it checks).

    They must be the first of IMAGES: pytest shares a module-scoped fixture between tests
    by the parameter's position, so a test parametrized with a shorter list shares the
    booted machine only where the positions agree."""
    assert list(names) == list(IMAGES)[:len(names)], names

    def mark(test):
        test.images = names
        return test
    return mark


def pytest_generate_tests(metafunc):
    if "image" in metafunc.fixturenames:
        names = getattr(metafunc.function, "images", list(IMAGES))
        metafunc.parametrize("image", names, indirect=True, scope="module")


@pytest.fixture(scope="module")
def image(request):
    return dict(IMAGES[request.param], name=request.param)


@pytest.fixture(scope="module")
def session(image, pyapptron_browser, pyapptron_server):
    return RemoteSession(pyapptron_browser, pyapptron_server.url + "web/index.html?" + image["query"],
                         autoboot=True)


@pytest.fixture(scope="module")
def vm(session):
    return session.page_machine()


@pytest.fixture(scope="module")
def driver(session):
    return session.browser.driver


def screen(driver, visible=False):
    return terminal_text(driver, visible)


def wait_screen(driver, needle, timeout=30, visible=False):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = screen(driver, visible)
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared on the terminal; it shows:\n{screen(driver, visible)}")


def type_keys(driver, keys):
    driver.find_element(By.CSS_SELECTOR, "#terminal textarea").send_keys(keys)


# -- the userland, through run() -------------------------------------------------------
def test_the_agent_image_is_debian_bookworm_on_its_architecture(vm, image):
    assert vm.capabilities.arch == image["arch"]
    r = vm.run("uname -m; . /etc/os-release; echo $VERSION_CODENAME; readlink /proc/1/exe")
    assert r.stdout.decode().split() == [image["arch"], "bookworm", "/usr/bin/dash"]


def test_zsh_is_there_and_is_root_s_login_shell(vm):
    assert vm.run(["zsh", "-c", "echo $ZSH_VERSION"]).stdout == b"5.9\n"
    assert vm.run("getent passwd root").stdout.decode().strip().endswith(":/usr/bin/zsh")


def test_tmux_starts_a_detached_session(vm):
    r = vm.run("tmux new-session -d -s agent-test && tmux ls", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"agent-test: 1 windows")
    vm.run("tmux kill-server")


def test_git_init_commit_and_log_round_trip(vm):
    r = vm.run(
        "set -e; rm -rf /root/repo; mkdir /root/repo; cd /root/repo; git init -q;"
        "git config user.email a@b.c; git config user.name tester;"
        "echo hello > README; git add README; git commit -qm 'first commit';"
        "git log --format=%s; git status --porcelain; git show HEAD:README", timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"first commit\nhello\n", b"")


def test_python_venv_and_the_standard_library(vm):
    # --without-pip: installing pip into a venv takes about 3 minutes of emulated time
    # (bench/ measures it); pip itself is checked from the system Python.
    r = vm.run("python3 -m venv --without-pip /root/venv && /root/venv/bin/python -c "
               "'import json, sys; print(json.dumps({\"prefix\": sys.prefix}))' && python3 -m pip --version",
               timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == '{"prefix": "/root/venv"}'
    assert lines[1].startswith("pip ")


def test_node_and_npm_run(vm, image):
    r = vm.run(["node", "-e", "console.log(process.version, process.arch, 6*7)"], timeout=300)
    assert r.returncode == 0, r.stderr
    version, arch, answer = r.stdout.decode().split()
    assert (version[:len(image["node"][0])], arch, answer) == (*image["node"], "42")
    r = vm.run("npm --version", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip().split(".")[0].isdigit()


def test_gcc_compiles_and_runs_a_c_program(vm, image):
    vm.write_file("/root/hello.c", b'#include <stdio.h>\nint main(void) { printf("hello, %d-bit world\\n", '
                                   b'(int)(8 * sizeof(void *))); return 3; }\n')
    r = vm.run("gcc -O2 -o /root/hello /root/hello.c", timeout=300)
    assert (r.returncode, r.stderr) == (0, b"")
    r = vm.run(["/root/hello"])
    assert (r.returncode, r.stdout) == (3, f"hello, {image['bits']}-bit world\n".encode())


def test_curl_and_certificates_are_installed(vm):
    r = vm.run("curl --version | head -1; ls /etc/ssl/certs/ca-certificates.crt; ssh -V 2>&1; less --version | head -1")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.startswith("curl 7.") and "/etc/ssl/certs/ca-certificates.crt" in out and "OpenSSH" in out


def test_the_locale_is_utf8(vm):
    r = vm.run(["python3", "-c", "import sys, locale; print(sys.getfilesystemencoding(), locale.getpreferredencoding())"])
    assert r.stdout == b"utf-8 UTF-8\n"
    r = vm.run("printf 'h\\303\\251llo' | wc -m")
    assert r.stdout.strip() == b"5"


def test_a_file_of_several_megabytes_goes_both_ways_exactly(vm):
    data = os.urandom(6 << 20)
    vm.write_file("/root/big.bin", data)
    r = vm.run("sha256sum /root/big.bin", timeout=300)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert vm.read_file("/root/big.bin") == data
    vm.run("rm /root/big.bin")


# -- the agent tools of the x86_64 image (versions: the manifest's guest_npm pins) --------
def pinned_version(package):
    spec = json.loads((ASSETS / "images" / "agent-x86_64" / "image.json").read_text())
    return spec["sources"]["npm"][package]


@only("agent-x86_64")
def test_claude_code_answers_version_and_help(vm):
    r = vm.run("claude --version", timeout=300)
    assert (r.returncode, r.stdout) == (0, f"{pinned_version('@anthropic-ai/claude-code')} (Claude Code)\n".encode())
    r = vm.run("claude --help", timeout=300)
    assert r.returncode == 0, r.stderr
    assert b"Usage: claude" in r.stdout


@only("agent-x86_64")
def test_bun_evaluates_and_runs_a_typescript_file(vm):
    r = vm.run(["bun", "-e", "console.log(Bun.version, 6 * 7)"], timeout=300)
    assert (r.returncode, r.stdout) == (0, f"{pinned_version('bun')} 42\n".encode()), r.stderr
    vm.write_file("/root/hello.ts", b"interface Greeting { to: string }\n"
                                    b"const g: Greeting = { to: 'typescript' };\n"
                                    b"console.log(`hello, ${g.to}`);\n")
    r = vm.run("bun /root/hello.ts", timeout=300)
    assert (r.returncode, r.stdout) == (0, b"hello, typescript\n"), r.stderr


@only("agent-x86_64")
def test_gemini_cli_answers_version(vm):
    r = vm.run("gemini --version", timeout=600)
    assert (r.returncode, r.stdout) == (0, f"{pinned_version('@google/gemini-cli')}\n".encode()), r.stderr


@only("agent-x86_64")
def test_npm_is_the_one_of_node_22(vm):
    r = vm.run("npm --version; for t in node npm npx claude bun gemini; do command -v $t; done", timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split()
    assert lines[0] == pinned_version("npm")
    assert lines[1:] == [f"/usr/local/bin/{t}" for t in ("node", "npm", "npx", "claude", "bun", "gemini")]


# -- the terminal, as a user types into it ----------------------------------------------
# Everything a program loads the first time comes over 9p from the page's server, so
# first starts (zsh's plugins, tmux's server, vim) take seconds: the waits are generous.

def last_line(driver):
    lines = [line for line in screen(driver, visible=True).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def terminal_tty_is_raw(vm) -> bool:
    """Whether a program reads the terminal's tty (ttyS0) key by key: zsh's line editor,
    vim, less. Typed into a tty still in canonical mode, keys are echoed by the tty."""
    return bool(re.search(rb"(^|\s)-icanon\b", vm.run("stty -a -F /dev/ttyS0", timeout=60).stdout))


def wait_raw_tty(driver, vm, deadline):
    while not terminal_tty_is_raw(vm):
        assert time.monotonic() < deadline, f"the terminal's tty stayed in canonical mode (no line editor " \
                                            f"reads it); the terminal shows:\n{screen(driver, visible=True)}"
        time.sleep(0.1)


def wait_prompt(driver, vm, timeout=120):
    """Wait until zsh's line editor shows an empty prompt and reads the keys (typing
    earlier would be echoed by the tty, not by zsh)."""
    deadline = time.monotonic() + timeout
    while not last_line(driver).endswith("# "):
        assert time.monotonic() < deadline, f"no prompt; the terminal shows:\n{screen(driver, visible=True)}"
        time.sleep(0.2)
    wait_raw_tty(driver, vm, deadline)


def guest_runs(vm, command_line: str) -> bool:
    """Whether a process with exactly this command line runs in the guest."""
    r = vm.run("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done")
    return (command_line + " ").encode() in r.stdout.splitlines()


def test_the_terminal_shows_a_zsh_prompt_and_runs_typed_commands(driver, vm):
    wait_screen(driver, PROMPT, timeout=120)
    wait_prompt(driver, vm)
    type_keys(driver, "echo typed-$((6*7)) $ZSH_NAME\n")
    wait_screen(driver, "typed-42 zsh")


def test_zsh_autosuggestions_offer_history(driver, vm):
    wait_prompt(driver, vm)
    type_keys(driver, "echo suggest-$((1+1))-me\n")
    wait_screen(driver, "\nsuggest-2-me")
    wait_prompt(driver, vm)
    type_keys(driver, "echo sugg")
    # The suggestion is drawn after the cursor; accepting it (Right arrow) runs the whole line.
    deadline = time.monotonic() + 60
    while not last_line(driver).endswith("echo suggest-$((1+1))-me"):
        assert time.monotonic() < deadline, f"no suggestion; the terminal shows:\n{screen(driver, visible=True)}"
        time.sleep(0.2)
    type_keys(driver, "\ue014\n")  # Right, Enter
    deadline = time.monotonic() + 60
    while screen(driver).count("\nsuggest-2-me") < 2:
        assert time.monotonic() < deadline, screen(driver)
        time.sleep(0.2)


def test_ctrl_c_interrupts_a_running_command(driver, vm):
    wait_prompt(driver, vm)
    type_keys(driver, "sleep 300; echo finished-$((40+2))\n")
    deadline = time.monotonic() + 60
    while not guest_runs(vm, "sleep 300"):
        assert time.monotonic() < deadline, f"the typed sleep never started; the terminal shows:\n{screen(driver)}"
        time.sleep(0.1)
    type_keys(driver, "\ue009c\ue009")  # Ctrl-C
    wait_prompt(driver, vm, timeout=30)
    type_keys(driver, "echo after-ctrl-c\n")
    text = wait_screen(driver, "\nafter-ctrl-c")
    assert "finished-42" not in text


def test_tmux_splits_and_redraws_in_the_terminal(driver, vm):
    wait_prompt(driver, vm)
    type_keys(driver, "tmux new-session -s shown\n")
    wait_screen(driver, "[shown]", visible=True, timeout=240)  # tmux's status line
    vm.run("tmux split-window -h -t shown && tmux send-keys -t shown:0.1 'echo right-$((1+1))' Enter", timeout=120)
    text = wait_screen(driver, "right-2", visible=True, timeout=240)
    row = next(line for line in text.splitlines() if "right-2" in line)
    cols = driver.execute_script("return window.sandbox.terminal.cols")
    assert row.index("right-2") > cols // 3, f"the right pane's output is not on the right:\n{text}"
    assert "│" in text  # the pane border
    vm.run("tmux kill-server")
    wait_screen(driver, "exited]", timeout=60)  # "[server exited]"


def test_full_screen_apps_vim_and_less(driver, vm):
    vm.write_file("/root/notes.txt", "".join(f"line {i}\n" for i in range(1, 200)))
    wait_prompt(driver, vm)
    type_keys(driver, "less /root/notes.txt\n")
    wait_screen(driver, "line 1\n", visible=True, timeout=60)
    type_keys(driver, "G")
    wait_screen(driver, "line 199", visible=True)
    type_keys(driver, "q")
    wait_prompt(driver, vm)
    type_keys(driver, "vim /root/vim-test.txt\n")
    wait_screen(driver, "vim-test.txt", visible=True, timeout=120)
    wait_raw_tty(driver, vm, time.monotonic() + 60)  # vim reads the keys itself
    type_keys(driver, "iwritten in vim\ue00c:wq\n")  # Esc
    deadline = time.monotonic() + 60
    while True:
        r = vm.run("cat /root/vim-test.txt 2>/dev/null")
        if r.stdout == b"written in vim\n" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.stdout == b"written in vim\n", screen(driver, visible=True)
