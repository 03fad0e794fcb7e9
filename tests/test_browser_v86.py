"""In real headless Chromium: what only v86 does. Exec, files, the console and bad options,
the same on every engine, are in tests/test_machine_behaviour.py.

Here: a machine's lifetime in the page (v86 resumes from its boot snapshot in about a
second, so booting a second machine costs nothing), and an image whose 9p root cannot
be mounted. Snapshots and persist have their own modules.
"""

import pytest

import pyapptron

pytestmark = pytest.mark.browser


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


def test_a_9p_root_that_cannot_be_mounted_fails_the_boot_with_the_reason(pyapptron_session):
    """An image whose root files are not served must not come up as the bare initramfs."""
    with pytest.raises(pyapptron.BootError, match="cannot mount the root file system 'nosuchtag'"):
        pyapptron_session.boot("v86", "minimal", cmdline_extra="pyapptron.root=nosuchtag", timeout=45)


def test_an_agent_told_to_use_its_line_still_answers_over_virtio_console(pyapptron_session):
    """Without the shared-memory rings (an agent started on /dev/hvc0, as on a host that
    does not serve them) the channel falls back to virtio-console, byte for byte."""
    vm = pyapptron_session.boot("v86", "minimal", cmdline_extra="pyapptron.agent=/dev/hvc0", timeout=90)
    try:
        assert "/dev/mem" not in vm.run("cat /proc/$PPID/maps").stdout.decode()
        blob = bytes(range(256)) * 4000
        vm.write_file("/tmp/blob", blob)
        assert vm.read_file("/tmp/blob") == blob
        assert vm.run(["cat", "/tmp/blob"]).stdout == blob
    finally:
        vm.shutdown()
