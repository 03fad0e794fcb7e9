"""CPython tests of the agent image recipe (emulators/v86/build_agent.py) and its output."""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "build" / "assets" / "images" / "agent"


def _load():
    path = REPO / "emulators" / "v86" / "build_agent.py"
    spec = importlib.util.spec_from_file_location("pyapptron_build_agent", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


build_agent = _load()


def test_prune_rules_drop_docs_and_caches_but_keep_their_directories():
    pruned = build_agent._pruned
    assert pruned("usr/share/doc/git/README.md")
    assert pruned("var/lib/apt/lists/deb.debian.org_Packages")
    assert pruned("debootstrap") and pruned("debootstrap/debootstrap.log")
    assert not pruned("usr/share/doc")  # the directory stays, empty but for copyright files
    assert not pruned("usr/bin/git") and not pruned("usr/share/docs-of-something-else")
    assert build_agent._kept("usr/share/doc/git/copyright")


def test_index_walk_records_modes_links_overlay_and_dedups_contents(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/share/doc/pkg").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "sbin").mkdir()
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    os.chmod(root / "usr/bin/tool", 0o4755)
    (root / "usr/bin/tool-copy").write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    os.symlink("tool", root / "usr/bin/alias")
    (root / "usr/share/doc/pkg/README").write_text("docs")
    (root / "usr/share/doc/pkg/copyright").write_text("license")
    (root / "etc/passwd").write_text("old")
    overlay = {"etc/passwd": (0o644, b"new"), "sbin/init": (0o755, b"#!/bin/sh\n")}
    index = build_agent.Index(tmp_path / "blobs")
    fsroot = index.walk(root, overlay)
    index.store_pending()
    build_agent.rename_ids(fsroot, index.files)

    def find(entries, path):
        name, _, rest = path.partition("/")
        entry = next(e for e in entries if e[0] == name)
        return find(entry[6], rest) if rest else entry

    tool, copy = find(fsroot, "usr/bin/tool"), find(fsroot, "usr/bin/tool-copy")
    assert stat.S_IMODE(tool[3]) == 0o4755 and stat.S_ISREG(tool[3])
    assert tool[6] == copy[6]  # one stored content for identical files
    assert (tmp_path / "blobs" / tool[6]).exists()
    assert find(fsroot, "usr/bin/alias")[6] == "tool"
    doc = find(fsroot, "usr/share/doc/pkg")
    assert [e[0] for e in doc[6]] == ["copyright"]  # pruned but for the license
    passwd = find(fsroot, "etc/passwd")
    assert passwd[1] == 3 and (tmp_path / "blobs" / passwd[6]).read_bytes() == b"new"
    assert stat.S_IMODE(find(fsroot, "sbin/init")[3]) == 0o755  # an overlay file new to its directory
    # an overlay path the tree cannot hold (here: through a symlinked directory) is an error, not a loss
    with pytest.raises(SystemExit, match="usr/bin/alias/x"):
        build_agent.Index(tmp_path / "blobs2").walk(root, {"usr/bin/alias/x": (0o644, b"")})


def _built_image():
    if not (IMAGE / "image.json").is_file():
        pytest.fail(f"{IMAGE}/image.json is missing: run `python emulators/build.py` (or emulators/setup.sh)",
                    pytrace=False)
    return json.loads((IMAGE / "image.json").read_text())


def test_built_agent_image_index_names_only_stored_contents():
    spec = _built_image()
    fs = json.loads(gzip.decompress((IMAGE / spec["rootfs"]["basefs"]).read_bytes()))
    assert fs["version"] == 3
    stored = set(os.listdir(IMAGE / spec["rootfs"]["baseurl"]))
    missing = []

    def walk(entries, prefix):
        for e in entries:
            if stat.S_ISDIR(e[3]):
                walk(e[6], prefix + e[0] + "/")
            elif stat.S_ISREG(e[3]) and e[6] not in stored:
                missing.append(prefix + e[0])

    walk(fs["fsroot"], "/")
    assert not missing, f"{len(missing)} files have no stored content, e.g. {missing[:5]}"


def test_the_page_server_lets_browsers_cache_content_addressed_files(tmp_path):
    import urllib.error
    import urllib.request

    from pyapptron.host import PageServer

    (tmp_path / "assets.json").write_text("{}")
    fs = tmp_path / "images" / "agent" / "fs"
    fs.mkdir(parents=True)
    (fs / "0123456789abcdef.zst").write_bytes(b"x")
    (tmp_path / "images" / "agent" / "fs.json.gz").write_bytes(b"y")
    with PageServer(assets_dir=tmp_path, refresh=False) as server:
        def cache_control(path):
            try:
                return urllib.request.urlopen(server.url + path).headers["Cache-Control"]
            except urllib.error.HTTPError as e:
                return e.headers["Cache-Control"]
        assert "immutable" in cache_control("assets/images/agent/fs/0123456789abcdef.zst")
        assert cache_control("assets/images/agent/fs.json.gz") == "no-cache"  # the index changes with a rebuild
        assert cache_control("assets/images/agent/fs/fedcba9876543210") == "no-cache"  # a 404 is not cached


def _load_agent64():
    path = REPO / "emulators" / "c2w" / "build_agent64.py"
    spec = importlib.util.spec_from_file_location("pyapptron_build_agent64", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gemini_starts_node_once_and_the_wrapper_restarts_it_when_the_cli_asks(tmp_path):
    """agent-x86_64's `gemini`: one node per start (GEMINI_CLI_NO_RELAUNCH), the CLI's
    restart code 199 handled by the shell, any other exit status passed through."""
    runs = tmp_path / "runs"
    fake_node = tmp_path / "node"  # exits 199 (restart me) the first time, then 3
    fake_node.write_text(f"""#!/bin/sh
echo "$GEMINI_CLI_NO_RELAUNCH $*" >> {runs}
[ "$(wc -l < {runs})" -eq 1 ] && exit 199
exit 3
""")
    fake_node.chmod(0o755)
    wrapper = tmp_path / "gemini"
    wrapper.write_text(_load_agent64().GEMINI_WRAPPER.format(node=fake_node, main="/cli/bundle/gemini.js"))
    wrapper.chmod(0o755)
    r = subprocess.run([str(wrapper), "-p", "two words"], capture_output=True, timeout=30)
    assert r.returncode == 3
    assert runs.read_text().splitlines() == ["true /cli/bundle/gemini.js -p two words"] * 2
