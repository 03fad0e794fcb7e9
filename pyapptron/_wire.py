"""JSON-safe encoding shared by the page (pyapptron.remote) and the host driver.

Bytes travel as {"b64": ...}. A dict of the caller's whose only key is a tag ("b64",
or "dict" itself) travels wrapped as {"dict": {...}}, so that `env={"b64": "aGk="}`
comes back as that dict, not as bytes.
"""

from __future__ import annotations

import base64

_BYTES, _DICT = "b64", "dict"


def encode(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_BYTES: base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        items = {k: encode(v) for k, v in value.items()}
        return {_DICT: items} if len(items) == 1 and next(iter(items)) in (_BYTES, _DICT) else items
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value):
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES in value:
            return base64.b64decode(value[_BYTES])
        if len(value) == 1 and _DICT in value:
            return {k: decode(v) for k, v in value[_DICT].items()}
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value
