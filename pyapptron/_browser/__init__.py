"""The one seam between pyapptron and the browser.

Only this package imports `js` / `pyodide.ffi`. Inside Pyodide it is `_in_pyodide`;
in CPython it is `_stand_in`, which has the same names and raises a clear error for
anything that needs a browser (micropip's `_compat` split is the model). Everything
above this layer is plain Python and unit-tested in CPython.
"""

import sys

IN_BROWSER = sys.platform == "emscripten"

if IN_BROWSER:
    from ._in_pyodide import (  # noqa: F401
        EmulatorHandle,
        attach_terminal,
        default_assets_url,
        fetch_bytes,
        fetch_json,
        js_bytes,
        page_machine,
        payload_bytes,
        probe_urls,
        snapshot_delete,
        snapshot_get,
        snapshot_list,
        snapshot_put,
        start_emulator,
    )
else:
    from ._stand_in import (  # noqa: F401
        EmulatorHandle,
        attach_terminal,
        default_assets_url,
        fetch_bytes,
        fetch_json,
        js_bytes,
        page_machine,
        payload_bytes,
        probe_urls,
        snapshot_delete,
        snapshot_get,
        snapshot_list,
        snapshot_put,
        start_emulator,
    )
