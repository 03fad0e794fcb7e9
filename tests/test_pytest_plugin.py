"""The pytest plugin as a test author meets it: real pytest runs (pytester, in
subprocesses) that use only the installed plugin, in real headless Chromium with real
VMs: local, with scopes, a failing test's report, pytest-xdist, and a real Selenium Grid 4
started here with Debian's Java and Chromium."""

from __future__ import annotations

import json

import pytest

from pyapptron.host.grid import local_grid

pytestmark = pytest.mark.browser

SCOPED = """
def test_first_writes_a_mark(vm):
    vm.run("echo 1 > /tmp/mark", check=True)

def test_second_sees_the_mark_only_on_the_same_machine(vm, request):
    fresh = request.config.getoption("--pyapptron-scope") == "function"
    assert (vm.run("test -e /tmp/mark").returncode != 0) == fresh
"""


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=600)


def test_an_installed_plugin_gives_a_test_its_vm_shared_by_the_module(pytester):
    pytester.makepyfile(test_scoped=SCOPED)
    run(pytester).assert_outcomes(passed=2)


def test_scope_function_gives_each_test_a_fresh_machine(pytester):
    pytester.makepyfile(test_scoped=SCOPED)
    run(pytester, "--pyapptron-scope=function").assert_outcomes(passed=2)


def test_a_failing_test_reports_the_console_and_the_last_commands(pytester):
    pytester.makepyfile(test_fails="""
        def test_fails(vm):
            vm.console.sendline("echo console-said-$((6*7))")
            vm.console.wait_for(rb"console-said-42")
            vm.run("echo preparing; exit 3")
            vm.run(["ls", "/nowhere"])
            assert vm.run("true").returncode == 1
    """)
    r = run(pytester)
    r.assert_outcomes(failed=1)
    out = r.stdout.str()
    assert "pyapptron console" in out and "console-said-42" in out
    assert "pyapptron commands (last 3)" in out
    assert "exit 3" in out and "echo preparing; exit 3" in out and "ls /nowhere" in out


def test_with_xdist_each_worker_has_its_own_browser_and_vm(pytester):
    record = """
        import json, os
        def test_{n}(vm, pyapptron_browser):
            with open(os.path.join({dir!r}, "{n}.json"), "w") as f:
                json.dump([os.environ["PYTEST_XDIST_WORKER"], pyapptron_browser.driver.session_id], f)
            assert vm.run("true").returncode == 0
    """
    out_dir = str(pytester.path)
    pytester.makepyfile(test_a=record.format(n="a", dir=out_dir), test_b=record.format(n="b", dir=out_dir))
    run(pytester, "-n", "2", "--dist", "loadfile").assert_outcomes(passed=2)
    seen = [json.loads((pytester.path / f"{n}.json").read_text()) for n in "ab"]
    assert len({worker for worker, _ in seen}) == 2 and len({session for _, session in seen}) == 2


@pytest.fixture(scope="module")
def grid():
    """A real Selenium Grid 4 in standalone mode on localhost, with a Chromium node
    (Debian's chromium and chromedriver)."""
    with local_grid() as running:
        yield running


def test_the_fixtures_drive_vms_through_a_selenium_grid(pytester, grid):
    pytester.makepyfile(test_on_grid="""
        def test_on_grid(vm, pyapptron_session):
            assert vm.run("uname -m").stdout == b"i686\\n"
            # The Grid's browser runs on this machine: the page reaches the host's WebSocket.
            assert pyapptron_session.transport == "websocket"
    """)
    run(pytester, "--pyapptron-remote", grid.url, "--pyapptron-browser-binary", "/usr/bin/chromium").assert_outcomes(passed=1)
    assert "Session created" in grid.log()  # the browser really came from the Grid
