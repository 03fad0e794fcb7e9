"""Unit tests (CPython) of the browser seam's contract: one interface, two implementations
that cannot drift from it, and one table for the errors that cross it."""

import ast
import re
from pathlib import Path

import pytest

import pyapptron
from pyapptron import _browser
from pyapptron._browser import _interface, _stand_in
from pyapptron._browser._interface import JS_ERRORS, BrowserLayer, typed_error

ROOT = Path(__file__).resolve().parent.parent
IN_PYODIDE = ROOT / "pyapptron" / "_browser" / "_in_pyodide.py"


def _class_members(path: Path, class_name: str) -> set[str]:
    """Names a class defines in a module that CPython cannot import (it imports `js`)."""
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    names = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_the_package_exports_every_name_of_the_interface():
    for name in BrowserLayer.__abstractmethods__:
        assert callable(getattr(_browser, name)), name


def test_the_stand_in_implements_the_whole_interface():
    # ABCs refuse to instantiate a class with an abstract member left: that is the check.
    _stand_in.StandIn()
    assert not _stand_in.EmulatorHandle.__abstractmethods__


@pytest.mark.parametrize("layer, interface", [("InPyodide", BrowserLayer),
                                              ("EmulatorHandle", _interface.EmulatorHandle),
                                              ("PersistHandle", _interface.PersistHandle)])
def test_the_pyodide_implementation_defines_every_abstract_member(layer, interface):
    missing = set(interface.__abstractmethods__) - _class_members(IN_PYODIDE, layer)
    assert not missing, f"_in_pyodide.{layer} lacks {sorted(missing)}"


def test_the_stand_in_says_a_browser_is_needed():
    with pytest.raises(pyapptron.NotSupported, match="needs a browser"):
        _stand_in.EmulatorHandle().attach_terminal(None, b"")
    assert _browser.from_page([b"x"]) == [b"x"]
    with pytest.raises(pyapptron.NotSupported, match="needs a browser"):
        _browser.default_assets_url()


@pytest.mark.parametrize("name", sorted(JS_ERRORS))
def test_a_js_error_name_becomes_the_pyapptron_class_of_that_name(name):
    error = typed_error(name, "what the adapter said")
    assert type(error).__name__ == name
    assert isinstance(error, pyapptron.PyapptronError)
    assert "what the adapter said" in str(error)


def test_other_js_errors_are_not_typed():
    assert typed_error("TypeError", "x is undefined") is None
    assert typed_error(None, "no name") is None


def test_an_incomplete_build_names_what_is_missing():
    assert typed_error("IncompleteBuild", "out.wasm answered HTTP 404").missing == ["out.wasm answered HTTP 404"]


def test_every_error_name_an_adapter_throws_is_in_the_table():
    thrown = set()
    for script in (ROOT / "emulators").glob("*/*.mjs"):
        thrown.update(re.findall(r'name:\s*"([A-Z]\w+)"', script.read_text()))
    assert thrown, "no adapter names its errors"
    assert thrown <= set(JS_ERRORS), f"not in JS_ERRORS: {sorted(thrown - set(JS_ERRORS))}"


def test_values_from_a_page_are_converted_inside_lists_and_dicts():
    class PageBytes:  # what a Uint8Array is to from_page's converter
        def __init__(self, data):
            self.data = data

    convert = lambda v: v.data if isinstance(v, PageBytes) else v  # noqa: E731
    value = {"wasm": [PageBytes(b"a"), "url"], "files": {"/x": PageBytes(b"b")}, "args": ("-c", 1)}
    assert _interface.walk_page_value(value, convert) == {"wasm": [b"a", "url"], "files": {"/x": b"b"}, "args": ("-c", 1)}
