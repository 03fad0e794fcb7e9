#!/usr/bin/env python3
"""Static file server for demo.html with cross-origin isolation headers.

    python3 emulators/c2w/serve_demo.py [--port 8765] [--mount /c2w-out=/tmp/c2w-out ...]

Serves the repository root at / and each --mount URL prefix from another
directory.  Every response carries COOP/COEP (and CORP) headers so that the
page is cross-origin isolated and may use SharedArrayBuffer (console input).
Binds 127.0.0.1 only.  Standard library only.

Default mounts (what demo.html expects):
  /c2w-out/   -> /tmp/c2w-out      (build_bochs.py --out)
  /c2w-guest/ -> /tmp/c2w-guest    (build_guest64.py --out)
  /npm/       -> /tmp/c2w-npm      (npm pack @bjorn3/browser_wasi_shim@0.4.2, unpacked;
                                    demo.html loads /npm/browser_wasi_shim/dist/index.js)
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import posixpath
import sys
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MOUNTS = ["/c2w-out=/tmp/c2w-out", "/c2w-guest=/tmp/c2w-guest", "/npm=/tmp/c2w-npm"]


class Handler(http.server.SimpleHTTPRequestHandler):
    mounts: list[tuple[str, str]] = []
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def translate_path(self, path):
        p = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        p = posixpath.normpath(p)
        for prefix, directory in self.mounts:
            if p == prefix or p.startswith(prefix + "/"):
                rest = p[len(prefix):].lstrip("/")
                return os.path.join(directory, *[s for s in rest.split("/") if s not in ("", ".", "..")])
        return super().translate_path(path)

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, fmt, *args):
        if os.environ.get("SERVE_DEMO_QUIET") != "1":
            super().log_message(fmt, *args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--root", type=Path, default=REPO)
    ap.add_argument("--mount", action="append", help="URLPREFIX=DIR (default: %s)" % ", ".join(DEFAULT_MOUNTS))
    args = ap.parse_args(argv)
    mounts = []
    for m in args.mount or DEFAULT_MOUNTS:
        prefix, _, directory = m.partition("=")
        mounts.append(("/" + prefix.strip("/"), str(Path(directory).resolve())))
    Handler.mounts = sorted(mounts, key=lambda m: -len(m[0]))
    handler = functools.partial(Handler, directory=str(args.root.resolve()))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    print(f"serving {args.root.resolve()} on http://127.0.0.1:{args.port}/ "
          f"(mounts: {', '.join(f'{p} -> {d}' for p, d in Handler.mounts)})", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
