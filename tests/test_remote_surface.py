"""In real headless Chromium: RemoteMachine has Machine's surface (pyapptron.surface),
with Machine's result types, and its calls run concurrently over the page's WebSocket.

One minimal v86 VM for the module (the plugin's `vm` fixture).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import pyapptron
from pyapptron.console import TIMEOUT
from pyapptron.host.browser import RemoteSession
from pyapptron.snapshots import SnapshotInfo

pytestmark = pytest.mark.browser

#: The calls made while `sleep 3` runs must come back well before it does.
WELL_UNDER_S = 1.5


def test_the_session_talks_to_its_page_over_the_websocket(pyapptron_session):
    assert pyapptron_session.transport == "websocket"


def test_console_and_other_calls_do_not_wait_behind_a_running_command(vm):
    vm.run("rm -f /tmp/sleeping")
    with ThreadPoolExecutor(1) as pool:
        sleeping = pool.submit(vm.run, "touch /tmp/sleeping; sleep 3")
        while vm.run("test -e /tmp/sleeping").returncode != 0:  # the sleep has begun in the guest
            pass
        started = time.monotonic()
        vm.console.send("echo while-sleeping-$((6*7))\r")
        transcript = vm.console.transcript
        other = vm.run("true")
        elapsed = time.monotonic() - started
        assert not sleeping.done()  # they really overlapped it
        assert elapsed < WELL_UNDER_S
        assert isinstance(transcript, bytes) and other.returncode == 0
        assert sleeping.result(30).returncode == 0
    vm.console.wait_for(rb"while-sleeping-42", timeout=10)
    assert [record.args for record in vm.history][-2:] == ["true", "touch /tmp/sleeping; sleep 3"]


def test_capabilities_is_machines_dataclass(vm):
    assert isinstance(vm.capabilities, pyapptron.Capabilities)
    assert (vm.capabilities.arch, vm.capabilities.exec, vm.capabilities.snapshot) == ("i686", True, True)


def test_snapshot_returns_snapshot_info(pyapptron_session, vm):
    info = vm.snapshot("t-surface")
    try:
        assert isinstance(info, SnapshotInfo)
        assert (info.name, info.emulator, info.image) == ("t-surface", "v86", "minimal")
        assert 0 < info.size < info.state_bytes
    finally:
        pyapptron_session.python("await pyapptron.snapshots.delete('t-surface')")


def test_console_wait_for_returns_a_match_and_sets_before_after_and_match(vm):
    vm.console.sendline("echo mark-$((6*7))-end")
    m = vm.console.wait_for(rb"mark-(?P<n>\d+)-end", timeout=10)
    assert (m.group(0), m.group(1), m["n"], m.groups()) == (b"mark-42-end", b"42", b"42", (b"42",))
    assert b"echo mark-$((6*7))-end" in vm.console.before  # the typed line, echoed before the output
    assert m.start() == len(vm.console.before) and m.end() == m.start() + len(b"mark-42-end")
    assert (vm.console.after, vm.console.match) == (m.group(0), m)
    vm.console.sendline("echo SHOUT-ok")
    # pexpect's expect: the index of the pattern that matched; the match in console.match
    assert vm.console.expect([re.compile(rb"shout-(\w+)", re.I), TIMEOUT], timeout=10) == 0
    assert vm.console.match.group(1) == b"ok"


def test_run_takes_machines_keywords_and_returns_completed_process(vm):
    r = vm.run(["printf", "%s", "ü"], encoding="utf-8", errors="strict")
    assert isinstance(r, pyapptron.CompletedProcess) and r.stdout == "ü"


# Last: it takes the browser to another page load.
def test_without_the_websocket_calls_go_through_webdriver(pyapptron_browser, pyapptron_server):
    class BrowserElsewhere(RemoteSession):
        """As on a Grid whose browsers run on other machines: the page cannot dial this host."""

        def _dial(self):
            return None

    session = BrowserElsewhere(pyapptron_browser, pyapptron_server.url)
    assert session.transport == "webdriver"
    with session.boot("v86", "minimal") as vm:
        assert isinstance(vm.capabilities, pyapptron.Capabilities)
        assert vm.run("echo over-webdriver").stdout == b"over-webdriver\n"
