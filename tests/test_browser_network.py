"""In real headless Chromium: a guest's network through the host's Wisp relay, on every
engine that has one (v86's own card; c2w's e1000 whose frames reach the same stack in the
page).

The guest here is host-only, as every guest in the tests is: nothing a guest program
tries (an update check, a mistyped name) can leave this machine. It may reach one HTTP
service of the host's 127.0.0.1 (`allowed`), and must not reach another (`forbidden`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server

import pytest

import pyapptron
from pyapptron.host import http_service

pytestmark = pytest.mark.browser

BIG = hashlib.sha256(b"net").digest() * (1 << 15)  # 1 MiB
HUGE = hashlib.sha256(b"more").digest() * (1 << 17)  # 4 MiB
#: (emulator, image) of each engine with a network.
ENGINES = [("v86", "minimal"), ("c2w", "debian-x86_64")]


class _Service(http.server.BaseHTTPRequestHandler):
    """An HTTP service on the host's loopback that remembers what it was asked (in
    `requests` of its server)."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = {"/big": BIG, "/huge": HUGE}.get(self.path, b"hello from the host\n")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(self.path)
        digest = hashlib.sha256(body).hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(digest)))
        self.end_headers()
        self.wfile.write(digest)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def service():
    with http_service(_Service) as server:
        server.requests = []
        server.port = server.server_address[1]
        yield server


@pytest.fixture(scope="module")
def allowed():
    with service() as server:
        yield server


@pytest.fixture(scope="module")
def forbidden():
    with service() as server:
        yield server


@pytest.fixture(scope="module", params=ENGINES, ids=[e for e, _ in ENGINES])
def vm(request, pyapptron_session, allowed):
    emulator, image = request.param
    machine = pyapptron_session.boot(emulator, image, network={"internet": False, "host_ports": [allowed.port]},
                                     timeout=180)
    yield machine
    machine.shutdown()


def test_the_guest_gets_an_address_a_route_and_a_resolver_by_dhcp(vm):
    assert vm.capabilities.network is True
    assert "inet 192.168.86.100/24" in vm.run("ip -4 addr show dev eth0").stdout.decode()
    assert "default via 192.168.86.1 dev eth0" in vm.run("ip route").stdout.decode()
    assert vm.run("cat /etc/resolv.conf").stdout == b"nameserver 192.168.86.1\n"


def test_an_allowed_host_port_answers_by_name_byte_for_byte_both_ways(vm, allowed):
    url = f"http://host.pyapptron.internal:{allowed.port}"
    assert vm.run(f"wget -qO- {url}/hello").stdout == b"hello from the host\n"
    assert vm.run(f"wget -qO- {url}/huge | sha256sum").stdout.split()[0].decode() == hashlib.sha256(HUGE).hexdigest()
    assert b"\0" not in BIG  # busybox wget posts its file as a C string
    vm.write_file("/tmp/upload", BIG)
    assert vm.run(f"wget -qO- --post-file=/tmp/upload {url}/upload").stdout.decode() == hashlib.sha256(BIG).hexdigest()


def test_a_host_port_that_was_not_allowed_is_refused_by_the_relay(vm, forbidden, pyapptron_server):
    result = vm.run(f"timeout 30 wget -qO- http://host.pyapptron.internal:{forbidden.port}/hello")
    assert result.returncode != 0 and result.stdout == b""
    assert forbidden.requests == []
    refusals = pyapptron_server.relay().streams_refused
    assert any(f"port {forbidden.port} of the host is not allowed" in reason for _, _, reason in refusals), refusals


def test_host_only_refuses_every_other_address(vm, pyapptron_server):
    result = vm.run("timeout 30 wget -qO- http://192.0.2.1/")
    assert result.returncode != 0 and result.stdout == b""
    refusals = pyapptron_server.relay().streams_refused
    assert any(address == "192.0.2.1" and "host-only" in reason for address, _, reason in refusals), refusals


def test_names_are_resolved_by_the_relay_and_host_only_resolves_only_the_host(vm, pyapptron_server):
    relay = pyapptron_server.relay()
    asked = relay.dns_queries
    # nslookup asks the resolver (not /etc/hosts)
    found = vm.run("nslookup host.pyapptron.internal 192.168.86.1")
    assert found.returncode == 0 and "192.168.86.1" in found.stdout.decode().split("Name:")[-1]
    missing = vm.run("nslookup example.com 192.168.86.1")
    assert missing.returncode != 0 and "NXDOMAIN" in (missing.stdout + missing.stderr).decode()
    assert relay.dns_queries >= asked + 2  # both reached the relay's resolver


#: What a snapshot made with a network says when it is resumed without one, per engine.
WITHOUT_NETWORK = {"v86": "pyapptron.net=dhcp", "c2w": "emulator files and options differ"}


def test_a_snapshot_made_with_a_network_resumes_with_one_and_a_fresh_lease(vm, pyapptron_session, allowed):
    vm.run("ip -4 addr flush dev eth0")  # a lease the resumed guest must not keep relying on
    data = vm.snapshot(to_bytes=True)
    vm.run("udhcpc -i eth0 -q -n -t 5 >/dev/null 2>&1")  # the module's machine gets its address back
    resumed = pyapptron_session.boot(vm.emulator, vm.image, resume=data,
                                     network={"internet": False, "host_ports": [allowed.port]})
    try:
        assert resumed.resumed_from == "the snapshot (bytes)"
        assert "inet 192.168.86.100/24" in resumed.run("ip -4 addr show dev eth0").stdout.decode()
        url = f"http://host.pyapptron.internal:{allowed.port}/hello"
        assert resumed.run(f"wget -qO- {url}").stdout == b"hello from the host\n"
    finally:
        resumed.shutdown()
    # Without a network the same snapshot is another machine: its binding says so.
    with pytest.raises(pyapptron.SnapshotMismatch, match=WITHOUT_NETWORK[vm.emulator]):
        pyapptron_session.boot(vm.emulator, vm.image, resume=data)
