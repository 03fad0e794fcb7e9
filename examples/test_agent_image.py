"""For test authors: a module whose `vm` is the Debian "agent" image (zsh, git, Python,
Node, gcc), chosen with the pyapptron marker. Run with
`python -m pytest examples/test_agent_image.py`.
"""

import pytest

pytestmark = pytest.mark.pyapptron(image="agent")


def test_a_python_script_runs_in_the_guest(vm):
    vm.write_file("/root/stats.py", "import statistics, sys\nprint(statistics.mean(map(int, sys.argv[1:])))\n")
    r = vm.run(["python3", "/root/stats.py", "3", "4", "8"], timeout=120)
    assert (r.returncode, r.stdout) == (0, b"5\n")


def test_git_records_a_commit(vm):
    r = vm.run("cd /root && git init -q demo && cd demo && echo hi > f && git add f && "
               "git -c user.name=t -c user.email=t@e commit -qm one && git log --format=%s", timeout=120)
    assert (r.returncode, r.stdout) == (0, b"one\n"), r.stderr
