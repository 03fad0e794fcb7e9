"""pyapptron.persist_guest against the real guest agent, built natively: the layers go
through `pyapptron-agent --tree-list / --tree-read / --tree-apply` into a store, and
back into a tree exactly (modes, owners, mtimes, symlinks, empty directories), on a
plain tree (debian-x86_64's root) and on an overlayfs (agent-x86_64's root).

The store is an in-memory stand-in for emulators/common/persist_store.mjs (its
browser side is tested in tests/test_browser_persist.py); the agent, the file
systems and overlayfs are real.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pyapptron.agent import ExecResult
from pyapptron.errors import PersistError
from pyapptron.persist_guest import WHITEOUT_MODE, GuestTree, encode_op

ROOT = Path(__file__).resolve().parent.parent
AGENT_SRC = ROOT / "emulators" / "agent" / "pyapptron-agent.c"


@pytest.fixture(scope="module")
def agent_binary(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agent") / "pyapptron-agent"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(out), str(AGENT_SRC)], check=True)
    return out


class MemoryStore:
    """persist_store.mjs's LayerStore in memory: the same versions, atomically."""

    def __init__(self):
        self.layers: dict[str, dict] = {}
        self.blob_data: dict[str, bytes] = {}
        self.versions = 0
        self.phase = "idle"

    async def records(self):
        return copy.deepcopy(self.layers)

    async def blobs(self, refs):
        return {ref: self.blob_data.get(ref) for ref in refs}

    async def write_version(self, records, data, pieces):
        blobs = {ref: bytes(data[offset:offset + size]) for ref, offset, size in pieces}
        self.blob_data.update(blobs)
        self.layers.update(copy.deepcopy(records))
        named = {e[6] for r in self.layers.values() for e in r.get("entries", []) if stat.S_ISREG(e[1]) and e[5]}
        self.blob_data = {k: v for k, v in self.blob_data.items() if k in named}
        self.versions += 1
        return sum(len(b) for b in blobs.values())

    async def reset(self, layer):
        self.layers.pop(layer, None)

    async def estimate(self):
        return None


class LocalAgent:
    """The agent's exec and files, run on this machine (the guest is a directory here)."""

    def __init__(self, binary: Path):
        self.binary = binary
        self.execs: list[list[str]] = []

    async def exec(self, argv, input=None):
        self.execs.append(list(argv))
        argv = [str(self.binary), *argv[1:]] if argv[0] == "pyapptron-agent" else list(argv)
        r = subprocess.run(argv, input=input if input is not None else b"", capture_output=True)
        return ExecResult(r.returncode, r.stdout, r.stderr)

    async def read_file(self, path):
        return Path(path).read_bytes()

    async def write_file(self, path, data, mode=0):
        Path(path).write_bytes(data)


def run(coro):
    return asyncio.run(coro)


def snapshot_tree(*roots: Path) -> dict:
    """path -> (type, mode, uid, gid, mtime, size, content or target) for all under roots."""
    out = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        for here, dirs, files in os.walk(root):
            for name in [""] + sorted(dirs) + sorted(files):
                path = os.path.join(here, name) if name else here
                if path in out:
                    continue
                st = os.lstat(path)
                body = (os.readlink(path) if stat.S_ISLNK(st.st_mode)
                        else Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else None)
                out[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                             int(st.st_mtime), st.st_size if stat.S_ISREG(st.st_mode) else 0, body)
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(here, d))]
    return out


def make_files(base: Path) -> None:
    (base / "root" / ".local" / "lib").mkdir(parents=True)
    (base / "root" / "all-bytes.bin").write_bytes(bytes(range(256)) * 64)
    os.chmod(base / "root" / "all-bytes.bin", 0o751)
    (base / "root" / ".local" / "lib" / "pkg.py").write_text("x = 1\n")
    (base / "persist" / "empty").mkdir(parents=True)
    (base / "persist" / "deep" / "er").mkdir(parents=True)
    os.symlink("../all-bytes.bin", base / "persist" / "deep" / "link")
    os.symlink("/nowhere", base / "persist" / "dangling")
    (base / "persist" / "zero").write_bytes(b"")
    os.chown(base / "persist" / "zero", 1234, 5678)
    os.utime(base / "persist" / "zero", (1600000000, 1600000000))
    os.utime(base / "persist" / "deep" / "er", (1500000000, 1500000000))
    os.chmod(base / "persist" / "deep", 0o700)
    os.utime(base / "persist" / "deep" / "link", (1400000000, 1400000000), follow_symlinks=False)


def synced_tree(agent_binary: Path, tmp_path: Path):
    """make_files' tree in a guest directory, started and synced once: (store, guest, tree)."""
    store = MemoryStore()
    guest = tmp_path / "guest"
    make_files(guest)
    tree = GuestTree(store, layers_under(guest))
    run(tree.start(LocalAgent(agent_binary)))
    run(tree.sync())
    return store, guest, tree


def layers_under(base: Path) -> dict:
    return {"home": (f"{base}/root",), "packages": (f"{base}/root/.local", f"{base}/usr/local"),
            "persist": (f"{base}/persist",)}


def test_a_tree_goes_into_the_store_and_comes_back_exactly(agent_binary, tmp_path):
    store = MemoryStore()
    guest = tmp_path / "guest"
    make_files(guest)
    layers = layers_under(guest)
    tree = GuestTree(store, layers)
    agent = LocalAgent(agent_binary)
    run(tree.start(agent))
    assert (guest / "usr" / "local").is_dir()  # a layer's directory exists from the first boot on
    before = snapshot_tree(guest / "root", guest / "persist", guest / "usr" / "local")
    result = run(tree.sync())
    assert result["files"] == 3 and result["written"] == 256 * 64 + 6
    assert set(store.layers) == {"home", "packages", "persist"}
    # The next boot: the directories hold something else; the store's version replaces it.
    shutil.rmtree(guest / "persist" / "deep")
    (guest / "persist" / "stray").write_text("not in the store")
    (guest / "root" / "all-bytes.bin").write_text("changed")
    fresh = GuestTree(store, layers)
    run(fresh.start(LocalAgent(agent_binary)))
    assert fresh.restored["damaged"] == []
    assert fresh.restored["layers"]["persist"]["restored"] is True
    assert snapshot_tree(guest / "root", guest / "persist", guest / "usr" / "local") == before


def test_a_sync_reads_only_what_changed_and_writes_nothing_when_nothing_did(agent_binary, tmp_path):
    store = MemoryStore()
    guest = tmp_path / "guest"
    make_files(guest)
    tree = GuestTree(store, layers_under(guest))
    agent = LocalAgent(agent_binary)
    run(tree.start(agent))
    run(tree.sync())
    versions = store.versions
    again = run(tree.sync())
    assert (again["written"], again["blobs"], store.versions) == (0, 0, versions)
    (guest / "persist" / "new.txt").write_bytes(b"12345")
    changed = run(tree.sync())
    assert (changed["written"], changed["blobs"], store.versions) == (5, 1, versions + 1)
    # A restored tree is known too: its first sync reads nothing.
    fresh = GuestTree(store, layers_under(guest))
    run(fresh.start(LocalAgent(agent_binary)))
    assert run(fresh.sync())["written"] == 0


def test_a_reset_layer_is_no_longer_kept_and_the_others_stay(agent_binary, tmp_path):
    store, guest, tree = synced_tree(agent_binary, tmp_path)
    run(tree.reset("home"))
    (guest / "root" / "later").write_text("x")
    run(tree.sync())
    assert set(store.layers) == {"packages", "persist"}


def test_damaged_data_is_reported_and_the_rest_comes_back(agent_binary, tmp_path):
    store, guest, tree = synced_tree(agent_binary, tmp_path)
    ref = next(e[6] for e in store.layers["home"]["entries"] if e[0].endswith("all-bytes.bin"))
    store.blob_data[ref] = b"short"
    store.layers["persist"] = {"garbage": True}
    shutil.rmtree(guest)
    fresh = GuestTree(store, layers_under(guest))
    run(fresh.start(LocalAgent(agent_binary)))
    reasons = {(d["layer"], d["path"] and os.path.basename(d["path"]), d["reason"]) for d in fresh.restored["damaged"]}
    assert ("home", "all-bytes.bin", "its data is damaged") in reasons
    assert ("persist", None, "its record is not a layer record (damaged)") in reasons
    assert (guest / "root" / ".local" / "lib" / "pkg.py").read_text() == "x = 1\n"


def test_an_agent_without_the_tree_commands_says_to_rebuild_the_image(tmp_path):
    class OldAgent(LocalAgent):
        async def exec(self, argv, input=None):
            if argv[0] == "pyapptron-agent":
                return ExecResult(2, b"", b"pyapptron-agent: unknown option --tree-list\n")
            return await super().exec(argv, input)

    store = MemoryStore()
    store.layers["persist"] = {"format": 1, "paths": [], "entries": [], "committed": 0}
    tree = GuestTree(store, layers_under(tmp_path))
    with pytest.raises(PersistError, match="Rebuild the image"):
        run(tree.start(OldAgent(Path("/nonexistent"))))


def test_tree_apply_reports_what_it_could_not_place_and_goes_on(agent_binary, tmp_path):
    (tmp_path / "file").write_text("a file, not a directory")
    ops = b"".join(encode_op("F", f"{tmp_path}/file/inside", 0o644, 0, 0, 1, data=b"x")[0:2]
                   + encode_op("F", f"{tmp_path}/ok", 0o600, 0, 0, 1700000000, data=b"fine"))
    r = subprocess.run([agent_binary, "--tree-apply"], input=ops, capture_output=True)
    assert r.returncode == 1
    assert r.stdout.decode().startswith(f"{tmp_path}/file/inside\twriting the file: ")
    assert (tmp_path / "ok").read_bytes() == b"fine" and os.stat(tmp_path / "ok").st_mtime == 1700000000


@pytest.fixture
def overlay(tmp_path):
    """An overlayfs as agent-x86_64's init mounts it: a read-only image below, RAM above."""
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "usr" / "local" / "lib" / "node_modules" / "tool").mkdir(parents=True)
    (lower / "usr" / "local" / "lib" / "node_modules" / "tool" / "index.js").write_text("image's tool\n")
    (lower / "usr" / "local" / "bin").mkdir()
    (lower / "usr" / "local" / "bin" / "node").write_bytes(b"\x7fELF" + b"\0" * 4096)
    (lower / "root").mkdir(mode=0o700)
    (lower / "root" / ".bashrc").write_text("image's rc\n")
    (lower / "root" / "warmup").write_text("written by the image's warm-up\n")

    def mount():
        subprocess.run(["mount", "-t", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work},"
                        "redirect_dir=off,metacopy=off", "overlay", str(merged)], check=True)

    def remount_fresh():
        subprocess.run(["umount", str(merged)], check=True)
        shutil.rmtree(upper)
        shutil.rmtree(work)
        upper.mkdir()
        work.mkdir()
        mount()

    mount()
    yield merged, {"upper": str(upper), "lower": str(lower), "merged": str(merged)}, remount_fresh
    subprocess.run(["umount", str(merged)], check=False)


def test_on_an_overlay_root_a_layer_keeps_only_what_differs_from_the_image(agent_binary, overlay, tmp_path):
    merged, spec, remount_fresh = overlay
    store = MemoryStore()
    layers = {"home": (f"{merged}/root",), "packages": (f"{merged}/usr/local",), "persist": (f"{merged}/persist",)}
    tree = GuestTree(store, layers, overlay=spec)
    run(tree.start(LocalAgent(agent_binary)))
    (merged / "usr" / "local" / "lib" / "node_modules" / "added").mkdir()
    (merged / "usr" / "local" / "lib" / "node_modules" / "added" / "index.js").write_text("installed\n")
    (merged / "root" / ".bashrc").unlink()  # an image file deleted: a whiteout
    shutil.rmtree(merged / "usr" / "local" / "lib" / "node_modules" / "tool")  # replaced whole: opaque
    (merged / "usr" / "local" / "lib" / "node_modules" / "tool").mkdir()
    (merged / "usr" / "local" / "lib" / "node_modules" / "tool" / "new.js").write_text("new\n")
    (merged / "persist" / "mine").write_text("mine\n")
    os.utime(merged / "persist", (1500000000, 1500000000))
    want = snapshot_tree(merged / "root", merged / "usr" / "local", merged / "persist")
    result = run(tree.sync())
    # The image's node is not copied into the store: only what changed is.
    assert result["bytes"] < 100
    assert not any(e[0].endswith("/bin/node") for e in store.layers["packages"]["entries"])
    kinds = {os.path.relpath(e[0], merged): e[1] for r in store.layers.values() for e in r["entries"]}
    assert kinds["root/.bashrc"] == WHITEOUT_MODE

    # A reload: the image again, then the store's layers on top.
    remount_fresh()
    fresh = GuestTree(store, layers, overlay=spec)
    run(fresh.start(LocalAgent(agent_binary)))
    assert fresh.restored["damaged"] == []
    assert snapshot_tree(merged / "root", merged / "usr" / "local", merged / "persist") == want

    # A resume from a snapshot whose layers differ from the store: the store wins, and
    # what the store does not have comes back as the image has it.
    (merged / "root" / "warmup").write_text("changed after the sync\n")
    (merged / "usr" / "local" / "lib" / "node_modules" / "added" / "index.js").unlink()
    (merged / "persist" / "stray").write_text("not kept\n")
    again = GuestTree(store, layers, overlay=spec)
    run(again.start(LocalAgent(agent_binary)))
    assert snapshot_tree(merged / "root", merged / "usr" / "local", merged / "persist") == want


def test_after_a_nested_layer_is_reset_the_outer_layer_keeps_all_of_its_files(agent_binary, tmp_path):
    store = MemoryStore()
    guest = tmp_path / "guest"
    make_files(guest)
    (guest / "root" / "zzz-after-local.txt").write_text("sorts after .local\n")
    tree = GuestTree(store, layers_under(guest))
    run(tree.start(LocalAgent(agent_binary)))
    run(tree.sync())
    run(tree.reset("packages"))  # /root/.local is now just part of /root
    run(tree.sync())
    home = {os.path.relpath(e[0], guest) for e in store.layers["home"]["entries"]}
    assert {"root/all-bytes.bin", "root/zzz-after-local.txt", "root/.local/lib/pkg.py"} <= home


def test_a_file_that_grows_between_the_listing_and_the_read_is_kept_as_read(agent_binary, tmp_path):
    store = MemoryStore()
    guest = tmp_path / "guest"
    make_files(guest)
    (guest / "persist" / "grow").write_bytes(b"start ")
    tree = GuestTree(store, layers_under(guest))
    agent = LocalAgent(agent_binary)
    run(tree.start(agent))
    real_exec = agent.exec

    async def exec_growing_the_file(argv, input=None):
        if argv[1:2] == ["--tree-read"]:  # a command still running appends meanwhile
            with open(guest / "persist" / "grow", "ab") as f:
                f.write(b"late bytes")
        return await real_exec(argv, input)

    agent.exec = exec_growing_the_file
    run(tree.sync())
    entry = next(e for e in store.layers["persist"]["entries"] if e[0].endswith("/grow"))
    assert entry[5] == len(b"start late bytes") and store.blob_data[entry[6]] == b"start late bytes"
    agent.exec = real_exec
    shutil.rmtree(guest / "persist")
    fresh = GuestTree(store, layers_under(guest))
    run(fresh.start(LocalAgent(agent_binary)))
    assert fresh.restored["damaged"] == [] and (guest / "persist" / "grow").read_bytes() == b"start late bytes"


def test_a_record_of_another_kind_of_machine_is_left_alone_and_reported(agent_binary, tmp_path):
    store = MemoryStore()
    store.layers["persist"] = {"format": 1, "paths": [f"{tmp_path}/persist"], "committed": 0, "delta": True,
                               "entries": [[f"{tmp_path}/persist/x", WHITEOUT_MODE, 0, 0, 0, 0, None]]}
    tree = GuestTree(store, layers_under(tmp_path))  # a plain tree, not an overlay's difference
    run(tree.start(LocalAgent(agent_binary)))
    (damage,) = tree.restored["damaged"]
    assert damage["layer"] == "persist" and "another kind of machine" in damage["reason"]
