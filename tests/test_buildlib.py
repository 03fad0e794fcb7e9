"""CPython tests of emulators/buildlib.py, the helpers every asset builder shares."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import os

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "emulators"))
import buildlib  # noqa: E402


# ---- the cpio writer -----------------------------------------------------------------

def _small_tree() -> bytes:
    c = buildlib.Cpio()
    c.dir("tmp", 0o1777)
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", b"BB", 0o755)
    c.symlink("bin/sh", "busybox")
    return c.finish()


def _newc(ino, mode, nlink, size, rdev, name: bytes, data: bytes = b"") -> bytes:
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def test_cpio_writes_newc_entries_byte_for_byte():
    expected = b"".join([
        _newc(1, 0o041777, 2, 0, (0, 0), b"tmp"),
        _newc(2, 0o020600, 1, 0, (5, 1), b"dev/console"),  # no "dev" entry: chardev adds no parents
        _newc(3, 0o040755, 2, 0, (0, 0), b"bin"),           # file() adds its parent directories
        _newc(4, 0o100755, 1, 2, (0, 0), b"bin/busybox", b"BB"),
        _newc(5, 0o120777, 1, 7, (0, 0), b"bin/sh", b"busybox"),
        _newc(6, 0, 1, 0, (0, 0), b"TRAILER!!!"),
    ])
    got = _small_tree()
    assert got == expected
    assert len(got) % 4 == 0
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(_small_tree()).hexdigest()  # deterministic


def test_cpio_header_is_110_bytes_and_names_are_padded_to_four():
    tree = _small_tree()
    assert tree.index(b"tmp\0") == 110  # 6 magic + 13 fields of 8 hex digits
    assert tree[114:116] == b"\0\0" and tree[116:122] == b"070701"  # 110 + "tmp\0" padded to 116


# ---- the command runner --------------------------------------------------------------

def test_run_appends_the_command_and_its_output_to_the_log(tmp_path):
    log = tmp_path / "logs" / "build.log"
    buildlib.run(["sh", "-c", "echo out; echo err >&2"], log_file=log)
    buildlib.run(["echo", "second"], log_file=log)
    assert log.read_text() == "\n$ sh -c 'echo out; echo err >&2'\nout\nerr\n\n$ echo second\nsecond\n"


def test_a_failed_command_says_what_failed_with_the_last_lines_and_the_log(tmp_path):
    log = tmp_path / "build.log"
    buildlib.run(["echo", "an earlier command"], log_file=log)
    script = "for i in $(seq 1 40); do echo line $i; done; exit 3"
    with pytest.raises(buildlib.BuildError) as e:
        buildlib.run(["sh", "-c", script], log_file=log, what="make bochs")
    lines = str(e.value).splitlines()
    assert lines[0] == f"make bochs failed (exit 3): sh -c '{script}'"
    assert lines[1:-1] == [f"line {i}" for i in range(11, 41)]  # the last 30, not the earlier command
    assert lines[-1] == f"full log: {log}"


def test_a_failed_captured_command_carries_its_output():
    with pytest.raises(buildlib.BuildError, match=r"^false failed \(exit 1\): false$"):
        buildlib.run(["false"], capture=True)
    with pytest.raises(buildlib.BuildError) as e:
        buildlib.run(["sh", "-c", "echo to stdout; echo to stderr >&2; exit 2"], capture=True, what="apt-get update")
    assert str(e.value).splitlines()[1:] == ["to stdout", "to stderr"]
    r = buildlib.run(["sh", "-c", "exit 4"], check=False, capture=True)
    assert r.returncode == 4  # check=False: the caller decides
    assert buildlib.run(["printf", "\\377"], capture=True, text=False).stdout == b"\xff"


def test_a_missing_program_is_a_build_error_that_names_it(tmp_path):
    with pytest.raises(buildlib.BuildError, match="is no-such-tool-here installed"):
        buildlib.run(["no-such-tool-here", "--version"])


def test_nice_runs_the_command_under_nice(tmp_path):
    r = buildlib.run(["sh", "-c", "nice"], nice=True, capture=True)
    # 10 above this process's own niceness (capped at 19, where a niced test run may be)
    assert r.args[:3] == ["nice", "-n", "10"] and int(r.stdout) == min(19, os.nice(0) + 10)


# ---- the machine's sources and the private apt ---------------------------------------

def _etc(tmp_path: Path, sources: str, one_line: str = "") -> Path:
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(sources)
    (etc / "sources.list").write_text(one_line)
    return etc


MACHINE_SOURCES = """\
Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
# a comment
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_the_mirror_is_the_machines_main_debian_archive(tmp_path):
    etc = _etc(tmp_path, MACHINE_SOURCES, "deb [arch=amd64] https://deb.nodesource.com/node_22.x nodistro main\n")
    assert buildlib.debian_mirror(etc) == "http://mirror.example.org/debian"
    disabled = _etc(tmp_path / "b", "Types: deb\nURIs: http://x/debian\nSuites: bookworm\nEnabled: no\n")
    with pytest.raises(buildlib.BuildError, match="no Debian mirror"):
        buildlib.debian_mirror(disabled)
    assert buildlib.debian_mirror(disabled, default="http://deb.debian.org/debian") == "http://deb.debian.org/debian"
    one_line = _etc(tmp_path / "c", "", "deb http://old.example/debian bookworm main\n")
    assert buildlib.debian_mirror(one_line) == "http://old.example/debian"


def test_private_apt_reads_only_its_own_sources_lists_and_cache(tmp_path):
    etc = _etc(tmp_path, MACHINE_SOURCES)
    state = tmp_path / "cache" / "apt-trixie-src"
    apt = buildlib.PrivateApt.for_source_packages(state, "trixie", etc=etc)
    assert apt.options() == [
        "-o", f"Dir::Etc::SourceList={state}/sources.list",
        "-o", f"Dir::Etc::SourceParts={state}/sources.list.d",
        "-o", f"Dir::State::Lists={state}/lists",
        "-o", f"Dir::Cache={state}/cache",
    ]
    apt.prepare()
    lines = (state / "sources.list").read_text().splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == ["deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                         "http://mirror.example.org/debian trixie main"]
    assert list((state / "sources.list.d").iterdir()) == []  # so none of the machine's entries is read
    assert (state / "lists" / "partial").is_dir() and (state / "cache" / "archives" / "partial").is_dir()
    assert (etc / "sources.list.d").is_dir() and sorted(p.name for p in (etc / "sources.list.d").iterdir()) == [
        "debian.sources"]  # the machine's configuration is only read


def test_private_apt_configuration_is_what_apt_itself_sees(tmp_path):
    """apt-config dump with the options: apt takes them (an apt-config on PATH is Debian's)."""
    apt = buildlib.PrivateApt.for_source_packages(tmp_path / "state", "trixie", etc=_etc(tmp_path, MACHINE_SOURCES))
    dump = buildlib.run(["apt-config", *apt.options(), "dump"], capture=True).stdout.lower()  # (apt's case)
    for option, value in (("Dir::Etc::SourceList", "sources.list"), ("Dir::Etc::SourceParts", "sources.list.d"),
                          ("Dir::State::Lists", "lists"), ("Dir::Cache", "cache")):
        assert f'{option} "{tmp_path}/state/{value}";'.lower() in dump


def test_only_the_old_build_s_own_apt_source_file_is_removed(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "emulators" / "c2w"))
    import build_bochs
    ours = tmp_path / "pyapptron-trixie-src.sources"
    ours.write_text(build_bochs.OLD_MACHINE_SOURCE_MARK + ": source packages only.\nTypes: deb-src\n")
    build_bochs.remove_old_machine_source(ours)
    assert not ours.exists() and "removed" in capsys.readouterr().out
    someone_elses = tmp_path / "pyapptron-trixie-src.sources"
    someone_elses.write_text("Types: deb-src\nURIs: http://x/debian\n")
    build_bochs.remove_old_machine_source(someone_elses)
    assert someone_elses.exists()
    build_bochs.remove_old_machine_source(tmp_path / "absent.sources")  # nothing to do


def test_script_main_turns_a_build_error_into_its_message(capsys):
    def main():
        raise buildlib.BuildError("apt-get source failed: run as root")
    with pytest.raises(SystemExit) as e:
        buildlib.script_main(main)
    assert e.value.code == "error: apt-get source failed: run as root"
