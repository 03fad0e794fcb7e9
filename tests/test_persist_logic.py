"""pyapptron.persist in CPython: the option, the layers, tar export/import, the auto-sync policy.

The adapter's store is faked here (plain dicts); the real one is tested in Chromium
(tests/test_browser_persist.py).
"""

from __future__ import annotations

import asyncio
import io
import stat
import warnings
import tarfile

import pytest

from pyapptron import persist as P
from pyapptron._browser import typed_error
from pyapptron.errors import InvalidOption, PersistDamaged, PersistError, PersistQuotaExceeded


class FakeStore:
    def __init__(self, records=None, blobs=None, restored=None, fail=None):
        self.records_ = records or {}
        self.blobs_ = blobs or {}
        self.restored = restored or {}
        self.fail = fail
        self.syncs = 0
        self.imported = None
        self.started_with = None

    through_agent = False

    async def start(self, agent):
        self.started_with = agent

    def hold(self, held):
        self.held = held

    async def sync(self):
        if self.fail:
            raise self.fail
        self.syncs += 1
        return {"files": 1, "bytes": 2, "written": 2, "seconds": 0.01}

    async def records(self):
        return self.records_

    async def blob(self, ref):
        return self.blobs_.get(ref)

    async def import_entries(self, entries, blobs):
        self.imported = (entries, blobs)
        return []

    async def reset(self, layer):
        self.records_.pop(layer, None)

    async def read_live(self, path):
        return self.blobs_.get(path)

    async def write_live(self, path, data, mode):
        self.blobs_[path] = data
        return True

    async def estimate(self):
        return {"usage": 10, "quota": 100}


def run(coro):
    return asyncio.run(coro)


def test_persist_true_means_the_default_store_and_layers():
    spec = P.Persist.from_option(True)
    assert spec.store == "default"
    layers = spec.resolved_layers()
    assert layers["home"] == ("/root",) and "/usr/local" in layers["packages"] and layers["persist"] == ("/persist",)
    assert list(layers)[0] == "home"  # outer layers first: restoring /root must not wipe /root/.local later
    assert P.Persist.from_option(False) is None and P.Persist.from_option(None) is None
    assert P.Persist.from_option("proj").store == "proj"


def test_user_layers_are_added_and_normalised():
    spec = P.Persist(paths={"work": "/srv//work/", "data": ["/data", "/opt/data"]})
    layers = spec.resolved_layers()
    assert layers["work"] == ("/srv/work",) and layers["data"] == ("/data", "/opt/data")
    assert spec.js_options()["store"] == "default"


@pytest.mark.parametrize("option, message", [
    (3, "persist must be True, a store name"),
    ("bad name!", "store name"),
    (P.Persist(paths={"x": "relative"}), "not an absolute guest path"),
    (P.Persist(paths={"x": "/proc/self"}), "cannot be kept"),
    (P.Persist(paths={"x": "/"}), "cannot be kept"),
    (P.Persist(paths={"x": "/root"}), "in both persist layers"),
    (P.Persist(paths={"home": "/srv"}), "defined twice"),
    (P.Persist(paths={"Bad": "/srv"}), "layer name"),
    (P.Persist(paths={"x": []}), "has no paths"),
    (P.Persist(paths={"x": "/a b"}), "spaces or commas"),
])
def test_bad_persist_options_are_refused_before_boot(option, message):
    with pytest.raises(InvalidOption, match=message):
        P.Persist.from_option(option)


def _record(entries):
    return {"format": 1, "paths": ["/persist"], "entries": entries, "committed": 1_700_000_000_000}


def test_export_writes_modes_mtimes_symlinks_and_bytes():
    store = FakeStore(records={"persist": _record([
        ["/persist", stat.S_IFDIR | 0o755, 0, 0, 1, 0, None],
        ["/persist/a.sh", stat.S_IFREG | 0o750, 0, 0, 1_600_000_000, 3, "r1"],
        ["/persist/link", stat.S_IFLNK, 0, 0, 2, 0, "a.sh"],
        ["/persist/empty", stat.S_IFREG | 0o600, 0, 0, 3, 0, None],
    ])}, blobs={"r1": b"hi\n"})
    files = P.PersistedFiles(P.Persist(), store)
    data = run(files.export())
    tar = tarfile.open(fileobj=io.BytesIO(data))
    a = tar.getmember("persist/a.sh")
    assert (a.mode, a.mtime, tar.extractfile(a).read()) == (0o750, 1_600_000_000, b"hi\n")
    assert tar.getmember("persist/link").linkname == "a.sh"
    assert tar.getmember("persist/empty").size == 0

    entries, blobs = P.tar_entries(data, files.layers)
    assert [e[0] for e in entries] == ["/persist", "/persist/a.sh", "/persist/empty", "/persist/link"]
    assert blobs[entries[1][6]] == b"hi\n" and entries[1][1] == stat.S_IFREG | 0o750


def test_export_stops_on_damaged_bytes_and_names_the_file():
    store = FakeStore(records={"persist": _record([["/persist/x", stat.S_IFREG | 0o644, 0, 0, 1, 5, "gone"]])})
    with pytest.raises(PersistDamaged, match="/persist/x"):
        run(P.PersistedFiles(P.Persist(), store).export())


def test_import_refuses_archives_outside_the_layers_and_imports_nothing():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("etc/shadow"), io.BytesIO(b""))
    store = FakeStore()
    with pytest.raises(InvalidOption, match="outside every persist layer"):
        run(P.PersistedFiles(P.Persist(), store).import_(buf.getvalue()))
    assert store.imported is None and store.syncs == 0
    with pytest.raises(InvalidOption, match="tar archive"):
        run(P.PersistedFiles(P.Persist(), store).import_(b"not a tar"))


@pytest.mark.parametrize("name", ["./.dots/x", ".dots/x", "/.dots/x", "//.dots/x", "./.dots/./x"])
def test_import_keeps_dot_names_and_drops_only_a_leading_dot_slash(name):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    entries, _ = P.tar_entries(buf.getvalue(), {"dots": ("/.dots",)})
    assert [e[0] for e in entries] == ["/.dots/x"]


def test_import_of_a_dot_name_outside_the_layers_is_refused_by_its_real_path():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("./.persist/x"), io.BytesIO(b""))
    with pytest.raises(InvalidOption, match=r"first: /\.persist/x"):
        P.tar_entries(buf.getvalue(), P.Persist().resolved_layers())


def test_usage_counts_files_and_bytes_per_layer():
    store = FakeStore(records={"persist": _record([
        ["/persist", stat.S_IFDIR | 0o755, 0, 0, 1, 0, None],
        ["/persist/a", stat.S_IFREG | 0o644, 0, 0, 1, 10, "r"],
    ])})
    usage = run(P.PersistedFiles(P.Persist(), store).usage())
    assert usage["layers"]["persist"].files == 1 and usage["layers"]["persist"].bytes == 10
    assert usage["layers"]["home"].committed is None and usage["origin"] == {"usage": 10, "quota": 100}


def test_a_full_quota_becomes_a_typed_error_that_says_nothing_was_lost():
    # What the browser seam raises for the adapter's error named PersistQuotaExceeded.
    store = FakeStore(fail=typed_error("PersistQuotaExceeded", "The quota has been exceeded."))
    with pytest.raises(PersistQuotaExceeded, match="nothing was lost"):
        run(P.PersistedFiles(P.Persist(), store).sync())
    store.fail = RuntimeError("UnknownError: disk went away")
    with pytest.raises(PersistError, match="last committed version stands"):
        run(P.PersistedFiles(P.Persist(), store).sync())


def test_damage_found_at_boot_is_kept_as_typed_errors():
    store = FakeStore(restored={"layers": {}, "damaged": [{"layer": "home", "path": "/root/x", "reason": "its data is damaged"}]})
    files = P.PersistedFiles(P.Persist(), store)
    with pytest.warns(RuntimeWarning, match="/root/x"):
        run(files.start(agent="the guest agent"))  # once the guest is ready
    (err,) = files.damaged
    assert isinstance(err, PersistDamaged) and (err.layer, err.path) == ("home", "/root/x")
    assert store.started_with == "the guest agent"
    # A restore in place finds the same damage again: it is kept, not warned of twice.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(files.start(agent="the guest agent"))
    assert len(files.damaged) == 1


def test_sync_flushes_the_guest_first():
    calls = []

    async def guest_sync(drop_caches=False):
        calls.append(("guest", drop_caches))

    store = FakeStore()
    files = P.PersistedFiles(P.Persist(), store, guest_sync=guest_sync)
    result = run(files.sync())
    assert calls == [("guest", False)] and store.syncs == 1 and result.written_bytes == 2


def test_changes_are_synced_after_a_quiet_spell_not_once_per_change(monkeypatch):
    monkeypatch.setattr(P, "AUTO_SYNC_DELAY_S", 0.05)
    monkeypatch.setattr(P, "AUTO_SYNC_MAX_DELAY_S", 0.2)

    async def scenario():
        store = FakeStore()
        files = P.PersistedFiles(P.Persist(), store)
        await files.start(agent=None)
        for _ in range(5):
            files.changed()
            await asyncio.sleep(0.01)
        assert store.syncs == 0  # still changing
        await asyncio.sleep(0.1)
        assert store.syncs == 1
        # A steady stream of changes still syncs within the maximum delay.
        for _ in range(30):
            files.changed()
            await asyncio.sleep(0.01)
        assert store.syncs >= 2
        await files.close()

    run(scenario())


def test_no_sync_runs_while_the_layers_are_put_back_and_what_changed_meanwhile_is_synced_after(monkeypatch):
    monkeypatch.setattr(P, "AUTO_SYNC_DELAY_S", 0.02)

    async def scenario():
        store = FakeStore()
        files = P.PersistedFiles(P.Persist(), store)
        files.changed()  # the guest wrote during its boot, before the layers were back
        await asyncio.sleep(0.05)
        assert store.syncs == 0
        await files.start(agent=None)
        await asyncio.sleep(0.05)
        assert store.syncs == 1
        # A restore in place: the old tree must not be committed while it is replaced.
        files.changed()
        files.hold()
        assert store.held is True
        files.changed()
        await asyncio.sleep(0.05)
        assert store.syncs == 1
        files.release()  # the snapshot was refused: the tree is the one it was
        assert store.held is False
        await asyncio.sleep(0.05)
        assert store.syncs == 2
        await files.close()

    run(scenario())


def test_reset_knows_only_the_layers_it_has():
    files = P.PersistedFiles(P.Persist(), FakeStore(records={"home": _record([])}))
    with pytest.raises(InvalidOption, match="no persist layer 'nope'"):
        run(files.reset("nope"))
    run(files.reset("home"))


def test_python_reads_and_writes_only_inside_the_layers():
    store = FakeStore()
    files = P.PersistedFiles(P.Persist(), store)
    run(files.write_file("/persist/notes.txt", "from a cell"))
    assert run(files.read_file("/persist/notes.txt")) == b"from a cell"
    with pytest.raises(InvalidOption, match="not inside a persist layer"):
        run(files.read_file("/etc/passwd"))
    with pytest.raises(FileNotFoundError):
        run(files.read_file("/persist/missing"))
