"""`python -m pyapptron run`: a real headless browser and VM behind a plain command line."""

import subprocess
import sys

import pytest

from pyapptron.backends import available_emulators, backend_class
from pyapptron.host.cli import main

browser = pytest.mark.browser


def cli(*args, input_bytes=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "pyapptron", *args], capture_output=True,
                          input=input_bytes, timeout=timeout)


@pytest.mark.parametrize("command", ["run", "demo", "mcp"])
def test_help_lists_every_available_emulator_and_its_default_image(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: argparse would wrap at "qemu-"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    emulator_help = next(line for line in lines if line.strip().startswith("--emulator"))
    image_help = next(line for line in lines if line.strip().startswith("--image"))
    assert f"emulator backend: {', '.join(available_emulators())} (default v86)" in emulator_help
    assert "qemu-wasm" in emulator_help
    assert "minimal for v86" in image_help and "debian-x86_64 for c2w" in image_help
    assert backend_class("qemu-wasm").default_image not in image_help  # it boots the user's build


@browser
def test_run_passes_both_streams_and_the_exit_code_through():
    r = cli("run", "--", "sh", "-c", "echo out; printf 'err\\0bin' >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\0bin")


@browser
def test_run_timeout_exits_124_with_what_was_written(tmp_path):
    data = tmp_path / "in.txt"
    data.write_bytes(b"from a file\n")
    r = cli("run", "--timeout", "2", "--input-file", str(data), "--", "sh", "-c", "cat; echo partial; sleep 30")
    assert r.returncode == 124
    assert r.stdout == b"from a file\npartial\n"


@browser
def test_run_with_an_unknown_image_says_what_exists():
    r = cli("run", "--image", "nope", "--", "true")
    assert r.returncode == 125
    assert b"no image 'nope'" in r.stderr and b"minimal" in r.stderr


@browser
def test_run_without_a_command_explains_usage():
    r = cli("run")
    assert r.returncode == 2 and b"give a command after --" in r.stderr


@browser
def test_run_resumes_the_boot_snapshot_by_default_and_cold_boots_on_request():
    r = cli("demo")
    assert r.returncode == 0 and b"resumed from its boot snapshot of image 'minimal'" in r.stdout
    r = cli("demo", "--cold")
    assert r.returncode == 0 and b"(a cold boot of the kernel)" in r.stdout


@pytest.mark.parametrize("argv, expected", [
    ([], None),
    (["--network"], {"internet": True, "host_ports": []}),
    (["--network", "host-only"], {"internet": False, "host_ports": []}),
    (["--host-port", "8000", "--host-port", "8001"], {"internet": False, "host_ports": [8000, 8001]}),
    (["--network=on", "--host-port", "8000"], {"internet": True, "host_ports": [8000]}),
])
def test_network_flags_become_boots_network_option(argv, expected):
    import argparse

    from pyapptron.host.cli import _browser_args, network_option

    parser = argparse.ArgumentParser()
    _browser_args(parser)
    assert network_option(parser.parse_args(argv)) == expected
