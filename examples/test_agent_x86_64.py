"""For test authors: a module whose `vm` is the 64-bit agent image (Claude Code, Gemini
CLI, Bun, Node, zsh, tmux) on the c2w engine, chosen with the pyapptron marker. It
resumes from the image's boot snapshot, taken after a warm-up run of `claude --version`,
so the agent tools start at once; with persist=, what an agent installs outlives the
machine. Run with `python -m pytest examples/test_agent_x86_64.py`.
"""

import pytest

pytestmark = pytest.mark.pyapptron(emulator="c2w", image="agent-x86_64")


def test_what_an_agent_installs_is_there_for_the_next_machine(pyapptron_session):
    # persist= keeps /root, /persist and the packages (/usr/local: npm -g; pip --user) in
    # the browser's IndexedDB; only what differs from the image is stored.
    vm = pyapptron_session.boot("c2w", "agent-x86_64", persist="example-tools")
    vm.run("printf '#!/bin/sh\\necho hi from my tool\\n' > /usr/local/bin/mytool && chmod +x /usr/local/bin/mytool",
           check=True)
    vm.shutdown()  # syncs the layers first; vm.persist.sync() does it while running
    vm = pyapptron_session.boot("c2w", "agent-x86_64", persist="example-tools")
    try:
        assert vm.run("mytool").stdout == b"hi from my tool\n"
    finally:
        vm.shutdown()


def test_the_agent_tools_answer_right_after_the_resume(vm):
    assert vm.resumed_from == "boot snapshot of image 'agent-x86_64'"
    r = vm.run("claude --version && node --version && uname -m", timeout=120)
    assert r.returncode == 0, r.stderr
    assert b"(Claude Code)" in r.stdout and r.stdout.endswith(b"x86_64\n")


def test_a_snapshot_takes_the_machine_back_after_a_bad_change(vm):
    vm.run("mkdir -p /root/project && echo 'print(42)' > /root/project/main.py")
    saved = vm.snapshot(to_bytes=True)  # or vm.snapshot("name"): kept in the browser's IndexedDB
    vm.run("rm -rf /root/project")
    vm.restore(saved)
    assert vm.run(["python3", "/root/project/main.py"], timeout=120).stdout == b"42\n"
