"""JupyterLite for notebook authors: `python -m pyapptron lab`.

Builds a JupyterLite site offline (PyPI's jupyterlite-core and jupyterlite-pyodide-kernel,
pinned in emulators/manifest.json, in a virtual environment of their own) around the
locally built Pyodide, with the pyapptron wheel and the kernel's own pure-Python wheels
available to `%pip install` (piplite; PyPI fallback off), and `examples/pyapptron.ipynb`
as its content. The page server serves it at /lab/ beside /assets/, so a notebook's
`pyapptron.boot()` finds the emulator assets on the same origin.

The build is cached: it runs again only when a pin, the Pyodide distribution, the wheel
or the notebook changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from ..errors import AssetsMissing, PyapptronError
from .server import REPO, default_assets_dir

LAB_DIR = REPO / "build" / "lab"
NOTEBOOK = REPO / "examples" / "pyapptron.ipynb"
CACHE = Path(os.environ.get("PYAPPTRON_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyapptron") / "jupyterlite"
#: What the kernel may not fetch from anywhere else: JupyterLite's own PyPI fallback is off.
LITE_CONFIG = {
    "jupyter-lite-schema-version": 0,
    "jupyter-config-data": {"litePluginSettings": {
        "@jupyterlite/pyodide-kernel-extension:kernel": {"disablePyPIFallback": True}}},
}


class LabBuildError(PyapptronError, RuntimeError):
    """The JupyterLite site could not be built; the message says which step failed."""


def log(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


def _pins() -> dict:
    return json.loads((REPO / "emulators" / "manifest.json").read_text())["jupyterlite"]


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _run(cmd: list, what: str, **kw) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise LabBuildError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def _tools(pins: dict) -> Path:
    """A virtual environment with the pinned JupyterLite build tools; returns its bin dir."""
    env = CACHE / f"venv-{_digest(pins['build'], sys.version_info[:2])}"
    bin_dir = env / ("Scripts" if os.name == "nt" else "bin")
    if not (bin_dir / "jupyter").exists():
        log(f"installing {', '.join(pins['build'])} into {env}")
        shutil.rmtree(env, ignore_errors=True)
        venv.create(env, with_pip=True)
        _run([bin_dir / "python", "-m", "pip", "install", "-q", *pins["build"]], "pip install of the JupyterLite tools")
    return bin_dir


def _kernel_wheels(pins: dict) -> Path:
    """The Pyodide kernel's pure-Python dependencies as wheels for Python 3.14 (Pyodide's)."""
    wheels = CACHE / f"kernel-wheels-{_digest(pins['kernel_wheels'])}"
    if not wheels.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".wheels-"))
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
              "--python-version", "3.14", "--platform", "any", "--implementation", "py", "--abi", "none",
              "-d", tmp, *pins["kernel_wheels"]], "pip download of the kernel's wheels")
        tmp.replace(wheels)
    return wheels


def build_site(out: Path = LAB_DIR, *, force: bool = False) -> Path:
    """Build (or reuse) the JupyterLite site in `out`; returns it."""
    assets = default_assets_dir()
    pyodide = assets / "pyodide"
    latest = assets / "wheels" / "latest.json"
    if not (pyodide / "pyodide.mjs").is_file() or not latest.is_file():
        raise AssetsMissing(f"no Pyodide or pyapptron wheel in {assets}: run `bash emulators/setup.sh` first")
    wheel = assets / "wheels" / json.loads(latest.read_text())["file"]
    pins = _pins()
    key = _digest(pins, (pyodide / "pyodide-lock.json").read_bytes(), wheel.read_bytes(), NOTEBOOK.read_bytes(),
                  LITE_CONFIG)
    stamp = out / ".build-key"
    if not force and stamp.is_file() and stamp.read_text() == key:
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    bin_dir = _tools(pins)
    kernel_wheels = _kernel_wheels(pins)
    with tempfile.TemporaryDirectory(prefix="pyapptron-lab-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(pyodide, src / "static" / "pyodide")  # picked up by the build: no CDN
        (src / "files").mkdir()
        shutil.copy(NOTEBOOK, src / "files" / NOTEBOOK.name)
        (src / "jupyter-lite.json").write_text(json.dumps(LITE_CONFIG, indent=1))
        wheels = Path(tmp) / "wheels"
        shutil.copytree(kernel_wheels, wheels)
        shutil.copy(wheel, wheels / wheel.name)
        staged = Path(tmp) / "site"
        log(f"jupyter lite build -> {out}")
        _run([bin_dir / "jupyter", "lite", "build", "--no-sourcemaps", "--piplite-wheels", wheels,
              "--contents", "files", "--output-dir", staged], "jupyter lite build", cwd=src)
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), out)
    stamp.write_text(key)
    return out


def notebook_url(server_url: str) -> str:
    return f"{server_url}lab/lab/index.html?path={NOTEBOOK.name}"
