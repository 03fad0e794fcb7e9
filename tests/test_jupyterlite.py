"""A real JupyterLite (built offline by `python -m pyapptron lab`) in headless Chromium:
open the example notebook, run its cells through the UI, check what they printed. The
Pyodide kernel runs in a Web Worker, so this is pyapptron's no-DOM path: the VM boots
inside the kernel's worker."""

from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from pyapptron.host.browser import Browser
from pyapptron.host.lab import build_site, notebook_url
from pyapptron.host.server import PageServer

pytestmark = pytest.mark.browser

OUTPUTS = "return Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.innerText)"


@pytest.fixture(scope="module")
def lab_page():
    site = build_site()
    with PageServer(extra_roots={"/lab/": site}) as server, Browser() as browser:
        yield browser, notebook_url(server.url)


def run_all_cells(driver, cells: int) -> None:
    """Run ▸ Run All Cells, as the notebook tells its reader. (Shift+Enter per cell could
    lose a keystroke while the selection moved, and a skipped cell printed nothing.)"""
    deadline = time.monotonic() + 120
    while len(driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")) < cells:
        assert time.monotonic() < deadline, "the notebook did not open"
        time.sleep(0.25)
    driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[0].click()
    run_menu = next(e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text.strip() == "Run")
    run_menu.click()
    WebDriverWait(driver, 30).until(
        EC.element_to_be_clickable((By.CSS_SELECTOR, '.lm-Menu-item[data-command="runmenu:run-all"]'))
    ).click()


def test_the_example_notebook_boots_a_vm_in_the_kernels_worker_and_runs_every_cell(lab_page):
    browser, url = lab_page
    driver = browser.driver
    driver.get(url)
    run_all_cells(driver, 7)
    live_screens, outputs = [], []
    deadline = time.monotonic() + 300
    while not any("notebook done" in o for o in outputs):
        outputs = driver.execute_script(OUTPUTS)
        screen = next((o for o in outputs if "tick" in o), "")
        if screen and screen not in live_screens:
            live_screens.append(screen)
        errors = [o for o in outputs if "Traceback" in o or "Error" in o]
        assert not errors, errors[0][-2000:]
        assert time.monotonic() < deadline, f"the cells did not finish; outputs so far: {outputs}"
        time.sleep(0.1)
    text = "\n".join(outputs)
    assert "<Machine v86/minimal running>: boot snapshot of image 'minimal'" in text
    assert "uname -a → exit 0" in text and "Linux pyapptron" in text and "i686" in text  # CompletedProcess's HTML
    assert "name,score\nlin,7" in text  # a file written from the notebook, sorted in the VM
    # The console view followed the console while its cell ran, then kept the last screen.
    assert any("tick 1" in s and "tick 4" not in s for s in live_screens), live_screens
    assert "tick 4" in live_screens[-1]
