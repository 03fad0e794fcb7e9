"""pytest fixtures: a served page in headless Chromium and a booted VM, driven from CPython.

Use in a conftest.py:  pytest_plugins = ["pyapptron.host.pytest_plugin"]

    def test_kernel(vm):
        assert vm.run("uname -m").stdout == b"i686\\n"

`vm` is booted once per test module (a boot costs seconds); `pyapptron_session` gives
the page itself, for booting more machines or running Python in it.
"""

from __future__ import annotations

import pytest

from .browser import Browser, BrowserConfig, RemoteSession
from .server import PageServer


def pytest_addoption(parser):
    group = parser.getgroup("pyapptron")
    group.addoption("--pyapptron-emulator", default="v86", help="emulator for the vm fixture")
    group.addoption("--pyapptron-image", default="minimal", help="image for the vm fixture")
    group.addoption("--pyapptron-browser-binary", default=None, help="Chromium executable")
    group.addoption("--pyapptron-remote", default=None, metavar="URL", help="remote WebDriver URL")


@pytest.fixture(scope="session")
def pyapptron_server():
    with PageServer() as server:
        yield server


@pytest.fixture(scope="module")
def pyapptron_browser(request):
    config = BrowserConfig(
        binary=request.config.getoption("--pyapptron-browser-binary"),
        remote_url=request.config.getoption("--pyapptron-remote"),
    )
    with Browser(config) as browser:
        yield browser


@pytest.fixture(scope="module")
def pyapptron_session(pyapptron_browser, pyapptron_server):
    return RemoteSession(pyapptron_browser, pyapptron_server.url)


@pytest.fixture(scope="module")
def vm(request, pyapptron_session):
    machine = pyapptron_session.boot(
        request.config.getoption("--pyapptron-emulator"),
        request.config.getoption("--pyapptron-image"),
    )
    yield machine
    try:
        machine.shutdown()
    except Exception:
        pass  # the browser is going away with the module anyway
