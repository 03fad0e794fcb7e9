"""The real page in headless Chromium: boots the default VM into an xterm.js terminal.

Typing goes through the browser's keyboard events into xterm.js, then to the VM's
console; the screen is read back from xterm.js's buffer, as a user would see it.
"""

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from selenium.webdriver.common.by import By

from pyapptron.host.browser import terminal_text

pytestmark = pytest.mark.browser

WAIT_BOOTED = """
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  if (window.sandbox) done({ok: true});
  else if (window.pyapptronError) done({error: window.pyapptronError});
  else if (Date.now() - t0 > 180000) done({error: "no VM after 180 s"});
  else setTimeout(poll, 50);
})();
"""



@pytest.fixture(scope="module")
def page(pyapptron_browser, pyapptron_server):
    driver = pyapptron_browser.driver
    driver.get(pyapptron_server.url)
    result = driver.execute_async_script(WAIT_BOOTED)
    assert "error" not in result, result.get("error")
    return driver


def screen_text(driver):
    return terminal_text(driver)


def wait_screen(driver, needle, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = screen_text(driver)
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared on the terminal; the screen shows:\n{screen_text(driver)}")


def test_page_shows_a_prompt_and_status(page):
    wait_screen(page, "# ")
    status = page.find_element(By.ID, "status").text
    assert "v86/minimal running" in status


def test_typing_into_the_terminal_runs_commands_in_the_guest(page):
    wait_screen(page, "# ")
    textarea = page.find_element(By.CSS_SELECTOR, "#terminal textarea")
    textarea.send_keys("echo typed-$((6*7))\n")
    wait_screen(page, "typed-42")


def test_colours_reach_the_terminal(page):
    textarea = page.find_element(By.CSS_SELECTOR, "#terminal textarea")
    textarea.send_keys("printf '\\033[31mRED\\033[0m-ok\\n'\n")
    wait_screen(page, "RED-ok")
    colour = page.execute_script("""
const buf = window.sandbox.terminal.buffer.active;
for (let i = buf.length - 1; i >= 0; i--) {
  const line = buf.getLine(i);
  if (line.translateToString(true).startsWith("RED-ok")) return line.getCell(0).getFgColor();
}
return null;
""")
    assert colour == 1  # ANSI red, as the guest sent it


def test_paste_and_resize_reach_the_guest(page):
    page.execute_script("window.sandbox.terminal.paste('echo pasted-$((2+3))\\r')")
    wait_screen(page, "pasted-5")
    page.set_window_size(900, 600)
    page.set_window_size(1000, 700)
    deadline = time.monotonic() + 20
    seen = ""
    while time.monotonic() < deadline:
        cols = page.execute_script("return window.sandbox.terminal.cols")  # it settles after the resize event
        seen = page.execute_async_script(
            "const done = arguments[arguments.length-1];"
            "window.sandbox.run('stty -F /dev/ttyS0 size').then(r => done(r.stdout), e => done(String(e)))")
        if seen.split() and seen.split()[-1] == str(cols):
            break
        time.sleep(0.2)
    assert seen.split()[-1] == str(cols), f"guest tty size {seen!r}, terminal has {cols} columns"


def test_embedding_api_run_returns_strings(page):
    r = page.execute_async_script(
        "const done = arguments[arguments.length-1];"
        "window.sandbox.run('echo out; echo err >&2; exit 7').then(done, e => done(String(e)))")
    assert r == {"returncode": 7, "stdout": "out\n", "stderr": "err\n"}


def test_the_core_runs_in_a_web_worker_without_a_dom(pyapptron_browser, pyapptron_server):
    """No screen, no document: Pyodide, pyapptron and v86 all inside a module worker."""
    driver = pyapptron_browser.driver
    driver.get(pyapptron_server.url + "web/index.html?autoboot=0")
    result = driver.execute_async_script("""
const done = arguments[arguments.length - 1];
const src = `
  import { boot } from "${location.origin}/web/pyapptron.js";
  try {
    const sandbox = await boot();
    const r = await sandbox.run("uname -m; test -e /dev/ttyS0 && echo has-console");
    await sandbox.shutdown();
    postMessage({ok: r, hasDocument: typeof document !== "undefined"});
  } catch (e) { postMessage({error: String(e && e.stack || e)}); }
`;
const worker = new Worker(URL.createObjectURL(new Blob([src], {type: "text/javascript"})), {type: "module"});
worker.onmessage = (e) => done(e.data);
worker.onerror = (e) => done({error: "worker error: " + e.message});
""")
    assert "error" not in result, result.get("error")
    assert result["hasDocument"] is False
    assert result["ok"] == {"returncode": 0, "stdout": "i686\nhas-console\n", "stderr": ""}


def test_a_crashed_tab_reports_what_chromium_logged():
    """When the renderer dies (a V8 crash under the emulator, say), the error carries Chromium's reason."""
    from pyapptron.host.browser import Browser, RemoteSession
    from pyapptron.errors import BrowserError

    with Browser() as browser:
        session = RemoteSession.__new__(RemoteSession)  # no page needed: the tab is about to die
        session.browser = browser
        with contextlib.suppress(Exception):
            browser.driver.get("chrome://crash")  # the renderer dies here
        with pytest.raises(BrowserError, match="(?s)tab crashed.*Intentionally crashing"):
            session.request("python", code="result = 1")


def test_a_crashed_tab_fails_the_calls_in_flight_over_the_websocket_with_what_chromium_logged(pyapptron_server):
    from pyapptron.host.browser import Browser, RemoteSession
    from pyapptron.errors import BrowserError

    with Browser() as browser, ThreadPoolExecutor(1) as pool:
        session = RemoteSession(browser, pyapptron_server.url)
        assert session.transport == "websocket"
        in_flight = pool.submit(session.python, "import asyncio\nfrom js import document\n"
                                "document.title = 'in flight'\nawait asyncio.sleep(600)")
        # The call must be running in the page when the tab dies, not still on its way.
        deadline = time.monotonic() + 60
        while browser.driver.title != "in flight":
            assert time.monotonic() < deadline and not in_flight.done(), "the call never reached the page"
            time.sleep(0.05)
        with contextlib.suppress(Exception):
            browser.driver.get("chrome://crash")  # the renderer dies here
        with pytest.raises(BrowserError, match="(?s)during 'python'.*closed its connection.*tab crashed.*Intentionally crashing"):
            in_flight.result(60)
