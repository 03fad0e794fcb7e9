"""A service on the host's loopback for a guest to reach: the other end of a test of the
guest's network (boot(network=Network(internet=False, host_ports=[port])), where the guest
calls it host.pyapptron.internal:PORT)."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def http_service(handler: type[http.server.BaseHTTPRequestHandler], *,
                 tls: ssl.SSLContext | None = None) -> Iterator[http.server.ThreadingHTTPServer]:
    """Serves `handler` on a free port of 127.0.0.1, one thread per request, until the
    block ends; yields the server (its port: `server.server_address[1]`). `tls`: a
    server-side SSLContext, for HTTPS."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="pyapptron-http-service", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
