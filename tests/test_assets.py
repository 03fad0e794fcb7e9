"""CPython tests of emulators/build.py and of the built assets (build/assets)."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "build" / "assets"
BUILD_HINT = "run `python emulators/build.py` (or emulators/setup.sh) first"


def _load_build():
    spec = importlib.util.spec_from_file_location("pyapptron_emulators_build",
                                                  REPO / "emulators" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


build = _load_build()


def _entry(name, version, deps=(), ptype="package"):
    return {"depends": list(deps), "file_name": f"{name.replace('-', '_')}-{version}-py3-none-any.whl",
            "imports": [name.replace("-", "_")], "install_dir": "site", "name": name,
            "package_type": ptype, "sha256": "0" * 64, "tool": {}, "unvendored_tests": False,
            "version": version}


FAKE_LOCK = {
    "info": {"abi_version": "2026_0", "arch": "wasm32", "platform": "emscripten_5_0_3",
             "python": "3.14.2"},
    "packages": {
        "micropip": _entry("micropip", "0.11.1"),
        "packaging": _entry("packaging", "26.1"),
        "pytest": _entry("pytest", "9.0.2", deps=["pluggy", "packaging", "six"]),
        "pluggy": _entry("pluggy", "1.6.0"),
        "numpy": _entry("numpy", "2.3.0"),
        "libopenblas": _entry("libopenblas", "0.3.26", ptype="shared_library"),
    },
    "tool": {"x": 1},
}


def _shipped(name, version, sha="a" * 64, **extra):
    return {"file_name": f"{name.replace('-', '_')}-{version}-py3-none-any.whl",
            "sha256": sha, "version": version, **extra}


def test_patch_lock_rewrites_drops_and_keeps_info():
    lock = copy.deepcopy(FAKE_LOCK)
    shipped = {"micropip": _shipped("micropip", "0.11.1", "b" * 64),
               "packaging": _shipped("packaging", "26.1", "c" * 64)}
    out = build.patch_pyodide_lock(lock, shipped)
    assert lock == FAKE_LOCK, "input must not be modified"
    assert out["info"] == FAKE_LOCK["info"]
    assert out["tool"] == FAKE_LOCK["tool"]
    assert list(out) == list(FAKE_LOCK), "top-level key order kept"
    assert set(out["packages"]) == {"micropip", "packaging"}
    m = out["packages"]["micropip"]
    assert m["sha256"] == "b" * 64 and m["file_name"] == "micropip-0.11.1-py3-none-any.whl"
    # the other fields come from the original entry
    assert m["imports"] == ["micropip"] and m["install_dir"] == "site"
    assert out["packages"]["packaging"]["sha256"] == "c" * 64


def test_patch_lock_adds_missing_package_with_normalized_key():
    shipped = {"pyodide_http": _shipped("pyodide-http", "0.2.2", imports=["pyodide_http"])}
    out = build.patch_pyodide_lock(FAKE_LOCK, shipped)
    assert list(out["packages"]) == ["pyodide-http"]
    e = out["packages"]["pyodide-http"]
    assert e["package_type"] == "package" and e["install_dir"] == "site"
    assert e["imports"] == ["pyodide_http"] and e["depends"] == []
    assert e["file_name"] == "pyodide_http-0.2.2-py3-none-any.whl" and e["version"] == "0.2.2"


def test_patch_lock_matches_names_across_normalization():
    lock = copy.deepcopy(FAKE_LOCK)
    lock["packages"]["pyodide-http"] = _entry("pyodide-http", "0.2.1")
    out = build.patch_pyodide_lock(lock, {"Pyodide_HTTP": _shipped("pyodide-http", "0.2.2")})
    assert list(out["packages"]) == ["pyodide-http"]
    assert out["packages"]["pyodide-http"]["version"] == "0.2.2"


def test_patch_lock_prunes_dependencies_not_shipped():
    shipped = {n: _shipped(n, FAKE_LOCK["packages"][n]["version"]) for n in ("pytest", "pluggy", "packaging")}
    out = build.patch_pyodide_lock(FAKE_LOCK, shipped)
    assert out["packages"]["pytest"]["depends"] == ["pluggy", "packaging"]


def test_patch_lock_rejects_incomplete_input():
    with pytest.raises(ValueError):
        build.patch_pyodide_lock({"packages": {}}, {})
    with pytest.raises(ValueError):
        build.patch_pyodide_lock(FAKE_LOCK, {"micropip": {"file_name": "x.whl", "version": "1"}})


def test_wheel_imports(tmp_path):
    whl = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("demo_pkg/__init__.py", "")
        z.writestr("single.py", "")
        z.writestr("demo-1.0.dist-info/RECORD", "")
    assert build.wheel_imports(whl) == ["demo_pkg", "single"]


def test_manifest_pins_are_complete():
    manifest = json.loads((REPO / "emulators" / "manifest.json").read_text())
    for name, spec in manifest["npm"].items():
        assert name in build.NPM_FILES, name
        assert spec["version"] and spec["integrity"].startswith("sha512-"), name
    for name, spec in manifest["pypi"].items():
        assert spec["file"].endswith("-none-any.whl"), name
        assert len(spec["sha256"]) == 64, name
    for required in ("v86", "pyodide", "@xterm/xterm", "@xterm/addon-fit"):
        assert required in manifest["npm"]
    for required in ("micropip", "packaging", "pyodide-http"):
        assert required in manifest["pypi"]


# ---------------------------------------------------------------------------
# the built assets (after emulators/setup.sh or emulators/build.py)

def _index():
    """The built index; the test is skipped when the assets were never built (no
    assets.json, which the build writes last). Once built, a wrong asset fails."""
    path = ASSETS / "assets.json"
    if not path.is_file():
        pytest.skip(f"the assets are not built ({path} is missing): build them with "
                    "`bash emulators/setup.sh` or `python3 emulators/build.py`")
    return json.loads(path.read_text())


def test_built_assets_match_index():
    index = _index()
    files = index["files"]
    assert files, f"assets.json lists no files: {BUILD_HINT}"
    bad = []
    for rel, meta in files.items():
        f = ASSETS / rel
        if not f.is_file():
            bad.append(f"{rel}: missing")
            continue
        h = hashlib.sha256(f.read_bytes()).hexdigest()
        if h != meta["sha256"] or f.stat().st_size != meta["size"]:
            bad.append(f"{rel}: sha256/size differ from assets.json")
    assert not bad, f"stale or broken assets ({BUILD_HINT}):\n" + "\n".join(bad)


def test_built_assets_contents():
    index = _index()
    files = index["files"]
    need = ["v86/libv86.js", "v86/libv86.mjs", "v86/v86.wasm", "v86/v86-fallback.wasm",
            "pyodide/pyodide.js", "pyodide/pyodide.mjs", "pyodide/pyodide.asm.wasm",
            "pyodide/python_stdlib.zip", "pyodide/pyodide-lock.json",
            "xterm/xterm.js", "xterm/xterm.css", "xterm/addon-fit.js"]
    missing = [n for n in need if n not in files]
    assert not missing, f"assets.json lacks {missing}: {BUILD_HINT}"
    manifest = json.loads((REPO / "emulators" / "manifest.json").read_text())
    assert index["versions"]["npm"] == {k: v["version"] for k, v in manifest["npm"].items()}, BUILD_HINT
    # the shipped lock lists exactly the shipped wheels, with their real hashes
    lock = json.loads((ASSETS / "pyodide" / "pyodide-lock.json").read_text())
    assert lock["info"]["python"].startswith("3.")
    for name, entry in lock["packages"].items():
        rel = f"pyodide/{entry['file_name']}"
        assert rel in files, f"lock entry {name} points at {rel}, which is not shipped"
        assert files[rel]["sha256"] == entry["sha256"], name
    assert {build.normalize_name(n) for n in manifest["pypi"]} <= set(lock["packages"])
