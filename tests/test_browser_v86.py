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
