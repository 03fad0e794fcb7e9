"""pytest fixtures: a served page in headless Chromium and a booted VM, driven from CPython.

Use in a conftest.py:  pytest_plugins = ["pyapptron.host.pytest_plugin"]

    def test_kernel(vm):
        assert vm.run("uname -m").stdout == b"i686\\n"

`vm` is booted once per test module (a boot costs seconds); `pyapptron_session` gives
the page itself, for booting more machines or running Python in it.

A module picks its machine with a marker (the command-line options are the default):

    pytestmark = pytest.mark.pyapptron(image="agent", memory_mib=512)
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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "pyapptron(emulator=None, image=None, **options): the machine the vm fixture boots "
        "for this module (boot() keyword options; default: --pyapptron-emulator/--pyapptron-image)")


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
    marker = request.node.get_closest_marker("pyapptron")
    options = dict(marker.kwargs) if marker else {}
    emulator = options.pop("emulator", None) or request.config.getoption("--pyapptron-emulator")
    image = options.pop("image", None) or request.config.getoption("--pyapptron-image")
    machine = pyapptron_session.boot(emulator, image, **options)
    yield machine
    try:
        machine.shutdown()
    except Exception:
        pass  # the browser is going away with the module anyway
