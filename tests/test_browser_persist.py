"""boot(persist=...): what the guest writes survives a reload and a browser restart,
on every engine that keeps layers (v86: its 9p tree in the page; c2w: through the
guest agent, on a plain root and on agent-x86_64's overlay root).

Real Chromium, real IndexedDB, one profile and one origin (the same server) for the
whole module; each test uses a store of its own, named after the engine.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from dataclasses import dataclass

import pytest

from pyapptron.errors import InvalidOption, PersistLocked
from pyapptron.host.browser import Browser, BrowserConfig, RemoteSession
from pyapptron.host.server import PageServer

pytestmark = pytest.mark.browser

# What `stat` says of every path under the persisted directories: name, octal mode,
# size, mtime, type and (for a symlink) its target.
LISTING = ("find /root /persist /usr/local -exec stat -c '%n %a %s %Y %F %N' {} + | sort")


@dataclass(frozen=True)
class Engine:
    """What the shared persistence tests need to know of one engine."""

    emulator: str
    image: str  # a small image
    agent_image: str  # the image with python3, pip (and npm)
    big_memory_mib: int  # room for the 100 MB test (c2w keeps the files in guest RAM)

    def __str__(self) -> str:
        return self.emulator


ENGINES = [Engine("v86", "minimal", "agent", 256), Engine("c2w", "debian-x86_64", "agent-x86_64", 768)]


@pytest.fixture(scope="module", params=ENGINES, ids=str)
def engine(request) -> Engine:
    return request.param


@pytest.fixture(scope="module")
def server():
    with PageServer() as s:
        yield s


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    return str(tmp_path_factory.mktemp("profile"))


class Page:
    """One browser on the module's profile; reload() and restart() keep the origin."""

    def __init__(self, server, profile, engine: Engine):
        self.server, self.profile, self.engine = server, profile, engine
        self.browser = Browser(BrowserConfig(profile_dir=profile))
        self.session = RemoteSession(self.browser, server.url, autoboot=False)

    def reload(self):
        self.session = RemoteSession(self.browser, self.server.url, autoboot=False)

    def restart(self):
        self.browser.close()
        self.browser = Browser(BrowserConfig(profile_dir=self.profile))
        self.reload()

    def kill(self):
        """SIGKILL the browser, as a crash or a killed tab would: no unload, no cleanup."""
        import subprocess

        subprocess.run(["pkill", "-KILL", "-f", f"user-data-dir={self.profile}"], check=False)
        with contextlib.suppress(Exception):
            self.browser.close()

    def boot(self, store, image=None, **options):
        # One store per engine and test: the engines share the module's origin.
        return self.session.boot(self.engine.emulator, image or self.engine.image,
                                 persist=f"{self.engine.emulator}-{store}", **options)

    def close(self):
        self.browser.close()


@pytest.fixture(scope="module")
def _module_page(server, profile, engine):
    p = Page(server, profile, engine)
    yield p
    p.close()


@pytest.fixture
def page(_module_page):
    """The module's browser, on a freshly loaded page (a browser start costs seconds)."""
    _module_page.reload()
    return _module_page


def test_files_survive_sync_autosync_shutdown_reload_and_restart_exactly(page):
    """The durability contract, one step at a time, on one store."""
    vm = page.boot("exact")
    data = bytes(range(256)) * 64
    vm.write_file("/root/all-bytes.bin", data, mode=0o751)
    vm.run("mkdir -p /persist/empty /persist/deep/er /usr/local/bin && echo tool > /usr/local/bin/tool && "
           "chmod 755 /usr/local/bin/tool && ln -s ../all-bytes.bin /persist/deep/link && "
           "ln -s /nowhere /persist/dangling && : > /persist/zero && touch -d @1600000000 /persist/zero && "
           "touch -d @1500000000 /persist/deep/er && chmod 700 /persist/deep", check=True)
    before = vm.run(LISTING, check=True).stdout
    vm.persist.sync()
    # The automatic sync: a change, a quiet spell (2 s), and it is committed without sync().
    vm.run("echo by-itself > /persist/auto.txt; sleep 5", check=True)
    with_auto = vm.run(LISTING, check=True).stdout

    page.reload()  # no sync, no shutdown: the page is simply gone
    vm = page.boot("exact")
    assert vm.read_file("/root/all-bytes.bin") == data
    assert vm.run(LISTING, check=True).stdout == with_auto
    assert vm.read_file("/persist/auto.txt") == b"by-itself\n"
    assert with_auto != before

    vm.run("rm /persist/auto.txt && echo last-words > /root/note", check=True)
    at_shutdown = vm.run(LISTING, check=True).stdout
    vm.shutdown()  # syncs first

    page.restart()  # a new browser on the same profile
    vm = page.boot("exact")
    assert vm.read_file("/root/all-bytes.bin") == data
    assert vm.read_file("/root/note") == b"last-words\n"
    assert vm.run(LISTING, check=True).stdout == at_shutdown


def test_export_then_import_into_a_fresh_profile(page, server, tmp_path):
    vm = page.boot("exported")
    vm.run("mkdir -p /persist/proj/src && echo 'print(1)' > /persist/proj/src/main.py && "
           "chmod 640 /persist/proj/src/main.py && ln -s src/main.py /persist/proj/entry && "
           "touch -d @1700000000 /persist/proj/src/main.py && echo rc > /root/.myrc", check=True)
    vm.persist.sync()
    archive = vm.persist.export()
    names = tarfile.open(fileobj=io.BytesIO(archive)).getnames()
    assert {"persist/proj/src/main.py", "persist/proj/entry", "root/.myrc"} <= set(names)
    listing = vm.run("stat -c '%n %a %s %Y %N' /persist/proj/src/main.py /persist/proj/entry /root/.myrc").stdout
    # An archive with a member outside every layer is refused whole: nothing changes.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("persist/ok.txt", "etc/passwd"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"x\n"))
    with pytest.raises(InvalidOption, match="outside every persist layer.*/etc/passwd"):
        vm.persist.import_(buf.getvalue())
    assert vm.run("test -e /persist/ok.txt").returncode == 1
    vm.shutdown()  # two emulators at once would only slow both

    fresh = Page(server, str(tmp_path / "fresh-profile"), page.engine)
    try:
        vm2 = fresh.boot("imported")
        assert vm2.persist.import_(archive) == len(names)
        assert vm2.run("stat -c '%n %a %s %Y %N' /persist/proj/src/main.py /persist/proj/entry /root/.myrc").stdout == listing
        assert vm2.run("cat /root/.myrc; readlink /persist/proj/entry").stdout == b"rc\nsrc/main.py\n"
        assert vm2.persist.usage()["layers"]["persist"].files == 1  # import_ committed it
    finally:
        fresh.close()


def test_reset_of_one_layer_leaves_the_others_and_a_store_has_one_machine(page):
    vm = page.boot("reset")
    with pytest.raises(PersistLocked, match="in use by another machine"):
        page.boot("reset")  # one machine per store: a second writer would drop the first's files
    vm.run("echo home > /root/h && echo mine > /persist/p && mkdir -p /usr/local/lib && echo pkg > /usr/local/lib/k",
           check=True)
    vm.persist.sync()
    vm.persist.reset("home")
    usage = vm.persist.usage()["layers"]
    assert usage["home"].files == 0 and usage["persist"].files == 1 and usage["packages"].files == 1
    page.reload()
    vm = page.boot("reset")
    assert vm.run("cat /root/h").returncode != 0
    assert vm.run("cat /persist/p /usr/local/lib/k").stdout == b"mine\npkg\n"


def test_a_damaged_record_is_reported_and_the_rest_loads(page):
    vm = page.boot("damaged")
    vm.run("echo one > /persist/one && echo two > /persist/two && echo home > /root/h", check=True)
    vm.persist.sync()
    vm.shutdown()
    # Damage the store behind pyapptron's back: one file's bytes, and the whole home record.
    page.browser.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const open = indexedDB.open("pyapptron-persist:" + arguments[0] + "-damaged");
        open.onsuccess = async () => {
          const db = open.result;
          const read = db.transaction("layers").objectStore("layers").get("persist");
          read.onsuccess = () => {
            const entry = read.result.entries.find((e) => e[0] === "/persist/two");
            const tx = db.transaction(["blobs", "layers"], "readwrite");
            tx.objectStore("blobs").put("not bytes", entry[6]);
            tx.objectStore("layers").put({garbage: true}, "home");
            tx.oncomplete = () => { db.close(); done(true); };
          };
        };
    """, page.engine.emulator)
    page.reload()
    vm = page.boot("damaged")
    messages = " | ".join(str(d) for d in vm.persist.damaged)
    assert "/persist/two: its data is damaged" in messages
    assert "layer 'home'" in messages and "not a layer record" in messages
    assert vm.read_file("/persist/one") == b"one\n"  # the rest of the store loaded
    assert vm.run("test -e /persist/two").returncode == 1


# Made in the page, by Python: 20,000 small files (a node_modules-like tree, by tar import)
# and one 100 MB file (written into the persisted tree directly, as a notebook would).
MAKE_BIG_STORE = """
import hashlib, io, random, tarfile
vm = machines[VM]
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    for i in range(20000):
        body = f"module {i}\\n".encode()
        info = tarfile.TarInfo(f"persist/node_modules/pkg{i // 100}/f{i}.js")
        info.size, info.mtime, info.mode = len(body), 1600000000 + i, 0o644
        tar.addfile(info, io.BytesIO(body))
await vm.persist.import_(buf.getvalue())
big = random.Random(SEED).randbytes(100 * 1024 * 1024)
await vm.persist.write_file("/persist/big.bin", big)
await vm.persist.write_file("/persist/version", str(SEED))
sync = await vm.persist.sync()
result = {"big": hashlib.sha256(big).hexdigest(), "sync_seconds": sync.seconds, "files": sync.files}
"""

READ_BIG_STORE = """
import hashlib, io, tarfile
vm = machines[VM]
small = hashlib.sha256()
# The small files as the store has them (20,000 reads through the agent would take minutes on c2w).
with tarfile.open(fileobj=io.BytesIO(await vm.persist.export())) as tar:
    members = sorted((m for m in tar if m.isfile() and m.name.startswith("persist/node_modules/")), key=lambda m: m.name)
    for m in members:
        small.update(tar.extractfile(m).read())
result = {"big": hashlib.sha256(await vm.persist.read_file("/persist/big.bin")).hexdigest(),
          "small": small.hexdigest(), "small_files": len(members),
          "version": (await vm.persist.read_file("/persist/version")).decode()}
"""


def _small_digest():
    import hashlib

    h = hashlib.sha256()
    for i in sorted(range(20000), key=lambda i: f"persist/node_modules/pkg{i // 100}/f{i}.js"):
        h.update(f"module {i}\n".encode())
    return h.hexdigest()


def test_20000_small_files_and_a_100_mb_file_round_trip_and_a_killed_sync_loses_nothing(page):
    vm = page.boot("big", memory_mib=page.engine.big_memory_mib)
    made = page.session.python(MAKE_BIG_STORE.replace("VM", str(vm.id)).replace("SEED", "1"))
    assert made["files"] == 20002

    # A second version is being committed when the browser is killed: the first must come back whole.
    phase = page.session.python(f"""
import asyncio, random
vm = machines[{vm.id}]
await vm.persist.write_file("/persist/big.bin", random.Random(2).randbytes(100 * 1024 * 1024))
await vm.persist.write_file("/persist/version", "2")
asyncio.ensure_future(vm.persist.sync())
store = vm.backend.persist_store
while store.phase in ("idle", "walk"):  # wait for the new bytes to be going into IndexedDB
    await asyncio.sleep(0.002)
result = store.phase
""")
    page.kill()
    assert phase == "blobs", f"the browser was killed in the {phase!r} phase, not while writing"
    page.restart()
    vm = page.boot("big", memory_mib=page.engine.big_memory_mib)
    assert page.session.python(READ_BIG_STORE.replace("VM", str(vm.id))) == {
        "big": made["big"], "small": _small_digest(), "small_files": 20000, "version": "1"}
    # The guest sees the same tree: count, modes and mtimes of the small files.
    r = vm.run("find /persist/node_modules -type f | wc -l; stat -c '%a %Y %s' /persist/node_modules/pkg199/f19999.js; "
               "cat /persist/node_modules/pkg7/f777.js", check=True)
    assert r.stdout == b"20000\n644 1600019999 13\nmodule 777\n"


def _tiny_wheel() -> bytes:
    """A pure-Python wheel made here (the guest has no network): greet-1.0."""
    import zipfile

    files = {
        "greet/__init__.py": "def hello():\n    return 'hello from a kept package'\n",
        "greet-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: greet\nVersion: 1.0\n",
        "greet-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files["greet-1.0.dist-info/RECORD"] = "".join(f"{name},,\n" for name in files) + "greet-1.0.dist-info/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
    return buf.getvalue()


def _tiny_npm_package() -> bytes:
    """An npm package with a command, made here (the guest has no network): greet-cli-1.0.0."""
    import json

    files = {
        "package/package.json": json.dumps({"name": "greet-cli", "version": "1.0.0", "bin": {"greet-cli": "bin.js"}}),
        "package/bin.js": "#!/usr/bin/env node\nconsole.log('hello from a kept npm package');\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(text.encode()), 0o755, 1700000000
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def test_packages_installed_with_pip_user_and_npm_g_survive_a_browser_restart(page):
    vm = page.boot("agent-packages", image=page.engine.agent_image)
    vm.write_file("/root/greet-1.0-py3-none-any.whl", _tiny_wheel())
    vm.write_file("/root/greet-cli-1.0.0.tgz", _tiny_npm_package())
    r = vm.run("python3 -m pip install --user --no-index --no-deps --break-system-packages "
               "/root/greet-1.0-py3-none-any.whl", timeout=600)
    assert r.returncode == 0, r.stderr
    r = vm.run("npm install -g --offline --no-audit --no-fund /root/greet-cli-1.0.0.tgz", timeout=600)
    assert r.returncode == 0, r.stderr
    vm.shutdown()  # syncs first
    page.restart()
    vm = page.boot("agent-packages", image=page.engine.agent_image)
    r = vm.run(["python3", "-c", "import greet; print(greet.hello())"], timeout=300)
    assert (r.returncode, r.stdout) == (0, b"hello from a kept package\n"), r.stderr
    r = vm.run("greet-cli", timeout=300)
    assert (r.returncode, r.stdout) == (0, b"hello from a kept npm package\n"), r.stderr
