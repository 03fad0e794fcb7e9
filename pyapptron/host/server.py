"""Serve the page and the built assets on localhost (CPython only).

Layout of what is served:
  /            redirects to /web/index.html (the terminal page)
  /web/...     web/ (the page and its JS entry, pyapptron.js)
  /assets/...  the asset tree built by `python emulators/build.py` (build/assets)
  /examples/.. examples/ (the embedding example page)
  /pyapptron/relay.json  the Wisp relay this server runs for its pages (boot(network=...)),
               started on first request (pyapptron/host/relay.py)
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import importlib.util
import json
import os
import re
import threading
import time
from pathlib import Path

from ..errors import AssetsMissing, BrowserError
from ..network import HOST_RELAY_INFO


class PageServerError(BrowserError):
    """The page could not be served (its port is taken)."""

REPO = Path(__file__).resolve().parents[2]


def default_web_dir() -> Path:
    return Path(os.environ.get("PYAPPTRON_WEB", REPO / "web"))


def default_assets_dir() -> Path:
    return Path(os.environ.get("PYAPPTRON_ASSETS", REPO / "build" / "assets"))


def check_assets(assets_dir: Path) -> None:
    if not (assets_dir / "assets.json").is_file():
        raise AssetsMissing(
            f"no built assets in {assets_dir}: run `python emulators/build.py` "
            "(or `bash emulators/setup.sh` on a fresh machine)"
        )


def refresh_wheel(assets_dir: Path) -> None:
    """Rebuild the pyapptron wheel if the sources changed (a checkout, not an install)."""
    build_py = REPO / "emulators" / "build.py"
    if not build_py.is_file():
        return
    spec = importlib.util.spec_from_file_location("_pyapptron_build", build_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wheels = Path(assets_dir) / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with open(wheels / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers share one assets directory
        module.build_wheel(assets_dir, force=False)


#: The names a page of this machine reaches the server by (the relay's secret goes to those only).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")

# Content-addressed files of an image's 9p root (emulators/v86/build_agent.py).
IMMUTABLE = re.compile(r"^/assets/images/[^/?#]+/fs/[0-9a-f]{16}(\.zst)?$")


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
        ".json": "application/json", ".whl": "application/zip", ".zst": "application/octet-stream",
    }

    def __init__(self, *args, roots, isolated, relay=None, latency_s=0.0, **kwargs):
        self._roots = roots
        self._relay = relay  # () -> the server's Relay, started on first use
        self._isolated = isolated
        self._latency_s = latency_s
        super().__init__(*args, directory=str(roots["/web/"]), **kwargs)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path in ("/", "/index.html"):
            # The page lives in /web/ so that its relative imports resolve there.
            self.send_response(302)
            self.send_header("Location", "/web/index.html" + ("?" + query if query else ""))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == HOST_RELAY_INFO and self._relay is not None:
            self._send_relay_info()
            return
        if self._latency_s and IMMUTABLE.match(path):
            time.sleep(self._latency_s)  # a far server, for the bench (PageServer(latency_ms=))
        super().do_GET()

    def _send_relay_info(self) -> None:
        # Only a page of this server on the loopback gets the relay's secret: a Host of
        # another name (a DNS-rebinding page) could otherwise read it same-origin.
        port = self.server.server_address[1]
        host = self.headers.get("Host") or f"127.0.0.1:{port}"
        if host not in {f"{name}:{port}" for name in LOOPBACK_NAMES}:
            self._send_json(403, {"error": f"the relay is offered to this machine's pages only, not to {host}"})
            return
        try:
            relay = self._relay()
        except ImportError as exc:
            self._send_json(503, {"error": f"the relay needs pyapptron's host extra ({exc.name} is missing): "
                                           "pip install 'pyapptron[host]'"})
            return
        # The page's origin as its browser names it: the relay accepts WebSockets from it.
        relay.allow_origin(f"http://{host}")
        self._send_json(200, {"wisp": relay.wisp_url, "dns": relay.dns_url})

    def _send_json(self, status: int, value: dict) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, root in self._roots.items():
            if clean.startswith(prefix):
                rel = Path(clean[len(prefix):].lstrip("/"))
                if ".." in rel.parts:
                    return str(root / "__forbidden__")
                return str(root / rel)
        return str(self._roots["/web/"] / "__not_found__")

    def end_headers(self) -> None:
        if self.path.startswith(HOST_RELAY_INFO):
            pass  # _send_json says no-store
        elif IMMUTABLE.match(self.path) and getattr(self, "_response_code", 200) == 200:
            # Named by their content's hash: a reload takes them from the browser's cache.
            self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        else:
            self.send_header("Cache-Control", "no-cache")
        if self._isolated:
            # Cross-origin isolation: SharedArrayBuffer for the WASI engines; harmless for v86.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._response_code = code
        super().send_response(code, message)

    def log_message(self, format: str, *args) -> None:
        if os.environ.get("PYAPPTRON_HTTP_LOG"):
            super().log_message(format, *args)


PORT_FILE = "pyapptron-port"


def profile_port(profile_dir: str | os.PathLike) -> int:
    """The port to serve a persistent profile's page on, the same every run.

    IndexedDB belongs to an origin (scheme, host AND port): serving the page on another
    port would show the guest an empty store. The first run picks a free port and writes
    it into the profile; later runs reuse it.
    """
    import socket

    path = Path(profile_dir) / PORT_FILE
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        pass
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{port}\n")
    return port


class PageServer:
    """A threaded HTTP server on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(self, port: int = 0, *, web_dir: Path | None = None, assets_dir: Path | None = None,
                 isolated: bool = True, refresh: bool = True, extra_roots: dict[str, Path] | None = None,
                 latency_ms: float = 0,
                 host: str = "127.0.0.1"):
        self.web_dir = Path(web_dir or default_web_dir())
        self.assets_dir = Path(assets_dir or default_assets_dir())
        check_assets(self.assets_dir)
        if refresh:
            refresh_wheel(self.assets_dir)
        roots = {"/web/": self.web_dir, "/assets/": self.assets_dir, "/examples/": REPO / "examples",
                 **(extra_roots or {})}
        # latency_ms: each content-addressed image file (an image's fs/ID) is answered that
        # much later, as from a server across a network (bench/run.py --latency-ms).
        self._relay = None
        self._relay_lock = threading.Lock()
        handler = functools.partial(_Handler, roots=roots, isolated=isolated, relay=self.relay,
                                    latency_s=latency_ms / 1000)
        try:
            self._httpd = http.server.ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise PageServerError(
                f"cannot serve on 127.0.0.1:{port}: {exc.strerror}. A persistent profile's page must use the "
                "port its store was made on: stop the other program on that port (another pyapptron run "
                "with this profile?)"
            ) from None
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/"

    def start(self) -> PageServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="pyapptron-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def relay(self):
        """The Wisp relay for this server's pages (boot(network=...)), started on first use
        on 127.0.0.1; each page's network policy travels in its relay URL."""
        with self._relay_lock:
            if self._relay is None:
                from .relay import Relay  # needs the host extra's websockets
                self._relay = Relay().start()
            return self._relay

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._relay_lock:
            if self._relay is not None:
                self._relay.close()
                self._relay = None

    def __enter__(self) -> PageServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
