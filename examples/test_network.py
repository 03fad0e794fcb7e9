"""For test authors: a guest that talks to a service on your machine, and to nothing else.

The web app under test runs on the host's 127.0.0.1; the VM reaches it as
host.pyapptron.internal:PORT because its network is host-only with that one port allowed
(pyapptron.Network; `--network=host-only --host-port PORT` on the CLI). Any other
address, and every other port of the host, is refused by the relay the plugin's page
server runs. Run with `python -m pytest examples/test_network.py`.
"""

import http.server

import pytest

from pyapptron.host import http_service


class Hello(http.server.BaseHTTPRequestHandler):
    """The service under test: answers every GET with a greeting."""

    def do_GET(self):
        body = b"hello from the app under test\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web_app():
    with http_service(Hello) as server:  # on a free port of the host's 127.0.0.1
        yield server.server_address[1]


@pytest.fixture(scope="module", params=["v86", "c2w"])  # i686 and x86_64 guests: the same network
def networked_vm(request, pyapptron_session, web_app):
    vm = pyapptron_session.boot(request.param, network={"internet": False, "host_ports": [web_app]})
    yield vm
    vm.shutdown()


def test_the_guest_reaches_the_app_on_the_host(networked_vm, web_app):
    r = networked_vm.run(f"wget -qO- http://host.pyapptron.internal:{web_app}/")
    assert r.stdout == b"hello from the app under test\n"


def test_nothing_else_is_reachable(networked_vm):
    assert networked_vm.run("timeout 30 wget -qO- http://192.0.2.1/").returncode != 0
