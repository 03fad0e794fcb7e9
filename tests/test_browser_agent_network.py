"""In real headless Chromium: what an agent does on the network, in both agent images
(v86 `agent`, i686; c2w `agent-x86_64`), against services this module runs on the host's
loopback: `git clone` from a git daemon, `pip install` from a simple index, `npm install`
from a registry, `curl` over TLS with a test CA the guest is given, and (x86_64) Claude
Code against a stand-in of the Messages API: the stand-in replaces only the model, the
network path is the real one.

Every guest is host-only with these services' ports allowed: nothing it tries (an
update check, telemetry) can leave the machine.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import io
import json
import socket
import ssl
import subprocess
import tarfile
import time
import zipfile

import pytest

from pyapptron.host import http_service

pytestmark = pytest.mark.browser

#: (emulator, image) of each agent image.
ENGINES = [("v86", "agent"), ("c2w", "agent-x86_64")]
HOST = "host.pyapptron.internal"
PROBE_VALUE = "hello from a package served on the host"


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body: bytes, content_type: str = "application/octet-stream", status: int = 200):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# -- a git repository, served by git daemon ------------------------------------------------
@pytest.fixture(scope="module")
def git_repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("git")
    work = base / "work"
    work.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    (work / "README").write_text("a repository on the host\n")
    (work / "data.bin").write_bytes(hashlib.sha256(b"git").digest() * 8192)  # 256 KiB
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "first"], check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(base / "repo.git")], check=True)
    head = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    with socket.socket() as probe:  # a free port for the daemon (it cannot report one)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
                               "--listen=127.0.0.1", f"--port={port}", str(base)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        assert daemon.poll() is None and time.monotonic() < deadline, "git daemon did not start"
        time.sleep(0.05)
    yield {"port": port, "head": head}
    daemon.terminate()
    daemon.wait(10)


# -- a Python package index and an npm registry, one HTTP server ---------------------------
def _wheel() -> bytes:
    """A pure-Python wheel of the module pyapptron_probe, as a build backend writes one."""
    files = {
        "pyapptron_probe/__init__.py": f"VALUE = {PROBE_VALUE!r}\n".encode(),
        "pyapptron_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: pyapptron-probe\nVersion: 1.0\n",
        "pyapptron_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()) + "pyapptron_probe-1.0.dist-info/RECORD,,\n"
    files["pyapptron_probe-1.0.dist-info/RECORD"] = record.encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def _npm_tarball() -> bytes:
    files = {"package/package.json": json.dumps({"name": "pyapptron-probe", "version": "1.0.0",
                                                 "main": "index.js"}).encode(),
             "package/index.js": f"module.exports = {json.dumps(PROBE_VALUE)};\n".encode()}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture(scope="module")
def packages():
    """pip's simple index at /simple/ and an npm registry at / (the documents npm asks for:
    the package's packument and its tarball). The real pip and npm clients speak to them;
    a registry server such as verdaccio would add a large unpinned dependency and nothing
    that these clients' requests exercise."""
    wheel, tarball = _wheel(), _npm_tarball()
    wheel_name = "pyapptron_probe-1.0-py3-none-any.whl"
    asked: list[str] = []

    class Handler(_Quiet):
        def do_GET(self):
            asked.append(self.path)
            port = self.server.server_address[1]
            if self.path.rstrip("/") == "/simple/pyapptron-probe":
                digest = hashlib.sha256(wheel).hexdigest()
                self.reply(f'<html><body><a href="/files/{wheel_name}#sha256={digest}">{wheel_name}</a>'
                           "</body></html>".encode(), "text/html")
            elif self.path == f"/files/{wheel_name}":
                self.reply(wheel)
            elif self.path == "/pyapptron-probe":
                integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
                tarball_url = f"http://{HOST}:{port}/pyapptron-probe/-/pyapptron-probe-1.0.0.tgz"
                version = {"name": "pyapptron-probe", "version": "1.0.0", "main": "index.js",
                           "dist": {"tarball": tarball_url, "integrity": integrity,
                                    "shasum": hashlib.sha1(tarball).hexdigest()}}
                self.reply(json.dumps({"name": "pyapptron-probe", "dist-tags": {"latest": "1.0.0"},
                                       "versions": {"1.0.0": version}}).encode(), "application/json")
            elif self.path == "/pyapptron-probe/-/pyapptron-probe-1.0.0.tgz":
                self.reply(tarball)
            else:
                self.reply(b"{}", "application/json", 404)

        def do_POST(self):  # npm's audit and the like: nothing here
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            asked.append("POST " + self.path)
            self.reply(b"{}", "application/json", 404)

    with http_service(Handler) as httpd:
        yield {"port": httpd.server_address[1], "asked": asked}


# -- HTTPS with a test CA -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_service(tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyapptron test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")

    class Handler(_Quiet):
        def do_GET(self):
            self.reply(b"hello over TLS\n", "text/plain")

    with http_service(Handler, tls=context) as httpd:
        yield {"port": httpd.server_address[1], "ca": ca.public_bytes(serialization.Encoding.PEM)}


# -- a stand-in of the Messages API ---------------------------------------------------------
STAND_IN_REPLY = "pong from the stand-in"


@pytest.fixture(scope="module")
def messages_api():
    """Answers every POST /v1/messages with STAND_IN_REPLY, streamed (server-sent events)
    when the request asks for a stream, as the Messages API does; remembers the requests."""
    requests: list[dict] = []

    class Handler(_Quiet):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            requests.append({"path": self.path, "body": body,
                             "api_key": self.headers.get("x-api-key") or self.headers.get("authorization")})
            if not self.path.startswith("/v1/messages") or self.path.startswith("/v1/messages/count_tokens"):
                self.reply(json.dumps({"input_tokens": 1}).encode(), "application/json")
                return
            model = body.get("model", "claude-stand-in")
            usage = {"input_tokens": 1, "output_tokens": 5}
            if not body.get("stream"):
                self.reply(json.dumps({"id": "msg_standin", "type": "message", "role": "assistant", "model": model,
                                       "content": [{"type": "text", "text": STAND_IN_REPLY}],
                                       "stop_reason": "end_turn", "stop_sequence": None,
                                       "usage": usage}).encode(), "application/json")
                return
            events = [
                ("message_start", {"type": "message_start", "message": {
                    "id": "msg_standin", "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": STAND_IN_REPLY}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                      "stop_sequence": None},
                                   "usage": {"output_tokens": 5}}),
                ("message_stop", {"type": "message_stop"}),
            ]
            stream = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()
            self.reply(stream, "text/event-stream")

        def do_GET(self):
            requests.append({"path": self.path, "body": None, "api_key": None})
            self.reply(b"{}", "application/json", 404)

    with http_service(Handler) as httpd:
        yield {"port": httpd.server_address[1], "requests": requests}


@pytest.fixture(scope="module", params=ENGINES, ids=[image for _, image in ENGINES])
def vm(request, pyapptron_session, git_repo, packages, tls_service, messages_api):
    emulator, image = request.param
    ports = [git_repo["port"], packages["port"], tls_service["port"], messages_api["port"]]
    machine = pyapptron_session.boot(emulator, image, network={"internet": False, "host_ports": ports},
                                     timeout=300)
    yield machine
    machine.shutdown()


def check(result):
    assert result.returncode == 0, (result.stdout.decode(errors="replace")[-2000:],
                                    result.stderr.decode(errors="replace")[-2000:])
    return result.stdout.decode()


def test_git_clones_a_repository_served_on_the_host(vm, git_repo):
    out = check(vm.run(f"rm -rf /tmp/clone && git clone -q git://{HOST}:{git_repo['port']}/repo.git /tmp/clone "
                       "&& git -C /tmp/clone rev-parse HEAD && cat /tmp/clone/README && sha256sum /tmp/clone/data.bin",
                       timeout=300))
    head, readme, digest = out.splitlines()
    assert head == git_repo["head"] and readme == "a repository on the host"
    assert digest.split()[0] == hashlib.sha256(hashlib.sha256(b"git").digest() * 8192).hexdigest()


def test_pip_installs_a_package_from_an_index_on_the_host(vm, packages):
    asked = len(packages["asked"])
    # The image's /etc/pip.conf: no PEP 668 refusal, the host's name trusted over HTTP.
    check(vm.run(f"pip install -q --no-cache-dir --index-url http://{HOST}:{packages['port']}/simple/ "
                 "pyapptron-probe", timeout=600))
    assert check(vm.run("cd / && python3 -c 'import pyapptron_probe; print(pyapptron_probe.VALUE)'",
                        timeout=300)) == PROBE_VALUE + "\n"
    assert "/files/pyapptron_probe-1.0-py3-none-any.whl" in packages["asked"][asked:]


def test_npm_installs_a_package_from_a_registry_on_the_host(vm, packages):
    asked = len(packages["asked"])
    out = check(vm.run(f"rm -rf /tmp/npm-demo && mkdir /tmp/npm-demo && cd /tmp/npm-demo && "
                       f"npm install --no-audit --registry http://{HOST}:{packages['port']}/ pyapptron-probe "
                       ">/dev/null && node -e \"console.log(require('pyapptron-probe'))\"", timeout=900))
    assert out == PROBE_VALUE + "\n"
    assert "/pyapptron-probe/-/pyapptron-probe-1.0.0.tgz" in packages["asked"][asked:]


def test_curl_speaks_tls_to_the_host_and_trusts_only_the_ca_it_was_given(vm, tls_service):
    url = f"https://{HOST}:{tls_service['port']}/"
    unknown = vm.run(f"curl -sS {url}", timeout=120)
    assert unknown.returncode == 60, unknown  # SSL certificate problem: the CA is not trusted yet
    vm.write_file("/root/test-ca.pem", tls_service["ca"])
    assert check(vm.run(f"curl -sS --cacert /root/test-ca.pem {url}", timeout=120)) == "hello over TLS\n"


@pytest.mark.parametrize("vm", [ENGINES[1]], indirect=True, ids=["agent-x86_64"])  # i686 has no Claude Code
def test_claude_code_reaches_a_stand_in_of_the_messages_api_on_the_host(vm, messages_api):
    env = {"ANTHROPIC_BASE_URL": f"http://{HOST}:{messages_api['port']}", "ANTHROPIC_API_KEY": "sk-test-standin",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    result = vm.run(["claude", "-p", "hello"], env=env, cwd="/root", timeout=600)
    assert check(result).strip() == STAND_IN_REPLY
    asked = [r for r in messages_api["requests"] if r["path"].startswith("/v1/messages")]
    assert asked and all(r["api_key"] == "sk-test-standin" for r in asked), messages_api["requests"]
    assert any("hello" in json.dumps(r["body"]) for r in asked)
