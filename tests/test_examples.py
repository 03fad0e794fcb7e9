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
    """Two modules, two machines: the default image, and the agent image by marker."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(EXAMPLES / "test_with_vm.py"), str(EXAMPLES / "test_agent_image.py")],
                       capture_output=True, text=True, timeout=900, cwd=EXAMPLES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 passed" in r.stdout
