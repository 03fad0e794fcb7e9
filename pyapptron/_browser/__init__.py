"""The one seam between pyapptron and the browser.

Only this package imports `js` / `pyodide.ffi`. The interface is written once in
`_interface.BrowserLayer`; inside Pyodide its implementation is `_in_pyodide.InPyodide`,
in CPython `_stand_in.StandIn`, which raises a clear error for anything that needs a
browser (micropip's `_compat` split is the model). Everything above this layer is plain
Python and unit-tested in CPython.
"""

import sys

from ._interface import JS_ERRORS, BrowserLayer, EmulatorHandle, PersistHandle, typed_error  # noqa: F401

IN_BROWSER = sys.platform == "emscripten"

if IN_BROWSER:
    from ._in_pyodide import InPyodide as _Layer
else:
    from ._stand_in import StandIn as _Layer

#: The layer in use; instantiating it checks that it implements all of BrowserLayer.
layer: BrowserLayer = _Layer()

default_assets_url = layer.default_assets_url
fetch_json = layer.fetch_json
fetch_bytes = layer.fetch_bytes
probe_urls = layer.probe_urls
fetch_buffer = layer.fetch_buffer
buffer_size = layer.buffer_size
buffer_bytes = layer.buffer_bytes
buffer_from = layer.buffer_from
from_page = layer.from_page
payload_bytes = layer.payload_bytes
snapshot_put = layer.snapshot_put
snapshot_get = layer.snapshot_get
snapshot_list = layer.snapshot_list
snapshot_delete = layer.snapshot_delete
page_machine = layer.page_machine
start_emulator = layer.start_emulator
