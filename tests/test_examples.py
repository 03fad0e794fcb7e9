"""Every example in examples/ runs, for real, in headless Chromium."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_notebook_cells_run_in_order_in_the_page(pyapptron_session):
    source = (EXAMPLES / "notebook_cells.py").read_text()
    cells = [c for c in re.split(r"^# %%.*$", source, flags=re.M)[1:] if c.strip()]
    assert len(cells) >= 4
    answers = [pyapptron_session.python(cell) for cell in cells]
    assert answers[-1] == "notebook done"


def _embed_page_text(driver) -> str:
    return driver.execute_async_script("""
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  const out = document.getElementById("out").textContent;
  if (out.startsWith("uname")) done(out);
  else if (Date.now() - t0 > 180000) done("timeout: " + out);
  else setTimeout(poll, 100);
})();
""")


def test_embedding_page_boots_runs_uname_and_keeps_its_files_across_a_reload(pyapptron_browser, pyapptron_server):
    driver = pyapptron_browser.driver
    driver.get(pyapptron_server.url + "examples/embed.html")
    first = _embed_page_text(driver)
    assert first.startswith("uname -a → Linux pyapptron") and "(exit 0)\nvisit 1 " in first
    driver.get(pyapptron_server.url + "examples/embed.html")  # a reload: same origin, same profile
    assert "\nvisit 2 " in _embed_page_text(driver)


def test_pytest_fixture_examples_pass():
    """Four modules, five machines: the default image, the agent image and the 64-bit
    agent image (resumed, snapshot and restore, kept packages) by marker, and a host-only network that
    reaches one service of the host, on v86 and on c2w."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(EXAMPLES / "test_with_vm.py"), str(EXAMPLES / "test_agent_image.py"),
                        str(EXAMPLES / "test_agent_x86_64.py"), str(EXAMPLES / "test_network.py")],
                       capture_output=True, text=True, timeout=900, cwd=EXAMPLES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "11 passed" in r.stdout


def test_unit_testing_example_passes_without_a_browser():
    """pyapptron.testing's example: a user's code tested over ScriptedBackend, no browser."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(EXAMPLES / "test_without_browser.py")],
                       capture_output=True, text=True, timeout=120, cwd=EXAMPLES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 passed" in r.stdout


def test_mcp_in_page_example_an_iframe_agent_and_the_page_itself_drive_the_vm(pyapptron_browser, pyapptron_server):
    driver = pyapptron_browser.driver
    driver.get(pyapptron_server.url + "examples/mcp_in_page.html")
    log = driver.execute_async_script("""
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  const frame = document.getElementById("agent").contentDocument;
  const text = frame && frame.getElementById("log") ? frame.getElementById("log").textContent : "";
  if (/\\n(done|failed)/.test(text) || Date.now() - t0 > 240000) done(text); else setTimeout(poll, 100);
})();
""")
    assert "connected to pyapptron (protocol 2025-11-25)" in log, log
    assert "tools: exec, read_file, write_file, list_dir" in log
    assert re.search(r"exec uname -m → i686 \(exit 0, [1-9]\d* progress updates\)", log), log
    assert "read back: written by the agent" in log and log.endswith("done")

    # The page's own scripts connect the same way; aborting a call kills the guest command.
    outcome = driver.execute_async_script("""
const done = arguments[arguments.length - 1];
(async () => {
  const { connectMcp } = await import("/web/mcp.js");
  const mcp = await connectMcp(window);
  await mcp.initialize();
  const abort = new AbortController();
  const call = mcp.callTool("exec", { command: "echo $$ > /tmp/pid; exec sleep 300" }, { signal: abort.signal });
  let pid = "";
  while (!pid) pid = (await mcp.callTool("exec", { command: "cat /tmp/pid 2>/dev/null" })).structuredContent.stdout.trim();
  abort.abort("no longer needed");
  const aborted = await call.then(() => "finished?!", (e) => "aborted: " + e);
  await new Promise((r) => setTimeout(r, 1000));
  const alive = await mcp.callTool("exec", { command: `kill -0 ${pid} 2>/dev/null; echo $?` });
  done({ aborted, alive: alive.structuredContent.stdout.trim() });
})().catch((e) => done({ error: String(e) }));
""")
    assert outcome == {"aborted": "aborted: no longer needed", "alive": "1"}, outcome
