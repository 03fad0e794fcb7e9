"""pytest fixtures: a served page in headless Chromium and a booted VM, driven from CPython.

Installing pyapptron registers this plugin (entry point `pytest11`), so a test needs
nothing but the fixture:

    def test_kernel(vm):
        assert vm.run("uname -m").stdout == b"i686\\n"

`vm` resumes from the image's boot snapshot (about a second). It lives for one module
by default; `--pyapptron-scope=function` gives every test a fresh machine,
`--pyapptron-scope=session` one for the whole run. `pyapptron_session` is the page
itself, for booting more machines or running Python in it; `pyapptron_browser` the
browser. With pytest-xdist each worker has its own browser and VM.

A module (or a test) picks its machine with a marker; the command-line options are the
defaults:

    pytestmark = pytest.mark.pyapptron(image="agent", memory_mib=512)
    pytestmark = pytest.mark.pyapptron(network={"internet": False, "host_ports": [8000]})

On a real Selenium Grid: `--pyapptron-remote http://grid:4444` (and, when the Grid's
browsers are on other machines, serve the page where they can reach it and pass its URL
with `--pyapptron-page-url`). A failing test's report shows the console's last output
and the last commands the test ran, with their exit codes.
"""

from __future__ import annotations

import pytest

from ..network import from_flags
from .browser import Browser, BrowserConfig, RemoteMachine, RemoteSession
from .cli import add_network_flags
from .server import PageServer

SCOPES = ("function", "module", "session")
CONSOLE_TAIL_BYTES = 4096


def pytest_addoption(parser):
    group = parser.getgroup("pyapptron")
    group.addoption("--pyapptron-emulator", default="v86", help="emulator for the vm fixture (default: v86)")
    group.addoption("--pyapptron-image", default="minimal", help="image for the vm fixture (default: minimal)")
    group.addoption("--pyapptron-scope", default="module", choices=SCOPES,
                    help="how long one vm lives: function (a fresh machine per test), module (default), session")
    group.addoption("--pyapptron-cold", action="store_true",
                    help="boot the kernel instead of resuming the image's boot snapshot")
    add_network_flags(group.addoption, prefix="pyapptron-")  # for the vm fixture's machine
    group.addoption("--pyapptron-browser-binary", default=None, help="Chromium executable")
    group.addoption("--pyapptron-remote", default=None, metavar="URL",
                    help="a remote WebDriver or Selenium Grid (e.g. http://127.0.0.1:4444) instead of a local Chromium")
    group.addoption("--pyapptron-page-url", default=None, metavar="URL",
                    help="the page as the browsers reach it, when it is served elsewhere "
                         "(`python -m pyapptron serve --host ADDRESS`); default: a server on 127.0.0.1 started here")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "pyapptron(emulator=None, image=None, **options): the machine the vm fixture boots "
        "(boot() keyword options; default: --pyapptron-emulator/--pyapptron-image)")


def _vm_scope(fixture_name, config) -> str:
    return config.getoption("--pyapptron-scope")


def _page_scope(fixture_name, config) -> str:
    # The page must outlive the machines booted in it.
    return "session" if config.getoption("--pyapptron-scope") == "session" else "module"


@pytest.fixture(scope="session")
def pyapptron_server(request):
    if request.config.getoption("--pyapptron-page-url"):
        yield None
        return
    with PageServer() as server:
        yield server


@pytest.fixture(scope=_page_scope)
def pyapptron_browser(request):
    config = BrowserConfig(
        binary=request.config.getoption("--pyapptron-browser-binary"),
        remote_url=request.config.getoption("--pyapptron-remote"),
    )
    with Browser(config) as browser:
        yield browser


@pytest.fixture(scope=_page_scope)
def pyapptron_session(request, pyapptron_browser, pyapptron_server):
    url = request.config.getoption("--pyapptron-page-url") or pyapptron_server.url
    return RemoteSession(pyapptron_browser, url)


@pytest.fixture(scope=_vm_scope)
def vm(request, pyapptron_session):
    marker = request.node.get_closest_marker("pyapptron")
    options = dict(marker.kwargs) if marker else {}
    emulator = options.pop("emulator", None) or request.config.getoption("--pyapptron-emulator")
    image = options.pop("image", None) or request.config.getoption("--pyapptron-image")
    if request.config.getoption("--pyapptron-cold"):
        options.setdefault("cold", True)
    network = from_flags(request.config.getoption("--pyapptron-network"),
                         request.config.getoption("--pyapptron-host-port"))
    if network is not None:
        options.setdefault("network", network)
    machine = pyapptron_session.boot(emulator, image, **options)
    yield machine
    try:
        machine.shutdown()
    except Exception:
        pass  # the browser is going away with the module anyway


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used `vm` reports what the machine was doing."""
    outcome = yield
    report = outcome.get_result()
    machine = getattr(item, "funcargs", {}).get("vm")
    if report.when != "call" or not report.failed or not isinstance(machine, RemoteMachine):
        return
    try:
        tail = machine.console.transcript[-CONSOLE_TAIL_BYTES:].decode("utf-8", "replace")
    except Exception as exc:  # the page may be what failed
        tail = f"(the console could not be read: {exc})"
    report.sections.append((f"pyapptron console (last {CONSOLE_TAIL_BYTES} bytes)", tail))
    lines = [entry.describe() for entry in machine.history]
    report.sections.append((f"pyapptron commands (last {len(lines)})", "\n".join(lines) or "(none)"))
