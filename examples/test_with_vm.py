"""For test authors: a booted VM as a pytest fixture, driven from CPython through a real
headless Chromium. Run with `python -m pytest examples/test_with_vm.py`; add
`--pyapptron-scope=function` for a fresh machine per test, `-n 2` (pytest-xdist) to run
in parallel, `--pyapptron-remote http://GRID:4444` to run on a Selenium Grid.

The fixtures come from pyapptron's pytest plugin, registered by installing pyapptron;
`vm` resumes from the image's boot snapshot and lives for the module by default.
"""


def test_the_guest_runs_a_shell_script(vm):
    vm.write_file("/root/greet.sh", "echo \"hello, $1\"\n", mode=0o755)
    r = vm.run(["/root/greet.sh", "tester"])
    assert (r.returncode, r.stdout) == (0, b"hello, tester\n")


def test_files_written_in_the_guest_can_be_read_back(vm):
    vm.run("date +%Y > /tmp/year")
    assert vm.read_file("/tmp/year").strip().isdigit()
